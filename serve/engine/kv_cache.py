"""The paged KV cache of each layer, stored in the model dtype or quantized to int8 / fp8 (e4m3).

Quantized storage uses one symmetric scale per layer and KV head for K and one for V: ``x ≈ stored × scale``.
Scales come from the checkpoint, in order of preference:

1. ``kv_scales.json`` (written by ``lorafleet optimize kv``): the calibrated absolute maxima ``k_amax`` /
   ``v_amax`` ``[num_layers][num_kv_heads]`` of the post-RoPE keys and the values; scale = amax / qmax
   of the storage dtype (127 for int8, 448 for fp8), so one calibration serves both dtypes;
2. vLLM's per-layer ``model.layers.{i}.self_attn.{k,v}_scale`` fp8 scalars (llm-compressor's
   ``kv_cache_scheme``), broadcast over heads (amax = scale × 448);
3. none: fp8 uses scale 1.0 (vLLM's default); int8 is refused, its range needs a calibration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lorafleet.errors import ArtifactError
from serve.engine.kv_math import KV_QMAX, kv_scale

KV_SCALES_FILE = "kv_scales.json"
TORCH_KV_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


@dataclass(frozen=True, slots=True)
class LayerKV:
    """One layer's cache: ``k``/``v`` ``[num_slots, num_kv_heads, head_dim]`` (slot = block × block_size + i).

    ``k_scale``/``v_scale`` ``[num_kv_heads]`` fp32 are the dequantization scales of quantized storage and
    ``None`` when K/V are stored in the model dtype.
    """

    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None

    @property
    def is_quantized(self) -> bool:
        return self.k_scale is not None


def quantize(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` ``[n, kv_heads, head_dim]`` → ``round(x / scale)`` saturated to the range of ``dtype``."""
    y = x.float() / scale[:, None]
    if dtype == torch.int8:
        return y.round_().clamp_(-127, 127).to(torch.int8)
    return y.clamp_(-448.0, 448.0).to(dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Stored ``[..., kv_heads, head_dim]`` → ``q × scale`` in ``dtype`` (the model dtype)."""
    return (q.float() * scale[:, None]).to(dtype)


def write(kv: LayerKV, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
    """Store new keys/values ``[num_tokens, kv_heads, head_dim]`` at ``slots``, quantizing if needed."""
    if not kv.is_quantized:
        kv.k.index_copy_(0, slots, k)
        kv.v.index_copy_(0, slots, v)
        return
    # index_copy_ has no fp8 kernel on CPU; the bytes are copied through a uint8 view instead.
    for cache, x, scale in ((kv.k, k, kv.k_scale), (kv.v, v, kv.v_scale)):
        cache.view(torch.uint8).index_copy_(0, slots, quantize(x, scale, cache.dtype).view(torch.uint8))


def read(kv: LayerKV, slots: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values at ``slots`` (any shape ``S``) → two ``[*S, kv_heads, head_dim]`` tensors in ``dtype``."""
    if not kv.is_quantized:
        return kv.k[slots], kv.v[slots]
    return dequantize(kv.k[slots], kv.k_scale, dtype), dequantize(kv.v[slots], kv.v_scale, dtype)


def round_trip(kv: LayerKV, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``k``/``v`` as attention will see them once stored (quantized and back); unchanged when not quantized."""
    if not kv.is_quantized:
        return k, v
    return (dequantize(quantize(k, kv.k_scale, kv.k.dtype), kv.k_scale, k.dtype),
            dequantize(quantize(v, kv.v_scale, kv.v.dtype), kv.v_scale, v.dtype))


def read_amax(checkpoint: Path, num_layers: int, num_kv_heads: int) -> tuple[list[list[float]], list[list[float]]] | None:
    """Calibrated K and V absolute maxima ``[num_layers][num_kv_heads]`` of a checkpoint, or ``None``."""
    sidecar = checkpoint / KV_SCALES_FILE
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text())
            k_amax, v_amax = data["k_amax"], data["v_amax"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ArtifactError(f"{sidecar}: unreadable KV scales ({type(e).__name__}: {e})") from None
        for name, table in (("k_amax", k_amax), ("v_amax", v_amax)):
            if len(table) != num_layers or any(len(row) != num_kv_heads for row in table):
                raise ArtifactError(f"{sidecar}: {name} must be [{num_layers}][{num_kv_heads}] (layers × KV heads)")
        return k_amax, v_amax
    from safetensors import safe_open

    k_amax: list[list[float]] = []
    v_amax: list[list[float]] = []
    found: dict[str, float] = {}
    for file in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for name in f.keys():
                if name.endswith(("self_attn.k_scale", "self_attn.v_scale")):
                    found[name] = float(f.get_tensor(name).float().max())
    if not found:
        return None
    for i in range(num_layers):
        try:
            k, v = (found[f"model.layers.{i}.self_attn.{n}_scale"] * KV_QMAX["fp8"] for n in "kv")
        except KeyError:
            raise ArtifactError(f"{checkpoint}: k_scale/v_scale missing for layer {i}") from None
        k_amax.append([k] * num_kv_heads)
        v_amax.append([v] * num_kv_heads)
    return k_amax, v_amax


def allocate(checkpoint: Path, kv_cache_dtype: str, num_layers: int, num_slots: int, num_kv_heads: int, head_dim: int,
             model_dtype: torch.dtype, device: torch.device) -> list[LayerKV]:
    """Zeroed caches for every layer, with per-head scales when ``kv_cache_dtype`` is int8 or fp8."""
    shape = (num_slots, num_kv_heads, head_dim)
    if kv_cache_dtype == "auto":
        return [LayerKV(torch.zeros(shape, dtype=model_dtype, device=device),
                        torch.zeros(shape, dtype=model_dtype, device=device)) for _ in range(num_layers)]
    amax = read_amax(checkpoint, num_layers, num_kv_heads)
    if amax is None:
        if kv_cache_dtype == "int8":
            raise ArtifactError(f"{checkpoint}: --kv-cache-dtype int8 needs calibrated KV scales "
                                f"(run `lorafleet optimize kv` on this checkpoint)")
        amax = ([[KV_QMAX["fp8"]] * num_kv_heads] * num_layers,) * 2  # scale 1.0, as vLLM without scales
    dtype = TORCH_KV_DTYPES[kv_cache_dtype]

    def scales(row: list[float]) -> torch.Tensor:
        return torch.tensor([kv_scale(a, kv_cache_dtype) for a in row], dtype=torch.float32, device=device)

    return [LayerKV(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device),
                    scales(k_row), scales(v_row)) for k_row, v_row in zip(*amax)]
