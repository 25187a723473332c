#!/usr/bin/env bash
# bedside's main job on the embedded default model (SmolLM2-135M-Instruct, GGUF Q4_1):
# fetch the models if missing, build, and stream an answer to a frightened patient.
# Later stages (a short LoRA run and a base-vs-tuned evaluation) join this script as they land.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo build --release --locked -p bedside-cli
bin=target/release/bedside
echo "demo: asking the default model a frightened patient's question" >&2
"$bin" generate --max-tokens 160 \
  --user "I'm really scared. My chest has felt tight since this morning and my left arm aches. Should I just wait and see?"
echo >&2
