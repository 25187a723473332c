#!/usr/bin/env bash
# bedside against llama.cpp on the same GGUF, the same threads and the same machine: prompt
# processing (512 tokens), decoding at depth 0 and at depth 512 (128 tokens each), and each
# process's peak resident memory. The engines run interleaved, ROUNDS times, so load from other
# processes falls on both; the table gives each engine's median over rounds and their ratio.
#
#   usage: scripts/bench-vs-llama-cpp.sh LLAMA_BENCH [MODEL]
#     LLAMA_BENCH  llama.cpp's llama-bench (../shared/tools/build-llama-cpp.sh builds one)
#     MODEL        a GGUF file (default: models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)
#   environment: THREADS (default 2), ROUNDS (default 3), REPS (runs per engine per round,
#     default 3), KV_CACHE (bedside's key/value cache type: f16, llama.cpp's default and so the
#     like-for-like setting, or f32, bedside's default; default f16), BEDSIDE (a bedside binary;
#     default: cargo build --release, then target/release/bedside)
#
#   example: scripts/bench-vs-llama-cpp.sh ~/.cache/llama.cpp-ref/bin/llama-bench
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -lt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
llama_bench=$1
model=${2:-$root/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
threads=${THREADS:-2}
rounds=${ROUNDS:-3}
reps=${REPS:-3}
kv_cache=${KV_CACHE:-f16}
[ -x "$llama_bench" ] || { echo "bench-vs-llama-cpp: $llama_bench is not an executable llama-bench" >&2; exit 1; }
[ -f "$model" ] || { echo "bench-vs-llama-cpp: model $model not found (scripts/setup.sh fetches the default)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench-vs-llama-cpp: /usr/bin/time (Debian package 'time') is needed for peak memory" >&2; exit 1; }
if [ -z "${BEDSIDE:-}" ]; then
  (cd "$root" && cargo build --release --locked -p bedside-cli >&2)
  BEDSIDE=$root/target/release/bedside
fi
export RAYON_NUM_THREADS=$threads

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# One measurement: NAME ENGINE COMMAND...; the JSON on stdout to $out/NAME.json, the peak RSS
# (KiB) from /usr/bin/time to $out/NAME.rss.
measure() {
  local name=$1
  shift
  /usr/bin/time -f '%M' -o "$out/$name.rss" "$@" > "$out/$name.json" 2> "$out/$name.err" || {
    echo "bench-vs-llama-cpp: '$*' failed:" >&2
    tail -5 "$out/$name.err" >&2
    exit 1
  }
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; $threads threads; load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq 1 "$rounds"); do
  echo "round $r/$rounds" >&2
  measure "llama_pp_$r" "$llama_bench" -m "$model" -t "$threads" -p 512 -n 0 -r "$reps" -o json
  measure "bedside_pp_$r" "$BEDSIDE" bench -m "$model" --kv-cache "$kv_cache" --prompt-tokens 512 --gen-tokens 128 --runs "$reps" --warmup 1 --json
  measure "llama_tg0_$r" "$llama_bench" -m "$model" -t "$threads" -p 0 -n 128 -r "$reps" -o json
  measure "bedside_tg0_$r" "$BEDSIDE" bench -m "$model" --kv-cache "$kv_cache" --prompt-tokens 1 --gen-tokens 128 --runs "$reps" --warmup 1 --json
  measure "llama_tg512_$r" "$llama_bench" -m "$model" -t "$threads" -p 0 -n 128 -d 512 -r "$reps" -o json
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$out" "$rounds" "$model" "$threads" "$kv_cache" <<'EOF'
import json, statistics, sys, os
out, rounds, model, threads, kv_cache = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
def load(name):
    with open(os.path.join(out, name + ".json")) as f:
        return json.load(f)
def rss(name):
    with open(os.path.join(out, name + ".rss")) as f:
        return int(f.read().split()[-1]) * 1024 / 1e6
def llama_ts(name):
    tests = load(name)
    return tests[0]["avg_ts"]
rows = {"pp512": ([], []), "tg128 @ depth 0": ([], []), "tg128 @ depth 512": ([], [])}
mem_l, mem_b = [], []
for r in range(1, rounds + 1):
    rows["pp512"][0].append(llama_ts(f"llama_pp_{r}"))
    b = load(f"bedside_pp_{r}")
    rows["pp512"][1].append(b["prompt_tokens_per_sec"])
    rows["tg128 @ depth 512"][1].append(b["decode_tokens_per_sec"])
    rows["tg128 @ depth 0"][0].append(llama_ts(f"llama_tg0_{r}"))
    rows["tg128 @ depth 0"][1].append(load(f"bedside_tg0_{r}")["decode_tokens_per_sec"])
    rows["tg128 @ depth 512"][0].append(llama_ts(f"llama_tg512_{r}"))
    mem_l.append(max(rss(f"llama_{t}_{r}") for t in ("pp", "tg0", "tg512")))
    mem_b.append(max(rss(f"bedside_{t}_{r}") for t in ("pp", "tg0")))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
# Each engine's cache type as it reports it, not as asked for.
kv_b = load("bedside_pp_1").get("kv_cache", kv_cache)
kv_l = "/".join(sorted({load("llama_tg512_1")[0].get(k, "?") for k in ("type_k", "type_v")}))
print(f"{os.path.basename(model)}, {threads} threads, {cpu}; key/value cache {kv_b} (llama.cpp: {kv_l}); median of {rounds} interleaved rounds (range in brackets)")
print()
print("| | llama.cpp (tok/s) | bedside (tok/s) | bedside ÷ llama.cpp |")
print("|---|---|---|---|")
for name, (l, b) in rows.items():
    ml, mb = statistics.median(l), statistics.median(b)
    print(f"| {name} | {ml:.1f} [{min(l):.1f}–{max(l):.1f}] | {mb:.1f} [{min(b):.1f}–{max(b):.1f}] | **{mb / ml:.2f}** |")
print(f"| peak RSS (MB) | {max(mem_l):.0f} | {max(mem_b):.0f} | {max(mem_b) / max(mem_l):.2f} |")
EOF
