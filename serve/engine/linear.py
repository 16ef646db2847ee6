"""Dense projections with CPU weight prepacking.

On CPU, oneDNN's bf16/fp16 matmul reorders the weight into its blocked layout on every call unless the
weight is packed once up front. Packing (``mkldnn._reorder_linear_weight``, the same op inductor's
freezing pass uses) measured 1.3–2× faster per projection here (576×3072 bf16: 145→70 µs at M=1,
372→280 µs at M=16). Elsewhere (CUDA, fp32, CPUs without bf16 support) this is plain ``F.linear``.

Decode steps of a row or two are a pass over the weights, bound by memory bandwidth, where oneDNN's GEMV
falls well short of what the machine streams. With the compiled AVX-512 kernel loaded, bf16 projections of
up to :data:`FAST_ROWS` rows go through ``bf16_small_m_linear`` (``csrc/gemv.cpp``) instead (1.5x faster at
one row; from 4 rows on oneDNN's GEMM is faster). The kernel gives a row the same bits whatever the number
of rows, so steps that verify speculated tokens send up to :data:`VERIFY_ROWS` rows through it too: verifying
k drafts then reproduces plain decoding exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

#: batch size the packed layout is tuned for; measured to serve M=1..64 equally well
PACK_BATCH_HINT = 16
#: rows up to which the few-row kernel is the faster one (measured: bench/PROFILE.md)
FAST_ROWS = 2
#: rows up to which it runs in steps that verify drafts: one decode row plus up to 16 speculated tokens
VERIFY_ROWS = 17


def bound_onednn_caches(capacity: int) -> None:
    """Cap oneDNN's primitive cache and ideep's computation cache at ``capacity`` entries each.

    Both key entries by shape, and a step's row count is the number of tokens it runs, which under varied
    traffic (prefill chunks mixed with decodes) is a new number at almost every step. At their default 1,024
    entries of ~0.5-1 MB, the soak's replicas grew by 440 MB over its 30 minutes, fastest at first (an engine fed
    random prompt lengths: +200 MB over 320 requests with both caps at 1,024; flat after ~400 requests at 128).
    Both read their capacity from the environment (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, ``LRU_CACHE_CAPACITY``)
    once, at their first use in the process (torch does not export oneDNN's setter), so this must run before
    the process's first oneDNN op: it does in the engine's worker process. A value already in the environment
    wins (the operator's override).
    """
    os.environ.setdefault("LRU_CACHE_CAPACITY", str(capacity))
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))


def can_pack(weight: torch.Tensor) -> bool:
    if weight.device.type != "cpu" or weight.dtype not in (torch.bfloat16, torch.float16):
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    if weight.dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_fp16_supported()


class Projection:
    """``y = x @ W.T`` for a fixed weight ``W`` [out, in]; ``x`` [N, in] → [N, out]."""

    __slots__ = ("weight", "packed", "few_rows")

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_BATCH_HINT) if can_pack(weight) else None
        self.few_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def use_few_row_kernel(self, kernel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None) -> None:
        """Send bf16 calls of few rows to ``kernel(x, weight)`` (None: oneDNN only)."""
        ok = self.weight.device.type == "cpu" and self.weight.dtype == torch.bfloat16 and self.weight.is_contiguous()
        self.few_rows = kernel if ok else None

    def __call__(self, x: torch.Tensor, max_kernel_rows: int = FAST_ROWS) -> torch.Tensor:
        if self.few_rows is not None and x.shape[0] <= max_kernel_rows:
            return self.few_rows(x, self.weight)
        if self.packed is not None:
            if x.shape[0] == 1:
                # oneDNN takes a GEMV path at M=1 whose sums round differently (K=1536 here) from its GEMM at
                # M>=2, and the GEMM gives every row the same bits for M=2..512. Padding keeps a row's result
                # independent of the batch, so verifying speculated tokens reproduces plain decoding exactly.
                return torch.ops.mkldnn._linear_pointwise(x.expand(2, -1), self.packed, None, "none", [], "")[:1]
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        return F.linear(x, self.weight)
