"""Fixtures that put a test in the full tier (tests/tiers.py maps each name to its marker), each giving the test
what it needs for that kind of work: another engine's venv, a CLI runner for long jobs, a temporary results path.

Loaded by tests/conftest.py as a plugin. Under ``make test-full`` (``LORAFLEET_REQUIRE_VLLM=1``) a missing venv
fails the test; a bare ``pytest`` skips it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.train.helpers import run_cli
from tests.vllm_support import REQUIRE_VLLM

ROOT = Path(__file__).resolve().parents[1]


def _side_venv(name: str, make_target: str) -> Path:
    python = ROOT / name / "bin" / "python"
    if not python.exists():
        if REQUIRE_VLLM:
            pytest.fail(f"LORAFLEET_REQUIRE_VLLM=1 but {python} is missing (make {make_target})")
        pytest.skip(f"no {name} (make {make_target})")
    return python


@pytest.fixture(scope="session")
def litellm_python() -> Path:
    """The LiteLLM proxy venv's python (``make litellm-venv``)."""
    return _side_venv(".venv-litellm", "litellm-venv")


@pytest.fixture(scope="session")
def llmcompressor_python() -> Path:
    """The llm-compressor venv's python (``make llmcompressor-venv``)."""
    return _side_venv(".venv-llmcompressor", "llmcompressor-venv")


@pytest.fixture(scope="session")
def lmeval_python() -> Path:
    """The lm-evaluation-harness venv's python (``make lmeval-venv``)."""
    return _side_venv(".venv-lmeval", "lmeval-venv")


@pytest.fixture(scope="session")
def train_cli() -> Callable[..., subprocess.CompletedProcess]:
    """``train_cli(*args, timeout=900)``: runs ``lorafleet ARGS`` for a training job (``train sft``, ``train dpo``,
    a resume ...) and asserts it exits 0 (tests/train/helpers.py's ``run_cli``)."""
    return run_cli


@pytest.fixture(scope="session")
def optimize_work(tmp_path_factory) -> Path:
    """A temporary folder for the checkpoints of optimize jobs that quantize, prune, calibrate or heal."""
    return tmp_path_factory.mktemp("optimize")


@pytest.fixture
def bench_out(tmp_path: Path) -> Path:
    """A temporary folder for the results of a smaller loop of a real benchmark (never bench/results/)."""
    out = tmp_path / "bench"
    out.mkdir()
    return out


@pytest.fixture
def locust_run(tmp_path: Path) -> Path:
    """A temporary folder for a locust run's records and reports."""
    out = tmp_path / "locust"
    out.mkdir()
    return out


@pytest.fixture
def soak_run(tmp_path: Path) -> Path:
    """A temporary folder for a soak's figures."""
    out = tmp_path / "soak"
    out.mkdir()
    return out
