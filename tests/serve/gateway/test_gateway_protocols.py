"""The gateway in front of one replica of each protocol fake (vLLM, SGLang, TensorRT-LLM): the same OpenAI
requests reach each engine in its own dialect, adapters are loaded on demand, /v1/models lists what exists.
SGLang and TensorRT-LLM cannot run here (GPU only); their fakes follow their documentation."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def mixed(fake_server, adapter_dir, run_gateway, fast_limits, backend_entry, tmp_path):
    fakes = {"vllm": fake_server("vllm", "vbase"), "sglang": fake_server("sglang", "org/sbase"),
             "trtllm": fake_server("trtllm", "tbase")}
    for n in ("va", "sa", "ta"):
        adapter_dir(n)
    gw = run_gateway({
        "backends": [backend_entry("v0", fakes["vllm"].url, "vllm", "vbase"),
                     backend_entry("s0", fakes["sglang"].url, "sglang", "sbase", served_model="org/sbase"),
                     backend_entry("t0", fakes["trtllm"].url, "trtllm", "tbase")],
        "adapter_roots": [str(tmp_path / "adapters")],
        "adapters": [{"name": "va", "path": "va", "base_model": "vbase"}, {"name": "sa", "path": "sa", "base_model": "sbase"},
                     {"name": "ta", "path": "ta", "base_model": "tbase"}],
        "limits": fast_limits})
    gw.wait_healthy("v0", "s0", "t0")
    return gw, fakes


def test_models_lists_bases_and_adapters(mixed) -> None:
    gw, _ = mixed
    data = gw.client().get("/v1/models").json()["data"]
    assert {(m["id"], m["parent"]) for m in data} == {("vbase", None), ("sbase", None), ("tbase", None),
                                                      ("va", "vbase"), ("sa", "sbase"), ("ta", "tbase")}
    assert [m.id for m in gw.openai().models.list()] == [m["id"] for m in data]


@pytest.mark.parametrize("kind,model,served_as", [("vllm", "vbase", "vbase"), ("vllm", "va", "va"),
                                                  ("sglang", "sbase", "org/sbase"), ("sglang", "sa", "sa"),
                                                  ("trtllm", "tbase", "tbase"), ("trtllm", "ta", "ta")])
def test_each_protocol_serves_bases_and_adapters(mixed, kind, model, served_as) -> None:
    gw, fakes = mixed
    client = gw.openai()
    text = client.completions.create(model=model, prompt="hello", max_tokens=3, temperature=0).choices[0].text
    assert text == f" {served_as}#0 {served_as}#1 {served_as}#2"
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                            stream=True)
    chunks = list(stream)
    assert {c.model for c in chunks} == {model}  # the engine's own naming never leaks to the client
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f" {served_as}#0 {served_as}#1"
    sent = fakes[kind].requests()[-1]
    if kind == "sglang":
        assert sent["model"] == ("org/sbase:sa" if model == "sa" else "org/sbase")
    elif kind == "trtllm":
        assert sent["model"] == "tbase" and ("lora_request" in sent) == (model == "ta")
    else:
        assert sent["model"] == model


def test_adapters_are_loaded_on_demand(mixed) -> None:
    gw, fakes = mixed
    admin = gw.client()
    assert all(b["adapters"] == [] for b in admin.get("/admin/backends").json()["backends"])
    gw.openai().completions.create(model="va", prompt="x", max_tokens=1)
    gw.openai().completions.create(model="sa", prompt="x", max_tokens=1)
    resident = {b["name"]: b["adapters"] for b in admin.get("/admin/backends").json()["backends"]}
    assert resident == {"v0": ["va"], "s0": ["sa"], "t0": []}
    models = {m["id"] for m in json.loads(admin.get(f"{fakes['vllm'].url}/v1/models").text)["data"]}
    assert models == {"vbase", "va"}


def test_usage_only_when_asked(mixed) -> None:
    gw, _ = mixed
    body = {"model": "va", "prompt": "x", "max_tokens": 2, "stream": True}
    with gw.client() as c:
        plain = [l for l in c.post("/v1/completions", json=body).text.splitlines() if l.startswith("data: {")]
        asked = [l for l in c.post("/v1/completions", json={**body, "stream_options": {"include_usage": True}}).text.splitlines()
                 if l.startswith("data: {")]
    assert not any('"usage":{' in l for l in plain)
    assert json.loads(asked[-1][6:])["usage"]["completion_tokens"] == 2
