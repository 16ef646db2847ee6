"""Fixtures of the training tests: runs of `lorafleet train` shared by several test modules (each trained
once per session, through the CLI as users run it), and an engine to serve them (see
tests/train/helpers.py for the generated data); vLLM is the suite's shared server (tests/conftest.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.train.helpers import (preference_prompts, preference_records, run_cli, small_run_args, style_records,
                                write_jsonl)



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
