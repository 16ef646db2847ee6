"""Fixtures of the backend tests: adapter directories as an engine would receive them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest


def write_adapter_dir(path: Path, rank: int = 8) -> Path:
    """A PEFT-shaped adapter directory: adapter_config.json plus a (tensor-less) safetensors file. Enough for
    the protocol fakes, which check the config but hold no weights."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 16, "peft_type": "LORA",
                                                          "target_modules": ["q_proj", "v_proj"]}))
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    (path / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return path


@pytest.fixture
def adapter_dir(tmp_path) -> Callable[..., Path]:
    """``adapter_dir(name, rank=8)``: a fresh adapter directory under tmp_path."""
    return lambda name, rank=8: write_adapter_dir(tmp_path / name, rank)
