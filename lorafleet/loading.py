"""Resolve and validate checkpoints, and load their HF config and tokenizer.

A model reference is either a provisioned name (``smollm2-135m-instruct``) or a path to any local HF
checkpoint directory. Validation raises :class:`ArtifactError` with one line naming the path and what is wrong.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from lorafleet.config import models_dir
from lorafleet.errors import ArtifactError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def resolve_model(ref: str | Path) -> Path:
    """Return the checkpoint directory for a model name or path, validated with :func:`check_checkpoint`."""
    path = Path(ref).expanduser()
    if not path.exists() and isinstance(ref, str) and "/" not in ref:
        path = models_dir() / ref
        if not path.exists():
            raise ArtifactError(
                f"model '{ref}' not found: not a directory and not provisioned in {models_dir()} "
                f"(run `lorafleet models pull {ref}`)"
            )
    check_checkpoint(path)
    return path


def check_checkpoint(path: Path) -> None:
    """Raise :class:`ArtifactError` unless ``path`` holds config, tokenizer and readable safetensors weights."""
    if not path.is_dir():
        raise ArtifactError(f"{path}: checkpoint directory does not exist")
    if not (path / "config.json").is_file():
        raise ArtifactError(f"{path}: missing config.json")
    try:
        json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path / 'config.json'}: not valid JSON ({e.msg} at line {e.lineno})") from None
    weights = safetensors_files(path)
    if not weights:
        raise ArtifactError(f"{path}: no *.safetensors weights (pickle .bin checkpoints are refused)")
    for w in weights:
        check_safetensors(w)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ArtifactError(f"{path}: missing tokenizer (one of {', '.join(TOKENIZER_FILES)})")


def safetensors_files(path: Path) -> list[Path]:
    """The ``*.safetensors`` files of a checkpoint directory, sorted."""
    return sorted(path.glob("*.safetensors"))


def check_safetensors(file: Path) -> None:
    """Check that a safetensors file's header parses and its tensors fit in the file (cheap; reads the header only)."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError("header length exceeds file size")
            header = json.loads(f.read(header_len))
        # A header that parses as JSON can still have the wrong shape (not a dict, entries without offsets).
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError, IndexError) as e:
        raise ArtifactError(f"{file}: corrupt safetensors file ({type(e).__name__}: {e})") from None
    if 8 + header_len + end > size:
        raise ArtifactError(f"{file}: truncated safetensors file ({size} bytes, header needs {8 + header_len + end})")


def load_hf_config(path: Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as a dict."""
    return json.loads((path / "config.json").read_text())


def load_tokenizer(path: Path) -> Any:
    """The checkpoint's HF tokenizer (fast when available)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_state_dict(path: Path) -> dict[str, Any]:
    """All tensors of a checkpoint's safetensors files, merged into one dict (CPU)."""
    from safetensors.torch import load_file

    state: dict[str, Any] = {}
    for w in safetensors_files(path):
        state.update(load_file(w))
    return state
