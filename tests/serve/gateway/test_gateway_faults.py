"""Failover and failure handling against vLLM protocol fakes that can be killed or told to misbehave:
retry before the first byte, a clean SSE error when a replica dies mid-stream, health checks, timeouts,
the bounded queue, client disconnects, and draining on shutdown. The gateway must stay healthy throughout."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.timeout(120)
STREAM = {"model": "base", "prompt": "tell me", "max_tokens": 20, "stream": True}


@pytest.fixture
def pair(fake_server, run_gateway, fast_limits, backend_entry):
    """Two fakes behind a round-robin gateway whose health checks are slow (a dead replica is not noticed
    by them during a test unless the test waits)."""
    def make(policy: str = "round_robin", **limits):
        fakes = [fake_server("vllm", "base"), fake_server("vllm", "base")]
        gw = run_gateway({"backends": [backend_entry(f"r{i}", f.url) for i, f in enumerate(fakes)],
                          "routing": {"policy": policy}, "limits": {**fast_limits, "health_interval_s": 60, **limits}})
        gw.wait_healthy("r0", "r1")
        return gw, fakes
    return make


def data_lines(text: str) -> list[str]:
    return [l[6:] for l in text.splitlines() if l.startswith("data: ")]


def assert_gateway_healthy(gw) -> None:
    assert httpx.get(f"{gw.url}/health", timeout=5).status_code == 200


def test_replica_killed_before_first_byte_is_retried_elsewhere(pair) -> None:
    gw, (r0, r1) = pair()
    r0.kill()
    with gw.client() as c:
        for _ in range(4):  # round robin sends every other request to the dead r0
            r = c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 2})
            assert r.status_code == 200 and r.json()["choices"][0]["text"] == " base#0 base#1"
            lines = data_lines(c.post("/v1/completions", json=STREAM).text)
            assert lines[-1] == "[DONE]"
    assert len(r1.requests()) == 8
    retries = [l for l in httpx.get(f"{gw.url}/metrics").text.splitlines() if l.startswith('gateway:retries_total{backend="r0"}')]
    assert retries and float(retries[0].split()[-1]) >= 4
    assert_gateway_healthy(gw)


def test_replica_crashing_on_request_and_5xx_are_retried(pair) -> None:
    gw, (r0, r1) = pair()
    r0.configure(die_on_request=True)
    r1.configure(fail_status=503)
    with gw.client() as c:
        first = c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 1})  # r0 dies, r1 503s
        assert first.status_code == 502 and "answered 503" in first.json()["error"]["message"]  # one retry only
        r1.configure(fail_status=None)
        for _ in range(3):
            r = c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 1})
            assert r.status_code == 200
    assert_gateway_healthy(gw)


def test_death_mid_stream_ends_with_an_error_event_quickly(fake_server, run_gateway, fast_limits, backend_entry) -> None:
    fake = fake_server("vllm", "base")
    fake.configure(die_after_events=3, token_delay_s=0.05)
    gw = run_gateway({"backends": [backend_entry("r0", fake.url)], "limits": fast_limits})
    gw.wait_healthy("r0")
    arrivals = []
    with gw.client() as c, c.stream("POST", "/v1/completions", json=STREAM) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic(), line[6:]))
    tokens = [a for a in arrivals if '"text"' in a[1]]
    assert len(tokens) == 3
    error = json.loads(arrivals[-1][1])
    assert error["error"]["code"] == 502 and "broke" in error["error"]["message"]
    assert arrivals[-1][0] - tokens[-1][0] < 2.0  # the death (0.2 s after the 3rd token) is reported at once
    assert all(a[1] != "[DONE]" for a in arrivals)
    assert_gateway_healthy(gw)
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'gateway:requests_total{adapter="",backend="r0",base_model="base",status="502"} 1.0' in metrics


def test_death_mid_stream_raises_in_the_openai_sdk(fake_server, run_gateway, fast_limits, backend_entry) -> None:
    fake = fake_server("vllm", "base")
    fake.configure(die_after_events=2, token_delay_s=0.02)
    gw = run_gateway({"backends": [backend_entry("r0", fake.url)], "limits": fast_limits})
    gw.wait_healthy("r0")
    got = []
    with pytest.raises(openai.APIError, match="broke"):
        for chunk in gw.openai().completions.create(model="base", prompt="x", max_tokens=20, stream=True):
            got.append(chunk.choices[0].text)
    assert got == [" base#0", " base#1"]


def test_health_checks_take_a_dead_replica_out_and_bring_it_back(fake_server, run_gateway, fast_limits, backend_entry) -> None:
    r0, r1 = fake_server("vllm", "base"), fake_server("vllm", "base")
    gw = run_gateway({"backends": [backend_entry("r0", r0.url), backend_entry("r1", r1.url)],
                      "routing": {"policy": "round_robin"}, "limits": fast_limits})
    gw.wait_healthy("r0", "r1")
    port = int(r0.url.rsplit(":", 1)[1])
    r0.kill()
    deadline = time.monotonic() + 5
    while httpx.get(f"{gw.url}/health").json()["backends"]["r0"]:
        assert time.monotonic() < deadline, "r0 still marked healthy"
        time.sleep(0.05)
    with gw.client() as c:
        assert all(c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 1}).status_code == 200
                   for _ in range(4))
    assert 'gateway:retries_total' not in httpx.get(f"{gw.url}/metrics").text.replace("# HELP gateway:retries_total", "").replace("# TYPE gateway:retries_total", "")
    back = fake_server("vllm", "base", port=port)
    gw.wait_healthy("r0")
    with gw.client() as c:
        for _ in range(4):
            c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 1})
    assert len(back.requests()) == 2


def test_request_timeout(fake_server, run_gateway, fast_limits, backend_entry) -> None:
    fake = fake_server("vllm", "base")
    fake.configure(token_delay_s=0.3)
    gw = run_gateway({"backends": [backend_entry("r0", fake.url)], "limits": {**fast_limits, "request_timeout_s": 1.0}})
    gw.wait_healthy("r0")
    with gw.client() as c:
        start = time.monotonic()
        r = c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 20})
        assert r.status_code == 504 and time.monotonic() - start < 2.5
        lines = data_lines(c.post("/v1/completions", json=STREAM).text)
        assert json.loads(lines[-1])["error"]["code"] == 504


def test_bounded_queue_answers_503_when_full(fake_server, run_gateway, fast_limits, backend_entry) -> None:
    fake = fake_server("vllm", "base")
    fake.configure(token_delay_s=0.1)
    gw = run_gateway({"backends": [backend_entry("r0", fake.url)], "limits": {**fast_limits, "max_in_flight": 1, "max_queue": 1}})
    gw.wait_healthy("r0")
    results = []

    def slow() -> None:
        with gw.client() as c:
            results.append(c.post("/v1/completions", json={**STREAM, "max_tokens": 10}).status_code)

    threads = [threading.Thread(target=slow) for _ in range(2)]  # one runs, one waits in the queue
    for t in threads:
        t.start()
        time.sleep(0.2)
    with gw.client() as c:
        r = c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 1})
    assert r.status_code == 503 and "queue is full" in r.json()["error"]["message"]
    for t in threads:
        t.join()
    assert results == [200, 200]


def test_client_disconnect_aborts_the_upstream_request(fake_server, run_gateway, fast_limits, backend_entry) -> None:
    fake = fake_server("vllm", "base")
    fake.configure(token_delay_s=0.05)
    gw = run_gateway({"backends": [backend_entry("r0", fake.url)], "limits": fast_limits})
    gw.wait_healthy("r0")

    def running() -> float:
        line = next(l for l in httpx.get(f"{fake.url}/metrics").text.splitlines() if l.startswith("vllm:num_requests_running"))
        return float(line.split()[-1])

    with gw.client() as c, c.stream("POST", "/v1/completions", json={**STREAM, "max_tokens": 1000}) as r:
        lines = r.iter_lines()  # (dropping this iterator would already close the connection)
        next(lines)
        time.sleep(0.2)
        assert running() == 1
    with gw.client() as c:  # non-streaming too
        try:
            c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 1000}, timeout=0.5)
        except httpx.ReadTimeout:
            pass
    deadline = time.monotonic() + 3
    while running() != 0 or gw.state.num_in_flight():
        assert time.monotonic() < deadline, "the abandoned requests still run"
        time.sleep(0.05)


def test_shutdown_drains_in_flight_streams(fake_server, fast_limits, backend_entry, gateway_starter) -> None:
    from serve.gateway.config import parse_config

    fake = fake_server("vllm", "base")
    fake.configure(token_delay_s=0.05)
    gw = gateway_starter(parse_config({"backends": [backend_entry("r0", fake.url)], "limits": fast_limits}))
    gw.wait_healthy("r0")
    lines = []
    with gw.client() as c, c.stream("POST", "/v1/completions", json=STREAM) as r:
        stopper = threading.Thread(target=gw.stop)
        for i, line in enumerate(r.iter_lines()):
            if i == 2:
                stopper.start()
            if line.startswith("data: "):
                lines.append(line[6:])
    stopper.join()
    assert lines[-1] == "[DONE]" and len(lines) == 21
