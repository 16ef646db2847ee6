"""API keys, allow-lists and rate limits end to end (401/403/429 with Retry-After), request validation
(400/404), and the admin API, through a real gateway in front of a vLLM protocol fake."""

from __future__ import annotations

import openai
import pytest

from serve.gateway.auth import hash_key

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def secured(fake_server, adapter_dir, run_gateway, fast_limits, backend_entry, tmp_path):
    fake = fake_server("vllm", "base")
    for n in ("sql", "chat"):
        adapter_dir(n)
    gw = run_gateway({
        "backends": [backend_entry("r0", fake.url)],
        "adapter_roots": [str(tmp_path / "adapters")],
        "adapters": [{"name": "sql", "path": "sql", "base_model": "base"}, {"name": "chat", "path": "chat", "base_model": "base"}],
        "auth": {"keys": [
            {"name": "full", "key_sha256": hash_key("k-full"), "models": ["*"]},
            {"name": "sql-only", "key_sha256": hash_key("k-sql"), "models": ["sql"], "requests_per_min": 2},
            {"name": "thrifty", "key_env": "THRIFTY_KEY", "tokens_per_min": 60},
            {"name": "ops", "key_sha256": hash_key("k-ops"), "admin": True}]},
        "limits": fast_limits}, env={"THRIFTY_KEY": "k-thrifty"})
    gw.wait_healthy("r0")
    return gw, fake


def test_missing_or_bad_key_is_401(secured) -> None:
    gw, _ = secured
    for key in (None, "wrong"):
        with gw.client(key) as c:
            r = c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 1})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            assert c.get("/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        gw.openai("wrong").models.list()


def test_model_outside_the_allow_list_is_403(secured) -> None:
    gw, _ = secured
    client = gw.openai("k-sql")
    assert client.completions.create(model="sql", prompt="x", max_tokens=1).choices[0].text == " sql#0"
    with pytest.raises(openai.PermissionDeniedError):
        client.completions.create(model="chat", prompt="x", max_tokens=1)
    assert [m.id for m in client.models.list()] == ["sql"]
    assert {m.id for m in gw.openai("k-full").models.list()} == {"base", "sql", "chat"}


def test_requests_per_minute_is_429_with_retry_after(secured) -> None:
    gw, _ = secured
    with gw.client("k-sql") as c:
        codes = [c.post("/v1/completions", json={"model": "sql", "prompt": "x", "max_tokens": 1}).status_code for _ in range(2)]
        r = c.post("/v1/completions", json={"model": "sql", "prompt": "x", "max_tokens": 1})
    assert codes == [200, 200]
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(r.headers["retry-after"]) <= 30


def test_tokens_per_minute_is_429_after_a_long_completion(secured) -> None:
    gw, _ = secured
    with gw.client("k-thrifty") as c:
        assert c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 100}).status_code == 200
        r = c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 1})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 40  # ~41 tokens of debt at 1 token/s


def test_malformed_requests_are_400_unknown_models_404(secured) -> None:
    gw, fake = secured
    with gw.client("k-full") as c:
        for body, needle in ((b"{not json", "malformed JSON"), (b"[1, 2]", "JSON object"),
                             (b'{"prompt": "x"}', "'model' is required"), (b'{"model": "base"}', "'prompt' is required"),
                             (b'{"model": "base", "prompt": "x", "stream": "yes"}', "'stream' must be a boolean")):
            r = c.post("/v1/completions", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400 and needle in r.json()["error"]["message"], body
        r = c.post("/v1/chat/completions", json={"model": "base", "messages": []})
        assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
        r = c.post("/v1/completions", json={"model": "gpt-5", "prompt": "x"})
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
        assert c.get("/health").status_code == 200
    assert fake.requests() == []  # none of them reached the engine


def test_admin_api_needs_an_admin_key(secured, fake_server, backend_entry) -> None:
    gw, _ = secured
    extra = fake_server("vllm", "base")
    with gw.client("k-full") as c:
        assert c.get("/admin/backends").status_code == 403
    with gw.client("k-ops") as c:
        r = c.post("/admin/backends", json=backend_entry("r1", extra.url))
        assert r.status_code == 201 and r.json()["healthy"]
        assert c.post("/admin/backends", json=backend_entry("r1", extra.url)).status_code == 409
        assert c.post("/admin/backends", json={"name": "bad", "kind": "triton"}).status_code == 400
        assert [b["name"] for b in c.get("/admin/backends").json()["backends"]] == ["r0", "r1"]
    with gw.client("k-full") as c:
        for _ in range(6):
            assert c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 1}).status_code == 200
    assert len(extra.requests()) >= 2  # the new replica takes traffic
    with gw.client("k-ops") as c:
        assert c.delete("/admin/backends/r1").json()["removed"] == "r1"
        assert c.delete("/admin/backends/r1").status_code == 404
    served = len(extra.requests())
    with gw.client("k-full") as c:
        for _ in range(4):
            assert c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 1}).status_code == 200
    assert len(extra.requests()) == served
