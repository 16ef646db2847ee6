"""``locust -f bench/locustfile.py`` as a user runs it (issue #8, "done when" 1): against a real
``lorafleet serve`` it reports TTFT/TPOT/E2E entries in locust's own CSV; failed requests are reported as
failures without crashing; set-up errors stop locust with a message."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.openai_client import StreamError, StreamTimer

ROOT = Path(__file__).resolve().parents[2]
LOCUST = str(Path(sys.executable).with_name("locust"))
TINY = "api: completions\nseed: 7\nprompt_tokens: {kind: uniform, min: 16, max: 48}\noutput_tokens: 6\nthink_time_s: 0\n"

pytestmark = pytest.mark.timeout(300)


def run_locust(tmp_path: Path, host: str, workload: str, *extra: str, seconds: int = 5) -> subprocess.CompletedProcess:
    (tmp_path / "w.yaml").write_text(workload)
    cmd = [LOCUST, "-f", "bench/locustfile.py", "--headless", "--host", host, "--users", "2", "--spawn-rate", "2",
           "--run-time", f"{seconds}s", "--csv", str(tmp_path / "loc"), "--workload", str(tmp_path / "w.yaml"),
           "--records", str(tmp_path / "req.jsonl"), "--stop-timeout", "60", *extra]  # in-flight requests finish
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)


def stats_rows(tmp_path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(tmp_path / "loc_stats.csv") as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}


def test_plain_locust_reports_ttft_tpot_and_e2e_entries(server, locust_run: Path):
    proc = run_locust(locust_run, server.base_url, TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = stats_rows(locust_run)
    ttft, tpot, e2e = (rows[(kind, server.model)] for kind in ("TTFT", "TPOT", "E2E"))
    assert int(e2e["Request Count"]) >= 2 and int(e2e["Failure Count"]) == 0  # each user finished at least one
    assert ttft["Request Count"] == tpot["Request Count"] == e2e["Request Count"]
    assert 0 < float(ttft["Average Response Time"]) < float(e2e["Average Response Time"])
    assert 0 < float(tpot["Average Response Time"]) < float(e2e["Average Response Time"])
    assert float(e2e["Average Content Size"]) == 6.0  # response length = output tokens (ignore_eos)
    assert float(ttft["99%"]) > 0 and float(tpot["50%"]) > 0  # locust's own percentiles
    records = [json.loads(line) for line in (locust_run / "req.jsonl").read_text().splitlines()]
    assert len(records) >= int(e2e["Request Count"])
    assert all(r["ok"] and r["output_tokens"] == 6 and 0 < r["ttft_s"] < r["e2e_s"] for r in records)
    assert (locust_run / "loc_stats_history.csv").exists() and "Traceback" not in proc.stderr


def test_failed_requests_are_failures_not_crashes(server, locust_run: Path):
    # prompts of up to 1600 words against a 1024-token context: with seed 3, user 0's first three prompts
    # (1427, 1422, 1229 words) get HTTP 400 and user 1's first (132 words) succeeds
    workload = TINY.replace("max: 48", "max: 1600").replace("seed: 7", "seed: 3")
    proc = run_locust(locust_run, server.base_url, workload, seconds=6)
    assert proc.returncode == 1, proc.stderr[-3000:]  # locust's exit code when any request failed
    assert "Traceback" not in proc.stderr
    e2e = stats_rows(locust_run)[("E2E", server.model)]
    assert 0 < int(e2e["Failure Count"]) < int(e2e["Request Count"]), proc.stderr[-3000:]
    with open(locust_run / "loc_failures.csv") as f:
        failures = list(csv.DictReader(f))
    assert failures and all(r["Method"] == "E2E" and "HTTP 400" in r["Error"] and "maximum context length" in r["Error"]
                            for r in failures)
    records = [json.loads(line) for line in (locust_run / "req.jsonl").read_text().splitlines()]
    assert any(r["ok"] for r in records) and any(not r["ok"] and "HTTP 400" in r["error"] for r in records)


def test_set_up_errors_stop_locust_with_a_message(server, locust_run: Path):
    proc = run_locust(locust_run, server.base_url, TINY, "--model", "no-such-model", seconds=30)
    assert proc.returncode == 2
    assert "error: model 'no-such-model' is not served by the target" in proc.stderr
    assert "Traceback" not in proc.stderr and not (locust_run / "req.jsonl").exists()


def test_stream_timer_reads_chat_and_completion_streams():
    timer = StreamTimer(10.0)
    events = [{"choices": [{"delta": {"role": "assistant"}}]}, {"choices": [{"delta": {"content": "Hi"}}]},
              {"choices": [{"delta": {"content": " there"}}]}, {"choices": [{"delta": {"content": "!"}}]},
              {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}}]
    for t, event in zip((10.1, 10.5, 10.7, 10.9, 11.0), events):
        timer.feed("data: " + json.dumps(event), t)
    timer.feed("data: [DONE]", 11.0)
    r = timer.result(11.2)
    assert (r.ttft_s, r.e2e_s, r.output_tokens, r.prompt_tokens) == pytest.approx((0.5, 1.2, 3, 12))
    assert r.tpot_s == pytest.approx(0.4 / 2)  # first to last text event over tokens - 1
    no_usage = StreamTimer(0.0)
    for t in (1.0, 2.0):
        no_usage.feed('data: {"choices": [{"text": "x"}]}', t)
    assert no_usage.result(2.0).output_tokens == 2  # counted text events without a usage event
    with pytest.raises(StreamError, match="stream error"):
        StreamTimer(0.0).feed('data: {"error": {"message": "backend died"}}', 1.0)
