"""The official `openai` Python client against two `bedside serve` processes started by
crates/bedside-cli/tests/serve.rs: SmolLM2 (the default model) at $SMOL_URL and the tiny fixture
Llama with two LoRA adapters at $TINY_URL. The expected greedy answers come from
`bedside generate` ($WANT_*). Prints "N passed, 0 failed" or exits non-zero naming the check."""

import os
import sys

from openai import OpenAI

QUESTION = os.environ["QUESTION"]
smol = OpenAI(base_url=os.environ["SMOL_URL"], api_key="unused", max_retries=0, timeout=120)
tiny = OpenAI(base_url=os.environ["TINY_URL"], api_key="unused", max_retries=0, timeout=120)
passed = 0


def check(name, cond, detail=""):
    global passed
    if not cond:
        print(f"FAILED: {name}: {detail}", file=sys.stderr)
        sys.exit(1)
    passed += 1


def ask(client, model, max_tokens, **kw):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=max_tokens, **kw
    )


# /v1/models: the base and each adapter with its parent.
models = {m.id: m for m in tiny.models.list().data}
check("models", set(models) == {"tiny", "lora", "rslora"}, sorted(models))
check("adapter parent", getattr(models["lora"], "parent", None) == "tiny", models["lora"])
check("retrieve", tiny.models.retrieve("rslora").id == "rslora")
check("smol model id", [m.id for m in smol.models.list().data] == ["smollm2"])

# Greedy chat equals `bedside generate` on the default model and on the tiny one.
r = ask(smol, "smollm2", 24)
check("smol greedy = bedside generate", r.choices[0].message.content == os.environ["WANT_SMOL"], (r.choices[0].message.content, os.environ["WANT_SMOL"]))
check("chat object", r.object == "chat.completion" and r.choices[0].message.role == "assistant")
check("finish reason", r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason)
u = r.usage
check("usage", u.prompt_tokens > 0 and 0 < u.completion_tokens <= 24 and u.total_tokens == u.prompt_tokens + u.completion_tokens, u)
base = ask(tiny, "tiny", 16).choices[0].message.content
lora = ask(tiny, "lora", 16).choices[0].message.content
rslora = ask(tiny, "rslora", 16).choices[0].message.content
check("tiny greedy = bedside generate", base == os.environ["WANT_TINY"], (base, os.environ["WANT_TINY"]))
check("adapter greedy = bedside generate --adapter", lora == os.environ["WANT_LORA"], (lora, os.environ["WANT_LORA"]))
check("choosing an adapter changes the answer", len({base, lora, rslora}) == 3, (base, lora, rslora))
r = ask(tiny, "tiny", 16, max_completion_tokens=3)
check("max_completion_tokens", r.usage.completion_tokens <= 3 and r.choices[0].finish_reason == "length", r.usage)

# Streaming: the role first, content deltas, the finish chunk, the usage chunk.
chunks = list(ask(smol, "smollm2", 24, stream=True, stream_options={"include_usage": True}))
check("stream role first", chunks[0].choices[0].delta.role == "assistant")
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check("stream text = non-streamed text", text == os.environ["WANT_SMOL"], (text, os.environ["WANT_SMOL"]))
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
check("one finish chunk", len(finishes) == 1 and finishes[0] in ("stop", "length"), finishes)
check("usage chunk last", chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0, chunks[-1])
check("chunk object", all(c.object == "chat.completion.chunk" for c in chunks))
check("no usage before the end", all(c.usage is None for c in chunks[:-1]))

# Sampling with a seed repeats; another seed (almost surely) differs.
def sampled(seed):
    return smol.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": QUESTION}], temperature=1.0, seed=seed, max_tokens=12
    ).choices[0].message.content

a, b = sampled(11), sampled(11)
check("same seed, same answer", a == b, (a, b))
check("another seed, another answer", sampled(12) != a)

# Stop strings, logprobs.
r = smol.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=24, stop=[","])
check("stop string", "," not in r.choices[0].message.content and r.choices[0].finish_reason == "stop", r.choices[0])
r = ask(smol, "smollm2", 8, logprobs=True, top_logprobs=3)
lp = r.choices[0].logprobs.content
check("logprobs per token", len(lp) == r.usage.completion_tokens and all(len(t.top_logprobs) == 3 for t in lp), lp)
check("greedy picks the top token", all(t.token == t.top_logprobs[0].token for t in lp))

# Legacy completions, plain and streamed.
c = smol.completions.create(model="smollm2", prompt="The most common symptoms of flu are", max_tokens=12, temperature=0)
check("completion", c.object == "text_completion" and len(c.choices[0].text) > 0 and c.usage.completion_tokens <= 12, c)
streamed = "".join(x.choices[0].text for x in smol.completions.create(model="smollm2", prompt="The most common symptoms of flu are", max_tokens=12, temperature=0, stream=True) if x.choices)
check("streamed completion", streamed == c.choices[0].text, (streamed, c.choices[0].text))

# Errors arrive as the client's exception types.
try:
    tiny.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    check("unknown model raises", False)
except Exception as e:  # openai.NotFoundError
    check("unknown model is 404", getattr(e, "status_code", None) == 404, repr(e))
try:
    tiny.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=-1)
    check("bad max_tokens raises", False)
except Exception as e:  # openai.BadRequestError
    check("bad max_tokens is 400", getattr(e, "status_code", None) == 400, repr(e))

print(f"{passed} passed, 0 failed")
