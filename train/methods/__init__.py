"""Fine-tuning methods: how the base is loaded (full precision or 4-bit) and which adapter goes on top.

``build_model`` is the one entry point: it loads the base for ``cfg.method`` (``lora``/``dora``: frozen weights
in the compute dtype; ``qlora``: 4-bit NF4), then adds a fresh PEFT adapter or continues ``cfg.init_adapter``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lorafleet.config.train import TrainConfig
from lorafleet.errors import ArtifactError
from train.methods import lora, qlora

#: Adapter name PEFT trains and saves.
TRAINED = "default"
#: Frozen copy of ``--init-adapter`` used as the DPO reference.
REFERENCE = "reference"

_LOADERS = {"lora": lora.load_base, "dora": lora.load_base, "qlora": qlora.load_base}


def build_model(cfg: TrainConfig, model_dir: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """The PEFT model to train: base per ``cfg.method``, adapter fresh (seeded by the caller) or from ``init_adapter``."""
    from peft import PeftModel, get_peft_model

    base = _LOADERS[cfg.method](model_dir, dtype, device)
    if cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.init_adapter is None:
        model = get_peft_model(base, lora.peft_config(cfg))
    else:
        check_init_adapter(cfg)
        model = PeftModel.from_pretrained(base, cfg.init_adapter, adapter_name=TRAINED, is_trainable=True)
    # Adapter weights are float32 master weights whatever the base dtype. With a bfloat16 base the forward runs
    # under autocast (train.forward), so PEFT must not cast adapter inputs up to float32: that would keep a
    # float32 copy of every adapted layer's input for backward (measured: 5.6 -> 4.0 GB of activations for
    # 2 x 1024 tokens of SmolLM2-135M, and twice as fast).
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if dtype == torch.bfloat16:
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    model.train()  # from_pretrained returns eval mode; see train.methods.qlora for why that matters
    if cfg.method == "qlora":
        qlora.check_trainable(model)
    return model


def check_init_adapter(cfg: TrainConfig) -> None:
    """``--init-adapter`` must be a PEFT LoRA dir whose DoRA flag matches ``--method``."""
    path = cfg.init_adapter
    assert path is not None
    if not (path / "adapter_config.json").is_file():
        raise ArtifactError(f"--init-adapter {path}: no adapter_config.json (not a PEFT adapter directory)")
    adapter_cfg = json.loads((path / "adapter_config.json").read_text())
    if adapter_cfg.get("peft_type", "LORA") != "LORA":
        raise ArtifactError(f"--init-adapter {path}: peft_type {adapter_cfg.get('peft_type')} is not LORA")
    if bool(adapter_cfg.get("use_dora")) != (cfg.method == "dora"):
        kind = "a DoRA" if adapter_cfg.get("use_dora") else "a plain LoRA"
        raise ArtifactError(f"--init-adapter {path} is {kind} adapter but --method is {cfg.method}")


def add_reference_adapter(model: Any, path: Path) -> None:
    """Load a frozen copy of the adapter at ``path`` as the DPO reference (the base plus that adapter)."""
    model.load_adapter(path, adapter_name=REFERENCE, is_trainable=False)
    model.set_adapter(TRAINED)


def trainable_parameters(model: Any) -> dict[str, torch.Tensor]:
    """Name -> parameter of every weight the optimizer updates (the trained adapter's)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
