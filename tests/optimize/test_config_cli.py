"""Optimize configs and CLI: every problem reported at once, one-line errors, inputs never overwritten."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lorafleet.config.optimize import CalibConfig, EvalConfig, KVQuantConfig, PruneConfig, QuantConfig
from lorafleet.errors import ConfigError


def test_quant_config_lists_every_problem(tmp_path) -> None:
    with pytest.raises(ConfigError) as e:
        QuantConfig(model=str(tmp_path), out=tmp_path, scheme="int3", group_size=48, smoothing_strength=2.0,
                    calib=CalibConfig(num_calib_samples=0))
    msg = str(e.value)
    for part in ("scheme must be one of int8, nf4, w4a16, w8a8, int8-engine, got 'int3'", "group_size must be a positive power",
                 "smoothing_strength", "num_calib_samples", "--out must differ from the input"):
        assert part in msg


def test_prune_and_eval_configs() -> None:
    with pytest.raises(ConfigError, match="head_ratio applies to --kind width only"):
        PruneConfig(model="m", out=Path("o"), kind="depth", head_ratio=0.3)
    with pytest.raises(ConfigError, match="nothing to prune"):
        PruneConfig(model="m", out=Path("o"), kind="width", ratio=0.0)
    with pytest.raises(ConfigError, match="kind must be one of depth, width"):
        PruneConfig(model="m", out=Path("o"), kind="sideways")
    with pytest.raises(ConfigError, match="heal_loss must be one of ce, distill, got 'mse'"):
        PruneConfig(model="m", out=Path("o"), heal_loss="mse")
    with pytest.raises(ConfigError, match="heal_samples must be non-negative"):
        PruneConfig(model="m", out=Path("o"), heal_samples=-1)
    with pytest.raises(ConfigError, match="heal_samples and heal_data are two sources"):
        PruneConfig(model="m", out=Path("o"), heal_samples=8, heal_data=Path(__file__))
    with pytest.raises(ConfigError, match="kv_cache_dtype needs --backend engine or vllm"):
        EvalConfig(kv_cache_dtype="int8")
    with pytest.raises(ConfigError, match="vLLM-CPU stores KV as fp8"):
        EvalConfig(backend="vllm", kv_cache_dtype="int8")
    with pytest.raises(ConfigError, match="margin"):
        KVQuantConfig(model="m", out=Path("o"), margin=10)
    assert PruneConfig(model="m", out=Path("o"), kind="width", ratio=0.2).head_ratio == 0.0
    with pytest.raises(ConfigError, match="keep_bf16_share applies to --scheme int8 / nf4 / w4a16 only"):
        QuantConfig(model="m", out=Path("o"), scheme="w8a8", keep_bf16_share=0.1)
    with pytest.raises(ConfigError, match=r"keep_bf16_share must be in \[0, 0.5\)"):
        QuantConfig(model="m", out=Path("o"), scheme="nf4", keep_bf16_share=0.7)
    with pytest.raises(ConfigError, match="nf4_rounding must be one of gptq, nearest, got 'awq'"):
        QuantConfig(model="m", out=Path("o"), scheme="nf4", nf4_rounding="awq")
    assert QuantConfig(model="m", out=Path("o"), scheme="nf4").nf4_rounding == "gptq"


def lorafleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorafleet.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_errors_are_one_line(base_model_path, tmp_path) -> None:
    r = lorafleet("optimize", "quantize", "smollm2-135m-instruct", "--out", str(tmp_path / "x"), "--scheme", "int3")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: scheme must be one of int8, nf4, w4a16, w8a8, int8-engine, got 'int3'"]
    r = lorafleet("optimize", "kv", str(base_model_path), "--out", str(base_model_path))
    assert r.returncode == 2 and "inputs are never overwritten" in r.stderr
    r = lorafleet("optimize", "prune", str(base_model_path), "--out", str(base_model_path / "inside"))
    assert r.returncode == 2 and "overlaps the input checkpoint" in r.stderr
    assert not (base_model_path / "inside").exists()


def test_unsupported_architecture_is_refused(base_model_path, tmp_path) -> None:
    fake = tmp_path / "gpt2"
    fake.mkdir()
    for f in base_model_path.iterdir():
        if f.name != "config.json":
            (fake / f.name).symlink_to(f)
    (fake / "config.json").write_text('{"model_type": "gpt2"}')
    for cmd in (("optimize", "quantize", "--scheme", "int8-engine"), ("optimize", "kv"), ("optimize", "prune")):
        r = lorafleet(*cmd[:2], str(fake), "--out", str(tmp_path / "out"), *cmd[2:])
        assert r.returncode == 2, r.stderr
        assert "supports llama, mistral checkpoints, not 'gpt2'" in r.stderr
    assert not (tmp_path / "out").exists()


def test_every_command_documents_every_flag() -> None:
    for cmd in (("optimize", "quantize"), ("optimize", "kv"), ("optimize", "prune"), ("eval", "ppl"), ("eval", "compare"),
                ("bench", "optimize")):
        r = lorafleet(*cmd, "--help")
        assert r.returncode == 0, r.stderr
        assert "--help" in r.stdout
