#!/usr/bin/env python3
"""The PyTorch + PEFT side of `bedside train --bench`: the same LoRA step on the same model.

One step = forward, causal-LM loss over the whole sequence, backward, gradient clipping to 1.0
and AdamW (lr 1e-4, weight decay 0.01) on LoRA r=8, alpha 16, no dropout, on all seven Llama
projections; batch 1, a synthetic sequence; the median step time after one warm-up step, and
the process's peak RSS. Not a test and not run by CI: it needs torch, transformers, peft and
gguf, which bedside itself never does.

    python3 -m venv /tmp/pt && /tmp/pt/bin/pip install torch transformers peft gguf
    /tmp/pt/bin/python scripts/bench_peft_train.py --dtype f32
    /tmp/pt/bin/python scripts/bench_peft_train.py --dtype bf16
    target/release/bedside train --bench --base both        # bedside on the same machine

The weights are read from the GGUF (transformers dequantizes it to the requested dtype);
--random builds the same architecture with random weights, which times the same.
"""
import argparse
import json
import os
import resource
import statistics
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    ap.add_argument("--random", action="store_true", help="random weights in SmolLM2-135M's shape")
    a = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    torch.manual_seed(0)
    if a.random:
        cfg = LlamaConfig(
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
            rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(cfg).to(dtype)
    else:
        d, f = os.path.split(os.path.abspath(a.model))
        model = LlamaForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=dtype)
    model.config.use_cache = False
    lcfg = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = get_peft_model(model, lcfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ids = torch.randint(0, model.config.vocab_size, (1, a.seq))
    times = []
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i > 0:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({
        "engine": f"torch {torch.__version__} + peft",
        "dtype": a.dtype,
        "threads": torch.get_num_threads(),
        "seq_len": a.seq,
        "trainable_params": sum(p.numel() for p in params),
        "secs_per_step": med,
        "tokens_per_sec": a.seq / med,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
