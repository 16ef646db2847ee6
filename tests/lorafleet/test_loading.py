"""lorafleet/loading.py: broken checkpoints are refused with one-line ArtifactErrors that name the path.

Broken copies are built in tmp dirs from the real checkpoint's small files; the 500 MiB weights file is
hard-linked (or symlinked across filesystems) only where a test needs valid weights.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from lorafleet.config import models_dir
from lorafleet.errors import ArtifactError
from lorafleet.loading import check_checkpoint, check_safetensors, load_hf_config, load_tokenizer, resolve_model

WEIGHTS = "model.safetensors"


def broken_copy(src: Path, dst: Path, *, drop: tuple[str, ...] = (), link_weights: bool = False) -> Path:
    """Copy ``src``'s small files to ``dst`` except ``drop``; link the weights file only if asked."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name in drop or f.name == WEIGHTS:
            continue
        shutil.copy(f, dst / f.name)
    if link_weights and WEIGHTS not in drop:
        try:
            os.link(src / WEIGHTS, dst / WEIGHTS)
        except OSError:
            (dst / WEIGHTS).symlink_to(src / WEIGHTS)
    return dst


def raises_one_line(path: Path) -> pytest.ExceptionInfo:
    with pytest.raises(ArtifactError) as e:
        check_checkpoint(path)
    message = str(e.value)
    assert "\n" not in message, message
    return e


def test_the_real_checkpoint_passes(base_model_path: Path) -> None:
    check_checkpoint(base_model_path)
    assert resolve_model("smollm2-135m-instruct") == models_dir() / "smollm2-135m-instruct"
    assert resolve_model(str(base_model_path)) == base_model_path
    assert load_hf_config(base_model_path)["num_hidden_layers"] == 30
    assert load_tokenizer(base_model_path).decode([504, 3575, 282, 4649, 314]) == "The capital of France is"


def test_unknown_name_suggests_pull() -> None:
    with pytest.raises(ArtifactError, match=r"model 'no-such-model' not found.*lorafleet models pull no-such-model"):
        resolve_model("no-such-model")


def test_missing_directory(tmp_path: Path) -> None:
    e = raises_one_line(tmp_path / "nope")
    assert str(e.value) == f"{tmp_path / 'nope'}: checkpoint directory does not exist"


def test_missing_config(base_model_path: Path, tmp_path: Path) -> None:
    path = broken_copy(base_model_path, tmp_path / "ckpt", drop=("config.json",))
    assert str(raises_one_line(path).value) == f"{path}: missing config.json"


def test_config_not_json(base_model_path: Path, tmp_path: Path) -> None:
    path = broken_copy(base_model_path, tmp_path / "ckpt")
    (path / "config.json").write_text("{ not json")
    assert str(raises_one_line(path).value).startswith(f"{path / 'config.json'}: not valid JSON")


def test_no_safetensors_refuses_pickle(base_model_path: Path, tmp_path: Path) -> None:
    path = broken_copy(base_model_path, tmp_path / "ckpt")
    (path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    message = str(raises_one_line(path).value)
    assert message.startswith(f"{path}: no *.safetensors weights")
    assert "pickle" in message


def test_truncated_safetensors(base_model_path: Path, tmp_path: Path) -> None:
    path = broken_copy(base_model_path, tmp_path / "ckpt")
    with open(base_model_path / WEIGHTS, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        f.seek(0)
        head = f.read(8 + header_len + 1000)  # the header plus the first few tensor bytes
    (path / WEIGHTS).write_bytes(head)
    message = str(raises_one_line(path).value)
    assert message.startswith(f"{path / WEIGHTS}: truncated safetensors file ({len(head)} bytes")


def _header(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


CORRUPT_FILES = {
    "empty": b"",
    "short": b"\x01\x02",
    "header-past-end": struct.pack("<Q", 10**9) + b"{}",
    "header-not-json": _header(b"\xff\xfe{"),
    "header-a-list": _header(b"[1, 2]"),
    "tensor-without-offsets": _header(json.dumps({"w": {"dtype": "F32", "shape": [1]}}).encode()),
}


@pytest.mark.parametrize("content", CORRUPT_FILES.values(), ids=CORRUPT_FILES.keys())
def test_corrupt_safetensors_header(tmp_path: Path, content: bytes) -> None:
    file = tmp_path / WEIGHTS
    file.write_bytes(content)
    with pytest.raises(ArtifactError) as e:
        check_safetensors(file)
    assert str(e.value).startswith(f"{file}: corrupt safetensors file")
    assert "\n" not in str(e.value)


def test_missing_tokenizer(base_model_path: Path, tmp_path: Path) -> None:
    path = broken_copy(base_model_path, tmp_path / "ckpt", drop=("tokenizer.json", "tokenizer.model"), link_weights=True)
    assert str(raises_one_line(path).value) == f"{path}: missing tokenizer (one of tokenizer.json, tokenizer.model)"


def test_complete_copy_passes(base_model_path: Path, tmp_path: Path) -> None:
    path = broken_copy(base_model_path, tmp_path / "ckpt", link_weights=True)
    check_checkpoint(path)
    assert json.loads((path / "config.json").read_text()) == load_hf_config(base_model_path)
