"""Rows, micro-batches and their tensors.

A *row* is the sample indices that share one sequence of the batch: one sample without packing, several with
``--packing``. Each sample in a row gets position ids that restart at 0, and nothing else marks the
boundaries: transformers derives a block-diagonal causal mask from the restarting position ids, so no token
attends to another sample. Padding is appended as a segment of its own (positions 0, 1, ...) that nothing
real attends to and whose labels are ignored.

The plan (which samples go in which row, in which order) is pure Python and depends only on the lengths, the
seed and the epoch, so a resumed run replays exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Any, Sequence

from train.encode import IGNORE, Encoded


@dataclass(frozen=True, slots=True)
class Batch:
    """Tensors of one micro-batch; every tensor is ``[num_rows, max_row_len]`` (int64)."""

    input_ids: Any
    labels: Any  #: ``IGNORE`` on prompts and padding
    position_ids: Any  #: restart at 0 for every sample (and for the padding segment)
    num_tokens: int  #: non-padding tokens
    num_targets: int  #: tokens that carry loss


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing packing: rows of sample indices whose lengths sum to at most ``capacity``.

    Longest samples first, each into the fullest row it still fits (ties: the earliest row), so rows end up
    nearly full. Deterministic for equal inputs.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, row index), sorted
    for i in order:
        if lengths[i] > capacity:
            raise ValueError(f"sample {i} has {lengths[i]} tokens, more than the row capacity {capacity}")
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            rows.append([i])
            space, row = capacity - lengths[i], len(rows) - 1
        else:
            space, row = free.pop(at)
            rows[row].append(i)
            space -= lengths[i]
        bisect.insort(free, (space, row))
    return rows


def plan_rows(lengths: Sequence[int], capacity: int, packing: bool) -> list[list[int]]:
    """The rows of one epoch before shuffling: packed, or one sample per row."""
    return pack_rows(lengths, capacity) if packing else [[i] for i in range(len(lengths))]


def epoch_batches(rows: list[list[int]], batch_size: int, seed: int, epoch: int) -> list[list[list[int]]]:
    """Rows shuffled for ``epoch`` (by ``seed`` and ``epoch`` only) and cut into micro-batches of ``batch_size``."""
    order = list(range(len(rows)))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    shuffled = [rows[i] for i in order]
    return [shuffled[i:i + batch_size] for i in range(0, len(shuffled), batch_size)]


def in_order_batches(rows: list[list[int]], batch_size: int) -> list[list[list[int]]]:
    """Rows in their given order, cut into micro-batches (evaluation)."""
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def collate(samples: Sequence[Encoded], rows: list[list[int]], pad_id: int) -> Batch:
    """Concatenate each row's samples, pad rows to the longest, and build the :class:`Batch` tensors."""
    import torch

    ids, labels, positions = [], [], []
    for row in rows:
        ids.append([t for i in row for t in samples[i].input_ids])
        # A sample's first token is never a target: that would train the previous sample's end to predict it.
        labels.append([IGNORE if k == 0 else t for i in row for k, t in enumerate(samples[i].labels)])
        positions.append([p for i in row for p in range(len(samples[i].input_ids))])
    width = max(len(r) for r in ids)
    num_tokens = sum(len(r) for r in ids)
    num_targets = sum(samples[i].num_targets for row in rows for i in row)
    for r_ids, r_labels, r_pos in zip(ids, labels, positions):
        pad = width - len(r_ids)
        r_ids += [pad_id] * pad
        r_labels += [IGNORE] * pad
        r_pos += list(range(pad))
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return Batch(as_tensor(ids), as_tensor(labels), as_tensor(positions), num_tokens, num_targets)
