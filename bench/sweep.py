"""``lorafleet bench sweep``: load runs at several concurrency levels, against one target or against a backend
launched once per profile, and the best setting (most output tokens/s) that meets an SLO.

Every run keeps its own directory (``<profile>/users-<n>/``: summary.json, requests.jsonl, locust CSVs,
report.html) next to ``sweep.json`` and the sweep's ``report.html``.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from bench.load import LoadSummary, run as run_load
from bench.report import write_sweep_report
from lorafleet.atomic import write_bytes, write_json
from lorafleet.config.load import LoadConfig, Slo, SweepConfig
from lorafleet.config.profile import Profile, profile_to_mapping


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One load run of a sweep and how it stands against the SLO."""

    profile: str | None  #: None for a concurrency sweep of a given target
    users: int
    run_dir: str
    summary: LoadSummary
    violations: tuple[str, ...]  #: empty when the run meets the SLO

    @property
    def meets_slo(self) -> bool:
        return not self.violations

    @property
    def label(self) -> str:
        return f"{self.profile} @ {self.users} users" if self.profile else f"{self.users} users"

    def to_json(self) -> dict:
        return {"profile": self.profile, "users": self.users, "run_dir": self.run_dir, "meets_slo": self.meets_slo,
                "violations": list(self.violations), "summary": self.summary.to_json()}


def check_slo(summary: LoadSummary, slo: Slo) -> tuple[str, ...]:
    """Why ``summary`` misses ``slo`` (empty when it meets it). A run without successful requests misses."""
    if summary.num_requests == summary.num_errors:
        return ("no successful requests",)
    out = []
    for limit in slo.limits:
        value = summary.value(limit.key)
        if value is None:
            out.append(f"{limit.key}: not measured")
        elif value > limit.max_ms:
            out.append(f"{limit.key} {value:.1f} ms > {limit.max_ms:g} ms")
    if summary.error_rate > slo.max_error_rate:
        out.append(f"error_rate {summary.error_rate:.3f} > {slo.max_error_rate:g}")
    return tuple(out)


def best_point(points: list[SweepPoint]) -> SweepPoint | None:
    """The run with the most output tokens/s among those meeting the SLO (None if none does)."""
    meeting = [p for p in points if p.meets_slo]
    return max(meeting, key=lambda p: p.summary.output_tok_s) if meeting else None


def sweep_levels(cfg: SweepConfig, target: str, out: Path, profile: str | None = None) -> list[SweepPoint]:
    """One load run per concurrency level of ``cfg.users`` against ``target``; all users start at once."""
    points = []
    for users in cfg.users:
        run_dir = out / f"users-{users}"
        Console(stderr=True).print(f"[bold]{profile + ': ' if profile else ''}{users} users[/] -> {run_dir}")
        load = LoadConfig(target=target, out_dir=run_dir, workload=cfg.workload, users=users, spawn_rate=float(users),
                          duration_s=cfg.duration_s, warmup_s=cfg.warmup_s, model=cfg.model, api_key=cfg.api_key)
        summary = run_load(load)
        points.append(SweepPoint(profile, users, str(run_dir), summary, check_slo(summary, cfg.slo)))
    return points


def launch_argv(cfg: SweepConfig, profile: Profile, run_dir: Path) -> tuple[list[str], dict[str, str]]:
    """(argv, env) of the backend for one profile: ``backend_cmd`` plus the rendered engine flags. Files the
    backend reads (TensorRT-LLM's options YAML) are written into ``run_dir``."""
    from bench.profiles.render import engine_flags

    flags = engine_flags(profile, cfg.backend, files_dir=str(run_dir))
    for path, text in flags.files.items():
        write_bytes(Path(path), text)
    return shlex.split(cfg.backend_cmd) + list(flags.args), dict(flags.env)


def sweep_profiles(cfg: SweepConfig) -> list[SweepPoint]:
    """For each profile: launch the backend with it, sweep the levels, stop it. All profiles are checked
    against the backend before the first launch, so a bad one fails fast."""
    from bench.profiles.store import load_profile
    from lorafleet.processes import ManagedServer, ServerSpec

    profiles = [load_profile(ref) for ref in cfg.profiles]
    launches = [(p, *launch_argv(cfg, p, Path(cfg.out_dir) / p.name)) for p in profiles]
    points = []
    for profile, argv, env in launches:
        run_dir = Path(cfg.out_dir) / profile.name
        write_json(run_dir / "launch.json", {"profile": profile_to_mapping(profile), "argv": argv, "env": env})
        Console(stderr=True).print(f"[bold]starting {cfg.backend} with profile {profile.name}[/] (log: {run_dir / 'server.log'})")
        with ManagedServer(ServerSpec(profile.name, argv, env, run_dir / "server.log", cfg.start_timeout_s)) as server:
            points += sweep_levels(cfg, server.base_url, run_dir, profile=profile.name)
    return points


@dataclass(frozen=True, slots=True)
class SweepResult:
    points: tuple[SweepPoint, ...]
    best: SweepPoint | None
    slo: Slo

    def to_json(self) -> dict:
        return {"slo": str(self.slo), "slo_limits": [dataclasses.asdict(lim) for lim in self.slo.limits],
                "max_error_rate": self.slo.max_error_rate, "best": self.best.to_json() if self.best else None,
                "points": [p.to_json() for p in self.points]}


def run(cfg: SweepConfig) -> SweepResult:
    """Run the sweep and write ``sweep.json`` and ``report.html`` into ``cfg.out_dir``."""
    points = sweep_profiles(cfg) if cfg.profiles else sweep_levels(cfg, cfg.target, Path(cfg.out_dir))
    result = SweepResult(tuple(points), best_point(points), cfg.slo)
    write_json(Path(cfg.out_dir) / "sweep.json", result.to_json())
    write_sweep_report(Path(cfg.out_dir), result)
    return result


def print_result(result: SweepResult) -> None:
    from rich.table import Table

    table = Table(title=f"sweep, SLO: {result.slo}")
    for col in ("setting", "out tok/s", "req/s", "TTFT p99 ms", "TPOT p99 ms", "errors", "SLO"):
        table.add_column(col, justify="right")
    for p in result.points:
        s = p.summary
        mark = "[green]best[/]" if p is result.best else ("met" if p.meets_slo else f"[red]{'; '.join(p.violations)}[/]")
        table.add_row(p.label, f"{s.output_tok_s:.1f}", f"{s.req_s:.2f}", f"{s.ttft_ms.p99 or 0:.0f}",
                      f"{s.tpot_ms.p99 or 0:.1f}", str(s.num_errors), mark)
    console = Console()
    console.print(table)
    console.print(f"best: {result.best.label}" if result.best else "[red]no setting meets the SLO[/]")


def run_cli(cfg: SweepConfig) -> SweepResult:
    result = run(cfg)
    print_result(result)
    print(f"results in {cfg.out_dir}: sweep.json, report.html")
    return result
