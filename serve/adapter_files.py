"""Checks of adapter directories before an engine loads one: the path must lie under a configured adapter root
(after resolving symlinks and ``..``; files inside it may not link out either), and the weights must be
safetensors. The gateway checks at start-up and again before every load, so a directory swapped, deleted or
corrupted since start-up is refused before any engine reads it; ``lorafleet serve`` checks every runtime load
against its ``--allow-runtime-lora`` roots.

Pickle weights (``.bin``, ``.pt``...) can run code when loaded, so a directory that holds any is refused even
if it also holds safetensors: an engine might prefer the pickle file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_HEADER_BYTES = 100 * 2**20


def resolve_under_roots(path: Path, roots: Sequence[Path]) -> Path | None:
    """``path`` made absolute with symlinks and ``..`` resolved, if that lies inside one of ``roots``; else None.

    Relative paths are taken relative to each root in turn (so ``sql-v2`` means ``<root>/sql-v2``).
    """
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    for candidate in candidates:
        real = candidate.resolve()
        for root in roots:
            if real == root.resolve() or root.resolve() in real.parents:
                return real
    return None


def safetensors_header_problem(file: Path) -> str | None:
    """None if ``file`` starts like a safetensors file (u64 header length, then a JSON object), else why not."""
    try:
        with file.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= MAX_HEADER_BYTES:
                return f"{file.name} is not a safetensors file (header length {size})"
            header = json.loads(f.read(size))
    except (OSError, ValueError) as e:
        return f"{file.name} is not a readable safetensors file ({e})"
    return None if isinstance(header, dict) else f"{file.name} has a malformed safetensors header"


def check_adapter_dir(name: str, path: Path, roots: Sequence[Path]) -> tuple[Path | None, list[str]]:
    """Validate adapter ``name`` at ``path``: returns (resolved directory or None, problems found)."""
    if not roots:
        return None, [f"adapter '{name}': no adapter_roots are configured, so no adapter path is allowed"]
    real = resolve_under_roots(path, roots)
    if real is None:
        return None, [f"adapter '{name}': path '{path}' is outside the adapter roots {[str(r) for r in roots]}"]
    if not real.is_dir():
        return None, [f"adapter '{name}': '{real}' is not a directory"]
    problems = []
    escaping = sorted(p.name for p in real.iterdir() if p.is_symlink() and resolve_under_roots(p.resolve(), roots) is None)
    if escaping:
        problems.append(f"adapter '{name}': {escaping} in '{real}' link to files outside the adapter roots")
    if not (real / "adapter_config.json").is_file():
        problems.append(f"adapter '{name}': '{real}' has no adapter_config.json")
    pickles = sorted(p.name for p in real.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        problems.append(f"adapter '{name}': '{real}' holds pickle weights {pickles}; only safetensors are allowed")
    weights = real / "adapter_model.safetensors"
    if not weights.is_file():
        problems.append(f"adapter '{name}': '{real}' has no adapter_model.safetensors")
    elif (why := safetensors_header_problem(weights)) is not None:
        problems.append(f"adapter '{name}': {why}")
    return (real if not problems else None), problems
