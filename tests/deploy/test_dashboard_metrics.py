"""Every metric the Grafana dashboard and the HPAs use is one the gateway or the engines export: each query is
parsed as PromQL, and each metric it selects, each label it filters or groups by, is looked up in a live
/metrics scrape of the CPU stack's gateway and `lorafleet serve` after real traffic (base model, stream,
adapter load, an error)."""

from __future__ import annotations

import httpx
import pytest

from tests.deploy.helpers import MODEL, find
from tests.deploy.promql_check import Exported, adapter_rules, check, dashboard_queries, parse_query

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def exported(cpu_stack) -> Exported:
    """Scrapes of the gateway and the engine after base, streaming, adapter and failing requests."""
    gw = cpu_stack.gateway.url
    chat = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}
    with httpx.Client(timeout=120) as c:
        assert c.post(f"{gw}/v1/chat/completions", json={**chat, "model": MODEL}).status_code == 200
        assert c.post(f"{gw}/v1/chat/completions", json={**chat, "model": "a0"}).status_code == 200
        with c.stream("POST", f"{gw}/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 4,
                                                             "stream": True}) as r:
            assert r.status_code == 200 and b"[DONE]" in r.read()
        assert c.post(f"{gw}/v1/chat/completions", json={**chat, "model": "no-such-model"}).status_code == 404
        assert c.post(f"{cpu_stack.engine.url}/v1/chat/completions",
                      json={**chat, "model": MODEL, "max_tokens": 0}).status_code == 400
        found = Exported()
        for url in (gw, cpu_stack.engine.url):
            r = c.get(f"{url}/metrics")
            assert r.status_code == 200
            found.add(r.text)
    return found


def test_dashboard_queries_use_exported_metrics(exported) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 30
    problems = [p for q in queries for p in check(q, exported)]
    assert not problems, "\n".join(problems)
    used = {m for q in queries for m, _ in q.selectors}
    # What the dashboard must show (issue #9): TTFT/TPOT percentiles, tokens/s, queue depth, KV usage,
    # prefix-cache hit rate, adapter loads, errors by status.
    for metric in ("gateway:time_to_first_token_seconds_bucket", "gateway:time_per_output_token_seconds_bucket",
                   "gateway:completion_tokens_total", "gateway:requests_queued", "vllm:num_requests_waiting",
                   "vllm:kv_cache_usage_perc", "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total",
                   "gateway:adapter_loads_total", "gateway:requests_total"):
        assert metric in used, metric


def test_the_check_catches_a_wrong_name_or_label(exported) -> None:
    """The check above is not vacuous: a misspelt metric, label or grouping is reported."""
    bad = parse_query('sum by (tenant) (rate(gateway:request_total{base_model="x"}[5m])) + '
                      'vllm:kv_cache_usage_perc{adapter="y"}', "probe")
    problems = check(bad, exported)
    assert any("gateway:request_total is not exported" in p for p in problems)
    assert any("vllm:kv_cache_usage_perc has no label(s) {'adapter'}" in p for p in problems)
    assert any("grouped by {'tenant'}" in p for p in check(parse_query(
        "sum by (tenant) (rate(gateway:requests_total[5m]))", "probe"), exported))


def test_hpa_metrics_come_from_exported_metrics(overlays, exported) -> None:
    """Each HPA's custom metric is produced by a prometheus-adapter rule over exported metrics."""
    by_name = adapter_rules()
    hpas = [h for docs in overlays.values() for h in find(docs, "HorizontalPodAutoscaler")]
    assert hpas
    names = [m["pods"]["metric"]["name"] for h in hpas for m in h["spec"]["metrics"] if m["type"] == "Pods"]
    assert names and set(names) <= set(by_name), set(names) - set(by_name)
    for rule in by_name.values():
        series = parse_query(rule["seriesQuery"], f"rule {rule['name']['as']} seriesQuery")
        assert {m for m, _ in series.selectors} == {rule["name"]["matches"].strip("^$")}
        metrics_query = rule["metricsQuery"].replace("<<.LabelMatchers>>", 'namespace="ns",pod="p"')
        q = parse_query(metrics_query.replace("<<.GroupBy>>", "pod"), f"rule {rule['name']['as']} metricsQuery")
        problems = check(series, exported) + check(q, exported)
        assert not problems, problems
    # The in-flight gauge is per backend inside one gateway pod; the HPA sees their sum per pod.
    assert "sum(gateway:requests_in_flight" in by_name["lorafleet_gateway_requests_in_flight"]["metricsQuery"]
