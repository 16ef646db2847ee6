"""Resume checkpoints: everything needed to continue a run exactly where it stopped.

``checkpoints/step-00000050/`` holds the trained adapter weights (``adapter.safetensors``) and ``state.pt``:
optimizer and scheduler state, the torch RNG states (dropout) and the loop state (step, token count,
curves). Each checkpoint is written to a temporary directory and renamed, so a kill at any moment leaves
either the previous checkpoints or a complete new one, never a torn one.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch

from lorafleet.atomic import atomic_dir

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / "state.pt").is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically and remove all but the newest ``keep``."""
    from safetensors.torch import save_file

    final = run_dir / CHECKPOINTS / f"step-{step:08d}"
    with atomic_dir(final) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "adapter.safetensors"))
        torch.save(state, tmp / "state.pt")
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(adapter weights, state) of a checkpoint written by :func:`save_checkpoint`."""
    from safetensors.torch import load_file

    return load_file(str(path / "adapter.safetensors")), torch.load(path / "state.pt", weights_only=True)


def rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
