"""Fault injection (issue #10): each fault must end in its defined outcome (success, a retry that succeeds, a
clean SSE error event, or a 4xx/5xx answer that names the problem) within a bounded time, and leave nothing
behind: no request counted in flight or queued at the gateway, no sequence running or KV block held at the
engine, as their /metrics say. Every case is recorded in ``faults`` of bench/results/reliability.json with
its outcome and time to outcome.

Replica crashes, hangs, slowness, 5xx answers and broken streams are injected into vLLM protocol fakes
(tests/serve/backends/fakes, real HTTP servers in their own processes: killed with SIGKILL, hung with
SIGSTOP). A full KV cache, client disconnects and broken adapters hit a real ``lorafleet serve``.
tests/serve/gateway/test_gateway_faults.py checks the same failover paths in more detail; this suite adds the
timing bounds, the leak checks and the figures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL_NAME
from tests.reliability.conftest import (ENGINE_KV_BLOCKS, engine_leaks, gateway_leaks, scrape,
                                        wait_until_released)

pytestmark = pytest.mark.timeout(300)
LIMITS = {"health_interval_s": 60, "drain_timeout_s": 5, "request_timeout_s": 30, "upstream_idle_timeout_s": 10}
STREAM = {"model": "base", "prompt": "tell me", "max_tokens": 20, "stream": True}


def entry(name: str, url: str, base: str = "base", **kw) -> dict:
    return {"name": name, "kind": "vllm", "url": url, "base_model": base, **kw}


def pair(fakes, gateways, **limits):
    """Two fakes behind a round-robin gateway whose health checks are too slow to notice a fault during a test."""
    r0, r1 = fakes(), fakes()
    gw = gateways({"backends": [entry("r0", r0.url), entry("r1", r1.url)], "routing": {"policy": "round_robin"},
                   "limits": {**LIMITS, **limits}})
    gw.wait_healthy("r0", "r1")
    return gw, r0, r1


def sse(client: httpx.Client, body: dict, path: str = "/v1/completions") -> tuple[int, list[str], float]:
    """(status, data payloads, seconds) of one streamed request."""
    start = time.monotonic()
    with client.stream("POST", path, json=body) as r:
        payloads = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        return r.status_code, payloads, time.monotonic() - start


def error_code(payload: str) -> int | None:
    try:
        return json.loads(payload)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def record(case: dict, fault: str, expected: str, outcome: str, seconds: float, bound_s: float, leaks: dict) -> None:
    case.update(fault=fault, expected=expected, outcome=outcome, time_to_outcome_s=round(seconds, 3), bound_s=bound_s,
                leaks=leaks)
    assert seconds <= bound_s, f"{outcome} took {seconds:.2f} s (bound {bound_s} s)"
    assert not leaks, f"leaked after the fault: {leaks}"


# -- replica faults (protocol fakes) --------------------------------------------------------------------------
def test_replica_killed_mid_stream(fakes, gateways, fault_case) -> None:
    fake = fakes()
    fake.configure(die_after_events=3, token_delay_s=0.05)
    gw = gateways({"backends": [entry("r0", fake.url)], "limits": LIMITS})
    gw.wait_healthy("r0")
    with gw.client() as c:
        status, payloads, seconds = sse(c, STREAM)
    assert status == 200 and "[DONE]" not in payloads and len([p for p in payloads if '"text"' in p]) == 3
    assert error_code(payloads[-1]) == 502 and "broke" in payloads[-1]
    record(fault_case, "replica SIGKILLed after 3 streamed events", "SSE error event 502, no [DONE]",
           f"error event {error_code(payloads[-1])}", seconds, 3.0, wait_until_released({"gateway": lambda: gateway_leaks(gw)}))


def test_replica_killed_before_first_byte_fails_over(fakes, gateways, fault_case) -> None:
    gw, r0, r1 = pair(fakes, gateways)
    r0.kill()
    with gw.client() as c:
        results = [sse(c, STREAM) for _ in range(4)]  # round robin sends two of them to the dead r0
    assert all(s == 200 and p[-1] == "[DONE]" for s, p, _ in results)
    retries = scrape(gw.url)
    assert sum(s.value for s in retries if s.name == "gateway:retries_total" and s.labels.get("backend") == "r0") >= 2
    record(fault_case, "replica SIGKILLed before the request", "retried on the other replica: 200",
           "200 after a retry", max(t for *_, t in results), 3.0, wait_until_released({"gateway": lambda: gateway_leaks(gw)}))


def test_hung_replica_fails_over_after_the_idle_timeout(fakes, gateways, fault_case) -> None:
    gw, r0, r1 = pair(fakes, gateways, upstream_idle_timeout_s=1.0)
    os.killpg(r0.process.pid, signal.SIGSTOP)  # accepts connections (the kernel does), never answers
    try:
        with gw.client() as c:
            results = [sse(c, STREAM) for _ in range(2)]
        assert all(s == 200 and p[-1] == "[DONE]" for s, p, _ in results)
        record(fault_case, "replica hung (SIGSTOP): accepts, never answers", "retried after upstream_idle_timeout_s=1: 200",
               "200 after a retry", max(t for *_, t in results), 3.0, wait_until_released({"gateway": lambda: gateway_leaks(gw)}))
    finally:
        os.killpg(r0.process.pid, signal.SIGCONT)


def test_hung_only_replica_is_answered_then_taken_out(fakes, gateways, fault_case) -> None:
    fake = fakes()
    gw = gateways({"backends": [entry("r0", fake.url, health_timeout_s=0.5)],
                   "limits": {**LIMITS, "upstream_idle_timeout_s": 1.0, "health_interval_s": 0.2}})
    gw.wait_healthy("r0")
    os.killpg(fake.process.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with gw.client() as c:
            r = c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 2})
        first = time.monotonic() - start
        assert r.status_code in (502, 503, 504) and r.json()["error"]["message"]
        deadline = time.monotonic() + 5
        while httpx.get(f"{gw.url}/health", timeout=5).json()["backends"]["r0"]:
            assert time.monotonic() < deadline, "the hung replica is still marked healthy"
            time.sleep(0.05)
        taken_out = time.monotonic() - start
        with gw.client() as c:
            r2 = c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 2})
        assert r2.status_code == 503 and "no healthy backend" in r2.json()["error"]["message"]
        assert first <= 2.5
        record(fault_case, "only replica hung (SIGSTOP)", "5xx naming the timeout within 2.5 s; out of rotation by "
               "health checks; then 503 at once", f"{r.status_code}, unhealthy after {taken_out:.1f} s, then 503",
               taken_out, 5.0, wait_until_released({"gateway": lambda: gateway_leaks(gw)}))
    finally:
        os.killpg(fake.process.pid, signal.SIGCONT)


def test_slow_replica_hits_the_request_deadline(fakes, gateways, fault_case) -> None:
    fake = fakes()
    fake.configure(token_delay_s=0.3)
    gw = gateways({"backends": [entry("r0", fake.url)], "limits": {**LIMITS, "request_timeout_s": 1.0}})
    gw.wait_healthy("r0")
    with gw.client() as c:
        start = time.monotonic()
        r = c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 20})
        plain = time.monotonic() - start
        status, payloads, streamed = sse(c, STREAM)
    assert r.status_code == 504 and status == 200 and error_code(payloads[-1]) == 504
    record(fault_case, "replica 0.3 s per token, request_timeout_s=1", "504 (JSON and SSE error event)",
           "504 / error event 504", max(plain, streamed), 2.5, wait_until_released({"gateway": lambda: gateway_leaks(gw)}))


def test_replica_answering_500_fails_over(fakes, gateways, fault_case) -> None:
    gw, r0, r1 = pair(fakes, gateways)
    r0.configure(fail_status=500)
    with gw.client() as c:
        results = [sse(c, STREAM) for _ in range(4)]
    assert all(s == 200 and p[-1] == "[DONE]" for s, p, _ in results) and len(r1.requests()) == 4
    record(fault_case, "replica answers every request with 500", "retried on the other replica: 200",
           "200 after a retry", max(t for *_, t in results), 3.0, wait_until_released({"gateway": lambda: gateway_leaks(gw)}))


def test_only_replica_answering_500_is_named_in_the_answer(fakes, gateways, fault_case) -> None:
    fake = fakes()
    fake.configure(fail_status=500)
    gw = gateways({"backends": [entry("r0", fake.url)], "limits": LIMITS})
    gw.wait_healthy("r0")
    start = time.monotonic()
    with gw.client() as c:
        r = c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 2})
    seconds = time.monotonic() - start
    assert r.status_code in (502, 503) and "answered 500" in r.json()["error"]["message"]
    record(fault_case, "only replica answers 500", "502/503 naming the replica's 500", str(r.status_code), seconds, 2.0,
           wait_until_released({"gateway": lambda: gateway_leaks(gw)}))


def test_truncated_stream_ends_with_an_error_event(fakes, gateways, fault_case) -> None:
    fake = fakes()
    fake.configure(end_after_events=3, token_delay_s=0.02)
    gw = gateways({"backends": [entry("r0", fake.url)], "limits": LIMITS})
    gw.wait_healthy("r0")
    with gw.client() as c:
        status, payloads, seconds = sse(c, STREAM)
    assert status == 200 and "[DONE]" not in payloads and error_code(payloads[-1]) == 502
    assert "without [DONE]" in payloads[-1]
    record(fault_case, "replica ends the SSE stream cleanly after 3 events, without [DONE]", "SSE error event 502",
           f"error event {error_code(payloads[-1])}", seconds, 2.0, wait_until_released({"gateway": lambda: gateway_leaks(gw)}))


def test_stream_truncated_before_its_first_event_fails_over(fakes, gateways, fault_case) -> None:
    gw, r0, r1 = pair(fakes, gateways)
    r0.configure(end_after_events=0)
    with gw.client() as c:
        results = [sse(c, STREAM) for _ in range(2)]
    assert all(s == 200 and p[-1] == "[DONE]" for s, p, _ in results)
    record(fault_case, "replica answers 200 and ends the stream with no event", "retried on the other replica: 200",
           "200 after a retry", max(t for *_, t in results), 2.0, wait_until_released({"gateway": lambda: gateway_leaks(gw)}))


# -- engine faults (a real lorafleet serve) ---------------------------------------------------------------------
def words(n: int, offset: int) -> str:
    from bench.workloads.sampler import WORDS

    return "".join(" " + WORDS[(offset + 7 * i) % len(WORDS)] for i in range(n))


@pytest.fixture
def engine_gateway(engine_server, gateways):
    """A gateway with the real engine server as its only replica."""
    def make(**extra) -> object:
        gw = gateways({"backends": [{"name": "r0", "kind": "embedded", "url": engine_server.base_url,
                                     "base_model": MODEL_NAME, **extra.pop("backend", {})}],
                       "limits": {**LIMITS, "health_interval_s": 0.5, "request_timeout_s": 300,
                                  "upstream_idle_timeout_s": 120}, **extra})
        gw.wait_healthy("r0")
        return gw
    return make


def test_full_kv_cache_preempts_and_every_request_completes(engine_server, engine_gateway, fault_case) -> None:
    """Four greedy streams that need ~44 KV blocks on an engine with 32: the engine preempts and recomputes,
    every request completes, and each output equals the one the request gets alone."""
    gw = engine_gateway()
    prompts = [words(150, i) for i in range(4)]  # 10 blocks each at admission, 11 by the end: 3 fit, then preemption
    body = {"model": MODEL_NAME, "max_tokens": 20, "temperature": 0, "ignore_eos": True, "stream": True}
    with gw.client(timeout=300) as c:
        alone = ["".join(json.loads(p)["choices"][0]["text"] for p in sse(c, {**body, "prompt": q})[1][:-1])
                 for q in prompts]
    preemptions_before = sum(s.value for s in scrape(engine_server.base_url) if s.name == "vllm:num_preemptions_total")
    results: dict[int, tuple] = {}

    def run(i: int) -> None:
        with gw.client(timeout=300) as c:
            results[i] = sse(c, {**body, "prompt": prompts[i]})

    start = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - start
    together = ["".join(json.loads(p)["choices"][0]["text"] for p in results[i][1][:-1]) for i in range(4)]
    assert all(results[i][0] == 200 and results[i][1][-1] == "[DONE]" for i in range(4)), \
        [(results[i][0], results[i][1][-1:]) for i in range(4)]
    assert together == alone
    preempted = sum(s.value for s in scrape(engine_server.base_url) if s.name == "vllm:num_preemptions_total")
    assert preempted > preemptions_before, f"4 x 11 blocks on {ENGINE_KV_BLOCKS} should have preempted"
    record(fault_case, f"KV cache full: 4 x 170 tokens on {ENGINE_KV_BLOCKS} blocks of 16",
           "all complete (preempted and recomputed), outputs equal to unbatched",
           f"4/4 complete, equal to unbatched, {preempted - preemptions_before:.0f} preemptions", seconds, 240.0,
           wait_until_released({"gateway": lambda: gateway_leaks(gw), "engine": lambda: engine_leaks(engine_server.base_url)}))


def test_client_disconnect_mid_stream_frees_the_engine(engine_server, engine_gateway, fault_case) -> None:
    gw = engine_gateway()
    body = {"model": MODEL_NAME, "prompt": words(40, 3), "max_tokens": 300, "ignore_eos": True, "stream": True}
    with gw.client(timeout=120) as c, c.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        got: list[str] = []
        for line in lines:
            if line.startswith("data: "):
                got.append(line)
            if len(got) == 3:
                break
        assert engine_leaks(engine_server.base_url)["running"] == 1
        gone = time.monotonic()
    leaks = wait_until_released({"gateway": lambda: gateway_leaks(gw), "engine": lambda: engine_leaks(engine_server.base_url)})
    seconds = time.monotonic() - gone
    record(fault_case, "client closes a 300-token stream after 3 events", "engine aborts: no running sequence, no KV "
           "block held, nothing in flight at the gateway", "released", seconds, 5.0, leaks)


def test_client_disconnect_without_streaming_frees_the_engine(engine_server, fault_case) -> None:
    body = {"model": MODEL_NAME, "prompt": words(40, 5), "max_tokens": 300, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{engine_server.base_url}/v1/completions", json=body, timeout=httpx.Timeout(1.0, connect=5))
    gone = time.monotonic()
    leaks = wait_until_released({"engine": lambda: engine_leaks(engine_server.base_url)})
    record(fault_case, "client of a non-streamed 300-token request leaves after 1 s", "engine aborts the request",
           "released", time.monotonic() - gone, 5.0, leaks)


@pytest.fixture
def adapter_root(tmp_path, lora_adapters):
    """``adapter_root(*names)``: copies of the test's real PEFT adapters under a fresh root; returns the root."""
    def make(*names: str) -> Path:
        for i, name in enumerate(names):
            shutil.copytree(lora_adapters[("a0", "a1", "a2")[i % 3]], tmp_path / "adapters" / name)
        return tmp_path / "adapters"
    return make


def adapter_config(root: Path, *names: str) -> dict:
    return {"adapter_roots": [str(root)], "adapters": [{"name": n, "path": n, "base_model": MODEL_NAME} for n in names]}


def ask(gw, model: str) -> tuple[int, str, float]:
    start = time.monotonic()
    with gw.client(timeout=120) as c:
        r = c.post("/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 2, "temperature": 0})
    body = r.json()
    return r.status_code, body.get("error", {}).get("message", "") if r.status_code != 200 else "", time.monotonic() - start


def test_adapter_dir_deleted_while_loaded(engine_server, engine_gateway, adapter_root, fault_case) -> None:
    root = adapter_root("del-victim", "del-other")
    gw = engine_gateway(backend={"max_adapters": 1}, **adapter_config(root, "del-victim", "del-other"))
    assert ask(gw, "del-victim")[0] == 200
    shutil.rmtree(root / "del-victim")
    still, _, _ = ask(gw, "del-victim")  # its weights are in the engine's memory: it keeps serving
    assert still == 200
    assert ask(gw, "del-other")[0] == 200  # takes the only slot: del-victim is unloaded
    status, message, seconds = ask(gw, "del-victim")
    assert status == 400 and "is not a directory" in message, message
    assert ask(gw, "del-other")[0] == 200 and httpx.get(f"{gw.url}/health").status_code == 200
    record(fault_case, "adapter directory deleted while the adapter is loaded", "keeps serving while loaded; once "
           "unloaded, 400 naming the missing directory", f"200 while loaded, then {status}", seconds, 5.0,
           wait_until_released({"gateway": lambda: gateway_leaks(gw), "engine": lambda: engine_leaks(engine_server.base_url)}))


def test_corrupt_safetensors_header_is_refused_before_any_engine(engine_server, engine_gateway, adapter_root,
                                                                 fault_case) -> None:
    root = adapter_root("hdr-good", "hdr-bad")
    gw = engine_gateway(backend={"max_adapters": 1}, **adapter_config(root, "hdr-good", "hdr-bad"))
    assert ask(gw, "hdr-good")[0] == 200
    (root / "hdr-bad" / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    status, message, seconds = ask(gw, "hdr-bad")
    assert status == 400 and "not a safetensors file" in message, message
    assert ask(gw, "hdr-good")[0] == 200
    loads = [s for s in scrape(gw.url) if s.name == "gateway:adapter_loads_total"]
    assert {(s.labels["adapter"], s.labels["result"]): s.value for s in loads}.get(("hdr-good", "ok")) == 1.0, \
        "the refused load must not have evicted the loaded adapter"
    record(fault_case, "adapter weights overwritten with random bytes after start-up", "400 naming the file, checked "
           "before loading; the loaded adapter stays", str(status), seconds, 5.0,
           wait_until_released({"gateway": lambda: gateway_leaks(gw), "engine": lambda: engine_leaks(engine_server.base_url)}))


def test_truncated_safetensors_is_refused_by_the_engine(engine_server, engine_gateway, adapter_root, fault_case) -> None:
    root = adapter_root("cut-bad", "cut-good")
    gw = engine_gateway(**adapter_config(root, "cut-bad", "cut-good"))
    weights = root / "cut-bad" / "adapter_model.safetensors"
    data = weights.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    weights.write_bytes(data[:header + (len(data) - header) // 2])  # a valid header, half the tensor data
    status, message, seconds = ask(gw, "cut-bad")
    assert status == 400 and "cut-bad" in message, message
    assert ask(gw, "cut-good")[0] == 200 and httpx.get(f"{engine_server.base_url}/health").status_code == 200
    errors = {s.labels["status"]: s.value for s in scrape(engine_server.base_url) if s.name == "lorafleet:request_errors_total"}
    assert not any(code.startswith("5") for code in errors), f"the engine answered a corrupt adapter with {errors}"
    record(fault_case, "adapter safetensors truncated (valid header, half the data)", "400 with the engine's reason; "
           "engine healthy, other adapters load", str(status), seconds, 5.0,
           wait_until_released({"gateway": lambda: gateway_leaks(gw), "engine": lambda: engine_leaks(engine_server.base_url)}))
