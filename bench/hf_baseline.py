"""The strongest plain-HF baseline: one static, left-padded batch through ``generate``."""

from __future__ import annotations

import time
from pathlib import Path


def hf_batch_throughput(model_dir: Path, prompts: list[str], new_tokens: int, dtype: str = "bfloat16") -> dict:
    """Output tokens/s of HF ``generate`` (greedy, exactly ``new_tokens`` each) on all ``prompts`` as one batch,
    timed after a short warm-up batch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    batch = tok(prompts, return_tensors="pt", padding=True)
    kwargs = dict(do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        model.generate(**batch, min_new_tokens=4, max_new_tokens=4, **kwargs)
        start = time.perf_counter()
        out = model.generate(**batch, min_new_tokens=new_tokens, max_new_tokens=new_tokens, **kwargs)
        elapsed = time.perf_counter() - start
    generated = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return {"throughput_tok_s": generated / elapsed, "batch": len(prompts), "seconds": elapsed, "dtype": dtype}
