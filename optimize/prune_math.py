"""Pure arithmetic of structured pruning: which layers, channels and KV groups to keep.

No I/O or devices; tested against closed-form cases in ``tests/optimize/test_prune_math.py``.
"""

from __future__ import annotations


def protected_layers(num_layers: int, protect: tuple[int, ...]) -> set[int]:
    """Layer indices that depth pruning never removes: the first, the last, and ``protect`` (negative counts
    from the end, as in Python)."""
    out = {0, num_layers - 1}
    for i in protect:
        j = i + num_layers if i < 0 else i
        if not 0 <= j < num_layers:
            raise ValueError(f"protected layer {i} is outside 0..{num_layers - 1}")
        out.add(j)
    return out


def layers_to_drop(influence: list[float], ratio: float, protect: set[int]) -> list[int]:
    """The ``round(ratio × L)`` unprotected layers of lowest block influence (1 − cos(in, out)), ascending.

    Ties go to the later layer (kept earlier layers change the residual stream least downstream)."""
    n = round(ratio * len(influence))
    candidates = sorted((i for i in range(len(influence)) if i not in protect), key=lambda i: (influence[i], -i))
    if n > len(candidates):
        raise ValueError(f"cannot drop {n} of {len(influence)} layers with {len(protect)} protected")
    return sorted(candidates[:n])


def kept_width(width: int, ratio: float, multiple: int = 32) -> int:
    """Channels kept when ``ratio`` of ``width`` is removed, rounded to a multiple of ``multiple`` (kernel
    friendly) and at least one multiple."""
    keep = round(width * (1.0 - ratio) / multiple) * multiple
    return max(multiple, min(width, keep))


def top_indices(scores: list[float], keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores, in ascending index order (so weights keep their layout)."""
    if not 0 < keep <= len(scores):
        raise ValueError(f"keep must be in 1..{len(scores)}, got {keep}")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:keep])


def head_rows(kv_groups: list[int], group_size: int, head_dim: int) -> tuple[list[int], list[int]]:
    """Row indices of q_proj (query heads of the kept KV groups) and of k_proj/v_proj (the kept KV heads)."""
    q_rows = [(g * group_size + j) * head_dim + d for g in kv_groups for j in range(group_size) for d in range(head_dim)]
    kv_rows = [g * head_dim + d for g in kv_groups for d in range(head_dim)]
    return q_rows, kv_rows
