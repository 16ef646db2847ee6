"""Fixtures of the deployment tests: the manifests as kubectl builds them, an install made the way the image
makes it, and the CPU compose stack's processes started without Docker (helpers: tests/deploy/helpers.py).

No image is built or pulled here (no registry is reachable): what the image would run is run from a fresh
venv holding lorafleet installed from the Docker build context, the way the Dockerfile's build stage does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (DEPLOY, MODEL, OVERLAYS, ROOT, THREADS, Stack, compose, dockerignore_admits,
                                  dockerignore_patterns, free_port, replace_once, start_process, venv_tool,
                                  wait_healthy, with_flag)


@pytest.fixture(scope="session")
def build_context(tmp_path_factory) -> Path:
    """The files ``docker build .`` would send, after .dockerignore, copied to a temporary directory."""
    patterns = dockerignore_patterns()
    reincluded = [p[1:] for p in patterns if p.startswith("!")]
    ctx = tmp_path_factory.mktemp("context")
    for dirpath, dirnames, filenames in os.walk(ROOT):
        here = Path(dirpath).relative_to(ROOT).as_posix()
        prefix = "" if here == "." else here + "/"
        # Skip excluded directories no `!pattern` reaches into (.git, the venvs): nothing of theirs is sent.
        dirnames[:] = [d for d in dirnames if dockerignore_admits(prefix + d, patterns)
                       or any(r.startswith(prefix + d + "/") for r in reincluded)]
        for f in filenames:
            if dockerignore_admits(prefix + f, patterns):
                (ctx / prefix).mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(dirpath) / f, ctx / prefix / f)
    return ctx


@pytest.fixture(scope="session")
def fresh_venv(build_context: Path, tmp_path_factory) -> Path:
    """A new venv with lorafleet installed as the image's build stage installs it: a regular (not editable)
    install of the package built from the build context. Third-party dependencies (torch, transformers, ...)
    are the project venv's, reached through a .pth file: downloading 2 GB of identical wheels again per run is
    not affordable here, and what can break between the two installs is lorafleet's own packaging."""
    root = tmp_path_factory.mktemp("image")
    dist = root / "dist"
    # No build isolation: the project venv's setuptools (>= 77, which torch requires) builds wheels on its own.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(build_context)], check=True, cwd=root)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    deps = next(Path(sys.prefix).joinpath("lib").glob("python*/site-packages"))
    (site / "project-deps.pth").write_text(f"{deps}\n")
    wheel = next(dist.glob("lorafleet-*.whl"))
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--disable-pip-version-check", str(wheel)], check=True, cwd=root)
    return venv


@pytest.fixture(scope="session")
def cpu_stack(fresh_venv: Path, base_model_path: Path, lora_adapters: dict[str, Path], tmp_path_factory) -> Iterator[Stack]:
    """deploy/compose/cpu started directly: its `engine` and `gateway` commands run by the image's entry point
    (``lorafleet`` of the fresh venv), the gateway with the stack's gateway.yaml. Only addresses change: the
    compose service name `engine` becomes 127.0.0.1, ports 8000/9000 become free ports, /adapters a
    temporary directory holding one real PEFT adapter, declared as the config's comment says. The engine
    also gets ``--num-threads`` (this machine is shared; a container would be limited by its CPU quota)."""
    services = compose("cpu")["services"]
    work = tmp_path_factory.mktemp("stack")
    home = work / "home"  # the image's LORAFLEET_HOME: models baked in, kernels compiled on first start
    (home / "models").mkdir(parents=True)
    (home / "models" / MODEL).symlink_to(base_model_path)
    from lorafleet.config import lorafleet_home

    (lorafleet_home() / "kernels").mkdir(parents=True, exist_ok=True)
    (home / "kernels").symlink_to(lorafleet_home() / "kernels")
    adapters = work / "adapters"
    shutil.copytree(lora_adapters["a0"], adapters / "a0")

    engine_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "LORAFLEET_HOME": str(home), "PYTHONUNBUFFERED": "1",
           "PATH": f"{fresh_venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    exe = str(fresh_venv / "bin" / "lorafleet")

    engine_args = replace_once(list(services["engine"]["command"]), "0.0.0.0", "127.0.0.1")
    engine_args = with_flag(engine_args, "--port", str(engine_port)) + ["--num-threads", THREADS]
    engine_args = with_flag(engine_args, "--allow-runtime-lora", str(adapters))
    engine = start_process("engine", [exe, *engine_args], f"http://127.0.0.1:{engine_port}", work, env, home)
    try:  # the gateway starts once the engine is healthy, as compose's depends_on: service_healthy orders it
        wait_healthy(engine)
    except BaseException:
        engine.stop()
        raise

    cfg = yaml.safe_load((DEPLOY / "compose" / "cpu" / "gateway.yaml").read_text())
    assert cfg["server"] == {"host": "0.0.0.0", "port": 9000} and cfg["adapter_roots"] == ["/adapters"]
    cfg["server"] = {"host": "127.0.0.1", "port": gateway_port}
    (entry,) = cfg["discovery"]
    assert (entry["service"], entry["port"]) == ("engine", 8000)
    entry.update(service="127.0.0.1", port=engine_port)
    cfg["adapter_roots"] = [str(adapters)]
    cfg["adapters"] = [{"name": "a0", "path": "a0", "base_model": entry["base_model"]}]
    config_path = work / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    gateway_args = replace_once(list(services["gateway"]["command"]), "/etc/lorafleet/gateway.yaml", str(config_path))
    gateway = start_process("gateway", [exe, *gateway_args], f"http://127.0.0.1:{gateway_port}", work,
                            {**env, "LORAFLEET_HEALTHCHECK_URL": f"http://127.0.0.1:{gateway_port}/health"}, home)
    try:
        wait_healthy(gateway)
        yield Stack(engine, gateway, cfg, fresh_venv, home)
    finally:
        gateway.stop()
        engine.stop()



@pytest.fixture(scope="session")
def overlays() -> dict[str, list[dict[str, Any]]]:
    """Every overlay as ``kubectl kustomize`` builds it, as parsed documents."""
    kubectl = venv_tool("kubectl")
    built = {}
    for name in OVERLAYS:
        out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / name)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, f"kubectl kustomize {name} failed:\n{out.stderr}"
        built[name] = [d for d in yaml.safe_load_all(out.stdout) if d]
    return built


