"""Pure arithmetic of weight quantization: per-channel int8, group sizes and checkpoint byte accounting.

No I/O, devices or globals; tested against closed-form cases in ``tests/optimize/test_quant_math.py``.
"""

from __future__ import annotations

import re
from typing import Any

import torch

INT8_QMAX = 127
INT4_QMAX = 7
#: decoder linear layers of a Llama-family checkpoint: every tensor under one of these module prefixes
#: (weight, packed weight, scales, zero points, bitsandbytes quant state) belongs to that layer
LINEAR_RE = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.")
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                           "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def quantize_int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: ``weight`` [out, in] → (``q`` int8 [out, in], ``scale`` fp32 [out])
    with ``q = round(w / scale)`` (half to even) in [-127, 127] and ``scale = max|w_row| / 127``.

    An all-zero row gets scale 1.0 (its codes are all 0), so nothing divides by zero.
    """
    w = weight.float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / INT8_QMAX, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-INT8_QMAX, INT8_QMAX).to(torch.int8)
    return q, scale


def dequantize_int8_per_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q`` int8 [out, in] × ``scale`` [out] → fp32 weight [out, in]."""
    return q.float() * scale.float()[:, None]


def int4_group_round_trip(weight: torch.Tensor, group: int) -> torch.Tensor:
    """Symmetric int4 with one absmax scale per ``group`` input columns (codes −8..7, scale = max|w| / 7),
    dequantized: the rounding a W4A16 scheme applies before GPTQ's error compensation."""
    rows, cols = weight.shape
    if cols % group:
        raise ValueError(f"group size {group} does not divide {cols} columns")
    g = weight.reshape(rows, cols // group, group)
    scale = g.abs().amax(-1, keepdim=True) / INT4_QMAX
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (torch.clamp(torch.round(g / scale), -INT4_QMAX - 1, INT4_QMAX) * scale).reshape(rows, cols)


def fused_groups(names: list[str]) -> list[list[str]]:
    """Linear modules that serving engines fuse into one matmul and so must share one precision: a layer's
    q/k/v projections, and its gate/up projections; every other module is a group of its own."""
    groups: dict[str, list[str]] = {}
    for n in names:
        prefix, _, leaf = n.rpartition(".")
        key = f"{prefix}.qkv" if leaf in ("q_proj", "k_proj", "v_proj") else f"{prefix}.gate_up" if leaf in ("gate_proj", "up_proj") else n
        groups.setdefault(key, []).append(n)
    return list(groups.values())


def pick_group_size(widths: list[int], preferred: tuple[int, ...] = (128, 64, 32, 16)) -> int:
    """The largest preferred group size that divides every linear input width (SmolLM2: 576 and 1536 → 64)."""
    for g in preferred:
        if all(w % g == 0 for w in widths):
            return g
    raise ValueError(f"no group size in {preferred} divides all of {sorted(set(widths))}")


def linear_input_widths(hf_config: dict[str, Any]) -> list[int]:
    """Input widths of a Llama layer's projections: hidden (q/k/v/gate/up), heads × head_dim (o), FFN (down)."""
    hidden = hf_config["hidden_size"]
    head_dim = hf_config.get("head_dim") or hidden // hf_config["num_attention_heads"]
    return [hidden, hf_config["num_attention_heads"] * head_dim, hf_config["intermediate_size"]]


def tensor_bytes(header: dict[str, Any]) -> dict[str, int]:
    """Bytes of every tensor in a parsed safetensors header (``__metadata__`` skipped)."""
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = end - start
    return out


def linear_bytes(sizes: dict[str, int]) -> int:
    """Bytes of all tensors that belong to decoder linear layers (quantization metadata included)."""
    return sum(b for name, b in sizes.items() if LINEAR_RE.match(name))


def linear_params(header: dict[str, Any]) -> int:
    """Parameters of the decoder linear weights of an unquantized checkpoint header."""
    total = 0
    for name, info in header.items():
        if name != "__metadata__" and LINEAR_RE.match(name) and name.endswith(".weight"):
            n = 1
            for d in info["shape"]:
                n *= d
            total += n
    return total


def share_of_bf16(quant_bytes: int, num_params: int) -> float:
    """Quantized bytes as a share of the same parameters stored in bf16 (2 bytes each)."""
    if num_params <= 0:
        raise ValueError("num_params must be positive")
    return quant_bytes / (2 * num_params)
