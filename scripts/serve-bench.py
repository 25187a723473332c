#!/usr/bin/env python3
"""Load generator: N concurrent chat clients on loopback against `bedside serve` and llama-server,
side by side in one run, interleaved over several rounds.

Both servers load the same GGUF with the same number of parallel slots and threads. Each client
sends its requests one after another (streaming, greedy, the same max_tokens, a different patient
message each), so N requests are in flight at once. Reported per engine and round: aggregate
output tokens/s (all clients' completion tokens / wall time of the round) and p50 / p95 time to
first token (from sending the request to the first non-empty content delta); then the medians over
rounds and bedside / llama.cpp ratios, with the CPU model and the load average.

    scripts/serve-bench.py --clients 8 --rounds 3
    scripts/serve-bench.py --llama-server ~/.cache/llama.cpp-ref/bin/llama-server --model models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Standard library only. Nothing but 127.0.0.1 is contacted.
"""

import argparse
import glob
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, name, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            sys.exit(f"{name} exited with {proc.returncode} before it was ready")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{name} was not ready within {timeout} s")


def patient_messages(n):
    msgs = []
    for path in sorted(glob.glob(os.path.join(ROOT, "data", "dialogues", "*.jsonl"))):
        with open(path) as f:
            for line in f:
                d = json.loads(line)
                msgs.append(d.get("patient_neutral") or d.get("patient"))
    msgs = [m for m in msgs if m]
    if not msgs:
        sys.exit("no patient messages found under data/dialogues")
    return [msgs[i % len(msgs)] for i in range(n)]


def one_request(port, model, message, max_tokens, extra):
    body = {
        "model": model,
        "messages": [{"role": "system", "content": "You are a caring, knowledgeable clinician."}, {"role": "user", "content": message}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body.update(extra)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    ttft = None
    tokens = 0
    chunks = 0
    for raw in r:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        v = json.loads(data)
        for ch in v.get("choices") or []:
            if (ch.get("delta") or {}).get("content"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
        if v.get("usage"):
            tokens = v["usage"].get("completion_tokens", 0)
    c.close()
    return ttft if ttft is not None else time.perf_counter() - t0, tokens or chunks


def run_round(port, model, messages, clients, per_client, max_tokens, extra):
    ttfts, tokens, errors = [], [], []
    lock = threading.Lock()

    def client(i):
        for j in range(per_client):
            msg = messages[(i * per_client + j) % len(messages)]
            try:
                t, n = one_request(port, model, msg, max_tokens, extra)
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(str(e))
                return
            with lock:
                ttfts.append(t)
                tokens.append(n)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        sys.exit(f"requests failed: {errors[:3]}")
    ttfts.sort()
    pct = lambda q: ttfts[min(len(ttfts) - 1, int(round(q * (len(ttfts) - 1))))]
    return {"tok_s": sum(tokens) / wall, "p50": pct(0.5), "p95": pct(0.95), "tokens": sum(tokens), "wall": wall}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bedside", default=os.path.join(ROOT, "target", "release", "bedside"))
    ap.add_argument("--llama-server", default=os.path.expanduser("~/.cache/llama.cpp-ref/bin/llama-server"), help="llama.cpp's server ('' to skip it)")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=None, help="slots / rows per server (default: --clients)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=2048, help="positions per request (llama-server gets parallel x ctx in all)")
    ap.add_argument("--bedside-arg", action="append", default=[], help="extra flag for bedside serve (repeatable)")
    args = ap.parse_args()
    parallel = args.parallel or args.clients
    messages = patient_messages(args.clients * args.requests_per_client * args.rounds)
    logs = tempfile.mkdtemp(prefix="serve-bench-")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    engines = []
    bport = free_port()
    bproc = subprocess.Popen(
        [args.bedside, "serve", "--model", args.model, "--name", "bench", "--port", str(bport), "--parallel", str(parallel), "--queue", "1024", "--ctx", str(args.ctx)] + args.bedside_arg,
        env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(logs, "bedside.log"), "w"),
    )
    engines.append(("bedside", bport, bproc, "bench", {}))
    if args.llama_server:
        lport = free_port()
        lproc = subprocess.Popen(
            [args.llama_server, "-m", args.model, "--host", "127.0.0.1", "--port", str(lport), "-np", str(parallel), "-t", str(args.threads), "-tb", str(args.threads), "-c", str(parallel * args.ctx), "--no-webui"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(logs, "llama-server.log"), "w"),
        )
        # No prompt cache: bedside has none, and every request's prompt is new anyway.
        engines.append(("llama.cpp", lport, lproc, "bench", {"cache_prompt": False}))
    try:
        for name, port, proc, _, _ in engines:
            wait_ready(port, proc, name)
        # One warm-up request each (first-touch of weights, thread pools).
        for name, port, _, model, extra in engines:
            one_request(port, model, messages[0], 8, extra)
        results = {name: [] for name, *_ in engines}
        for r in range(args.rounds):
            order = engines if r % 2 == 0 else engines[::-1]
            for name, port, _, model, extra in order:
                off = r * args.clients * args.requests_per_client
                res = run_round(port, model, messages[off:] + messages[:off], args.clients, args.requests_per_client, args.max_tokens, extra)
                results[name].append(res)
                print(f"round {r + 1} {name:9s} {res['tok_s']:7.1f} tok/s  TTFT p50 {res['p50'] * 1e3:7.0f} ms  p95 {res['p95'] * 1e3:7.0f} ms  ({res['tokens']} tokens in {res['wall']:.1f} s)", flush=True)
    finally:
        for _, _, proc, _, _ in engines:
            proc.terminate()
        for _, _, proc, _, _ in engines:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    med = {name: {k: statistics.median(x[k] for x in rs) for k in ("tok_s", "p50", "p95")} for name, rs in results.items()}
    print(f"\nCPU: {cpu_model()}; {args.threads} threads; {args.clients} clients x {args.requests_per_client} requests, {parallel} slots, max_tokens {args.max_tokens}, {args.rounds} rounds")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'engine':10s} {'tok/s':>8s} {'TTFT p50':>10s} {'TTFT p95':>10s}   (medians over rounds)")
    for name, m in med.items():
        print(f"{name:10s} {m['tok_s']:8.1f} {m['p50'] * 1e3:8.0f}ms {m['p95'] * 1e3:8.0f}ms")
    if "llama.cpp" in med:
        b, l = med["bedside"], med["llama.cpp"]
        print(f"bedside / llama.cpp: tok/s {b['tok_s'] / l['tok_s']:.2f}x, TTFT p50 {b['p50'] / l['p50']:.2f}x, p95 {b['p95'] / l['p95']:.2f}x (lower TTFT is better)")
    print(f"server logs: {logs}")


if __name__ == "__main__":
    main()
