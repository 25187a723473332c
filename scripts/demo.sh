#!/usr/bin/env bash
# bedside's main job on the embedded default model (SmolLM2-135M-Instruct, GGUF Q4_1), CPU:
#   1. fetch the default models if missing (scripts/setup.sh) and build bedside;
#   2. fine-tune a LoRA adapter on the shipped emotion-rewritten corpus, directly on the
#      quantized GGUF (configs/train-smollm2-cpu.toml);
#   3. evaluate base vs tuned on the held-out test split, the safety set and the equity probes
#      (configs/eval-smollm2-demo.toml): empathy, knowledge, safety, equity, statistics;
#   4. print the summary (verdict, control table, gates; Markdown) and where the report is, and
#      keep it in runs/demo/summary.md (scripts/readme_summary.sh puts it into the README).
# Rerunning reuses the adapter and cached answers; delete runs/demo to start over. Extra arguments go to `bedside eval run` (e.g. --limit 5).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo build --release --locked -p bedside-cli
bin=target/release/bedside
run=runs/demo

if [ -f "$run/train/adapter/adapter_model.safetensors" ]; then
  echo "demo: reusing the adapter in $run/train/adapter (delete $run to retrain)" >&2
else
  echo "demo: fine-tuning a LoRA adapter on the shipped corpus ($run/train)" >&2
  "$bin" train --config configs/train-smollm2-cpu.toml --output-dir "$run/train"
fi

echo "demo: evaluating base vs tuned ($run/eval)" >&2
"$bin" eval run --config configs/eval-smollm2-demo.toml --adapter "tuned=$run/train/adapter" \
  --output-dir "$run/eval" --quiet "$@" >&2
"$bin" eval summary "$run/eval" | tee "$run/summary.md"
echo "demo: summary in $run/summary.md; training curve $run/train/loss.svg; report $run/eval/report.html (self-contained)" >&2
