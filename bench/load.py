"""``lorafleet bench load``: run ``bench/locustfile.py`` headless and summarize what it recorded.

Locust runs in its own process (it monkey-patches the standard library with gevent). It writes its CSVs
(``locust_stats.csv``, ``locust_stats_history.csv``, ``locust_failures.csv``, ``locust_exceptions.csv``) and,
through the locustfile's ``--records``, one JSON line per request (``requests.jsonl``). The summary is
computed from those exact per-request timings, not from locust's rounded percentiles.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet.atomic import write_json
from lorafleet.config.load import LoadConfig
from lorafleet.errors import BackendError, ConfigError

LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Percentiles of one latency over the successful requests, in milliseconds (None without samples)."""

    count: int
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """The figures of one load run (``summary.json``)."""

    workload: str
    target: str
    users: int
    duration_s: float
    num_requests: int  #: started after the warm-up and finished (ok or failed)
    num_errors: int
    error_rate: float
    ttft_ms: LatencyStats
    tpot_ms: LatencyStats
    e2e_ms: LatencyStats
    output_tok_s: float  #: output tokens of successful requests per second of the measured window
    req_s: float  #: finished requests per second of the measured window
    mean_output_tokens: float
    mean_prompt_tokens: float | None
    window_s: float  #: from the first measured request's start to the last one's end
    errors: dict[str, int]  #: most common failure messages

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LoadSummary":
        stats = {k: LatencyStats(**data[k]) for k in ("ttft_ms", "tpot_ms", "e2e_ms")}
        return cls(**{**data, **stats})

    def value(self, key: str) -> float | None:
        """A figure by SLO key: ``ttft_p99``, ``tpot_mean``, ``e2e_p50``, ``error_rate``, ``output_tok_s``."""
        if key in ("error_rate", "output_tok_s", "req_s"):
            return getattr(self, key)
        metric, _, stat = key.partition("_")
        return getattr(getattr(self, f"{metric}_ms"), stat)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) with linear interpolation between order statistics (numpy's default)."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency_stats(seconds: list[float]) -> LatencyStats:
    ms = [1000 * s for s in seconds]
    if not ms:
        return LatencyStats(0, None, None, None, None)
    return LatencyStats(len(ms), sum(ms) / len(ms), percentile(ms, 0.5), percentile(ms, 0.9), percentile(ms, 0.99))


def read_records(path: Path) -> list[dict[str, Any]]:
    """The per-request lines of ``requests.jsonl`` (a torn last line, from a killed run, is skipped)."""
    records = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def measured(records: list[dict[str, Any]], warmup_s: float) -> list[dict[str, Any]]:
    """Records of requests started at least ``warmup_s`` after the first request."""
    if not records:
        return []
    t0 = min(r["start"] for r in records)
    return [r for r in records if r["start"] >= t0 + warmup_s]


def summarize(records: list[dict[str, Any]], *, workload: str, target: str, users: int, duration_s: float,
              warmup_s: float = 0.0) -> LoadSummary:
    """The :class:`LoadSummary` of ``records`` (as the locustfile writes them)."""
    recs = measured(records, warmup_s)
    ok = [r for r in recs if r["ok"]]
    ends = [r["start"] + r["e2e_s"] for r in ok] + [r["start"] for r in recs if not r["ok"]]
    window = max(ends) - min(r["start"] for r in recs) if recs else 0.0
    tokens = sum(r["output_tokens"] for r in ok)
    prompts = [r["prompt_tokens"] for r in ok if r.get("prompt_tokens") is not None]
    errors = Counter(r.get("error", "?") for r in recs if not r["ok"])
    return LoadSummary(
        workload=workload, target=target, users=users, duration_s=duration_s, num_requests=len(recs),
        num_errors=len(recs) - len(ok), error_rate=(len(recs) - len(ok)) / len(recs) if recs else 0.0,
        ttft_ms=latency_stats([r["ttft_s"] for r in ok]),
        tpot_ms=latency_stats([r["tpot_s"] for r in ok if r.get("tpot_s") is not None]),
        e2e_ms=latency_stats([r["e2e_s"] for r in ok]),
        output_tok_s=tokens / window if window > 0 else 0.0, req_s=len(recs) / window if window > 0 else 0.0,
        mean_output_tokens=tokens / len(ok) if ok else 0.0,
        mean_prompt_tokens=sum(prompts) / len(prompts) if prompts else None, window_s=window,
        errors=dict(errors.most_common(10)))


def locust_command(cfg: LoadConfig, workload_file: Path, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", cfg.target,
            "--users", str(cfg.users), "--spawn-rate", f"{cfg.spawn_rate:g}", "--run-time", f"{max(1, round(cfg.duration_s))}s",
            "--stop-timeout", f"{round(cfg.stop_timeout_s)}", "--csv", str(out / "locust"), "--csv-full-history",
            "--only-summary", "--exit-code-on-error", "0", "--loglevel", "WARNING",
            "--workload", str(workload_file), "--records", str(out / "requests.jsonl")]
    argv += ["--model", cfg.model] if cfg.model else []
    argv += ["--seed", str(cfg.seed)] if cfg.seed is not None else []
    return argv


def _run_locust(argv: list[str], cfg: LoadConfig, out: Path, show_progress: bool) -> None:
    """Run locust to completion with a progress bar of time and finished requests."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if cfg.api_key:
        env["LORAFLEET_API_KEY"] = cfg.api_key  # not on the command line, where `ps` would show it
    log_path = out / "locust.log"
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[done]} requests"),
               TimeElapsedColumn())
    with open(log_path, "w") as log, Progress(*columns, disable=not show_progress, transient=True) as progress:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        bar = progress.add_task(f"{cfg.users} users, {cfg.duration_s:g} s", total=cfg.duration_s, done=0)
        start = time.monotonic()
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                done = len(read_records(out / "requests.jsonl")) if show_progress else 0
                progress.update(bar, completed=min(time.monotonic() - start, cfg.duration_s), done=done)
        except BaseException:
            proc.terminate()
            proc.wait(30)
            raise
    if proc.returncode != 0:
        errors = [ln.split("error: ", 1)[1] for ln in log_path.read_text().splitlines() if "error: " in ln]
        if errors:
            raise ConfigError(errors[-1])
        raise BackendError(f"locust exited with code {proc.returncode}; see {log_path}")


def run(cfg: LoadConfig, show_progress: bool = True) -> LoadSummary:
    """One headless locust run into ``cfg.out_dir``: CSVs, requests.jsonl, summary.json, report.html."""
    from bench.report import write_load_report
    from bench.workloads import load_workload, workload_path

    workload = load_workload(cfg.workload)  # problems in the file surface here, before locust starts
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "requests.jsonl").unlink(missing_ok=True)  # the locustfile appends
    _run_locust(locust_command(cfg, workload_path(cfg.workload), out), cfg, out, show_progress)
    records = read_records(out / "requests.jsonl")
    summary = summarize(records, workload=workload.name, target=cfg.target, users=cfg.users, duration_s=cfg.duration_s,
                        warmup_s=cfg.warmup_s)
    write_json(out / "summary.json", {**summary.to_json(), "settings": {k: str(v) if isinstance(v, Path) else v
                                                                          for k, v in dataclasses.asdict(cfg).items()
                                                                          if k != "api_key"}})
    write_load_report(out, measured(records, cfg.warmup_s), summary)
    return summary


def print_summary(summary: LoadSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary.workload} @ {summary.users} users: {summary.target}")
    for col in ("metric", "mean", "p50", "p90", "p99"):
        table.add_column(col, justify="right")
    for name in ("ttft_ms", "tpot_ms", "e2e_ms"):
        s = getattr(summary, name)
        table.add_row(name, *("-" if v is None else f"{v:.1f}" for v in (s.mean, s.p50, s.p90, s.p99)))
    console = Console()
    console.print(table)
    console.print(f"{summary.num_requests} requests, {summary.num_errors} failed ({summary.error_rate:.1%}); "
                  f"{summary.output_tok_s:.1f} output tok/s, {summary.req_s:.2f} req/s over {summary.window_s:.1f} s")
    for message, n in summary.errors.items():
        console.print(f"  [red]{n} x[/] {message}")


def run_cli(cfg: LoadConfig) -> LoadSummary:
    summary = run(cfg)
    print_summary(summary)
    print(f"results in {cfg.out_dir}: summary.json, report.html, locust_*.csv, requests.jsonl")
    return summary
