"""Synthetic artifacts for tests, benchmarks and smoke checks: PEFT LoRA adapters with random (non-zero)
weights for a real base checkpoint. Made with PEFT itself, so the files are exactly what PEFT, vLLM and
our engine load."""

from __future__ import annotations

from pathlib import Path

from lorafleet.atomic import atomic_dir
from lorafleet.errors import ArtifactError

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_random_lora_adapter(
    base: Path,
    out_dir: Path,
    *,
    rank: int = 8,
    alpha: int = 16,
    seed: int = 0,
    std: float = 0.02,
    target_modules: tuple[str, ...] = ALL_LINEAR,
) -> Path:
    """Write a PEFT LoRA adapter for ``base`` with ``lora_A``/``lora_B`` drawn from N(0, std²) into ``out_dir``.

    PEFT initialises ``lora_B`` to zero (a no-op adapter); here both are random so the adapter changes the
    model's outputs. The directory is written atomically.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if out_dir.exists():
        raise ArtifactError(f"{out_dir} already exists; refusing to overwrite")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.0, bias="none",
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    with atomic_dir(out_dir) as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        cfg_file = tmp / "adapter_config.json"
        # Record the base as a path users can follow; PEFT writes the model's name_or_path.
        import json

        data = json.loads(cfg_file.read_text())
        data["base_model_name_or_path"] = str(base)
        cfg_file.write_text(json.dumps(data, indent=2))
    return out_dir
