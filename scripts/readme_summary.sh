#!/usr/bin/env bash
# Put the main job's summary into the README: the text between the `main-job-summary` markers
# becomes `bedside eval summary runs/demo/eval` (run scripts/demo.sh first). Nothing else changes,
# so the README's figures are always that command's output for the run on disk.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
run=${1:-runs/demo/eval}
bin=target/release/bedside
[ -x "$bin" ] || cargo build --release --locked -p bedside-cli
summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
"$bin" eval summary "$run" > "$summary"
awk -v file="$summary" '
  /<!-- main-job-summary:begin -->/ { print; while ((getline line < file) > 0) print line; skip = 1; next }
  /<!-- main-job-summary:end -->/ { skip = 0 }
  !skip { print }
' README.md > README.md.new
mv README.md.new README.md
echo "README.md: main-job summary replaced from $run" >&2
