"""``lorafleet train merge``: fold a LoRA or DoRA adapter into its base, reloaded in full precision.

The base is always reloaded from its checkpoint in float32 (never the 4-bit weights a QLoRA run trained on),
the adapter merged with PEFT's ``merge_and_unload``, and the result saved as an HF safetensors checkpoint
with the base's tokenizer, chat template and generation config, so `lorafleet serve` and vLLM load it as is.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console

from lorafleet.config.train import MergeConfig
from lorafleet.errors import ArtifactError, ConfigError
from lorafleet.loading import check_checkpoint, load_tokenizer, resolve_model
from lorafleet.atomic import atomic_dir
from train.artifacts import ADAPTER

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run(cfg: MergeConfig) -> Path:
    """Merge per ``cfg``; returns the merged checkpoint directory."""
    adapter_dir = find_adapter(cfg.adapter)
    base = resolve_model(cfg.model) if cfg.model else _adapter_base(adapter_dir)
    if cfg.output.exists():
        raise ConfigError(f"--output {cfg.output} already exists; choose a new directory")
    out = merge_adapter(adapter_dir, base, cfg.output, cfg.dtype, Console(stderr=True))
    print(out)
    return out


def find_adapter(path: Path) -> Path:
    """``path`` itself if it is a PEFT adapter dir, else the ``adapter/`` of a `lorafleet train` run dir."""
    for candidate in (path, path / ADAPTER):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise ArtifactError(f"{path}: neither a PEFT adapter dir nor a run dir with {ADAPTER}/adapter_config.json")


def _adapter_base(adapter_dir: Path) -> Path:
    ref = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not ref:
        raise ConfigError(f"{adapter_dir}: adapter_config.json names no base model; pass --model")
    return resolve_model(ref)


def merge_adapter(adapter_dir: Path, base: Path, out: Path, dtype: str, console: Console) -> Path:
    """Write ``base`` + ``adapter_dir`` merged into ``out`` (atomically) with weights in ``dtype``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    console.print(f"merging {adapter_dir} into {base} (float32), saving {dtype}")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    try:
        merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as e:
        raise ArtifactError(f"cannot apply adapter {adapter_dir} to {base}: {e}") from None
    merged = merged.to(_DTYPES[dtype])
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(base).save_pretrained(tmp)
        check_checkpoint(tmp)
    return out
