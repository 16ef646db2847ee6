"""The soak in its CI form (issue #10): ``lorafleet bench soak --minutes 2`` as a user runs it, against a gateway
and two ``lorafleet serve`` replicas with more adapters than slots. Its summary is merged into
bench/results/reliability.json as ``soak_short`` (the 30-minute run of record writes ``soak``).

Asserted: no 5xx from the gateway, no failed request, RSS growth after warm-up under 10%, nothing in flight,
queued, running or holding KV blocks once the load stops, and the API key in no log. The p99 TTFT drift is
measured and recorded; a 2-minute window on a shared machine is too short to hold it to 20% (the 30-minute
run is).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.reliability import read_results, results_path
from bench.soak import API_KEY

pytestmark = pytest.mark.timeout(900)


def test_two_minute_soak(soak_run, refusals) -> None:
    out = soak_run
    cmd = [str(Path(sys.executable).with_name("lorafleet")), "bench", "soak", "--minutes", "2", "--out", str(out),
           "--replicas", "2", "--num-adapters", "2", "--max-adapters", "1", "--users", "3", "--calibrate", "10",
           "--sample-interval", "5", "--json", str(results_path())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=840, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "150"})
    assert (out / "soak.json").is_file(), f"exit {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads((out / "soak.json").read_text())
    recorded = read_results()["soak_short"]
    assert {k: recorded[k] for k in ("minutes", "requests", "gateway_5xx")} == \
        {k: result[k] for k in ("minutes", "requests", "gateway_5xx")}
    assert result["requests"] >= 20, result
    assert result["gateway_5xx"] == 0 and result["failed_requests"] == 0, result["errors"]
    assert result["rss_growth_pct"] is not None and result["rss_growth_pct"] < 10, result["rss_growth_pct_by_process"]
    assert not result["leaked"], result["leaked"]
    assert result["ttft_p99_drift_pct"] is not None
    assert done.returncode in (0, 2)
    if done.returncode == 2:  # only the drift target may be missed in CI (see the module docstring)
        assert [k for k, t in result["targets"].items() if t["met"] is False] == ["ttft_drift"], done.stderr
    logs = {p.name: p.read_text(errors="replace") for p in (out / "logs").glob("*.log")}
    assert "gateway.log" in logs and len(logs) == 3
    for name, text in logs.items():
        refusals.expect(f"soak: API key in {name}", API_KEY not in text, API_KEY in text, "absent")
