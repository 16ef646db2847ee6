"""``lorafleet profile tune``: launch a backend with each candidate profile, sweep the load, keep the best
setting that meets the SLO, and save the evidence.

Writes into ``--out``: ``tune.json`` (the SLO, every run's summary, launch command and directory, the winner),
``winner.yaml`` (the winning profile, its figures as comments), the sweep's ``sweep.json`` and ``report.html``,
and per profile ``<profile>/launch.json``, ``server.log`` and ``users-<n>/`` run directories holding each
request's timings (``requests.jsonl``), from which every figure can be recomputed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from lorafleet.atomic import write_bytes, write_json
from bench.sweep import SweepPoint, SweepResult, print_result
from bench.sweep import run as run_sweep
from lorafleet.config.load import SweepConfig
from lorafleet.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TuneResult:
    sweep: SweepResult
    winner: SweepPoint | None
    evidence_path: Path
    winner_path: Path | None


def winner_yaml(point: SweepPoint, cfg: SweepConfig) -> str:
    """The winning profile as YAML, headed by comments with what it achieved and under which SLO."""
    launch = json.loads((Path(point.run_dir).parent / "launch.json").read_text())
    s = point.summary
    header = [f"# lorafleet profile tune winner: {point.label}, backend {cfg.backend}, workload {cfg.workload}",
              f"# SLO {cfg.slo}: met with TTFT p99 {s.ttft_ms.p99:.1f} ms, TPOT p99 {s.tpot_ms.p99:.1f} ms, "
              f"{s.output_tok_s:.1f} output tok/s, {s.num_requests} requests, {s.num_errors} failed",
              f"# clients: {point.users} concurrent users; evidence: tune.json and {point.run_dir}"]
    return "\n".join(header) + "\n" + yaml.safe_dump(launch["profile"], sort_keys=False)


def run(cfg: SweepConfig) -> TuneResult:
    """Tune and save the evidence; ``winner`` is None when no candidate meets the SLO."""
    if not cfg.profiles:
        raise ConfigError("profile tune needs at least one candidate --profile")
    out = Path(cfg.out_dir)
    result = run_sweep(cfg)
    best = result.best
    evidence = {"backend": cfg.backend, "backend_cmd": cfg.backend_cmd, "workload": cfg.workload, "users": list(cfg.users),
                "duration_s": cfg.duration_s, "warmup_s": cfg.warmup_s, **result.to_json(),
                "winner": None if best is None else {"profile": best.profile, "users": best.users, "run_dir": best.run_dir,
                                                     "launch": json.loads((Path(best.run_dir).parent / "launch.json").read_text())}}
    evidence_path = write_json(out / "tune.json", evidence)
    (out / "winner.yaml").unlink(missing_ok=True)  # never leave an older run's winner beside this evidence
    winner_path = write_bytes(out / "winner.yaml", winner_yaml(best, cfg)) if best else None
    return TuneResult(result, best, evidence_path, winner_path)


def run_cli(cfg: SweepConfig) -> TuneResult:
    res = run(cfg)
    print_result(res.sweep)
    if res.winner is None:
        raise ConfigError(f"no candidate meets the SLO ({cfg.slo}); evidence in {res.evidence_path}")
    print(f"winner: {res.winner.label} -> {res.winner_path} (evidence: {res.evidence_path})")
    return res
