"""Security, keys (issue #10): no key, a bad key, a revoked key, another tenant's adapters, the admin API with
a tenant key, and API keys never showing up in logs or metric labels. Every hostile request is one case of
``security`` in bench/results/reliability.json; ``refused`` counts those turned away as they must be."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from serve.gateway.auth import hash_key
from tests.conftest import free_port
from tests.serve.conftest import write_adapter_dir

pytestmark = pytest.mark.timeout(120)
KEYS = {"tenant-a": "sk-tenant-a-5f1d0c2e", "tenant-b": "sk-tenant-b-9a7e33b1", "ops": "sk-ops-c0ffee42"}
GEN = ("/v1/completions", {"model": "base", "prompt": "x", "max_tokens": 2})


@pytest.fixture
def tenants(fakes, gateways, tmp_path):
    """A gateway with two tenants, each allowed the base model and its own adapters, and an admin key."""
    fake = fakes()
    for name in ("a-sql", "a-chat", "b-sql"):
        write_adapter_dir(tmp_path / "adapters" / name)
    gw = gateways({
        "backends": [{"name": "r0", "kind": "vllm", "url": fake.url, "base_model": "base"}],
        "adapter_roots": [str(tmp_path / "adapters")],
        "adapters": [{"name": n, "path": n, "base_model": "base"} for n in ("a-sql", "a-chat", "b-sql")],
        "auth": {"keys": [{"name": "tenant-a", "key_sha256": hash_key(KEYS["tenant-a"]), "models": ["base", "a-*"]},
                          {"name": "tenant-b", "key_env": "B_KEY", "models": ["base", "b-*"]},
                          {"name": "ops", "key_sha256": hash_key(KEYS["ops"]), "admin": True}]},
        "limits": {"health_interval_s": 60, "drain_timeout_s": 5}}, env={"B_KEY": KEYS["tenant-b"]})
    gw.wait_healthy("r0")
    return gw, fake


def call(gw, key: str | None, method: str = "POST", path: str = GEN[0], body: dict | None = None,
         header: str = "authorization") -> httpx.Response:
    headers = {} if key is None else {header: f"Bearer {key}" if header == "authorization" else key}
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        return c.request(method, path, json=body if body is not None else (GEN[1] if method == "POST" else None),
                         headers=headers)


def test_missing_bad_and_malformed_keys_are_401(tenants, refusals) -> None:
    gw, fake = tenants
    presented = {"no key": {}, "wrong key": {"authorization": "Bearer sk-wrong"},
                 "bearer without key": {"authorization": "Bearer"},
                 "basic scheme": {"authorization": f"Basic {KEYS['ops']}"},
                 "key one character off": {"authorization": "Bearer sk-tenant-a-5f1d0c2f"},
                 "wrong x-api-key": {"x-api-key": "sk-wrong"},
                 "digest as key": {"authorization": f"Bearer {hash_key(KEYS['ops'])}"}}
    for label, headers in presented.items():
        for method, path in (("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                             ("GET", "/admin/backends"), ("GET", "/admin/keys")):
            body = {"model": "base", "messages": [{"role": "user", "content": "x"}]} if "chat" in path else GEN[1]
            with httpx.Client(base_url=gw.url, timeout=30) as c:
                r = c.request(method, path, json=body if method == "POST" else None, headers=headers)
            refusals.expect(f"{label} {method} {path}", r.status_code == 401, r.status_code, "401")
            for value in headers.values():
                if value.startswith(("Bearer sk", "sk", "Basic")):
                    assert value.split()[-1] not in r.text, "an error must not echo the presented key"
    assert fake.requests() == []
    assert call(gw, KEYS["tenant-a"]).status_code == 200


def test_revoked_key_is_refused_at_once(tenants, refusals) -> None:
    gw, _ = tenants
    assert call(gw, KEYS["tenant-b"]).status_code == 200
    r = call(gw, KEYS["tenant-a"], "DELETE", "/admin/keys/tenant-b")
    refusals.expect("tenant key revokes another tenant", r.status_code == 403, r.status_code, "403")
    r = call(gw, KEYS["ops"], "DELETE", "/admin/keys/tenant-b")
    assert r.status_code == 200 and r.json() == {"revoked": "tenant-b"}
    for method, path in (("POST", "/v1/completions"), ("GET", "/v1/models")):
        r = call(gw, KEYS["tenant-b"], method, path)
        refusals.expect(f"revoked key {method} {path}", r.status_code == 401, r.status_code, "401")
    listed = call(gw, KEYS["ops"], "GET", "/admin/keys").json()
    assert listed == {"keys": ["tenant-a", "ops"], "revoked": ["tenant-b"]} and KEYS["ops"] not in str(listed)
    for name in ("tenant-a", "ops"):  # revoking every key must not leave the gateway open
        assert call(gw, KEYS["ops"], "DELETE", f"/admin/keys/{name}").status_code == 200
    for key in (None, KEYS["ops"], KEYS["tenant-a"]):
        r = call(gw, key)
        refusals.expect(f"after revoking every key, key {key and key[:6]}", r.status_code == 401, r.status_code, "401")


def test_a_tenant_cannot_use_or_see_another_tenants_adapters(tenants, refusals) -> None:
    gw, fake = tenants
    a, b = KEYS["tenant-a"], KEYS["tenant-b"]
    assert call(gw, a, body={**GEN[1], "model": "a-sql"}).json()["choices"][0]["text"] == " a-sql#0 a-sql#1"
    for key, model in ((a, "b-sql"), (b, "a-sql"), (b, "a-chat")):
        for path, body in (("/v1/completions", {**GEN[1], "model": model}),
                           ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "x"}]}),
                           ("/v1/chat/completions", {"model": model, "messages": [], "prompt_template": {"name": "t"}})):
            r = call(gw, key, "POST", path, body)
            refusals.expect(f"{key[:11]} uses {model} via {path}", r.status_code in (403, 404), r.status_code, "403")
    for key, own in ((a, {"base", "a-sql", "a-chat"}), (b, {"base", "b-sql"})):
        listed = {m["id"] for m in call(gw, key, "GET", "/v1/models").json()["data"]}
        refusals.expect(f"{key[:11]} lists only its models", listed == own, sorted(listed), sorted(own))
    for model in ("b-*", "*", "b-sql ", "B-SQL", "a-sql/../b-sql"):  # the allow-list matches names, not patterns
        r = call(gw, a, body={**GEN[1], "model": model})
        refusals.expect(f"tenant-a sends model {model!r}", r.status_code in (403, 404), r.status_code, "403/404")
    assert {r.get("model") for r in fake.requests()} == {"a-sql"}  # nothing else reached the engine
    r = call(gw, a, "POST", "/admin/backends", {"name": "evil", "kind": "vllm", "url": "http://127.0.0.1:1", "base_model": "base"})
    refusals.expect("tenant adds a backend", r.status_code == 403, r.status_code, "403")


def _serve_gateway(config: dict, tmp: Path, env: dict) -> tuple[subprocess.Popen, str, Path]:
    port, log = free_port(), tmp / "gateway.log"
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    cmd = [str(Path(sys.executable).with_name("lorafleet")), "gateway", "--config", str(tmp / "gateway.yaml"),
           "--port", str(port), "--log-level", "debug"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.2)


def test_api_keys_never_reach_logs_or_metric_labels(fakes, tmp_path, refusals) -> None:
    """A real `lorafleet gateway` process at log level debug: every key it knows and every key it is shown,
    valid, invalid or revoked, is searched for in its whole log and in /metrics."""
    fake = fakes()
    config = {"backends": [{"name": "r0", "kind": "vllm", "url": fake.url, "base_model": "base"}],
              "auth": {"keys": [{"name": "tenant-a", "key_sha256": hash_key(KEYS["tenant-a"]), "requests_per_min": 5},
                                {"name": "tenant-b", "key_env": "B_KEY"},
                                {"name": "ops", "key_env": "OPS_KEY", "admin": True}]},
              "limits": {"health_interval_s": 0.5}}
    proc, url, log = _serve_gateway(config, tmp_path, {"B_KEY": KEYS["tenant-b"], "OPS_KEY": KEYS["ops"]})
    shown = [*KEYS.values(), "sk-not-a-key-77aa", "sk-tenant-a-5f1d0c2f"]
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            for key in shown:
                for header in ({"authorization": f"Bearer {key}"}, {"x-api-key": key}):
                    c.post("/v1/completions", json=GEN[1], headers=header)
                    c.post("/v1/completions", json={**GEN[1], "stream": True}, headers=header)
                    c.post("/v1/completions", content=b"{broken", headers=header)
                    c.get("/v1/models", headers=header)
            for _ in range(6):  # a rate-limited key: its 429 names the key's name only
                c.post("/v1/completions", json=GEN[1], headers={"authorization": f"Bearer {KEYS['tenant-a']}"})
            c.delete("/admin/keys/tenant-b", headers={"authorization": f"Bearer {KEYS['ops']}"})
            c.post("/v1/completions", json=GEN[1], headers={"authorization": f"Bearer {KEYS['tenant-b']}"})
            metrics = c.get("/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert "revoked through the admin API" in text and len(text.splitlines()) > 10  # it did log, at debug level
    for key in shown:
        refusals.expect(f"key {key[:9]}... in the gateway log", key not in text, key in text, "absent")
        refusals.expect(f"key {key[:9]}... in /metrics", key not in metrics, key in metrics, "absent")
