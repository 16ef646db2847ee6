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
