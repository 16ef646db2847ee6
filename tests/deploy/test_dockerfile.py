"""The root Dockerfile: hadolint finds nothing unexplained; it is multi-stage, pinned, non-root, secret-free
and has a healthcheck; its build context holds what the install needs and nothing else; and what the image
runs (ENTRYPOINT + CMD, then HEALTHCHECK) works from an install made the way the image makes it."""

from __future__ import annotations

import json
import re
import subprocess

import httpx
import pytest

from tests.deploy.helpers import (DEPLOY, MODEL, ROOT, dockerignore_admits, dockerignore_patterns, exec_form,
                                   image_command, parse_dockerfile, render_profile, venv_tool)

pytestmark = pytest.mark.timeout(600)
DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_finds_nothing_unexplained() -> None:
    """Clean at every level (style included); each rule switched off by a pragma has its reason right above."""
    out = subprocess.run([venv_tool("hadolint"), "--failure-threshold", "style", "--format", "json", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout) == [], out.stdout + out.stderr
    pragmas = [i for i in parse_dockerfile(DOCKERFILE) if any("hadolint ignore" in c for c in i.comments)]
    for inst in pragmas:
        reasons = [c for c in inst.comments if "hadolint" not in c and len(c) > 20]
        assert reasons, f"'{inst.keyword} {inst.value[:40]}...' ignores a hadolint rule without saying why"
    # Without the pragmas, exactly the explained rules fire: the pragmas hide nothing else.
    raw = subprocess.run([venv_tool("hadolint"), "--disable-ignore-pragma", "--no-fail", "--format", "json",
                          str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    fired = {f["code"] for f in json.loads(raw.stdout)}
    ignored = {code for i in pragmas for c in i.comments for code in re.findall(r"DL\d{4}|SC\d{4}", c)}
    assert fired == ignored


def test_image_shape() -> None:
    insts = parse_dockerfile(DOCKERFILE)
    froms = [i.value for i in insts if i.keyword == "FROM"]
    assert len(froms) >= 3 and froms[-1].endswith("AS runtime"), froms  # build, model, runtime
    base = next(i.value for i in insts if i.keyword == "ARG" and i.value.startswith("PYTHON_IMAGE="))
    image = base.split("=", 1)[1]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", image), f"base not pinned: {image}"
    runtime = [i for i in insts if i.stage == "runtime"]
    user = [i.value for i in runtime if i.keyword == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root"), user
    assert [i for i in runtime if i.keyword == "HEALTHCHECK"], "no HEALTHCHECK"
    for i in insts:  # no credentials baked into layers or build args
        if i.keyword in ("ENV", "ARG"):
            assert not re.search(r"(KEY|TOKEN|PASSWORD|SECRET)\w*=\S", i.value, re.I), i.value
    # The final stage copies the venv and the model, not the sources or the build tools.
    copies = [i.value for i in runtime if i.keyword == "COPY"]
    assert all("--from=" in c for c in copies), copies


def test_image_runs_the_cpu_profile() -> None:
    """The image's default command is the engine with deploy/profiles/smollm2-cpu.yaml, as `profile render`
    prints it, and the compose CPU stack's engine runs that same command with its adapter root."""
    rendered = render_profile(DEPLOY / "profiles" / "smollm2-cpu.yaml", "embedded", MODEL)
    assert image_command() == [*rendered["command"], *rendered["args"]]
    assert rendered["env"] == {} and rendered["files"] == {}
    from tests.deploy.helpers import compose

    # ... plus where the stack's gateway may have adapters loaded from (runtime loading is off unless given, #24)
    assert ["lorafleet", *compose("cpu")["services"]["engine"]["command"]] == [*image_command(),
                                                                               "--allow-runtime-lora", "/adapters"]


def test_build_context_holds_the_sources_and_nothing_else(build_context) -> None:
    patterns = dockerignore_patterns()
    for needed in ("pyproject.toml", "README.md", "serve/engine/csrc/paged_attention.cpp", "serve/gateway/app.py",
                   "lorafleet/cli/__init__.py"):
        assert (build_context / needed).is_file(), needed
    for left_out in (".venv/bin/python", "tests/conftest.py", ".git/HEAD", "deploy/k8s/base/kustomization.yaml",
                     "serve/engine/__pycache__/engine.cpython-311.pyc", "lorafleet.egg-info/PKG-INFO",
                     "bench/results/engine.json", "Makefile"):
        assert not dockerignore_admits(left_out, patterns), left_out
    assert not list(build_context.rglob("__pycache__")) and not (build_context / "tests").exists()
    # Every COPY source of the build stage is in the context.
    for inst in parse_dockerfile(ROOT / "Dockerfile"):
        if inst.keyword == "COPY" and "--from" not in inst.value:
            for src in inst.value.split()[:-1]:
                assert (build_context / src).exists(), f"COPY {src}: not in the build context"


def test_install_is_a_regular_package(fresh_venv) -> None:
    """lorafleet in the image's venv comes from its own site-packages (not the checkout), C++ sources included."""
    py = fresh_venv / "bin" / "python"
    out = subprocess.run([str(py), "-c", "import lorafleet, serve.engine.cpu_kernels as k; print(lorafleet.__file__);"
                          "print(all((k.CSRC / s).is_file() for s in k.SOURCES))"],
                         capture_output=True, text=True, check=True, cwd="/")
    origin, has_sources = out.stdout.split()
    assert origin.startswith(str(fresh_venv)) and has_sources == "True", out.stdout


def test_entry_command_serves_and_healthcheck_follows_it(cpu_stack) -> None:
    """The engine of the stack is the image's ENTRYPOINT + CMD (host and port changed) run by the fresh venv's
    `lorafleet`; the image's HEALTHCHECK command passes against it and fails once nothing listens there."""
    engine = cpu_stack.engine
    assert engine.process.args[0] == str(cpu_stack.venv / "bin" / "lorafleet")
    reply = httpx.post(f"{engine.url}/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8, "temperature": 0})
    assert reply.status_code == 200 and "Paris" in reply.json()["choices"][0]["message"]["content"]
    check = next(i for i in parse_dockerfile(ROOT / "Dockerfile") if i.keyword == "HEALTHCHECK")
    cmd = exec_form(check.value.split(" CMD ", 1)[1])
    exe = [str(cpu_stack.venv / "bin" / cmd[0]), *cmd[1:]]
    ok = subprocess.run(exe, env={"LORAFLEET_HEALTHCHECK_URL": f"{engine.url}/health"}, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(exe, env={"LORAFLEET_HEALTHCHECK_URL": f"{engine.url}/no-such-endpoint"}, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and "answered 404" in bad.stderr
