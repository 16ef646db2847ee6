"""``lorafleet bench ...``: benchmarks that write JSON results."""

from __future__ import annotations

from pathlib import Path

import typer

from lorafleet.cli import _help, bench_app, build, call, opt
from lorafleet.config import EngineBenchConfig


@bench_app.command("engine")
def bench_engine(
    json_path: Path = typer.Option(..., "--json", help=_help(EngineBenchConfig, "json_path")),
    model: str = opt(EngineBenchConfig, "model"),
    streams: int = opt(EngineBenchConfig, "streams"),
    output_tokens: int = opt(EngineBenchConfig, "output_tokens"),
    tpot_tokens: int = opt(EngineBenchConfig, "tpot_tokens"),
    prefix_tokens: int = opt(EngineBenchConfig, "prefix_tokens"),
    num_adapters: int = opt(EngineBenchConfig, "num_adapters"),
    repeats: int = opt(EngineBenchConfig, "repeats"),
    vllm_python: str = opt(EngineBenchConfig, "vllm_python"),
    vllm_kv_gb: int = opt(EngineBenchConfig, "vllm_kv_gb"),
    skip_hf: bool = opt(EngineBenchConfig, "skip_hf"),
    engine_arg: list[str] = typer.Option([], "--engine-arg", help=_help(EngineBenchConfig, "engine_args") + " (repeatable)"),
) -> None:
    """Our engine vs HF transformers vs vLLM-CPU in one run: throughput, TPOT, prefix-cache and multi-LoRA ratios."""
    cfg = build(EngineBenchConfig, json_path=json_path, model=model, streams=streams, output_tokens=output_tokens,
                tpot_tokens=tpot_tokens, prefix_tokens=prefix_tokens, num_adapters=num_adapters, repeats=repeats,
                vllm_python=vllm_python, vllm_kv_gb=vllm_kv_gb, skip_hf=skip_hf, engine_args=tuple(engine_arg))
    call("bench.engine:run", cfg)
