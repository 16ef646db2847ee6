"""Prometheus metrics of the real server, parsed with prometheus_client's own parser, and the server's
reaction to clients that go away (the engine must stop working for them)."""

from __future__ import annotations

import time
from collections.abc import Callable
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(240)  # includes starting the server on first use


class Metrics:
    """One scrape of /metrics. ``get(name, **labels)`` sums the samples named ``name`` carrying ``labels``."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def get(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())


def scrape(http: httpx.Client) -> Metrics:
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return Metrics(r.text)


def poll(http: httpx.Client, ok: Callable[[Metrics], bool], timeout_s: float) -> tuple[Metrics, bool]:
    """Scrape every 0.1 s until ``ok`` holds or ``timeout_s`` passes; the last scrape and whether ``ok`` held."""
    deadline = time.monotonic() + timeout_s
    while True:
        m = scrape(http)
        if ok(m):
            return m, True
        if time.monotonic() > deadline:
            return m, False
        time.sleep(0.1)


def wait_until_idle(http: httpx.Client, timeout_s: float = 3.0) -> Metrics:
    """Poll until no request runs or waits; fail after ``timeout_s``."""
    m, idle = poll(http, lambda m: m.get("vllm:num_requests_running") == 0 and m.get("vllm:num_requests_waiting") == 0,
                   timeout_s)
    if not idle:
        pytest.fail(f"requests still running after {timeout_s}s: running={m.get('vllm:num_requests_running')}")
    return m


def stream_usage(http: httpx.Client, path: str, body: dict) -> dict:
    """Run a streaming request to the end and return its usage chunk."""
    usage = None
    with http.stream("POST", path, json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                usage = httpx.Response(200, content=line[6:]).json().get("usage") or usage
    assert usage is not None
    return usage


def test_request_metrics_count_what_was_served(http: httpx.Client, server) -> None:
    before = wait_until_idle(http)
    model = server.model
    usages = [
        http.post("/v1/completions", json={"model": model, "prompt": "The sky is", "max_tokens": 6, "temperature": 0}).json()["usage"],
        http.post("/v1/chat/completions", json={"model": model, "max_tokens": 5, "temperature": 0,
                                                "messages": [{"role": "user", "content": "Say hi"}]}).json()["usage"],
        stream_usage(http, "/v1/completions", {"model": model, "prompt": "Roses are red,", "max_tokens": 7, "temperature": 0}),
        stream_usage(http, "/v1/chat/completions", {"model": "a0", "max_tokens": 4, "temperature": 0, "ignore_eos": True,
                                                    "messages": [{"role": "user", "content": "Count to three"}]}),
    ]
    after = wait_until_idle(http)

    def delta(name: str, **labels: str) -> float:
        return after.get(name, **labels) - before.get(name, **labels)

    n, prompt_tokens = len(usages), sum(u["prompt_tokens"] for u in usages)
    output_tokens = sum(u["completion_tokens"] for u in usages)
    assert delta("vllm:time_to_first_token_seconds_count", model_name=model) == n
    assert delta("vllm:e2e_request_latency_seconds_count") == n
    assert delta("vllm:request_queue_time_seconds_count") == n
    assert delta("vllm:request_success_total") == n
    assert delta("vllm:prompt_tokens_total", model_name=model) == prompt_tokens
    assert delta("vllm:generation_tokens_total") == output_tokens
    assert delta("vllm:inter_token_latency_seconds_count") == output_tokens - n, "one ITL per token after the first"
    assert delta("vllm:request_time_per_output_token_seconds_count") == sum(u["completion_tokens"] > 1 for u in usages)
    assert delta("vllm:prefix_cache_queries_total") == prompt_tokens
    assert delta("vllm:time_to_first_token_seconds_sum") > 0
    # Histogram buckets are cumulative and end in +Inf == count.
    assert after.get("vllm:time_to_first_token_seconds_bucket", le="+Inf") == after.get("vllm:time_to_first_token_seconds_count")


def test_prefix_cache_hits_grow_when_a_prompt_is_resent(http: httpx.Client, server) -> None:
    prompt = f"Report {uuid.uuid4().hex}: " + "The printing press changed how knowledge was shared. " * 8
    body = {"model": server.model, "prompt": prompt, "max_tokens": 2, "temperature": 0}
    first = http.post("/v1/completions", json=body).json()["usage"]
    m1 = wait_until_idle(http)
    second = http.post("/v1/completions", json=body).json()["usage"]
    m2 = wait_until_idle(http)
    n = first["prompt_tokens"]
    assert n > 64 and first["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert cached == (n - 1) // 16 * 16, "every full block but the one holding the last token is reused"
    assert m2.get("vllm:prefix_cache_hits_total") - m1.get("vllm:prefix_cache_hits_total") == cached
    assert m2.get("vllm:prefix_cache_queries_total") - m1.get("vllm:prefix_cache_queries_total") == n


def test_engine_gauges_and_cache_config(http: httpx.Client, server) -> None:
    m = wait_until_idle(http)
    for name in ("vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:num_preemptions", "vllm:prefix_cache_hits", "vllm:prefix_cache_queries", "vllm:cache_config_info"):
        assert name in m.families, name
    assert m.families["vllm:kv_cache_usage_perc"].type == "gauge"
    assert m.families["vllm:prompt_tokens"].type == "counter"
    assert m.families["vllm:time_to_first_token_seconds"].type == "histogram"
    assert m.get("vllm:kv_cache_usage_perc") == 0.0
    (info,) = m.families["vllm:cache_config_info"].samples
    assert info.labels == {"block_size": "16", "num_gpu_blocks": "256", "enable_prefix_caching": "True"}
    assert m.get("lorafleet:lora_resident_adapters") <= 4


def test_streaming_client_disconnect_frees_the_engine(server) -> None:
    body = {"model": server.model, "prompt": "Write a very long essay about the sea.", "max_tokens": 900,
            "ignore_eos": True, "temperature": 0, "stream": True}
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        wait_until_idle(http)
        with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            chunks = 0
            for line in r.iter_lines():
                chunks += line.startswith("data: ")
                if chunks >= 5:
                    break
            # The gauges are the engine's last published snapshot; on a loaded machine that can lag the stream,
            # so poll briefly (the stream stays open and unread meanwhile).
            during, _ = poll(http, lambda m: (m.get("vllm:num_requests_running"), m.get("vllm:kv_cache_usage_perc") > 0)
                             == (1, True), 5.0)
            running, usage = during.get("vllm:num_requests_running"), during.get("vllm:kv_cache_usage_perc")
            assert (running, usage > 0) == (1, True), (
                f"running={running} waiting={during.get('vllm:num_requests_waiting')} kv_usage={usage} "
                f"preemptions={during.get('vllm:num_preemptions_total')} after {chunks} chunks")
        # Leaving the block closes the connection after 5 of 900 tokens.
        after = wait_until_idle(http, timeout_s=3.0)
        assert after.get("vllm:kv_cache_usage_perc") == 0.0
        ok = http.post("/v1/completions", json={"model": server.model, "prompt": "Hi", "max_tokens": 2})
        assert ok.status_code == 200


def test_non_streaming_client_disconnect_frees_the_engine(server) -> None:
    body = {"model": server.model, "prompt": "Write a very long essay about mountains.", "max_tokens": 900,
            "ignore_eos": True, "temperature": 0}
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        wait_until_idle(http)
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/completions", json=body, timeout=httpx.Timeout(60, read=1.5))
        assert scrape(http).get("vllm:generation_tokens_total") >= 0
        wait_until_idle(http, timeout_s=3.0)
        assert http.get("/health").status_code == 200
