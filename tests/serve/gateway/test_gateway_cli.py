"""``lorafleet gateway --config FILE``: serves the config, refuses a bad one with every problem listed, and
shuts down cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.timeout(120)
LORAFLEET = str(Path(sys.executable).with_name("lorafleet"))


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serves_a_config_and_stops_on_sigterm(fake_server, adapter_dir, tmp_path) -> None:
    fake = fake_server("vllm", "base")
    adapter_dir("sql")
    port = _port()
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump({
        "server": {"port": port}, "backends": [{"name": "r0", "kind": "vllm", "url": fake.url, "base_model": "base"}],
        "adapter_roots": ["adapters"], "adapters": [{"name": "sql", "path": "sql", "base_model": "base"}]}))
    proc = subprocess.Popen([LORAFLEET, "gateway", "--config", str(tmp_path / "gw.yaml"), "--log-level", "warning"])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                if httpx.get(f"{url}/health", timeout=1).json()["backends"]["r0"]:
                    break
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.1)
        r = httpx.post(f"{url}/v1/completions", json={"model": "sql", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == " sql#0 sql#1"
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught, as a parent expects
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)


def test_bad_config_exits_2_listing_every_problem(tmp_path) -> None:
    (tmp_path / "gw.yaml").write_text("backends: [{name: r0, kind: triton, url: 'x', base_model: m}]\nrouting: {policy: best}\n")
    out = subprocess.run([LORAFLEET, "gateway", "--config", str(tmp_path / "gw.yaml")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "2 problem(s)" in out.stderr and "kind must be one of" in out.stderr and "routing.policy" in out.stderr
