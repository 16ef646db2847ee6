"""Our own engine behind ``lorafleet serve``: the same HTTP API as vLLM (adapter endpoints, /v1/models with
``parent``, vLLM metric names), reached at a URL, launched by the gateway as a child process, or run inside
the gateway process.

* ``url`` only: a replica running somewhere.
* ``url`` + ``launch_args``: :meth:`start` runs ``lorafleet serve --host H --port P <launch_args>`` with the host
  and port of ``url`` and waits for ``/health``; :meth:`aclose` stops it.
* ``engine`` (an :class:`EngineConfig`, no url): in-process (serve/backends/inprocess.py): the engine and
  ``lorafleet serve``'s app live in the gateway process and are called without sockets. torch is imported
  only then.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from lorafleet.config import API_KEY_ENV
from lorafleet.errors import BackendError
from serve.backends.base import BackendSpec
from serve.backends.inprocess import InProcessServer
from serve.backends.vllm import VLLMBackend


class EmbeddedBackend(VLLMBackend):
    """``lorafleet serve``; optionally a child process of the gateway."""

    def __init__(self, spec: BackendSpec, client: httpx.AsyncClient | None = None, start_timeout_s: float = 300.0) -> None:
        self.server = InProcessServer(spec) if spec.engine is not None else None
        if self.server is not None:
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.server), base_url="http://in-process",
                                       timeout=httpx.Timeout(spec.admin_timeout_s))
        super().__init__(spec, client, http=self.server)
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None

    def launch_command(self) -> list[str]:
        parts = urlsplit(self.spec.url)
        exe = Path(sys.executable).with_name("lorafleet")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lorafleet.cli"]
        roots = [arg for root in self.spec.adapter_roots for arg in ("--allow-runtime-lora", root)]
        return [*cmd, "serve", "--host", parts.hostname or "127.0.0.1", "--port", str(parts.port or 80),
                "--served-model-name", self.spec.upstream_model, *roots, *self.spec.launch_args]

    async def start(self) -> None:
        if self.server is not None:
            if self.server.app is None:
                await self.server.start()
            return
        if not self.spec.launch_args or self.process is not None:
            return
        # Its own session, so stopping it also stops its engine worker process.
        # The key goes in the environment, not on the command line, where any local user could read it.
        env = {**os.environ, API_KEY_ENV: self.spec.api_key} if self.spec.api_key else None
        self.process = subprocess.Popen(self.launch_command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True, env=env)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendError(f"backend '{self.spec.name}': lorafleet serve exited with {self.process.returncode}")
            if await self.health():
                return
            await asyncio.sleep(0.5)
        raise BackendError(f"backend '{self.spec.name}': lorafleet serve not healthy after {self.start_timeout_s:.0f}s")

    async def aclose(self) -> None:
        await super().aclose()
        if self.server is not None:
            await self.server.aclose()
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
