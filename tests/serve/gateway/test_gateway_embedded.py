"""The gateway in front of two real ``lorafleet serve`` replicas (SmolLM2-135M, fp32) with three real PEFT
adapters: greedy outputs through the gateway equal what the replica returns directly, adapters are loaded
on demand within each replica's slots, /v1/models is right; and the gateway can launch a replica itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from serve.gateway.config import parse_config

pytestmark = pytest.mark.timeout(600)
MODEL = "smollm2-135m-instruct"
CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]
PROMPT = "The three primary colors are"


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(port: int, *extra: str) -> list[str]:
    threads = os.environ.get("LORAFLEET_TEST_THREADS", "1")
    return [str(Path(sys.executable).with_name("lorafleet")), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--model", MODEL, "--dtype", "float32", "--device", "cpu", "--num-kv-blocks", "128",
            "--max-model-len", "512", "--max-loras", "2", "--num-threads", threads, "--log-level", "warning", *extra]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"lorafleet serve exited with {proc.returncode}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"{url} not healthy after {timeout_s}s")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def replicas(base_model_path, lora_adapters, tmp_path_factory):
    """Two ``lorafleet serve`` processes, 2 adapter slots each, no adapters preloaded; the gateway may load
    them at runtime from the test adapters' directory."""
    root = next(iter(lora_adapters.values())).parent
    ports = [_port(), _port()]
    log_dir = tmp_path_factory.mktemp("replicas")
    procs = []
    for i, port in enumerate(ports):
        with open(log_dir / f"r{i}.log", "wb") as log:
            procs.append(subprocess.Popen(serve_command(port, "--allow-runtime-lora", str(root)), stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for url, proc in zip(urls, procs):
            wait_healthy(url, proc)
        yield urls
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture(scope="module")
def gateway(replicas, lora_adapters, gateway_starter):
    root = next(iter(lora_adapters.values())).parent
    cfg = parse_config({
        "backends": [{"name": f"r{i}", "kind": "embedded", "url": url, "base_model": MODEL, "max_adapters": 2}
                     for i, url in enumerate(replicas)],
        "adapter_roots": [str(root)],
        "adapters": [{"name": name, "path": name, "base_model": MODEL} for name in lora_adapters],
        "limits": {"health_interval_s": 0.5, "drain_timeout_s": 5}})
    gw = gateway_starter(cfg)
    gw.wait_healthy("r0", "r1")
    yield gw
    gw.stop()


def replica_adapters(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"] if m.get("parent")}


def test_models_list_bases_and_adapters(gateway, lora_adapters) -> None:
    data = gateway.client().get("/v1/models").json()["data"]
    assert {(m["id"], m["parent"]) for m in data} == {(MODEL, None), *((n, MODEL) for n in lora_adapters)}


@pytest.mark.parametrize("model", [MODEL, "a0", "a1", "a2"])
def test_greedy_output_equals_the_replica_answering_directly(gateway, replicas, model) -> None:
    via = gateway.openai()
    chat = via.chat.completions.create(model=model, messages=CHAT, max_tokens=16, temperature=0).choices[0].message.content
    text = via.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0).choices[0].text
    streamed = "".join(c.choices[0].text for c in via.completions.create(model=model, prompt=PROMPT, max_tokens=16,
                                                                         temperature=0, stream=True) if c.choices)
    holders = [u for u in replicas if model == MODEL or model in replica_adapters(u)]
    assert holders, f"{model} is loaded nowhere after being served"
    direct = OpenAI(base_url=f"{holders[0]}/v1", api_key="none", max_retries=0)
    assert chat == direct.chat.completions.create(model=model, messages=CHAT, max_tokens=16, temperature=0).choices[0].message.content
    assert text == streamed == direct.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0).choices[0].text
    assert text.strip()


def test_adapters_load_on_demand_within_the_slots(gateway, replicas, lora_adapters) -> None:
    client = gateway.openai()
    outputs = {}
    for _ in range(2):
        for name in lora_adapters:
            outputs.setdefault(name, set()).add(client.completions.create(model=name, prompt=PROMPT, max_tokens=8,
                                                                          temperature=0).choices[0].text)
    assert all(len(v) == 1 for v in outputs.values())  # same adapter, same greedy output, wherever it ran
    assert len({next(iter(v)) for v in outputs.values()}) == 3  # and the adapters differ
    view = {b["name"]: set(b["adapters"]) for b in gateway.client().get("/admin/backends").json()["backends"]}
    for i, url in enumerate(replicas):
        assert view[f"r{i}"] == replica_adapters(url)  # the gateway's view matches each replica's /v1/models
        assert len(view[f"r{i}"]) <= 2
    assert set().union(*view.values()) == set(lora_adapters)  # 4 slots for 3 adapters: all stay loaded

@pytest.mark.slow  # full tier: one more engine started (~8 s); the two-replica tests stay in the fast tier

def test_gateway_launches_an_embedded_replica_itself(base_model_path, gateway_starter) -> None:
    port = _port()
    cfg = parse_config({"backends": [{"name": "own", "kind": "embedded", "url": f"http://127.0.0.1:{port}",
                                      "base_model": MODEL, "launch_args": serve_command(port)[8:]}],
                        "limits": {"health_interval_s": 0.5, "drain_timeout_s": 5}})
    gw = gateway_starter(cfg)
    try:
        gw.wait_healthy("own", timeout_s=30)
        reply = gw.openai().completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
        assert reply.choices[0].text.strip()
        proc = gw.state.fleet.get("own").backend.process
        assert proc is not None and proc.poll() is None
    finally:
        gw.stop()
    assert proc.poll() is not None  # stopped with the gateway

@pytest.mark.slow  # full tier: one more engine started (~8 s); the two-replica tests stay in the fast tier

def test_in_process_engine_answers_like_a_replica(gateway, base_model_path, gateway_starter) -> None:
    """An embedded backend with ``engine:`` runs the engine inside the gateway process (its step loop on a
    thread), behind ``lorafleet serve``'s own app: the same greedy outputs as the replicas (same settings),
    adapters loaded on demand, and the engine stopped with the gateway."""
    threads = int(os.environ.get("LORAFLEET_TEST_THREADS", "1"))
    engine = {"model": str(base_model_path), "dtype": "float32", "device": "cpu", "num_kv_blocks": 128,
              "max_model_len": 512, "max_loras": 2, "num_threads": threads}
    root = gateway.state.cfg.adapter_roots[0]
    cfg = parse_config({"backends": [{"name": "inproc", "kind": "embedded", "base_model": MODEL, "engine": engine}],
                        "adapter_roots": [str(root)],
                        "adapters": [{"name": "a1", "path": "a1", "base_model": MODEL}],
                        "limits": {"health_interval_s": 0.5, "drain_timeout_s": 5}})
    gw = gateway_starter(cfg)
    try:
        gw.wait_healthy("inproc", timeout_s=60)
        via, ref = gw.openai(), gateway.openai()  # ref: the two lorafleet serve replicas
        for model in (MODEL, "a1"):
            text = via.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0).choices[0].text
            streamed = "".join(c.choices[0].text for c in via.completions.create(
                model=model, prompt=PROMPT, max_tokens=12, temperature=0, stream=True) if c.choices)
            chat = via.chat.completions.create(model=model, messages=CHAT, max_tokens=12, temperature=0).choices[0].message.content
            assert text == streamed == ref.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0).choices[0].text
            assert chat == ref.chat.completions.create(model=model, messages=CHAT, max_tokens=12, temperature=0).choices[0].message.content
        view = gw.client().get("/admin/backends").json()["backends"][0]
        assert view["url"] == "in-process" and view["adapters"] == ["a1"]
        backend = gw.state.fleet.get("inproc").backend
        engine_frontend = backend.server.app.state.engine
        assert engine_frontend.is_alive and set(engine_frontend.adapter_paths) == {"a1"}
    finally:
        gw.stop()
    assert not engine_frontend.is_alive  # the engine loop stopped with the gateway
