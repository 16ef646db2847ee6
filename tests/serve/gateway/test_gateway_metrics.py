"""The gateway's /metrics, parsed with prometheus_client's own parser: TTFT, TPOT, ITL, e2e and queue-time
histograms and token counters, labelled by base model, adapter, backend and status."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(60)
LABELS = {"base_model", "adapter", "backend", "status"}


def scrape(gw) -> dict:
    with gw.client() as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def sample(families: dict, family: str, suffix: str, **labels: str) -> float:
    return sum(s.value for s in families[family].samples if s.name == family + suffix and labels.items() <= s.labels.items())


def test_latency_histograms_and_token_counters(fake_server, adapter_dir, run_gateway, fast_limits, backend_entry, tmp_path) -> None:
    fake = fake_server("vllm", "base")
    fake.configure(token_delay_s=0.02, first_token_delay_s=0.1)
    adapter_dir("sql")
    gw = run_gateway({"backends": [backend_entry("r0", fake.url)], "adapter_roots": [str(tmp_path / "adapters")],
                      "adapters": [{"name": "sql", "path": "sql", "base_model": "base"}], "limits": fast_limits})
    gw.wait_healthy("r0")
    client = gw.openai()
    for model in ("base", "sql", "sql"):
        chunks = list(client.completions.create(model=model, prompt="four words of prompt", max_tokens=5, stream=True))
        assert len(chunks) == 5
    client.completions.create(model="sql", prompt="x", max_tokens=3)  # non-streaming: no TTFT/TPOT sample
    m = scrape(gw)

    ttft = m["gateway:time_to_first_token_seconds"]
    assert ttft.type == "histogram"
    assert {tuple(sorted(s.labels)) for s in ttft.samples if s.name.endswith("_count")} == {tuple(sorted(LABELS))}
    sql = {"base_model": "base", "adapter": "sql", "backend": "r0", "status": "200"}
    base = {**sql, "adapter": ""}
    assert sample(m, "gateway:time_to_first_token_seconds", "_count", **sql) == 2
    assert sample(m, "gateway:time_to_first_token_seconds", "_count", **base) == 1
    assert sample(m, "gateway:time_to_first_token_seconds", "_sum", **base) >= 0.1  # the fake's prefill delay
    assert sample(m, "gateway:time_to_first_token_seconds", "_bucket", le="0.05", **base) == 0
    tpot_count = sample(m, "gateway:time_per_output_token_seconds", "_count", **sql)
    tpot_mean = sample(m, "gateway:time_per_output_token_seconds", "_sum", **sql) / tpot_count
    assert tpot_count == 2 and 0.015 <= tpot_mean <= 0.2
    assert sample(m, "gateway:inter_token_latency_seconds", "_count", **sql) == 8  # 4 gaps x 2 streams
    assert sample(m, "gateway:e2e_request_latency_seconds", "_count", **sql) == 3
    assert sample(m, "gateway:request_queue_time_seconds", "_count", **sql) == 3
    assert sample(m, "gateway:requests", "_total", **sql) == 3
    assert sample(m, "gateway:completion_tokens", "_total", **sql) == 13
    assert sample(m, "gateway:prompt_tokens", "_total", **base) == 5  # the fake counts 4 characters per token
    assert sample(m, "gateway:adapter_loads", "_total", backend="r0", adapter="sql", result="ok") == 1
    assert sample(m, "gateway:backend_healthy", "", backend="r0") == 1


def test_failed_requests_are_labelled_with_their_status(fake_server, run_gateway, fast_limits, backend_entry) -> None:
    fake = fake_server("vllm", "base")
    gw = run_gateway({"backends": [backend_entry("r0", fake.url)], "limits": {**fast_limits, "max_retries": 0}})
    gw.wait_healthy("r0")
    fake.configure(fail_status=500)
    with gw.client() as c:
        assert c.post("/v1/completions", json={"model": "base", "prompt": "x"}).status_code == 502
    m = scrape(gw)
    assert sample(m, "gateway:requests", "_total", base_model="base", adapter="", backend="r0", status="502") == 1
