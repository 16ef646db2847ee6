"""lorafleet/config.py: configs validate on construction, name the bad field, and are immutable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lorafleet.config import EngineConfig, ServerConfig, lorafleet_home, models_dir
from lorafleet.errors import ConfigError


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dtype", "int4", "dtype must be one of ('float32', 'bfloat16', 'float16'), got 'int4'"),
        ("device", "tpu", "device must be 'auto', 'cpu' or 'cuda[:N]', got 'tpu'"),
        ("block_size", 24, "block_size must be a positive power of two, got 24"),
        ("block_size", 0, "block_size must be a positive power of two, got 0"),
        ("kv_cache_gb", 0.0, "kv_cache_gb must be positive, got 0.0"),
        ("num_kv_blocks", 1, "num_kv_blocks must be at least 2, got 1"),
        ("max_num_seqs", 0, "max_num_seqs must be at least 1, got 0"),
        ("max_num_batched_tokens", 8, "max_num_batched_tokens must be at least block_size (16), got 8"),
        ("max_model_len", 1, "max_model_len must be at least 2, got 1"),
        ("max_loras", -1, "max_loras must be non-negative, got -1"),
        ("max_lora_rank", 0, "max_lora_rank must be positive, got 0"),
        ("num_threads", 0, "num_threads must be positive, got 0"),
    ],
)
def test_engine_config_names_the_bad_field(field: str, value, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        EngineConfig(model="m", **{field: value})
    assert str(e.value) == message
    assert isinstance(e.value, ValueError)


def test_engine_config_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        EngineConfig(model="m", dtype="int4", max_num_seqs=0, max_lora_rank=0)
    message = str(e.value)
    for field in ("dtype", "max_num_seqs", "max_lora_rank"):
        assert field in message
    assert message.count(";") == 2


def test_engine_config_defaults_and_accepted_values() -> None:
    cfg = EngineConfig(model="m")
    assert (cfg.dtype, cfg.block_size, cfg.enable_prefix_caching) == ("bfloat16", 16, True)
    EngineConfig(model="m", device="cuda:1", block_size=32, max_num_batched_tokens=32, max_loras=0, num_kv_blocks=2)


def test_every_engine_field_has_help() -> None:
    for f in dataclasses.fields(EngineConfig):
        assert f.metadata.get("help"), f.name


def test_configs_are_frozen() -> None:
    cfg = EngineConfig(model="m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_num_seqs = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ServerConfig().port = 1  # type: ignore[misc]


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_server_config_port(port: int) -> None:
    with pytest.raises(ConfigError, match=f"port must be in 1..65535, got {port}"):
        ServerConfig(port=port)


def test_server_config_duplicate_adapters() -> None:
    with pytest.raises(ConfigError, match="duplicate adapter names in lora_modules"):
        ServerConfig(lora_modules=(("a", "/x"), ("a", "/y")))
    assert ServerConfig(lora_modules=(("a", "/x"), ("b", "/y"))).lora_modules[1] == ("b", "/y")


def test_home_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path))
    assert lorafleet_home() == tmp_path
    assert models_dir() == tmp_path / "models"
    monkeypatch.delenv("LORAFLEET_HOME")
    assert lorafleet_home() == Path.home() / ".cache" / "lorafleet"
