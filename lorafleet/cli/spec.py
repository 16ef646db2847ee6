"""``lorafleet bench spec``: prompt-lookup speculative decoding on an input-grounded workload, on vs off."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lorafleet.cli import _help, bench_app, build, call, opt
from lorafleet.config.spec import SpecBenchConfig


@bench_app.command("spec")
def bench_spec(
    json_path: Path = typer.Option(..., "--json", help=_help(SpecBenchConfig, "json_path")),
    model: str = opt(SpecBenchConfig, "model"),
    dtype: str = opt(SpecBenchConfig, "dtype"),
    output_tokens: int = opt(SpecBenchConfig, "output_tokens"),
    num_prompts: int = opt(SpecBenchConfig, "num_prompts"),
    repeats: int = opt(SpecBenchConfig, "repeats"),
    num_speculative_tokens: int = opt(SpecBenchConfig, "num_speculative_tokens"),
    num_threads: Optional[int] = opt(SpecBenchConfig, "num_threads"),
    engine_arg: list[str] = typer.Option([], "--engine-arg", help=_help(SpecBenchConfig, "engine_args") + " (repeatable)"),
) -> None:
    """Single-stream TPOT with n-gram (prompt-lookup) speculation off and on, acceptance rate, greedy equality."""
    cfg = build(SpecBenchConfig, json_path=json_path, model=model, dtype=dtype, output_tokens=output_tokens,
                num_prompts=num_prompts, repeats=repeats, num_speculative_tokens=num_speculative_tokens,
                num_threads=num_threads, engine_args=tuple(engine_arg))
    call("bench.spec:run", cfg)
