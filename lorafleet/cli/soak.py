"""``lorafleet bench soak``: the long-run reliability test (issue #10), registered on ``bench_app``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lorafleet.cli import _default, _help, bench_app, build, call, opt
from lorafleet.config.soak import SoakConfig


@bench_app.command("soak")
def bench_soak(
    minutes: float = opt(SoakConfig, "minutes"),
    out: Optional[Path] = typer.Option(None, "--out", help=_help(SoakConfig, "out_dir") + " [default: "
                                       "$LORAFLEET_HOME/bench/soak]"),
    model: str = opt(SoakConfig, "model"),
    replicas: int = opt(SoakConfig, "replicas"),
    num_adapters: int = opt(SoakConfig, "num_adapters"),
    max_adapters: int = opt(SoakConfig, "max_adapters"),
    num_kv_blocks: int = opt(SoakConfig, "num_kv_blocks"),
    num_threads: int = opt(SoakConfig, "num_threads"),
    users: int = opt(SoakConfig, "users"),
    think_time: Optional[float] = typer.Option(_default(SoakConfig, "think_time_s"), "--think-time",
                                               help=_help(SoakConfig, "think_time_s")),
    load_fraction: float = opt(SoakConfig, "load_fraction"),
    calibrate: float = typer.Option(_default(SoakConfig, "calibrate_s"), "--calibrate", help=_help(SoakConfig, "calibrate_s")),
    warmup: Optional[float] = typer.Option(_default(SoakConfig, "warmup_s"), "--warmup", help=_help(SoakConfig, "warmup_s")),
    sample_interval: float = typer.Option(_default(SoakConfig, "sample_interval_s"), "--sample-interval",
                                          help=_help(SoakConfig, "sample_interval_s")),
    prompt_tokens: int = opt(SoakConfig, "prompt_tokens"),
    output_tokens: int = opt(SoakConfig, "output_tokens"),
    max_rss_growth_pct: float = opt(SoakConfig, "max_rss_growth_pct"),
    max_ttft_drift_pct: float = opt(SoakConfig, "max_ttft_drift_pct"),
    json_path: Optional[Path] = typer.Option(None, "--json", help=_help(SoakConfig, "json_path")),
    record: bool = opt(SoakConfig, "record", "--record/--no-record"),
) -> None:
    """Soak a gateway and its replicas with locust at a sustainable rate; exit 2 unless every target is met."""
    from lorafleet.config import lorafleet_home

    cfg = build(SoakConfig, out_dir=out or lorafleet_home() / "bench" / "soak", minutes=minutes, model=model, replicas=replicas, num_adapters=num_adapters,
                max_adapters=max_adapters, num_kv_blocks=num_kv_blocks, num_threads=num_threads, users=users,
                think_time_s=think_time, load_fraction=load_fraction, calibrate_s=calibrate, warmup_s=warmup,
                sample_interval_s=sample_interval, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                max_rss_growth_pct=max_rss_growth_pct, max_ttft_drift_pct=max_ttft_drift_pct, json_path=json_path,
                record=record)
    call("bench.soak:run_cli", cfg)
