"""LoRA and DoRA: a frozen base in the compute dtype with PEFT low-rank adapters on the chosen linear layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lorafleet.config.train import ALL_LINEAR, TrainConfig


def peft_config(cfg: TrainConfig) -> Any:
    """PEFT ``LoraConfig`` for ``cfg``: no bias, no ``modules_to_save`` (vLLM and our engine refuse both)."""
    from peft import LoraConfig

    targets: Any = ALL_LINEAR if ALL_LINEAR in cfg.target_modules else list(cfg.target_modules)
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      bias="none", use_dora=cfg.method == "dora", task_type="CAUSAL_LM")


def load_base(model_dir: Path, dtype: torch.dtype, device: torch.device) -> Any:
    """The base causal LM with frozen weights stored in ``dtype`` on ``device``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    model.requires_grad_(False)
    return model
