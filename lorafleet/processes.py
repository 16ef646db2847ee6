"""Start and stop OpenAI-compatible server processes (always on 127.0.0.1): benchmarks, checks and tests launch
vLLM, LiteLLM, gateways and our own server through this one context manager."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from lorafleet.errors import BackendError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str  #: label used in logs and results
    argv: list[str]  #: command; ``{port}`` is replaced by the chosen port
    env: dict[str, str]
    log_path: Path
    start_timeout_s: float = 600.0
    health_path: str = "/health"  #: polled until it answers 200


class ManagedServer:
    """Context manager: launch ``spec``, wait for ``/health``, kill the whole process group on exit."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        """Process id of the server (None before it starts)."""
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> "ManagedServer":
        argv = [a.replace("{port}", str(self.port)) for a in self.spec.argv]
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.spec.log_path, "w")
        self._proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **self.spec.env},
                                      start_new_session=True)
        deadline = time.monotonic() + self.spec.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.__exit__(None, None, None)
                raise BackendError(f"{self.spec.name} exited with {code} during start-up: {self.log_tail()} "
                                   f"(log: {self.spec.log_path})")
            try:
                if httpx.get(self.base_url + self.spec.health_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.__exit__(None, None, None)
        raise BackendError(f"{self.spec.name} did not become healthy in {self.spec.start_timeout_s:.0f} s; see {self.spec.log_path}")

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self._proc.pid, sig)
                    self._proc.wait(wait_s)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        if self._log is not None:
            self._log.close()

    def log_tail(self, num_lines: int = 1) -> str:
        """The last non-empty line(s) of the server's log (a server's own error line usually comes last)."""
        try:
            lines = [ln for ln in self.spec.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-num_lines:])
