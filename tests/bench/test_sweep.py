"""``lorafleet bench sweep``: SLO checks and the choice of the best setting, and a real concurrency sweep
against ``lorafleet serve`` whose sweep.json, per-level runs and report agree with each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.load import LatencyStats, LoadSummary
from bench.sweep import SweepPoint, best_point, check_slo
from lorafleet.cli import app
from lorafleet.config.load import SweepConfig, parse_slo

from tests.bench.test_load import assert_offline_report, assert_png


def summary(tok_s: float, ttft_p99: float, tpot_p99: float, errors: int = 0, requests: int = 10) -> LoadSummary:
    stats = LatencyStats(requests - errors, ttft_p99 / 2, ttft_p99 / 2, ttft_p99, ttft_p99)
    tpot = LatencyStats(requests - errors, tpot_p99 / 2, tpot_p99 / 2, tpot_p99, tpot_p99)
    return LoadSummary("w", "t", 1, 10.0, requests, errors, errors / requests, stats, tpot, stats, tok_s, 1.0, 5.0, 20.0,
                       10.0, {})


def point(users: int, s: LoadSummary, slo) -> SweepPoint:
    return SweepPoint(None, users, f"users-{users}", s, check_slo(s, slo))


def test_check_slo_and_best_point():
    slo = parse_slo("ttft_p99=2s,tpot_p99=100ms")
    assert check_slo(summary(50, 1999, 99), slo) == ()
    assert check_slo(summary(50, 2500, 120), slo) == ("ttft_p99 2500.0 ms > 2000 ms", "tpot_p99 120.0 ms > 100 ms")
    assert check_slo(summary(50, 100, 10, errors=1), slo) == ("error_rate 0.100 > 0.01",)
    assert check_slo(summary(50, 100, 10, errors=10), slo) == ("no successful requests",)
    points = [point(1, summary(40, 500, 50), slo), point(2, summary(70, 1900, 90), slo), point(4, summary(95, 3000, 95), slo)]
    assert best_point(points) is points[1]  # the most throughput among the settings that meet the SLO
    strict = parse_slo("ttft_p99=100ms")
    assert best_point([point(1, summary(40, 500, 50), strict)]) is None


def test_sweep_config_problems():
    with pytest.raises(Exception, match="give --target URL"):
        SweepConfig(out_dir=Path("x"))
    with pytest.raises(Exception, match="needs --backend-cmd containing"):
        SweepConfig(out_dir=Path("x"), profiles=("latency-chat",), backend_cmd="vllm serve m")
    res = CliRunner().invoke(app, ["bench", "sweep", "--out", "x", "--target", "http://h", "--users", "1,two"])
    assert res.exit_code == 2 and "--users: expected comma-separated integers" in res.output


@pytest.mark.timeout(600)
def test_concurrency_sweep_against_a_real_server(server, bench_out: Path):
    (bench_out / "w.yaml").write_text("api: completions\nprompt_tokens: 24\noutput_tokens: 5\nthink_time_s: 0\n")
    out = bench_out / "sweep"
    res = CliRunner().invoke(app, ["bench", "sweep", "--target", server.base_url, "--workload", str(bench_out / "w.yaml"),
                                   "--users", "1,2", "--duration", "4s", "--slo", "ttft_p99=120s,tpot_p99=30s",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    sweep = json.loads((out / "sweep.json").read_text())
    assert [p["users"] for p in sweep["points"]] == [1, 2]
    for p in sweep["points"]:
        run = json.loads((Path(p["run_dir"]) / "summary.json").read_text())
        assert run["users"] == p["users"] and run["output_tok_s"] == p["summary"]["output_tok_s"] > 0
        assert p["meets_slo"] and run["num_errors"] == 0
    best = max(sweep["points"], key=lambda p: p["summary"]["output_tok_s"])
    assert sweep["best"]["users"] == best["users"] and f"best: {best['users']} users" in res.output
    for png in sorted((out / "plots").glob("*.png")):
        assert_png(png)
    assert_offline_report(out / "report.html", sorted((out / "plots").glob("*.png")))
    assert "users-1/report.html" in (out / "report.html").read_text()
    # the same measurements under an SLO nothing meets: no best setting
    impossible = parse_slo("ttft_p99=0.001ms")
    points = [point(p["users"], LoadSummary.from_json(p["summary"]), impossible) for p in sweep["points"]]
    assert best_point(points) is None and all(p.violations for p in points)
