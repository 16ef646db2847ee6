"""``lorafleet eval compare A B``: what B costs or saves against A on held-out text and on our engine."""

from __future__ import annotations

from typing import Any

from lorafleet.config.optimize import EvalConfig
from lorafleet.loading import load_tokenizer, resolve_model
from optimize import artifact
from optimize.ppl import engine_loads, evaluate, greedy_agreement, run_engine_scoring
from optimize.textdata import HELDOUT, read_passages

#: prompt of the decode-speed runs (the stream itself is ``decode_tokens`` tokens, EOS ignored)
DECODE_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def decode_tpot_ms(model: str, cfg: EvalConfig) -> float | None:
    """Single-stream time per output token on our engine (``cfg.dtype``), or ``None`` if it cannot load it."""
    path = resolve_model(model)
    if cfg.decode_tokens == 0 or not engine_loads(path):
        return None
    prompt = load_tokenizer(path)(DECODE_PROMPT).input_ids
    eng_cfg = EvalConfig(dtype=cfg.dtype, num_threads=cfg.num_threads, backend="engine",
                         kv_cache_dtype=cfg.kv_cache_dtype if cfg.backend == "engine" else "auto")
    res = run_engine_scoring(path, eng_cfg, [], {"prompt_ids": prompt, "num_tokens": cfg.decode_tokens, "repeats": 3})
    return res["decode_tpot_ms"]


def compare(a: str, b: str, cfg: EvalConfig) -> dict[str, Any]:
    """ppl of each (same windows), their delta, next-token agreement, bytes on disk and engine decode speed."""
    ra, rb = evaluate(a, cfg), evaluate(b, cfg)
    ta, tb = decode_tpot_ms(a, cfg), decode_tpot_ms(b, cfg)
    size_a, size_b = artifact.dir_bytes(resolve_model(a)), artifact.dir_bytes(resolve_model(b))
    return {
        "a": ra.summary() | {"bytes": size_a, "decode_tpot_ms": ta},
        "b": rb.summary() | {"bytes": size_b, "decode_tpot_ms": tb},
        "ppl_delta_pct": 100.0 * (rb.ppl / ra.ppl - 1.0),
        "greedy_agreement": greedy_agreement(ra, rb),
        "size_ratio": size_b / size_a,
        "decode_speedup": (ta / tb) if ta and tb else None,
        "num_heldout_passages": len(read_passages(cfg.data, HELDOUT)),
    }
