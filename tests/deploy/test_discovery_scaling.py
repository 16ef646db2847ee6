"""Replicas scale behind a DNS name and the gateway follows, as with a headless Service on Kubernetes or a
scaled compose service: two real `lorafleet serve` engines on 127.0.0.1 and 127.0.0.2 (same port, as pods of
one Deployment), a gateway with a `discovery:` entry, and the name's answer changed the way DNS changes as
pods come and go. DNS itself is the one thing replaced: no cluster DNS runs here, so the resolver's answer
is set by the test (the system resolver is tested in tests/serve/gateway/test_gateway_discovery.py)."""

from __future__ import annotations

import time

import httpx
import pytest

from serve.gateway import discovery
from tests.deploy.helpers import MODEL, replace_once, serve_gateway, start_process, wait_healthy

pytestmark = pytest.mark.timeout(600)
INTERVAL_S = 0.3


@pytest.fixture(scope="module")
def second_engine(cpu_stack, tmp_path_factory):
    """The stack's engine command again, on 127.0.0.2 and the first engine's port: a second pod."""
    first = cpu_stack.engine
    port = first.url.rsplit(":", 1)[1]
    args = replace_once(list(first.process.args[1:]), "127.0.0.1", "127.0.0.2")
    proc = start_process("engine-b", [first.process.args[0], *args], f"http://127.0.0.2:{port}",
                         tmp_path_factory.mktemp("engine-b"), dict(first.env), cpu_stack.home)
    try:
        wait_healthy(proc)
        yield proc
    finally:
        proc.stop()


class Dns:
    """What the name resolves to now; None is a failed lookup."""

    def __init__(self, *addresses: str) -> None:
        self.answer: frozenset[str] | None = frozenset(addresses)
        self.num_lookups = 0

    async def resolve(self, host: str, port: int) -> frozenset[str] | None:
        assert host == "engine-smollm2"
        self.num_lookups += 1
        return self.answer


def wait_for(predicate, what: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def healthy(gw) -> dict[str, bool]:
    return {b["name"]: b["healthy"] for b in httpx.get(f"{gw.url}/admin/backends", timeout=10).json()["backends"]}


def served_by(gw) -> dict[str, float]:
    """gateway:requests_total by backend, from the gateway's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for fam in text_string_to_metric_families(httpx.get(f"{gw.url}/metrics", timeout=10).text):
        for s in fam.samples:
            if s.name == "gateway:requests_total":
                counts[s.labels["backend"]] = counts.get(s.labels["backend"], 0) + s.value
    return counts


def test_gateway_follows_replicas_as_they_scale(cpu_stack, second_engine, monkeypatch) -> None:
    a, b = "smollm2-127.0.0.1", "smollm2-127.0.0.2"
    port = int(cpu_stack.engine.url.rsplit(":", 1)[1])
    dns = Dns("127.0.0.1")
    monkeypatch.setattr(discovery, "resolve_addresses", dns.resolve)
    gw = serve_gateway({"discovery": [{"name": "smollm2", "service": "engine-smollm2", "port": port, "kind": "vllm",
                                       "base_model": MODEL, "interval_s": INTERVAL_S}],
                        "routing": {"policy": "round_robin"}, "limits": {"drain_timeout_s": 30}})
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Count to ten."}], "temperature": 0}
    try:
        assert healthy(gw) == {a: True}  # resolved and checked before the first request
        with httpx.Client(base_url=gw.url, timeout=120) as c:
            assert c.post("/v1/chat/completions", json={**chat, "max_tokens": 4}).status_code == 200
            # Scale to the other pod while a stream runs on the first: the stream finishes, then the first
            # replica is gone and everything goes to the second.
            with c.stream("POST", "/v1/chat/completions", json={**chat, "max_tokens": 48, "stream": True}) as s:
                lines = s.iter_lines()
                assert next(line for line in lines if line.startswith("data: {"))
                dns.answer = frozenset({"127.0.0.2"})
                wait_for(lambda: list(healthy(gw)) == [b], "the first replica to leave the fleet")
                rest = [line for line in lines if line]  # events are separated by blank lines
            assert rest[-1] == "data: [DONE]" and not any('"error"' in line for line in rest)
            before = served_by(gw)
            assert c.post("/v1/chat/completions", json={**chat, "max_tokens": 4}).status_code == 200
            assert served_by(gw).get(b, 0) == before.get(b, 0) + 1
            # Scale out to both pods: round robin uses both.
            dns.answer = frozenset({"127.0.0.1", "127.0.0.2"})
            wait_for(lambda: healthy(gw) == {a: True, b: True}, "both replicas to be healthy")
            before = served_by(gw)
            for i in range(4):
                r = c.post("/v1/chat/completions", json={**chat, "max_tokens": 2,
                                                         "messages": [{"role": "user", "content": f"Say {i}."}]})
                assert r.status_code == 200
            after = served_by(gw)
            assert after[a] - before.get(a, 0) == 2 and after[b] - before[b] == 2
            # A failed lookup changes nothing; a name with no address (no ready pod) empties the fleet.
            dns.answer, lookups = None, dns.num_lookups
            wait_for(lambda: dns.num_lookups >= lookups + 3, "three more lookups")
            assert healthy(gw) == {a: True, b: True}
            dns.answer = frozenset()
            wait_for(lambda: healthy(gw) == {}, "the fleet to empty")
    finally:
        gw.stop()
