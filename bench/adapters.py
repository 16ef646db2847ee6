"""Random-weight PEFT adapters for benchmarks, made once and kept under ``$LORAFLEET_HOME/bench``."""

from __future__ import annotations

from pathlib import Path

from lorafleet.config import lorafleet_home


def cached_random_adapters(model: Path, num: int, *, cache: str, name_prefix: str, seed: int, rank: int = 8) -> dict[str, Path]:
    """``{name_prefix-i: dir}`` for ``num`` rank-``rank`` adapters of ``model`` (seeds ``seed + i``), created on
    first use in ``$LORAFLEET_HOME/bench/<cache>`` and reused by later runs."""
    from lorafleet.synthetic import make_random_lora_adapter

    root = lorafleet_home() / "bench" / cache
    out = {}
    for i in range(num):
        path = root / f"{model.name}-r{rank}-{i}"
        if not path.exists():
            make_random_lora_adapter(model, path, rank=rank, seed=seed + i)
        out[f"{name_prefix}-{i}"] = path
    return out
