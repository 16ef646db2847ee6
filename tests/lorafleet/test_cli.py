"""lorafleet/cli.py, run as users run it: a subprocess of the installed ``lorafleet`` script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LORAFLEET = str(Path(sys.executable).with_name("lorafleet"))
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}  # wide, plain tables and help


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([LORAFLEET, *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def test_help_lists_the_commands() -> None:
    out = run("--help")
    assert out.returncode == 0, out.stderr
    for command in ("serve", "models", "bench"):
        assert command in out.stdout


def test_serve_help_lists_engine_flags() -> None:
    out = run("serve", "--help")
    assert out.returncode == 0, out.stderr
    for flag in ("--lora-module", "--max-num-seqs", "--max-num-batched-tokens", "--dtype", "--num-kv-blocks",
                 "--enable-prefix-caching", "--max-model-len", "--port"):
        assert flag in out.stdout, flag


def test_models_list_shows_the_pulled_model(base_model_path: Path) -> None:
    out = run("models", "list")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if "smollm2-135m-instruct" in line and "float32" in line)
    assert str(base_model_path) in row


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("serve", "--max-num-seqs", "0"), "error: max_num_seqs must be at least 1, got 0"),
        (("serve", "--dtype", "int4"), "error: dtype must be one of"),
        (("serve", "--port", "0"), "error: port must be in 1..65535, got 0"),
        (("serve", "--lora-module", "no-equals-sign"), "error: --lora-module expects NAME=PATH, got 'no-equals-sign'"),
        (("serve", "--lora-module", "../../etc=/etc"), "error: adapter name '../../etc' must match"),
        (("serve", "--max-body-bytes", "10"), "error: max_body_bytes must be at least 1024, got 10"),
        (("serve", "--api-key", " "), "error: api_key must not be empty"),
        (("models", "pull", "no-such-model"), "error: unknown model 'no-such-model'"),
    ],
)
def test_bad_values_give_one_line_error_and_exit_2(args: tuple[str, ...], message: str) -> None:
    out = run(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(message), lines[0]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("argv", [[], ["--help"], ["serve", "--help"], ["models", "--help"]])
def test_cli_does_not_import_torch(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from lorafleet.cli import app\n"
        "assert 'torch' not in sys.modules, 'importing the CLI imported torch'\n"
        f"argv = {argv!r}\n"
        "if argv:\n"
        "    try:\n"
        "        app(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'vllm', 'serve.engine.engine') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 0, out.stderr
