"""lorafleet/config/train.py and train/config_file.py: validation reports every problem, YAML + flag
precedence, the saved effective config reloads equal, and every example config in train/configs/ parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafleet.config.train import DpoConfig, MergeConfig, SftConfig, TrainBenchConfig, from_mapping, to_mapping
from lorafleet.errors import ConfigError
from train.config_file import dump_config, load_config, with_absolute_paths

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"data": "d.jsonl", "output": "out"}


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        SftConfig(data=Path("d"), output=Path("o"), rank=7, lr=0, dropout=1.0, method="ia3", batch_size=0, dtype="fp8",
                  target_modules=("q_proj", "bad name"))
    message = str(e.value)
    for part in ("rank must be one of vLLM's supported LoRA ranks", "lr must be positive", "dropout must be in [0, 1)",
                 "method must be one of", "batch_size must be at least 1", "dtype must be one of",
                 "target_modules must be module names"):
        assert part in message, part
    assert isinstance(e.value, ValueError)


def test_dora_may_use_any_rank_and_qlora_needs_a_bf16_compute_dtype() -> None:
    assert SftConfig(data=Path("d"), output=Path("o"), method="dora", rank=12).rank == 12
    with pytest.raises(ConfigError, match="not a QLoRA compute dtype"):
        SftConfig(data=Path("d"), output=Path("o"), method="qlora", dtype="float32")
    with pytest.raises(ConfigError, match="beta must be positive"):
        DpoConfig(data=Path("d"), output=Path("o"), beta=0)
    assert DpoConfig(data=Path("d"), output=Path("o")).lr == 5e-5 and SftConfig(data=Path("d"), output=Path("o")).lr == 2e-4
    with pytest.raises(ConfigError, match="dtype must be one of"):
        MergeConfig(adapter=Path("a"), output=Path("o"), dtype="int8")
    with pytest.raises(ConfigError, match="min_tokens .* must not exceed max_tokens"):
        TrainBenchConfig(json_path=Path("x.json"), min_tokens=50, max_tokens=10)


def test_from_mapping_converts_and_rejects() -> None:
    cfg = from_mapping(SftConfig, {**REQUIRED, "target_modules": "q_proj, v_proj", "alpha": 16, "max_steps": None})
    assert cfg.target_modules == ("q_proj", "v_proj") and cfg.alpha == 16.0 and cfg.data == Path("d.jsonl")
    with pytest.raises(ConfigError) as e:
        from_mapping(SftConfig, {"output": "o", "rank": "8", "packing": "yes", "colour": 1}, source="x.yaml")
    message = str(e.value)
    assert "x.yaml: unknown setting 'colour'" in message and "data is required" in message
    assert "rank: expected an integer, got '8'" in message and "packing: expected true or false" in message
    assert from_mapping(SftConfig, to_mapping(cfg)) == cfg


def test_yaml_then_flags_precedence_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "run.yaml"
    path.write_text("data: data/train.jsonl\noutput: /abs/out\nrank: 8\nlr: 1.0e-3\npacking: true\n")
    cfg = load_config(SftConfig, path, {"rank": 32})
    assert cfg.rank == 32 and cfg.lr == 1e-3 and cfg.packing  # the flag wins, the file fills the rest
    assert cfg.data == tmp_path / "cfg" / "data" / "train.jsonl" and cfg.output == Path("/abs/out")
    assert load_config(SftConfig, path, {"data": "other.jsonl"}).data == Path("other.jsonl")  # flags: relative to cwd


def test_effective_config_round_trips_with_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = with_absolute_paths(DpoConfig(data=Path("p.jsonl"), output=Path("out"), beta=0.3,
                                        init_adapter=Path("sft/adapter"), max_steps=7))
    assert cfg.data == tmp_path / "p.jsonl" and cfg.init_adapter == tmp_path / "sft" / "adapter"
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / "elsewhere" / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(DpoConfig, path, {}) == cfg


@pytest.mark.parametrize("path", sorted((ROOT / "train" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_parse(path: Path) -> None:
    cls = DpoConfig if path.name.startswith("dpo") else SftConfig
    cfg = load_config(cls, path, REQUIRED)
    assert cfg.method in ("lora", "qlora", "dora")


def test_bad_yaml_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("rank: [8\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(SftConfig, path, REQUIRED)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(SftConfig, path, REQUIRED)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SftConfig, tmp_path / "missing.yaml", REQUIRED)
