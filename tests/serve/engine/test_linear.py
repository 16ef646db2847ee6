"""serve.engine.linear: few-row bf16 projections through the compiled kernel (csrc/gemv.cpp) are a matmul
rounded once to bf16, give every row the same bits whatever the number of rows, and are used exactly where
they should be (bf16 CPU weights, up to FAST_ROWS rows, or VERIFY_ROWS in steps that verify drafts)."""

from __future__ import annotations

import pytest
import torch

from serve.engine import cpu_kernels
from serve.engine.linear import FAST_ROWS, VERIFY_ROWS, Projection

pytestmark = pytest.mark.skipif(not hasattr(cpu_kernels.load(), "bf16_small_m_linear"),
                                reason="the few-row kernel is built for AVX-512 CPUs with a C++ compiler only")


@pytest.mark.parametrize("shape", [(3072, 576), (576, 1536), (130, 70)])  # 70: not a multiple of the 64-wide dot
def test_matches_an_fp32_matmul_rounded_once(shape) -> None:
    n, k = shape
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(n, k, generator=gen) * 0.05).bfloat16()
    x = torch.randn(5, k, generator=gen).bfloat16()
    got = cpu_kernels.load().bf16_small_m_linear(x, w)
    want = (x.float() @ w.float().T)
    assert got.dtype == torch.bfloat16 and got.shape == (5, n)
    # fp32 sums in another order differ by ~1e-6 relative; after the one rounding to bf16, by at most one ulp
    torch.testing.assert_close(got.float(), want.bfloat16().float(), rtol=2 ** -7, atol=1e-6)


def test_a_row_has_the_same_bits_for_any_number_of_rows() -> None:
    gen = torch.Generator().manual_seed(1)
    w = (torch.randn(960, 576, generator=gen) * 0.05).bfloat16()
    x = torch.randn(VERIFY_ROWS, 576, generator=gen).bfloat16()
    full = cpu_kernels.load().bf16_small_m_linear(x, w)
    for m in range(1, VERIFY_ROWS + 1):
        assert torch.equal(cpu_kernels.load().bf16_small_m_linear(x[:m], w), full[:m]), m
        assert torch.equal(cpu_kernels.load().bf16_small_m_linear(x[m - 1:m], w), full[m - 1:m]), m


def test_projection_uses_the_kernel_for_few_bf16_rows_only() -> None:
    calls = []

    def kernel(x, w):
        calls.append(x.shape[0])
        return cpu_kernels.load().bf16_small_m_linear(x, w)

    w = (torch.randn(64, 32) * 0.05).bfloat16()
    proj = Projection(w)
    proj.use_few_row_kernel(kernel)
    for m in (1, FAST_ROWS, FAST_ROWS + 1):
        assert proj(torch.randn(m, 32).bfloat16()).shape == (m, 64)
    assert calls == [1, FAST_ROWS]  # more rows: oneDNN's GEMM, faster there
    calls.clear()
    for m in (FAST_ROWS + 1, VERIFY_ROWS, VERIFY_ROWS + 1):  # a step verifying drafts
        assert proj(torch.randn(m, 32).bfloat16(), VERIFY_ROWS).shape == (m, 64)
    assert calls == [FAST_ROWS + 1, VERIFY_ROWS]
    fp32 = Projection(torch.randn(64, 32))
    fp32.use_few_row_kernel(kernel)
    assert fp32.few_rows is None  # fp32 weights keep torch's matmul (the exactness reference)
