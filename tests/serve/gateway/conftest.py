"""Fixtures of the gateway tests: a real gateway (uvicorn on a free port, in a thread of the test process so
tests can look at its state) in front of protocol fakes or real engine servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from serve.gateway.app import build_app
from serve.gateway.config import GatewayConfig, parse_config
from serve.gateway.state import GatewayState


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class GatewayHandle:
    url: str
    app: Any
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def state(self) -> GatewayState:
        return self.app.state.gateway

    def client(self, api_key: str | None = None, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def openai(self, api_key: str = "none", **kw):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kw)

    def wait_healthy(self, *names: str, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            backends = httpx.get(f"{self.url}/health", timeout=5).json()["backends"]
            if all(backends.get(n) for n in names):
                return
            time.sleep(0.05)
        pytest.fail(f"backends {names} not healthy in the gateway after {timeout_s}s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_gateway(cfg: GatewayConfig) -> GatewayHandle:
    app = build_app(cfg)
    port = _port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=cfg.limits.drain_timeout_s))
    thread = threading.Thread(target=server.run, daemon=True, name="gateway")
    thread.start()
    deadline = time.monotonic() + 300  # an embedded replica launched by the gateway loads its model first
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("gateway did not start")
        time.sleep(0.02)
    return GatewayHandle(f"http://127.0.0.1:{port}", app, server, thread)


@pytest.fixture(scope="session")
def gateway_starter() -> Callable[[GatewayConfig], GatewayHandle]:
    """``start_gateway`` itself, for tests and module fixtures that manage a gateway's lifetime."""
    return start_gateway


@pytest.fixture
def run_gateway() -> Iterator[Callable[..., GatewayHandle]]:
    """``run_gateway(raw_config_dict, base_dir=...)``: parse the config and serve a gateway; stopped at teardown."""
    started: list[GatewayHandle] = []

    def run(raw: Mapping[str, Any], base_dir: Path = Path("."), env: Mapping[str, str] | None = None) -> GatewayHandle:
        handle = start_gateway(parse_config(raw, base_dir, env or {}))
        started.append(handle)
        return handle

    yield run
    for h in started:
        h.stop()


def _backend_entry(name: str, url: str, kind: str = "vllm", base_model: str = "base", **kw) -> dict:
    return {"name": name, "kind": kind, "url": url, "base_model": base_model, **kw}


@pytest.fixture
def backend_entry() -> Callable[..., dict]:
    """``backend_entry(name, url, kind="vllm", base_model="base", **more)``: one ``backends:`` config entry."""
    return _backend_entry


@pytest.fixture
def fast_limits() -> dict:
    """Limits for tests: quick health checks, short drain."""
    return {"health_interval_s": 0.2, "drain_timeout_s": 5, "request_timeout_s": 30, "upstream_idle_timeout_s": 10}
