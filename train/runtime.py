"""Where and in what precision training runs: device, compute dtype, CPU threads."""

from __future__ import annotations

import torch

from lorafleet.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA device when present, else CPU; ``cuda`` without a GPU is a :class:`ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} requested but no CUDA device is available")
    return torch.device(name)


def supports_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls are native here (CUDA compute capability >= 8, or oneDNN bf16 on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_dtype(name: str, method: str, device: torch.device) -> torch.dtype:
    """The compute dtype: ``auto`` is bfloat16 where native (always for QLoRA), else float32."""
    if name == "bfloat16" or (name == "auto" and (method == "qlora" or supports_bf16(device))):
        return torch.bfloat16
    return torch.float32


def set_threads(num_threads: int | None) -> None:
    if num_threads is not None:
        torch.set_num_threads(num_threads)
