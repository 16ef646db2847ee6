"""``lorafleet bench load`` and ``lorafleet bench sweep``: locust load tests.

Commands are registered on the typer apps of :mod:`lorafleet.cli` when this module is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer

from lorafleet.cli import _default, _help, bench_app, build, call, opt
from lorafleet.config.load import LoadConfig, SweepConfig, parse_duration_s, parse_slo
from lorafleet.errors import LorafleetError


def parsed(fn: Callable[[str], Any], text: str, flag: str) -> Any:
    """``fn(text)``, or a one-line ``error: --flag: ...`` exit for a value the parser refuses."""
    try:
        return fn(text)
    except LorafleetError as e:
        typer.secho(f"error: {flag}: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def levels(text: str) -> tuple[int, ...]:
    """``"1,2,4,8"`` as ``(1, 2, 4, 8)``."""
    from lorafleet.errors import ConfigError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got '{text}'") from None


def _seconds(cls: type, name: str) -> str:
    return f"{_default(cls, name):g}s"


@bench_app.command("load")
def bench_load(
    target: str = typer.Option(..., help=_help(LoadConfig, "target")),
    out: Path = typer.Option(..., "--out", help=_help(LoadConfig, "out_dir")),
    workload: str = opt(LoadConfig, "workload"),
    users: int = opt(LoadConfig, "users"),
    spawn_rate: float = opt(LoadConfig, "spawn_rate"),
    duration: str = typer.Option(_seconds(LoadConfig, "duration_s"), help=_help(LoadConfig, "duration_s")),
    warmup: str = typer.Option(_seconds(LoadConfig, "warmup_s"), help=_help(LoadConfig, "warmup_s")),
    stop_timeout: str = typer.Option(_seconds(LoadConfig, "stop_timeout_s"), help=_help(LoadConfig, "stop_timeout_s")),
    model: Optional[str] = opt(LoadConfig, "model"),
    api_key: Optional[str] = typer.Option(None, envvar="LORAFLEET_API_KEY", help=_help(LoadConfig, "api_key")),
    seed: Optional[int] = opt(LoadConfig, "seed"),
) -> None:
    """Run locust headless against TARGET: summary.json, locust CSVs, requests.jsonl and report.html in --out."""
    cfg = build(LoadConfig, target=target.rstrip("/"), out_dir=out, workload=workload, users=users, spawn_rate=spawn_rate,
                duration_s=parsed(parse_duration_s, duration, "--duration"),
                warmup_s=parsed(parse_duration_s, warmup, "--warmup"),
                stop_timeout_s=parsed(parse_duration_s, stop_timeout, "--stop-timeout"),
                model=model, api_key=api_key, seed=seed)
    call("bench.load:run_cli", cfg)


@bench_app.command("sweep")
def bench_sweep(
    out: Path = typer.Option(..., "--out", help=_help(SweepConfig, "out_dir")),
    target: Optional[str] = opt(SweepConfig, "target"),
    workload: str = opt(SweepConfig, "workload"),
    users: str = typer.Option(",".join(map(str, _default(SweepConfig, "users"))), help=_help(SweepConfig, "users")),
    duration: str = typer.Option(_seconds(SweepConfig, "duration_s"), help=_help(SweepConfig, "duration_s")),
    warmup: str = typer.Option(_seconds(SweepConfig, "warmup_s"), help=_help(SweepConfig, "warmup_s")),
    slo: str = typer.Option("", help=_help(SweepConfig, "slo")),
    profile: list[str] = typer.Option([], "--profile", help=_help(SweepConfig, "profiles") + " (repeatable)"),
    backend: str = opt(SweepConfig, "backend"),
    backend_cmd: Optional[str] = opt(SweepConfig, "backend_cmd"),
    model: Optional[str] = opt(SweepConfig, "model"),
    api_key: Optional[str] = typer.Option(None, envvar="LORAFLEET_API_KEY", help=_help(SweepConfig, "api_key")),
    start_timeout: str = typer.Option(_seconds(SweepConfig, "start_timeout_s"), help=_help(SweepConfig, "start_timeout_s")),
) -> None:
    """Load at several concurrency levels (or profiles); plot throughput vs TTFT/TPOT and mark the best that meets --slo."""
    cfg = build(SweepConfig, out_dir=out, target=target.rstrip("/") if target else None, workload=workload,
                users=parsed(levels, users, "--users"), duration_s=parsed(parse_duration_s, duration, "--duration"),
                warmup_s=parsed(parse_duration_s, warmup, "--warmup"), slo=parsed(parse_slo, slo, "--slo"),
                profiles=tuple(profile), backend=backend, backend_cmd=backend_cmd, model=model, api_key=api_key,
                start_timeout_s=parsed(parse_duration_s, start_timeout, "--start-timeout"))
    call("bench.sweep:run_cli", cfg)
