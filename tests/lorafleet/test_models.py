"""lorafleet/models.py: provisioning is idempotent, listing reads what is on disk, unknown names fail cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.config import models_dir
from lorafleet.errors import ArtifactError, ConfigError, NotFoundError
from lorafleet.models import KNOWN_MODELS, PackagedModel, find_gguf, list_models, pull

MODEL = "smollm2-135m-instruct"


def test_pull_is_idempotent(base_model_path: Path) -> None:
    weights = base_model_path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = pull(MODEL)
    assert again == base_model_path == models_dir() / MODEL
    assert weights.stat().st_mtime_ns == before, "a second pull must not convert again"
    assert not [p for p in models_dir().iterdir() if p.name.startswith(f".{MODEL}-")], "temporary dirs left behind"


def test_pulled_checkpoint_is_complete_fp32(base_model_path: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "lorafleet_source.json"):
        assert (base_model_path / name).is_file(), name
    cfg = json.loads((base_model_path / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert "quantization_config" not in cfg, "GGUF quantization config must be dropped"
    assert json.loads((base_model_path / "lorafleet_source.json").read_text())["dtype"] == "float32"


def test_list_models_shows_the_pulled_model(base_model_path: Path) -> None:
    entries = {e.name: e for e in list_models()}
    entry = entries[MODEL]
    assert entry.path == base_model_path
    assert entry.dtype == "float32"
    assert entry.size_bytes > 400 * 2**20  # 135M params in fp32


def test_list_models_reads_only_complete_visible_checkpoints(tmp_path: Path) -> None:
    assert list_models(tmp_path / "missing") == []
    assert list_models(tmp_path) == []
    (tmp_path / "no-config").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "config.json").write_text("{}")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    (legacy / "model.safetensors").write_bytes(b"x" * 100)
    entries = list_models(tmp_path)
    assert [(e.name, e.dtype) for e in entries] == [("legacy", "bfloat16")]
    assert entries[0].size_bytes == len(json.dumps({"torch_dtype": "bfloat16"})) + 100


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(NotFoundError) as e:
        pull("no-such-model")
    assert str(e.value) == f"unknown model 'no-such-model'; known: {', '.join(sorted(KNOWN_MODELS))}"
    assert isinstance(e.value, KeyError)


def test_bad_dtype_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="dtype must be one of .* got 'int4'"):
        pull(MODEL, dtype="int4")


def test_find_gguf_locates_the_packaged_file() -> None:
    model = KNOWN_MODELS[MODEL]
    path = find_gguf(model)
    assert path.is_file() and path.name == model.gguf_suffix


def test_find_gguf_without_the_package_says_how_to_install() -> None:
    missing = PackagedModel("m", "lorafleet-test-no-such-distribution", "m.gguf", "pip install lorafleet-test-no-such-distribution")
    with pytest.raises(ArtifactError, match="run `pip install lorafleet-test-no-such-distribution`"):
        find_gguf(missing)
