"""``lorafleet bench spec``: a small real run (its own ``lorafleet serve``), the results file's keys, targets and
the committed results, and one-line CLI errors. Speed targets live in bench/results/spec.json, not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.spec import summarise, workload
from lorafleet.config.spec import SpecBenchConfig
from lorafleet.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_small_real_run_writes_the_issue_keys(bench_out: Path, base_model_path) -> None:
    from bench.spec import run

    out = bench_out / "spec.json"
    cfg = SpecBenchConfig(json_path=out, model=str(base_model_path), output_tokens=24, num_prompts=2, repeats=1,
                          num_speculative_tokens=6, num_threads=1)
    run(cfg)
    res = json.loads(out.read_text())
    spec = res["spec"]
    assert set(spec) == {"tpot_ms_off", "tpot_ms_on", "acceptance_rate", "identical"}
    assert spec["identical"] is True, "greedy outputs equal with speculation on and off"
    assert spec["tpot_ms_off"] > 0 and spec["tpot_ms_on"] > 0 and 0 < spec["acceptance_rate"] <= 1
    assert res["details"]["draft_tokens"] > 0 and len(res["details"]["per_prompt"]) == 2
    assert res["settings"]["num_speculative_tokens"] == 6 and set(res["targets"]) == {"tpot", "identical"}


def test_summary_targets(tmp_path: Path) -> None:
    cfg = SpecBenchConfig(json_path=tmp_path / "x.json")
    per_prompt = [{"tpot_ms_off": [30.0, 32.0], "tpot_ms_on": [10.0, 12.0], "identical": True}]
    res = summarise(cfg, {"per_prompt": per_prompt, "identical": True, "draft_tokens": 100, "accepted_tokens": 60})
    assert res["spec"] == {"tpot_ms_off": 31.0, "tpot_ms_on": 11.0, "acceptance_rate": 0.6, "identical": True}
    assert res["targets"]["tpot"]["met"] and res["targets"]["identical"]["met"]
    slow = summarise(cfg, {"per_prompt": [{**per_prompt[0], "tpot_ms_on": [25.0, 27.0]}], "identical": False,
                           "draft_tokens": 0, "accepted_tokens": 0})
    assert not slow["targets"]["tpot"]["met"] and not slow["targets"]["identical"]["met"]
    assert slow["spec"]["acceptance_rate"] == 0.0


def test_committed_results_meet_the_targets() -> None:
    res = json.loads((ROOT / "bench" / "results" / "spec.json").read_text())
    spec = res["spec"]
    assert spec["identical"] is True and spec["tpot_ms_on"] <= 0.67 * spec["tpot_ms_off"]
    assert res["settings"]["output_tokens"] == 128


def test_workload_is_input_grounded() -> None:
    prompts = workload(8)
    assert len({p[0]["content"] for p in prompts}) == 8
    assert all(len(p[0]["content"]) > 400 for p in prompts), "each task carries its passage"


def test_config_and_cli_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"num_prompts must be in \[1, 8\], got 9; num_speculative_tokens"):
        SpecBenchConfig(json_path=tmp_path / "x.json", num_prompts=9, num_speculative_tokens=0)
    cli = Path(sys.executable).with_name("lorafleet")
    r = subprocess.run([str(cli), "bench", "spec", "--json", str(tmp_path / "x.json"), "--repeats", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: repeats must be positive, got 0"
