"""The dependency rules of STYLE.md, checked on the source (ast) and, for torch-free modules, at runtime.

* No stage (train/ optimize/ serve/ bench/) imports another stage; stages exchange artifacts or HTTP.
* lorafleet/ (the bottom layer) imports no stage at module level. Imports inside functions are how the CLI
  reaches a stage lazily, so only module-level imports count there.
* The scheduler's side of the engine (scheduler, block_manager, sequence, adapter_slots, kv_math) never
  imports torch, not even through the modules it imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train", "optimize", "serve", "bench")
TORCH_FREE = ("scheduler", "block_manager", "sequence", "adapter_slots", "kv_math")


@dataclass(frozen=True, slots=True)
class Import:
    module: str  #: absolute dotted module name
    line: int
    at_module_level: bool  #: False inside a function body (a lazy import)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parse_imports(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import in ``source`` (the text of ``module``) with relative imports made absolute."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, at_module_level: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, node.lineno, at_module_level) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.append(Import(base, node.lineno, at_module_level))
            found.extend(Import(f"{base}.{a.name}", node.lineno, at_module_level) for a in node.names if not node.module)
        inner = at_module_level and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(source), True)
    return found


def source_files(*packages: str) -> list[Path]:
    files = [p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py")) if "__pycache__" not in p.parts]
    assert files, f"no sources found under {packages}"
    return files


def imports_of(path: Path) -> list[Import]:
    return parse_imports(path.read_text(), module_name(path), path.name == "__init__.py")


def top(module: str) -> str:
    return module.split(".", 1)[0]


# -- the checker itself ----------------------------------------------------------------------------------------
def test_parse_imports_resolves_relative_and_marks_lazy_imports() -> None:
    source = (
        "import os, torch.nn\n"
        "from . import sibling\n"
        "from ..server.app import build_app\n"
        "if True:\n    import serve.engine\n"
        "class C:\n    import bench\n"
        "def f():\n    from train.recipes import lora\n"
        "async def g():\n    import optimize\n"
    )
    got = {(i.module, i.at_module_level) for i in parse_imports(source, "serve.engine.engine")}
    assert got == {
        ("os", True), ("torch.nn", True), ("serve.engine", True), ("serve.engine.sibling", True),
        ("serve.server.app", True), ("bench", True), ("train.recipes", False), ("optimize", False),
    }


# -- the rules -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another_stage(stage: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{imp.line} imports {imp.module}"
        for path in source_files(stage)
        for imp in imports_of(path)
        if top(imp.module) in STAGES and top(imp.module) != stage
    ]
    assert offenders == []


def test_lorafleet_imports_no_stage_at_module_level() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{imp.line} imports {imp.module}"
        for path in source_files("lorafleet")
        for imp in imports_of(path)
        if imp.at_module_level and top(imp.module) in STAGES
    ]
    assert offenders == []


def test_lorafleet_config_imports_only_the_stdlib() -> None:
    imports = imports_of(ROOT / "lorafleet" / "config" / "__init__.py")
    outside = [i.module for i in imports if top(i.module) not in sys.stdlib_module_names and top(i.module) != "lorafleet"]
    assert outside == []
    assert {i.module for i in imports if top(i.module) == "lorafleet"} <= {"lorafleet.errors"}


def module_file(name: str) -> Path | None:
    """The source file of project module ``name``, or ``None`` if it names no module (e.g. a class)."""
    path = ROOT / Path(*name.split("."))
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return file if file.is_file() else None


def project_closure(module: str) -> dict[str, Path]:
    """``module`` plus every project module it imports at module level, transitively, with their files."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        file = module_file(name)
        if name in seen or file is None:
            continue
        seen[name] = file
        for imp in imports_of(file):
            if imp.at_module_level and top(imp.module) in ("lorafleet", *STAGES):
                parts = imp.module.split(".")
                todo.extend(".".join(parts[:k]) for k in range(1, len(parts) + 1))
    return seen


@pytest.mark.parametrize("name", TORCH_FREE)
def test_scheduler_side_never_imports_torch(name: str) -> None:
    closure = project_closure(f"serve.engine.{name}")
    assert f"serve.engine.{name}" in closure
    offenders = [
        f"{file.relative_to(ROOT)}:{imp.line} imports {imp.module}"
        for file in closure.values()
        for imp in imports_of(file)
        if imp.at_module_level and top(imp.module) in ("torch", "numpy", "transformers")
    ]
    assert offenders == []


def test_scheduler_side_imports_without_torch_at_runtime() -> None:
    code = "import sys\n" + "".join(f"import serve.engine.{n}\n" for n in TORCH_FREE) + (
        "heavy = sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
