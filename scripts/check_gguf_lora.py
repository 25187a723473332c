#!/usr/bin/env python3
"""Check a GGUF LoRA written by `bedside adapter export-gguf` with llama.cpp's own Python reader.

    python3 scripts/check_gguf_lora.py BASE.gguf PEFT_ADAPTER_DIR EXPORTED_LORA.gguf

Reads the exported file and the base model with gguf-py (`pip install gguf`, maintained in the
llama.cpp repository) and checks what llama.cpp's loader relies on: `general.type = adapter`,
`adapter.type = lora`, an `adapter.lora.alpha`, a `NAME.lora_a` / `NAME.lora_b` pair for a base
tensor `NAME` with ggml shapes `[in, r]` / `[r, out]` against the base's `[in, out]`. Then it
recomputes every update the way llama.cpp applies it (`alpha / r · B·A`, or `B·A` when alpha is 0)
and compares it with the PEFT adapter's own update (`lora_alpha / r · B·A`, `/ √r` for rsLoRA),
with q/k rows permuted as llama.cpp's convert_hf_to_gguf.py permutes them. Dense Llama modules
only (not Mixtral's stacked experts). Prints a JSON summary; exits 1 on any mismatch.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader

HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def read_safetensors(path):
    """The safetensors format by hand: an 8-byte header length, a JSON header, raw tensors."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    dtypes = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(body[start:end], dtype=dtypes[info["dtype"]]).reshape(info["shape"]).astype(np.float64)
    return out


def permute(w, n_head):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute: HF rotate-half rows -> interleaved RoPE rows.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    base_path, adapter_dir, lora_path = sys.argv[1:]
    base = GGUFReader(base_path)
    lora = GGUFReader(lora_path)
    errors = []

    arch = field(base, "general.architecture")
    n_head = int(field(base, f"{arch}.attention.head_count"))
    n_head_kv = int(field(base, f"{arch}.attention.head_count_kv") or n_head)
    if field(lora, "general.type") != "adapter":
        errors.append(f"general.type is {field(lora, 'general.type')!r}, llama.cpp wants 'adapter'")
    if field(lora, "adapter.type") != "lora":
        errors.append(f"adapter.type is {field(lora, 'adapter.type')!r}, llama.cpp wants 'lora'")
    if field(lora, "general.architecture") != arch:
        errors.append(f"general.architecture {field(lora, 'general.architecture')!r} differs from the base's {arch!r}")
    alpha = field(lora, "adapter.lora.alpha")
    if alpha is None:
        errors.append("adapter.lora.alpha is missing")
        alpha = 0.0
    alpha = float(alpha)

    base_shapes = {t.name: [int(x) for x in t.shape] for t in base.tensors}
    lt = {t.name: t for t in lora.tensors}

    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    peft = read_safetensors(Path(adapter_dir) / "adapter_model.safetensors")
    compared = 0
    worst = 0.0
    for key, a in sorted(peft.items()):
        if ".lora_A." not in key:
            continue
        module = key.split("base_model.model.model.", 1)[1].split(".lora_A.")[0]  # layers.0.self_attn.q_proj
        parts = module.split(".")
        layer, hf = int(parts[1]), ".".join(parts[2:])
        short = hf.split(".")[-1]
        b = peft[key.replace(".lora_A.", ".lora_B.")]
        r = a.shape[0]
        lora_alpha = cfg.get("alpha_pattern", {}).get(short, cfg["lora_alpha"])
        scale = lora_alpha / (np.sqrt(r) if cfg.get("use_rslora") else r)
        want = scale * (b @ a)  # HF layout [out, in]
        if hf == "self_attn.q_proj":
            want = permute(want, n_head)
        elif hf == "self_attn.k_proj":
            want = permute(want, n_head_kv)
        name = f"blk.{layer}.{HF_TO_GGUF[hf]}.weight"
        ta, tb = lt.get(name + ".lora_a"), lt.get(name + ".lora_b")
        if ta is None or tb is None:
            errors.append(f"{name}: lora_a/lora_b missing")
            continue
        if name not in base_shapes:
            errors.append(f"{name}: no such tensor in the base model")
            continue
        n_in, n_out = base_shapes[name][:2]
        sa, sb = [int(x) for x in ta.shape], [int(x) for x in tb.shape]
        if sa != [n_in, r] or sb != [r, n_out]:
            errors.append(f"{name}: ggml shapes lora_a {sa}, lora_b {sb}; base {[n_in, n_out]} and r {r} need [{n_in}, {r}] and [{r}, {n_out}]")
            continue
        # gguf-py gives numpy arrays with the ggml dimensions reversed: lora_a (r, in), lora_b (out, r).
        ga = np.asarray(ta.data, dtype=np.float64).reshape(r, n_in)
        gb = np.asarray(tb.data, dtype=np.float64).reshape(n_out, r)
        rank = gb.shape[1]
        got = (alpha / rank if alpha != 0 else 1.0) * (gb @ ga)
        rel = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
        worst = max(worst, rel)
        compared += 1
        if rel > 1e-5:
            errors.append(f"{name}: llama.cpp's update differs from PEFT's by {rel:.2e} (relative)")
    expected_pairs = sum(1 for k in peft if ".lora_A." in k)
    if compared != expected_pairs:
        errors.append(f"compared {compared} of {expected_pairs} modules")
    extra = sorted(n for n in lt if not (n.endswith(".lora_a") or n.endswith(".lora_b")))
    if extra:
        errors.append(f"unexpected tensors {extra[:5]}")
    print(json.dumps({"modules": compared, "alpha": alpha, "worst_relative_difference": worst, "errors": errors}))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
