"""KV-cache sizing: pure arithmetic, no devices (tested against closed-form cases)."""

from __future__ import annotations

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "fp8": 1, "fp8_e4m3": 1}
GIB = 1024**3


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Bytes of K and V one token occupies across all layers: ``2 × layers × kv_heads × head_dim × bytes``."""
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes


def num_kv_blocks(budget_bytes: int, bytes_per_token: int, block_size: int) -> int:
    """Whole blocks of ``block_size`` tokens that fit in ``budget_bytes``."""
    if bytes_per_token <= 0 or block_size <= 0:
        raise ValueError("bytes_per_token and block_size must be positive")
    return budget_bytes // (bytes_per_token * block_size)


def cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)


# -- quantized KV (int8 / fp8 e4m3) ------------------------------------------------------------------------
#: largest magnitude each quantized KV dtype stores: int8 is symmetric [-127, 127] (-128 unused so that
#: negation is exact); fp8 e4m3fn's largest finite value is 448.
KV_QMAX = {"int8": 127.0, "fp8": 448.0}


def kv_storage_dtype(kv_cache_dtype: str, model_dtype: str) -> str:
    """The dtype name KV is stored in: the model dtype for ``auto``, else ``kv_cache_dtype`` itself."""
    if kv_cache_dtype == "auto":
        return model_dtype
    if kv_cache_dtype not in KV_QMAX:
        raise ValueError(f"unknown kv_cache_dtype '{kv_cache_dtype}'")
    return kv_cache_dtype


def kv_scale(amax: float, kv_cache_dtype: str) -> float:
    """Dequantization scale (``x ≈ stored × scale``) that maps ``[-amax, amax]`` onto the dtype's full range.

    A zero or negative ``amax`` (a head that never fired in calibration) gets scale 1.0 so nothing divides by 0.
    """
    return amax / KV_QMAX[kv_cache_dtype] if amax > 0 else 1.0


def capacity_ratio(bytes_per_token_base: int, bytes_per_token_new: int) -> float:
    """How many times more tokens fit in the same KV budget after a change of storage dtype."""
    if bytes_per_token_base <= 0 or bytes_per_token_new <= 0:
        raise ValueError("bytes per token must be positive")
    return bytes_per_token_base / bytes_per_token_new
