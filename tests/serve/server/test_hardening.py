"""``lorafleet serve`` hardening (issue #24), on one real server started with ``--api-key`` (from
``$LORAFLEET_API_KEY``) and ``--allow-runtime-lora``: the key on /v1/* (raw HTTP and the openai SDK), bounded
fields answered 400 naming the field (directly and through a gateway, which neither retries them nor turns
them into 5xx), a 50 MB body refused with 413 at once while other requests run on, and runtime adapter
loading only from the allowed roots, with one message for every path outside them."""

from __future__ import annotations

import shutil
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lorafleet.config import ServerConfig
from serve.server.errors import HTTPError
from serve.server.runtime_lora import DISABLED, require_enabled
from tests.conftest import MODEL_NAME, ServerHandle, running_server
from tests.serve.gateway.conftest import start_gateway
from tests.serve.server.hostile_cases import FIELD_CASES

pytestmark = pytest.mark.timeout(300)
API_KEY = "test-key-24"
MAX_MODEL_LEN = 512
OUTSIDE = "lora_path is not inside the adapter roots this server allows (--allow-runtime-lora)"


@pytest.fixture(scope="session")
def keyed_server(base_model_path: Path, lora_adapters: dict[str, Path], tmp_path_factory) -> Iterator[ServerHandle]:
    """``lorafleet serve`` with an API key (given through the environment) and runtime loading from one root,
    which holds a copy of adapter a2."""
    root = tmp_path_factory.mktemp("allowed-adapters")
    shutil.copytree(lora_adapters["a2"], root / "a2")
    with running_server(tmp_path_factory, "keyed-server", "--num-kv-blocks", "64", "--max-model-len",
                        str(MAX_MODEL_LEN), "--max-loras", "2", "--allow-runtime-lora", str(root),
                        env={"LORAFLEET_API_KEY": API_KEY}) as handle:
        yield ServerHandle(handle.base_url, handle.model, {"a2": root / "a2"}, handle.log_path, handle.process)


@pytest.fixture
def keyed(keyed_server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed_server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c


def normal_request(c: httpx.Client) -> float:
    """Seconds a short greedy completion takes; asserts it succeeds."""
    start = time.monotonic()
    r = c.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "The capital of France is", "max_tokens": 8,
                                        "temperature": 0})
    assert r.status_code == 200, r.text
    return time.monotonic() - start


# -- the API key -------------------------------------------------------------------------------------------------
def test_api_key_is_required_on_v1_only(keyed_server: ServerHandle, keyed: httpx.Client) -> None:
    url = keyed_server.base_url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}, {"Authorization": "Basic " + API_KEY}):
        r = httpx.get(f"{url}/v1/models", headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"]["type"] == "authentication_error" and r.headers["www-authenticate"] == "Bearer"
        r = httpx.post(f"{url}/v1/completions", json={"model": MODEL_NAME, "prompt": "Hi"}, headers=headers)
        assert r.status_code == 401
    assert keyed.get("/v1/models").json()["data"][0]["id"] == MODEL_NAME
    assert httpx.get(f"{url}/health").status_code == 200
    assert "vllm:num_requests_running" in httpx.get(f"{url}/metrics").text


def test_openai_sdk_with_the_key(keyed_server: ServerHandle) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{keyed_server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    out = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Say hi"}],
                                         max_tokens=4, temperature=0)
    assert out.choices[0].message.content and out.usage.completion_tokens == 4
    stream = client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=3, stream=True)
    assert sum(1 for _ in stream) >= 1
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed_server.base_url}/v1", api_key="wrong", max_retries=0).models.list()


# -- bounded fields ------------------------------------------------------------------------------------------------
def test_out_of_range_fields_are_400_naming_the_field(keyed: httpx.Client) -> None:
    for case in FIELD_CASES:
        start = time.monotonic()
        r = keyed.post(case.path, json=case.body(MODEL_NAME))
        took = time.monotonic() - start
        assert r.status_code == 400, (case.label, r.text)
        assert r.json()["error"]["param"] == case.param, (case.label, r.text)
        assert took < 1.0, (case.label, took)
    normal_request(keyed)


def test_a_prompt_too_long_by_its_characters_is_refused_before_tokenizing(keyed: httpx.Client) -> None:
    start = time.monotonic()
    r = keyed.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "a" * 8_000_000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    assert "characters" in r.json()["error"]["message"]
    r = keyed.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "b" * 4_000_000},
                                                                                   {"role": "user", "content": "c" * 4_000_000}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    assert time.monotonic() - start < 1.0  # tokenizing 4 MB alone takes seconds here


def test_through_a_gateway_a_4xx_stays_that_4xx_and_is_not_retried(keyed_server: ServerHandle, keyed: httpx.Client) -> None:
    from serve.gateway.config import parse_config

    cfg = parse_config({"backends": [{"name": "r0", "kind": "embedded", "url": keyed_server.base_url,
                                      "base_model": MODEL_NAME, "api_key_env": "KEY_OF_R0"}],
                        "limits": {"health_interval_s": 0.5, "drain_timeout_s": 2}}, env={"KEY_OF_R0": API_KEY})
    gw = start_gateway(cfg)
    try:
        gw.wait_healthy("r0")
        with gw.client(timeout=60) as c:
            for case in FIELD_CASES:
                for stream in (False, True):
                    start = time.monotonic()
                    r = c.post(case.path, json={**case.body(MODEL_NAME), "stream": stream})
                    assert r.status_code == 400, (case.label, stream, r.text)
                    assert r.json()["error"]["param"] == case.param, (case.label, stream, r.text)
                    assert time.monotonic() - start < 1.0, case.label
            normal_request(c)
            metrics = c.get("/metrics").text
        assert not [line for line in metrics.splitlines() if line.startswith("gateway:retries_total{")]
    finally:
        gw.stop()


# -- the body limit ------------------------------------------------------------------------------------------------
def _send_big_body(url: str, num_bytes: int, seconds_to_413: list[float]) -> None:
    """POST ``num_bytes`` with Content-Length over a raw socket; record when the status line came back."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {num_bytes}\r\n\r\n").encode()
        start = time.monotonic()
        s.sendall(head + b'{"prompt": "' + b"x" * 65536)

        def read_status() -> None:
            status = s.recv(64)
            seconds_to_413.append(time.monotonic() - start)
            assert status.startswith(b"HTTP/1.1 413"), status

        reader = threading.Thread(target=read_status)
        reader.start()
        chunk, sent = b"x" * 2**20, 65536 + 12
        while sent < num_bytes:
            s.sendall(chunk[: num_bytes - sent])
            sent += min(len(chunk), num_bytes - sent)
        reader.join(timeout=30)


def test_a_50_mb_body_is_413_at_once_and_others_run_on(keyed_server: ServerHandle, keyed: httpx.Client) -> None:
    usual = statistics.median(normal_request(keyed) for _ in range(3))  # (its usual latency, this minute)
    seconds_to_413: list[float] = []
    sender = threading.Thread(target=_send_big_body, args=(keyed_server.base_url, 50 * 2**20, seconds_to_413))
    sender.start()
    during = normal_request(keyed)
    sender.join(timeout=60)
    assert seconds_to_413 and seconds_to_413[0] < 0.1, seconds_to_413
    assert during < 2 * usual, (during, usual)
    r = keyed.post("/v1/completions", content=b"[" + b"1," * (9 * 2**20) + b"1]", headers={"content-type": "application/json"})
    assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]["message"]
    normal_request(keyed)


# -- runtime adapter loading ---------------------------------------------------------------------------------------
def test_runtime_loading_is_off_by_default() -> None:
    assert ServerConfig().allowed_lora_roots == ()
    with pytest.raises(HTTPError) as e:
        require_enabled(())
    assert e.value.status == 403 and str(e.value) == DISABLED


def test_runtime_loading_only_from_the_allowed_roots(keyed_server: ServerHandle, keyed: httpx.Client, tmp_path: Path,
                                                     lora_adapters: dict[str, Path]) -> None:
    root = keyed_server.adapters["a2"].parent
    outside = tmp_path / "outside"
    shutil.copytree(lora_adapters["a0"], outside)
    (root / "link-out").symlink_to(outside, target_is_directory=True)

    def load(name: str, path: str) -> httpx.Response:
        return keyed.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})

    for path in ("/etc", "/no/such/dir", str(outside), str(tmp_path / "missing"), str(root / "link-out"),
                 str(root / ".." / outside.parent.name), "../../etc", "link-out"):
        r = load("x", path)
        assert r.status_code == 400 and r.json()["error"] == {"message": OUTSIDE, "type": "invalid_request_error",
                                                              "param": "lora_path", "code": 400}, (path, r.text)
    for name in ("../../etc", "a/b", ".hidden", "a b", "x" * 200, "\u00e9"):
        r = load(name, "a2")
        assert r.status_code == 400 and r.json()["error"]["param"] == "lora_name", (name, r.text)
    assert load("a2", "a2").status_code == 200  # relative to the root
    assert keyed.post("/v1/completions", json={"model": "a2", "prompt": "Hi", "max_tokens": 2}).status_code == 200
    assert keyed.post("/v1/unload_lora_adapter", json={"lora_name": "a2"}).status_code == 200
    assert load("a2-again", str(root / "a2")).status_code == 200
    assert {m["id"] for m in keyed.get("/v1/models").json()["data"]} == {MODEL_NAME, "a2-again"}
    assert keyed.post("/v1/unload_lora_adapter", json={"lora_name": "a2-again"}).status_code == 200
