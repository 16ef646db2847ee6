"""serve/engine/kv_math.py: closed-form KV-cache sizes."""

from __future__ import annotations

import pytest

from serve.engine.kv_math import DTYPE_BYTES, GIB, cdiv, kv_bytes_per_token, num_kv_blocks


def test_llama3_8b_bf16() -> None:
    # 32 layers, 8 KV heads (GQA), head_dim 128, 2 bytes: 2 (K and V) * 32 * 8 * 128 * 2 = 128 KiB per token.
    assert kv_bytes_per_token(32, 8, 128, DTYPE_BYTES["bfloat16"]) == 131072


def test_smollm2_135m_fp32() -> None:
    # 30 layers, 3 KV heads, head_dim 64, 4 bytes.
    assert kv_bytes_per_token(30, 3, 64, DTYPE_BYTES["float32"]) == 46080


def test_llama2_7b_fp16_without_gqa() -> None:
    # 32 layers, 32 KV heads, head_dim 128: 512 KiB per token, so 1 GiB holds 2048 tokens.
    per_token = kv_bytes_per_token(32, 32, 128, DTYPE_BYTES["float16"])
    assert per_token == 524288
    assert num_kv_blocks(GIB, per_token, 16) == 128


def test_blocks_in_a_budget() -> None:
    assert num_kv_blocks(GIB, 131072, 16) == 512  # 1 GiB / (128 KiB * 16)
    assert num_kv_blocks(GIB - 1, 131072, 16) == 511  # whole blocks only
    assert num_kv_blocks(0, 131072, 16) == 0
    assert num_kv_blocks(8 * GIB, kv_bytes_per_token(32, 8, 128, DTYPE_BYTES["fp8"]), 16) == 8192


@pytest.mark.parametrize(("per_token", "block"), [(0, 16), (-1, 16), (100, 0)])
def test_nonpositive_sizes_are_refused(per_token: int, block: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        num_kv_blocks(GIB, per_token, block)


@pytest.mark.parametrize(("a", "b", "expected"), [(0, 16, 0), (1, 16, 1), (16, 16, 1), (17, 16, 2), (300, 16, 19)])
def test_cdiv(a: int, b: int, expected: int) -> None:
    assert cdiv(a, b) == expected
