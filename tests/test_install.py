"""A gateway-only install as an operator makes it: ``pip install '.[gateway]'`` into a new venv, at the versions
constraints.txt pins, pulls no torch, and the gateway's commands run there (full tier: it downloads packages)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "numpy", "safetensors", "xgrammar", "peft")


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory) -> Path:
    """A new venv holding ``lorafleet[gateway]`` built from this checkout (a regular install, not editable)."""
    venv = tmp_path_factory.mktemp("gateway-install") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "-c", str(ROOT / "constraints.txt"), f"{ROOT}[gateway]"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


@pytest.mark.timeout(900)
def test_gateway_install_has_no_torch_and_serves_its_commands(clean_venv: Path) -> None:
    listed = subprocess.run([str(clean_venv / "bin" / "python"), "-m", "pip", "list", "--format", "freeze",
                             "--disable-pip-version-check"], capture_output=True, text=True, check=True).stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert {"lorafleet", "fastapi", "uvicorn", "uvloop", "httptools"} <= installed
    assert installed.isdisjoint(HEAVY), sorted(installed & set(HEAVY))
    for args in (["gateway", "--help"], ["deploy", "healthcheck", "--help"]):
        out = subprocess.run([str(clean_venv / "bin" / "lorafleet"), *args], capture_output=True, text=True, timeout=60,
                             cwd=clean_venv)
        assert out.returncode == 0 and "Usage" in out.stdout, out.stderr[-2000:]
    app = subprocess.run([str(clean_venv / "bin" / "python"), "-c",
                          "from serve.gateway.config import parse_config; from serve.gateway.app import build_app;"
                          "build_app(parse_config({'backends': [{'name': 'v', 'kind': 'vllm', 'url': 'http://127.0.0.1:9',"
                          " 'base_model': 'm'}]})); print('built')"], capture_output=True, text=True, timeout=60, cwd=clean_venv)
    assert app.stdout.strip() == "built", app.stderr[-2000:]
