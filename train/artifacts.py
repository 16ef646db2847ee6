"""What a run leaves on disk, written atomically: the servable adapter, its manifest, JSON and text files."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lorafleet import atomic
from lorafleet.atomic import atomic_dir, write_json
from lorafleet.config.train import VLLM_LORA_RANKS
from lorafleet.errors import ArtifactError

ADAPTER = "adapter"
MERGED = "merged"
MANIFEST = "manifest.json"
REPORT = "report.json"
LOSS_PLOT = "loss.png"


def remove_stale_temporaries(run_dir: Path) -> None:
    """Drop ``.tmp-*`` leftovers of a killed run (they are never read)."""
    for root in (run_dir, run_dir / "checkpoints"):
        atomic.remove_stale_temporaries(root)


def save_adapter(model: Any, final: Path, base_model: Path, adapter_name: str) -> Path:
    """Save the PEFT adapter ``adapter_name`` of ``model`` to ``final`` as safetensors and check it is servable."""
    with atomic_dir(final) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True, selected_adapters=[adapter_name])
        cfg_file = tmp / "adapter_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["base_model_name_or_path"] = str(base_model)  # a path users (and `train merge`) can follow
        cfg_file.write_text(json.dumps(cfg, indent=2))
        problems = adapter_problems(tmp)
        if problems:
            raise ArtifactError(f"saved adapter is not servable: {'; '.join(problems)}")
    return final


def adapter_problems(path: Path) -> list[str]:
    """What would stop vLLM or our engine from loading the adapter at ``path`` (DoRA aside)."""
    cfg = json.loads((path / "adapter_config.json").read_text())
    problems = []
    if not (path / "adapter_model.safetensors").is_file():
        problems.append("no adapter_model.safetensors")
    if list(path.glob("*.bin")):
        problems.append("pickle .bin weights present")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save {cfg['modules_to_save']}")
    if not cfg.get("use_dora") and cfg.get("r") not in VLLM_LORA_RANKS:
        problems.append(f"rank {cfg.get('r')} is not one of vLLM's {VLLM_LORA_RANKS}")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias '{cfg.get('bias')}'")
    return problems


@dataclass(frozen=True, slots=True)
class AdapterManifest:
    """``manifest.json`` of a run: what the adapter is and what it was trained on."""

    kind: str  #: "sft" or "dpo"
    base_model: str  #: checkpoint directory of the base
    method: str  #: lora | qlora | dora
    rank: int
    alpha: float
    target_modules: list[str]
    chat_template_sha256: str  #: lorafleet.chat.template_hash of the base's tokenizer
    adapter: str  #: adapter dir, relative to the run dir
    merged: str | None  #: merged checkpoint dir, relative to the run dir
    servable_as_adapter: bool  #: False for DoRA (vLLM and our engine serve plain LoRA only)


def adapter_manifest(kind: str, adapter_dir: Path, method: str, template_sha: str, merged: bool) -> AdapterManifest:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    targets = cfg.get("target_modules")
    return AdapterManifest(kind, cfg["base_model_name_or_path"], method, int(cfg["r"]), float(cfg["lora_alpha"]),
                           sorted(targets) if isinstance(targets, list) else [str(targets)], template_sha,
                           ADAPTER, MERGED if merged else None, not cfg.get("use_dora"))


def write_manifest(run_dir: Path, manifest: AdapterManifest) -> None:
    write_json(run_dir / MANIFEST, asdict(manifest))
