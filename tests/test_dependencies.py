"""Declared dependencies: every third-party module the code imports is declared in pyproject.toml, and the
``gateway`` extra installs no torch.

Imports are read from the source (module level, inside functions, ``importlib.import_module("...")`` with a
literal, and uvicorn's ``loop=``/``http=`` names, which it imports by string). A module is mapped to its
distribution by the installed metadata (``yaml`` -> PyYAML), or by its own name when it is not installed here
(llmcompressor lives in its own venv).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("lorafleet", "serve", "train", "optimize", "bench")
FIRST_PARTY = {*STAGES, "tests"}
#: the code the gateway image runs: it may import only what the base and the `gateway` extra declare
GATEWAY_CODE = ("serve/gateway", "serve/backends", "serve/routing", "lorafleet/cli/gateway.py")
#: uvicorn keyword arguments that name a module it imports
STRING_IMPORT_KEYWORDS = {"loop", "http"}
HEAVY = ("torch", "transformers", "safetensors", "peft", "bitsandbytes", "xgrammar", "datasets", "locust", "numpy")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared(*groups: str) -> set[str]:
    """Distributions declared by the base dependencies and ``groups`` (extras; self-references followed)."""
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    names: set[str] = set()
    todo, seen = [None, *groups], set()
    while todo:
        group = todo.pop()
        if group in seen:
            continue
        seen.add(group)
        for spec in project["dependencies"] if group is None else extras[group]:
            req = Requirement(spec)
            if normalize(req.name) == "lorafleet":
                todo.extend(req.extras)
            else:
                names.add(normalize(req.name))
    return names


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
                found.add(str(node.args[0].value).split(".")[0])
            for kw in node.keywords:
                if kw.arg in STRING_IMPORT_KEYWORDS and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    found.add(kw.value.value)
    siblings = {name for name in found if (path.parent / f"{name}.py").exists()}  # a script's own helpers
    return found - siblings - FIRST_PARTY - set(sys.stdlib_module_names) - {"__future__"}


def python_files(*roots: str) -> list[Path]:
    out: list[Path] = []
    for root in roots:
        path = ROOT / root
        out += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return out


@cache
def distribution_of(module: str) -> str:
    dists = md.packages_distributions().get(module)
    return normalize(dists[0]) if dists else normalize(module)


def undeclared(files: list[Path], allowed: set[str]) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {}
    for path in files:
        for module in sorted(imported_modules(path)):
            dist = distribution_of(module)
            if dist not in allowed:
                problems.setdefault(f"{module} ({dist})", []).append(str(path))
    return problems


def test_every_imported_package_is_declared() -> None:
    every_extra = set(pyproject()["project"]["optional-dependencies"]) - {"test"}
    assert undeclared(python_files(*STAGES), declared(*every_extra)) == {}


def test_the_tests_import_only_declared_packages() -> None:
    assert undeclared(python_files("tests"), declared("all", "test")) == {}


def test_gateway_code_needs_only_the_gateway_extra() -> None:
    assert undeclared(python_files(*GATEWAY_CODE), declared("gateway")) == {}


def test_the_check_catches_an_undeclared_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import torch\n    import importlib\n    importlib.import_module('numpy.linalg')\n"
                   "    uvicorn.run(app, loop='uvloop')\n")
    assert imported_modules(bad) == {"torch", "numpy", "uvloop"}
    assert set(undeclared([bad], declared("gateway"))) == {"torch (torch)", "numpy (numpy)"}


def requirement_closure(*groups: str) -> set[str]:
    """Distributions ``pip install '.[groups]'`` pulls in: lorafleet's declared ones, then, through the installed
    metadata, everything they require (environment markers evaluated, extras followed)."""
    todo = [(name, frozenset()) for name in declared(*groups)]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((normalize(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


def test_a_gateway_install_pulls_no_torch() -> None:
    closure = requirement_closure("gateway")
    assert {"fastapi", "uvicorn", "uvloop", "httptools"} <= closure
    assert closure.isdisjoint(normalize(h) for h in HEAVY), sorted(closure & set(HEAVY))
    assert "torch" in requirement_closure("engine")


BLOCKER = """
import importlib.abc, sys
HEAVY = {heavy!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError("the gateway imported " + name)
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("code", [
    "import sys; sys.argv = ['lorafleet', 'gateway', '--help']\nfrom lorafleet.cli import main\nmain()",
    "import serve.gateway.app, serve.gateway.main, serve.backends.vllm, serve.backends.sglang, serve.backends.trtllm, "
    "serve.backends.embedded",
])
def test_the_gateway_runs_with_the_heavy_packages_missing(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", BLOCKER.format(heavy=set(HEAVY)) + code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
