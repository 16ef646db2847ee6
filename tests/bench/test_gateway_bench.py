"""``lorafleet bench gateway`` end to end at a small size (fast backend, our gateway, the LiteLLM proxy), the fast
backend's protocol, and the results bookkeeping.

Speed targets are judged by the committed full run (bench/results/gateway.json), not here: this machine is
shared, and a timed unit test would flake. What is checked here holds however loaded the machine is: the
run works against real servers, its numbers are consistent, and LiteLLM, which adds tens of milliseconds
per request, is measured slower than our gateway.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.fast_backend import full_answer, stream_events
from bench.gateway import run, summarise
from lorafleet.config.gateway_bench import GatewayBenchConfig
from lorafleet.errors import ConfigError



def test_fast_backend_speaks_openai_sse() -> None:
    events = stream_events("chat", {"model": "m", "max_tokens": 3, "stream_options": {"include_usage": True}}, "id1")
    assert events[-1] == b"data: [DONE]\n\n" and all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:4]] == [" w0", " w1", " w2", None]
    assert chunks[3]["choices"][0]["finish_reason"] == "length" and chunks[4]["usage"]["completion_tokens"] == 3
    assert full_answer("text", {"max_tokens": 500}, "id2")["usage"]["completion_tokens"] == 64  # capped


@pytest.mark.timeout(900)
def test_small_run_against_real_servers(bench_out: Path, litellm_python: Path) -> None:
    cfg = GatewayBenchConfig(json_path=bench_out / "gateway.json", ttft_requests=150, litellm_ttft_requests=100,
                             concurrency=16, throughput_requests=400, litellm_throughput_requests=64, repeats=1,
                             litellm_python=str(litellm_python))
    res = run(cfg)
    assert json.loads(cfg.json_path.read_text()) == json.loads(json.dumps(res))
    t = res["ttft_ms"]
    assert t["direct"]["n"] == t["gateway"]["n"] == 150
    assert 0 < t["direct"]["p50"] <= t["direct"]["p99"] and 0 < t["gateway"]["p50"] <= t["gateway"]["p99"]
    assert res["overhead_ms"]["p50"] == pytest.approx(t["gateway"]["p50"] - t["direct"]["p50"])
    assert res["throughput_rps"]["direct"] > 0 and res["throughput_rps"]["gateway"] > 0
    assert res["gateway_cpu_us_per_request"] is None or res["gateway_cpu_us_per_request"] > 0
    assert set(res["targets"]) == {"overhead_p50", "overhead_p99", "throughput", "vs_litellm_overhead",
                                   "vs_litellm_throughput"}
    lite = res["litellm"]
    assert t["litellm"]["n"] == 100 and res["versions"]["litellm"] == "1.108.0"
    assert lite["overhead_ms"]["p50"] > res["overhead_ms"]["p50"]
    assert lite["throughput_rps"] < res["throughput_rps"]["gateway"]


def test_summary_targets(tmp_path: Path) -> None:
    cfg = GatewayBenchConfig(json_path=tmp_path / "x.json")
    ttft = {"direct": {"p50": 0.5, "p99": 3.0, "n": 1000}, "gateway": {"p50": 1.2, "p99": 6.0, "n": 1000},
            "litellm": {"p50": 16.5, "p99": 40.0, "n": 300}}
    tp = {"direct": {"median": 1000.0, "runs": [1000.0]}, "gateway": {"median": 600.0, "runs": [600.0]},
          "litellm": {"median": 30.0, "runs": [30.0]}}
    res = summarise(cfg, ttft, tp, 300.0)
    assert res["overhead_ms"] == {"p50": pytest.approx(0.7), "p99": pytest.approx(3.0)}
    assert res["litellm"] == {"overhead_ms": {"p50": pytest.approx(16.0), "p99": pytest.approx(37.0)}, "throughput_rps": 30.0}
    assert all(t["met"] for t in res["targets"].values())
    slow = summarise(cfg, {**ttft, "gateway": {"p50": 4.0, "p99": 12.0, "n": 1000}},
                     {**tp, "gateway": {"median": 140.0, "runs": [140.0]}}, None)
    assert [k for k, t in slow["targets"].items() if not t["met"]] == list(slow["targets"])


def test_config_and_missing_litellm(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="concurrency must be positive"):
        GatewayBenchConfig(json_path=tmp_path / "x.json", concurrency=0)
    with pytest.raises(ConfigError, match="at least 100"):
        GatewayBenchConfig(json_path=tmp_path / "x.json", ttft_requests=10)
    with pytest.raises(ConfigError, match="make litellm-venv"):
        run(GatewayBenchConfig(json_path=tmp_path / "x.json", litellm_python=str(tmp_path / "nope" / "python")))


def test_cli_help_lists_every_flag() -> None:
    from typer.testing import CliRunner

    from lorafleet.cli import app

    out = CliRunner().invoke(app, ["bench", "gateway", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--json", "--ttft-requests", "--concurrency", "--throughput-requests", "--litellm-python", "--repeats"):
        assert flag in out
