#!/usr/bin/env bash
# How much of the main job's result is the training seed: trains the main job's adapter
# (configs/train-smollm2-cpu.toml) with three seeds, evaluates base and the three adapters in one
# `eval run` (configs/eval-smollm2-demo.toml: the same items, prompts and decoding seeds for every
# system), and prints each adapter's tuned - base difference on every measure with its interval,
# then the spread over seeds (min, max, range). The seed-42 adapter is the main job's own
# (runs/demo/train/adapter) when it exists.
#
#   usage: scripts/seed-spread.sh [SEED...]        (default seeds: 42 43 44)
#   output: runs/seeds/train-sN/ (one per seed), runs/seeds/eval/ (report), runs/seeds/spread.md
#   environment: BEDSIDE (a bedside binary; default: cargo build --release, then target/release/bedside)
#
#   example: scripts/seed-spread.sh && cat runs/seeds/spread.md
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(42 43 44)
if [ -z "${BEDSIDE:-}" ]; then
  scripts/setup.sh
  cargo build --release --locked -p bedside-cli >&2
  BEDSIDE=$root/target/release/bedside
fi
out=runs/seeds
mkdir -p "$out"

adapters=()
for s in "${seeds[@]}"; do
  dir=$out/train-s$s
  demo=runs/demo/train
  if [ "$s" = 42 ] && [ -f "$demo/adapter/adapter_model.safetensors" ] \
     && python3 -c "import json,sys; sys.exit(json.load(open('$demo/train_config.json'))['run']['seed'] != 42)"; then
    dir=$demo
    echo "seed-spread: seed 42 is the main job's adapter ($dir/adapter)" >&2
  elif [ -f "$dir/adapter/adapter_model.safetensors" ]; then
    echo "seed-spread: reusing $dir/adapter" >&2
  else
    echo "seed-spread: training seed $s ($dir)" >&2
    "$BEDSIDE" train --config configs/train-smollm2-cpu.toml --seed "$s" --output-dir "$dir" --quiet
  fi
  adapters+=(--adapter "seed$s=$dir/adapter")
done

echo "seed-spread: evaluating base and ${#seeds[@]} adapters ($out/eval)" >&2
"$BEDSIDE" eval run --config configs/eval-smollm2-demo.toml "${adapters[@]}" --output-dir "$out/eval" --quiet >&2

python3 - "$out/eval/results.json" "$out/spread.md" "${seeds[@]}" <<'EOF'
import json, sys
results, dest, seeds = sys.argv[1], sys.argv[2], sys.argv[3:]
r = json.load(open(results))
primary = r["stats"]["primary"]
labels = {m["key"]: m["label"] for m in r["measures"]}
by = {}
for c in r["comparisons"]:
    by.setdefault(c["measure"], {})[c["system"]] = c
systems = [f"seed{s}" for s in seeds]
lines = [
    f"Training-seed spread: tuned - base for {len(seeds)} adapters trained with seeds {', '.join(seeds)} "
    f"(configs/train-smollm2-cpu.toml), one eval run (configs/eval-smollm2-demo.toml); "
    f"{int((1 - r['stats']['alpha']) * 100)}% bootstrap intervals. Primary endpoints first.",
    "",
    "| measure | " + " | ".join(systems) + " | min | max | range |",
    "|---|" + "---|" * (len(systems) + 3),
]
order = [m for m in primary if m in by] + sorted(m for m in by if m not in primary)
for m in order:
    cells, diffs = [], []
    for s in systems:
        c = by[m].get(s)
        if c is None:
            cells.append("–")
            continue
        diffs.append(c["diff"])
        cells.append(f"{c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]")
    if not diffs:
        continue
    name = labels.get(m, m) + (" (primary)" if m in primary else "")
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {min(diffs):+.3f} | {max(diffs):+.3f} | {max(diffs) - min(diffs):.3f} |")
sc = {c["system"]: c for c in r.get("safety_comparisons", [])}
if sc:
    lines.append("| safety pass (pp) | " + " | ".join(f"{sc[s]['diff_pp']:+.1f}" if s in sc else "–" for s in systems) + " | | | |")
lines.append("")
for v in r.get("verdict", []):
    if v["system"] in systems:
        lines.append(f"- {v['system']}: " + " ".join(v["sentences"]))
text = "\n".join(lines) + "\n"
open(dest, "w").write(text)
sys.stdout.write(text)
EOF
echo "seed-spread: table in $out/spread.md; report $out/eval/report.html" >&2
