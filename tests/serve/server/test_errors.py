"""Error handling of the real server over plain HTTP (httpx): status codes, the OpenAI error JSON shape,
adapter load/unload endpoints (vLLM's JSON bodies), and that the server keeps serving after every error."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(240)  # includes starting the server on first use

MAX_MODEL_LEN = 1024  # the server fixture's --max-model-len


def assert_error(r: httpx.Response, status: int, param: str | None = "<any>", contains: str = "") -> dict:
    """``r`` is an OpenAI-style error: ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["code"] == status and isinstance(err["message"], str) and err["message"]
    assert err["type"] == {400: "invalid_request_error", 404: "not_found_error", 409: "conflict_error"}[status]
    if param != "<any>":
        assert err["param"] == param, err
    assert contains in err["message"], err
    return err


def completion(http: httpx.Client, model: str, **body) -> httpx.Response:
    return http.post("/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 4, **body})


def chat(http: httpx.Client, model: str, **body) -> httpx.Response:
    messages = [{"role": "user", "content": "Hi"}]
    return http.post("/v1/chat/completions", json={"model": model, "messages": messages, "max_tokens": 4, **body})


def test_unknown_model_or_adapter_is_404(http: httpx.Client) -> None:
    for name in ("gpt-4", "a9"):
        assert_error(completion(http, name), 404, contains=f"model '{name}' does not exist")
        assert_error(chat(http, name), 404)
        assert_error(chat(http, name, stream=True), 404)  # refused before the stream starts


def test_prompt_longer_than_the_context_is_400(http: httpx.Client, server) -> None:
    too_long = [100] * (MAX_MODEL_LEN + 10)
    assert_error(completion(http, server.model, prompt=too_long), 400, "prompt",
                 f"maximum context length is {MAX_MODEL_LEN} tokens, but the prompt has {MAX_MODEL_LEN + 10} tokens")
    long_text = "hello " * (MAX_MODEL_LEN + 10)
    assert_error(completion(http, server.model, prompt=long_text), 400, "prompt")
    assert_error(chat(http, server.model, messages=[{"role": "user", "content": long_text}]), 400, "prompt")
    fits = [100] * (MAX_MODEL_LEN - 10)
    assert_error(completion(http, server.model, prompt=fits, max_tokens=20), 400, "max_tokens",
                 f"you requested {MAX_MODEL_LEN + 10} tokens")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"logprobs": 21}, "logprobs"),
        ({"num_speculative_tokens": 17}, "num_speculative_tokens"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"suffix": "x"}, "suffix"),
        ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
        ({"stop": [""]}, "stop"),
        ({"max_tokens": "lots"}, "max_tokens"),
    ],
)
def test_bad_sampling_values_are_400(http: httpx.Client, server, body: dict, param: str) -> None:
    assert_error(completion(http, server.model, **body), 400, param)


@pytest.mark.parametrize(
    ("body", "param"),
    [({"temperature": 3}, "temperature"), ({"top_p": 0}, "top_p"), ({"max_completion_tokens": 0}, "max_tokens"),
     ({"tools": [{"type": "function"}]}, "tools")],
)
def test_bad_chat_values_are_400(http: httpx.Client, server, body: dict, param: str) -> None:
    assert_error(chat(http, server.model, **body), 400, param)


@pytest.mark.parametrize(
    ("messages", "contains"),
    [([], "messages"), ([{"role": "robot", "content": "x"}], "messages[0].role must be one of"),
     ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}], "only text parts")],
)
def test_bad_messages_are_400(http: httpx.Client, server, messages: list, contains: str) -> None:
    assert_error(chat(http, server.model, messages=messages), 400, contains=contains)


@pytest.mark.parametrize(("prompt", "contains"), [([], "prompt must not be empty"), ("", "prompt is empty"),
                                                  ([49152], "outside the vocabulary"), ([-1], "outside the vocabulary")])
def test_bad_prompts_are_400(http: httpx.Client, server, prompt, contains: str) -> None:
    assert_error(completion(http, server.model, prompt=prompt), 400, contains=contains)


def test_malformed_json_is_400(http: httpx.Client) -> None:
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/load_lora_adapter"):
        r = http.post(path, content=b'{"model": "x", "prompt": ', headers={"content-type": "application/json"})
        assert_error(r, 400, None, "malformed JSON body")


def test_missing_field_is_400_naming_it(http: httpx.Client) -> None:
    assert_error(http.post("/v1/completions", json={"prompt": "x"}), 400, "model", "model: Field required")
    assert_error(http.post("/v1/chat/completions", json={"model": "x"}), 400, "messages")


def test_server_still_healthy_after_errors(http: httpx.Client, server) -> None:
    for _ in range(3):
        completion(http, server.model, temperature=9)
        completion(http, "nope")
        http.post("/v1/completions", content=b"{", headers={"content-type": "application/json"})
    assert http.get("/health").json() == {"status": "ok"}
    r = completion(http, server.model, temperature=0)
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["text"] and body["usage"]["completion_tokens"] == 4


def test_load_and_unload_adapter(http: httpx.Client, server, lora_adapters: dict[str, Path]) -> None:
    def model_ids() -> set[str]:
        return {m["id"] for m in http.get("/v1/models").json()["data"]}

    assert "a2" not in model_ids()
    assert_error(completion(http, "a2"), 404)
    r = http.post("/v1/load_lora_adapter", json={"lora_name": "a2", "lora_path": str(lora_adapters["a2"])})
    assert r.status_code == 200 and "a2" in r.text
    assert "a2" in model_ids()
    served = completion(http, "a2", temperature=0, max_tokens=8)
    assert served.status_code == 200 and served.json()["model"] == "a2"
    assert served.json()["choices"][0]["text"] != completion(http, server.model, temperature=0, max_tokens=8).json()["choices"][0]["text"]
    assert_error(http.post("/v1/load_lora_adapter", json={"lora_name": "a2", "lora_path": str(lora_adapters["a2"])}),
                 400, "lora_name", "already been loaded")

    r = http.post("/v1/unload_lora_adapter", json={"lora_name": "a2", "lora_int_id": 3})
    assert r.status_code == 200 and "a2" in r.text
    assert "a2" not in model_ids()
    assert_error(completion(http, "a2"), 404)
    assert_error(http.post("/v1/unload_lora_adapter", json={"lora_name": "a2"}), 404, contains="not loaded")


def test_load_refuses_bad_adapters(http: httpx.Client, server, lora_adapters: dict[str, Path], tmp_path: Path) -> None:
    pickle_only = tmp_path / "pickle-only"
    pickle_only.mkdir()
    shutil.copy(lora_adapters["a0"] / "adapter_config.json", pickle_only)
    (pickle_only / "adapter_model.bin").write_bytes(b"\x80\x04 not unpickled")
    cases = [
        ({"lora_name": "p", "lora_path": str(pickle_only)}, "holds pickle weights ['adapter_model.bin']; only safetensors are allowed"),
        ({"lora_name": "m", "lora_path": str(tmp_path / "missing")}, "is not a directory"),
        ({"lora_name": server.model, "lora_path": str(lora_adapters["a2"])}, "collides with the base model name"),
        ({"lora_name": "", "lora_path": "/x"}, "lora_name"),
        ({"lora_name": "x"}, "lora_path"),
    ]
    for body, contains in cases:
        assert_error(http.post("/v1/load_lora_adapter", json=body), 400, contains=contains)
    ids = {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert not ids & {"p", "m", ""}
    assert http.get("/health").status_code == 200


def test_unloading_an_adapter_in_use_is_409(http: httpx.Client, server) -> None:
    body = {"model": "a1", "prompt": "Tell me everything about rivers.", "max_tokens": 900, "ignore_eos": True,
            "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # the request is running
        assert_error(http.post("/v1/unload_lora_adapter", json={"lora_name": "a1"}), 409, "lora_name",
                     "is serving requests")
    # The stream was closed early; the adapter is still there and the server still serves it.
    assert "a1" in {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert completion(http, "a1", temperature=0).status_code == 200
