"""Fixtures shared by the backend and gateway tests: protocol fakes of the engines as real HTTP servers in
subprocesses (see tests/serve/backends/fakes/), so tests can kill them like real replicas, and adapter
directories shaped like PEFT's."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

FAKES_DIR = Path(__file__).parent / "backends" / "fakes"
FAKE_MODULES = {"vllm": "vllm_fake.py", "sglang": "sglang_fake.py", "trtllm": "trtllm_fake.py"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FakeServer:
    """A running protocol fake."""

    kind: str
    model: str
    url: str
    process: subprocess.Popen

    def configure(self, **settings) -> None:
        """Change the fake engine's behaviour (see FakeEngine's fields)."""
        httpx.post(f"{self.url}/_fake/config", json=settings, timeout=5).raise_for_status()

    def requests(self) -> list[dict]:
        return httpx.get(f"{self.url}/_fake/requests", timeout=5).json()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    @property
    def is_alive(self) -> bool:
        return self.process.poll() is None


def launch_fake(kind: str, model: str, *extra: str, port: int | None = None) -> FakeServer:
    port = port or free_port()
    cmd = [sys.executable, str(FAKES_DIR / FAKE_MODULES[kind]), "--port", str(port), "--model", model, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    server = FakeServer(kind, model, f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} fake exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.kill()
    raise RuntimeError(f"{kind} fake did not start")


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    """``fake_server(kind, model, *args)``: start a protocol fake; all are killed at teardown."""
    started: list[FakeServer] = []

    def start(kind: str, model: str = "base-model", *extra: str, port: int | None = None) -> FakeServer:
        server = launch_fake(kind, model, *extra, port=port)
        started.append(server)
        return server

    yield start
    for s in started:
        s.kill()


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
    """``adapter_dir(name, rank=8)``: a fresh adapter directory under ``tmp_path/adapters``."""
    return lambda name, rank=8: write_adapter_dir(tmp_path / "adapters" / name, rank)
