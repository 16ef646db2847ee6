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


# -- quantized KV ------------------------------------------------------------------------------------------
from serve.engine.kv_math import KV_QMAX, capacity_ratio, kv_scale, kv_storage_dtype  # noqa: E402


def test_kv_scale_maps_amax_to_the_dtype_range() -> None:
    assert kv_scale(12.7, "int8") == pytest.approx(0.1)  # 12.7 / 127
    assert kv_scale(448.0, "fp8") == 1.0
    assert kv_scale(4.48, "fp8") == pytest.approx(0.01)
    assert kv_scale(0.0, "int8") == 1.0  # a silent head: no division by zero
    assert KV_QMAX == {"int8": 127.0, "fp8": 448.0}


def test_storage_dtype() -> None:
    assert kv_storage_dtype("auto", "bfloat16") == "bfloat16"
    assert kv_storage_dtype("int8", "bfloat16") == "int8"
    assert kv_storage_dtype("fp8", "float32") == "fp8"
    with pytest.raises(ValueError, match="unknown kv_cache_dtype"):
        kv_storage_dtype("int4", "float32")


def test_capacity_of_one_byte_kv() -> None:
    # SmolLM2-135M: 30 layers, 3 KV heads, head_dim 64. One byte per value holds 2x bf16 and 4x fp32.
    bf16, fp32, int8 = (kv_bytes_per_token(30, 3, 64, DTYPE_BYTES[d]) for d in ("bfloat16", "float32", "int8"))
    assert int8 == 11520
    assert capacity_ratio(bf16, int8) == 2.0
    assert capacity_ratio(fp32, int8) == 4.0
    assert num_kv_blocks(GIB, int8, 16) == 5825 >= 2 * num_kv_blocks(GIB, bf16, 16) == 5824  # whole blocks
    with pytest.raises(ValueError):
        capacity_ratio(0, 1)
