"""QLoRA (Dettmers et al. 2023): the base quantized to 4-bit NF4 with double quantization and a bfloat16
compute dtype through bitsandbytes, LoRA adapters in float32 on top.

CPU trap: bitsandbytes repacks a ``Linear4bit`` weight for its inference kernel the first time the module
runs in eval mode on a no-grad input (``generate()``, an ``eval()`` validation pass). That kernel has no
backward, so training afterwards silently produces wrong gradients. lorafleet never calls ``eval()`` on a
training model (see :func:`train.forward.inference`) and :func:`check_trainable` refuses a repacked model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lorafleet.errors import ArtifactError


def quantization_config(compute_dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def load_base(model_dir: Path, dtype: torch.dtype, device: torch.device) -> Any:
    """The base with every linear layer of the blocks in 4-bit NF4 on ``device``, all weights frozen.

    Unlike PEFT's ``prepare_model_for_kbit_training`` the embeddings and norms stay in the compute dtype
    instead of float32: the upcast guards float16 training, while here the compute dtype is bfloat16 and
    Llama-style RMSNorm already normalizes in float32; an upcast tied embedding (49k x 576 for SmolLM2)
    would hold more memory than all the 4-bit blocks together.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, quantization_config=quantization_config(dtype),
                                                 device_map={"": str(device)})
    model.requires_grad_(False)
    return model


def is_repacked(module: torch.nn.Module) -> bool:
    """Whether a bitsandbytes 4-bit layer holds weights repacked for CPU inference (no backward)."""
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def check_trainable(model: torch.nn.Module) -> None:
    """Raise :class:`ArtifactError` if any 4-bit layer was repacked by an inference pass (see module doc)."""
    repacked = [name for name, m in model.named_modules() if is_repacked(m)]
    if repacked:
        raise ArtifactError(f"{len(repacked)} 4-bit layers (e.g. {repacked[0]}) were repacked for CPU inference by an "
                            "eval-mode forward; training through them gives wrong gradients. Reload the model.")
