"""DNS backend discovery (serve/gateway/discovery.py): the ``discovery:`` config section, the system resolver,
the add/remove bookkeeping as a resolved name changes, and a live gateway that finds a replica by name.
Scaling real engines up and down behind a discovered name is tested in tests/deploy/test_discovery_scaling.py."""

from __future__ import annotations

import asyncio

import pytest

from lorafleet.errors import ConfigError
from serve.backends.base import BackendSpec
from serve.gateway.config import parse_config
from serve.gateway.discovery import Discoverer, resolve_addresses
from serve.gateway.state import GatewayState

pytestmark = pytest.mark.timeout(120)
ENTRY = {"name": "smol", "service": "engine-smollm2", "port": 8000, "kind": "vllm", "base_model": "smollm2",
         "served_model": "/models/smollm2", "max_adapters": 2, "interval_s": 0.2}


def test_discovery_entry_makes_one_backend_per_address() -> None:
    cfg = parse_config({"discovery": [ENTRY]})
    assert cfg.backends == ()
    (spec,) = cfg.discovery
    assert (spec.service, spec.port, spec.interval_s) == ("engine-smollm2", 8000, 0.2)
    b = spec.backend_spec("10.1.2.3")
    assert (b.name, b.url, b.kind, b.base_model, b.upstream_model, b.max_adapters) == (
        "smol-10.1.2.3", "http://10.1.2.3:8000", "vllm", "smollm2", "/models/smollm2", 2)
    assert spec.backend_spec("fd00::7").url == "http://[fd00::7]:8000"


def test_adapters_may_name_a_discovered_base_model(adapter_dir, tmp_path) -> None:
    adapter_dir("sql")
    cfg = parse_config({"discovery": [ENTRY], "adapter_roots": [str(tmp_path / "adapters")],
                        "adapters": [{"name": "sql", "path": "sql", "base_model": "smollm2"}]})
    assert [a.name for a in cfg.adapters] == ["sql"]


def test_every_problem_of_every_entry_is_listed() -> None:
    bad = [{"name": "a", "service": "x/y", "port": 0, "kind": "nope", "base_model": "b"},
           {"name": "b", "service": "e", "port": "80", "kind": "vllm", "base_model": "b", "interval_s": 0},
           {"name": "c", "service": "e", "port": 1, "kind": "embedded", "base_model": "b", "launch_args": ["--x"]},
           {"service": "e", "colour": "red"}, "engine", {**ENTRY, "name": "d"}, {**ENTRY, "name": "d"},
           {**ENTRY, "name": "e", "engine": {"model": "x"}}]
    with pytest.raises(ConfigError) as e:
        parse_config({"discovery": bad})
    text = str(e.value)
    for needle in ("discovery[0]: service must be a DNS name", "port must be an integer in 1..65535, got 0",
                   "kind must be one of", "discovery[1]: port must be an integer in 1..65535, got '80'",
                   "interval_s must be a positive number", "discovery[2]:", "launch_args",
                   "discovery[3]: missing key(s) ['name', 'port', 'kind', 'base_model']; unknown key(s) ['colour']",
                   "discovery[4]: expected a mapping", "duplicate names ['d']", "discovery[7]: unknown key(s) ['engine']"):
        assert needle in text, (needle, text)
    with pytest.raises(ConfigError, match="at least one backend"):
        parse_config({"discovery": []})


def test_system_resolver() -> None:
    assert asyncio.run(resolve_addresses("10.9.8.7", 80)) == {"10.9.8.7"}
    assert "127.0.0.1" in asyncio.run(resolve_addresses("localhost", 80))
    # NXDOMAIN is "no replicas" (what a headless Service with no ready pod answers), not a failure.
    assert asyncio.run(resolve_addresses("no-such-engine.invalid", 80)) == frozenset()


def test_backends_follow_the_resolved_addresses() -> None:
    """Addresses that appear are added (unhealthy until a check passes: nothing listens there), those that
    disappear are removed; a failed lookup changes nothing; backends the discoverer did not add stay."""
    # 127.0.0.x addresses on a port nothing listens on: every connection is refused at once.
    cfg = parse_config({"discovery": [{**ENTRY, "port": 9, "service": "engines"}],
                        "backends": [{"name": "static", "kind": "vllm", "url": "http://127.0.0.1:9", "base_model": "smollm2"}]})
    answers = iter([frozenset({"127.0.0.2", "127.0.0.3"}), frozenset({"127.0.0.3", "127.0.0.4"}), None,
                    frozenset()])
    asked = []

    async def resolve(host: str, port: int):
        asked.append((host, port))
        return next(answers)

    async def scenario() -> list[list[str]]:
        state = GatewayState.build(cfg)
        state.add_backend(BackendSpec(name="smol-127.0.0.4", kind="vllm", url="http://127.0.0.1:9", base_model="smollm2"))
        d = Discoverer(cfg.discovery[0], state, resolve)
        seen = []
        for _ in range(4):
            await d.sync_once()
            seen.append(sorted(r.name for r in state.fleet))
            assert not any(r.is_healthy for r in state.fleet)
        for t in state.tasks:
            t.cancel()
        return seen

    seen = asyncio.run(scenario())
    assert asked == [("engines", 9)] * 4
    assert seen == [["smol-127.0.0.2", "smol-127.0.0.3", "smol-127.0.0.4", "static"],
                    ["smol-127.0.0.3", "smol-127.0.0.4", "static"],  # .4 was there already (by hand): not taken over
                    ["smol-127.0.0.3", "smol-127.0.0.4", "static"],  # failed lookup: keep what is known
                    ["smol-127.0.0.4", "static"]]


def test_gateway_finds_a_replica_by_name(fake_server, run_gateway, fast_limits) -> None:
    """A gateway with no static backend and a discovery entry for ``localhost`` routes to the replica there."""
    fake = fake_server("vllm", "base")
    port = int(fake.url.rsplit(":", 1)[1])
    gw = run_gateway({"discovery": [{"name": "d", "service": "localhost", "port": port, "kind": "vllm",
                                     "base_model": "base", "interval_s": 0.2}],
                      "limits": fast_limits})
    # Resolved and health-checked before the gateway took its first request.
    assert gw.client().get("/health").json()["backends"]["d-127.0.0.1"] is True
    reply = gw.openai().completions.create(model="base", prompt="hi", max_tokens=2, temperature=0)
    assert reply.choices[0].text == " base#0 base#1"
    listed = gw.client().get("/admin/backends").json()["backends"]
    assert ("d-127.0.0.1", f"http://127.0.0.1:{port}", True) in [(b["name"], b["url"], b["healthy"]) for b in listed]
