"""Hostile input (issue #24), sent by hand to a real ``lorafleet serve`` and to a gateway in front of it:
numbers no field may hold, JSON nested or wide past reason, huge prompts and bodies, long stop lists, very long
headers, slow bodies and many connections at once. Each case states the status it must get and a bound on
the time to get it; none may get a 5xx, and the server must answer a normal request after every test.

Every case is recorded in ``hostile`` of ``bench/results/reliability.json`` (``cases``, ``server_errors``,
``max_seconds``; see bench/reliability.py), with ``passed`` true only if its test passed.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL_NAME, ServerHandle, running_server
from tests.reliability.conftest import _passed
from tests.serve.gateway.conftest import GatewayHandle, start_gateway
from tests.serve.server.hostile_cases import BIG, FIELD_CASES

pytestmark = pytest.mark.timeout(600)
MAX_MODEL_LEN = 512
NORMAL = {"model": MODEL_NAME, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="session")
def hostile_server(base_model_path: Path, tmp_path_factory) -> Iterator[ServerHandle]:
    """``lorafleet serve`` with its defaults where they matter here (body limit, runtime loading off), a small
    KV cache and a 512-token context."""
    with running_server(tmp_path_factory, "hostile-server", "--num-kv-blocks", "64", "--max-model-len",
                        str(MAX_MODEL_LEN), "--max-num-seqs", "8") as handle:
        yield handle


@pytest.fixture(scope="session")
def hostile_gateway(hostile_server: ServerHandle) -> Iterator[GatewayHandle]:
    """A gateway (its default limits) in front of the hostile server."""
    from serve.gateway.config import parse_config

    gw = start_gateway(parse_config({"backends": [{"name": "r0", "kind": "embedded", "url": hostile_server.base_url,
                                                   "base_model": MODEL_NAME}],
                                     "limits": {"health_interval_s": 0.5, "drain_timeout_s": 2}}))
    try:
        gw.wait_healthy("r0")
        yield gw
    finally:
        gw.stop()


class Hostile:
    """The cases of one test: each :meth:`check` sends one, records it and asserts its status and time."""

    def __init__(self, test_name: str) -> None:
        self.test_name = test_name
        self.checks: list[dict[str, Any]] = []

    def check(self, name: str, target: str, send: Callable[[], int | tuple[int, float]], expected: tuple[int, ...],
              bound_s: float) -> int:
        """``send`` returns the status, or (status, seconds) when it times the answer itself."""
        start = time.monotonic()
        got = send()
        status, seconds = got if isinstance(got, tuple) else (got, time.monotonic() - start)
        self.checks.append({"name": f"{self.test_name}:{target}:{name}", "target": target, "expected": list(expected),
                            "status": status, "seconds": round(seconds, 4), "bound_s": round(bound_s, 2)})
        assert status in expected, f"{target}: {name}: expected {expected}, got {status}"
        assert seconds < bound_s, f"{target}: {name}: took {seconds:.2f}s, bound {bound_s}s"
        return status


@pytest.fixture
def hostile(request, reliability_cases) -> Iterator[Hostile]:
    h = Hostile(request.node.name)
    yield h
    passed = _passed(request.node)
    reliability_cases["hostile"].extend({**c, "passed": passed} for c in h.checks)


def post(url: str, path: str, body: Any = None, content: bytes | None = None, timeout: float = 30, **kw) -> int:
    data = content if content is not None else json.dumps(body).encode()
    return httpx.post(f"{url}{path}", content=data, headers={**JSON, **kw.pop("headers", {})}, timeout=timeout, **kw).status_code


def normal_seconds(url: str) -> float:
    start = time.monotonic()
    r = httpx.post(f"{url}/v1/completions", json=NORMAL, timeout=60)
    assert r.status_code == 200, r.text
    return time.monotonic() - start


def assert_healthy(*urls: str) -> None:
    for url in urls:
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        normal_seconds(url)


def targets(server: ServerHandle, gateway: GatewayHandle) -> dict[str, str]:
    return {"server": server.base_url, "gateway": gateway.url}


# -- numbers ---------------------------------------------------------------------------------------------------
def test_numbers_out_of_range(hostile_server, hostile_gateway, hostile) -> None:
    for target, url in targets(hostile_server, hostile_gateway).items():
        for case in FIELD_CASES:
            for stream in (False, True):
                body = {**case.body(MODEL_NAME), "stream": stream}
                hostile.check(f"{case.label}{' (stream)' if stream else ''}", target,
                              lambda: post(url, case.path, body), (400,), 1.0)
        # Every numeric field, huge and negative (a few are in range for some fields: then 200 is right).
        for name in ("max_tokens", "n", "temperature", "top_p", "top_k", "seed", "logprobs", "presence_penalty",
                     "frequency_penalty", "num_speculative_tokens", "min_tokens", "min_p", "repetition_penalty",
                     "prompt_logprobs"):
            for value in (-BIG, BIG, -(2**31), 10**400):
                expected = (400,)
                if (name, value) == ("seed", -(2**31)):
                    expected = (200,)  # a valid seed
                elif name == "repetition_penalty" and value > 0:
                    expected = (200, 400)  # vLLM bounds it only below (> 0); a huge one only divides logits
                hostile.check(f"{name} {str(value)[:12]}", target,
                              lambda: post(url, "/v1/completions", {**NORMAL, "max_tokens": 1, name: value}), expected, 1.0)
        for text in ("NaN", "Infinity", "-Infinity", "1e999"):  # JSON that Python's parser accepts
            raw = f'{{"model": "{MODEL_NAME}", "prompt": "Hi", "max_tokens": 1, "temperature": {text}}}'.encode()
            hostile.check(f"temperature {text}", target, lambda: post(url, "/v1/completions", content=raw), (400,), 1.0)
    assert_healthy(hostile_server.base_url, hostile_gateway.url)


# -- JSON shapes -------------------------------------------------------------------------------------------------
def test_json_deep_wide_and_broken(hostile_server, hostile_gateway, hostile) -> None:
    deep_object = '{"a":' * 100_000 + "1" + "}" * 100_000
    cases: list[tuple[str, bytes, tuple[int, ...], float]] = [
        ("array nested 10^5 deep", b"[" * 100_000 + b"]" * 100_000, (400,), 1.0),
        ("object nested 10^5 deep in 'user'",
         f'{{"model": "{MODEL_NAME}", "prompt": "Hi", "max_tokens": 1, "user": {deep_object}}}'.encode(), (400,), 1.0),
        # (issue 23: an unknown field is a 400 naming it, never silently dropped)
        ("200,000 unknown keys", json.dumps({**NORMAL, "max_tokens": 1, **{f"k{i}": i for i in range(200_000)}}).encode(),
         (400,), 3.0),
        ("invalid UTF-8", b'{"model": "\xff\xfe", "prompt": "\xc3\x28"}', (400,), 1.0),
        ("a JSON array", b"[1, 2, 3]", (400,), 1.0),
        ("empty body", b"", (400,), 1.0),
        ("truncated JSON", json.dumps(NORMAL).encode()[:-5], (400,), 1.0),
        ("prompt of 10^5 prompts", json.dumps({**NORMAL, "prompt": [[1]] * 100_000}).encode(), (400,), 1.0),
        ("prompt an object", json.dumps({**NORMAL, "prompt": {"a": 1}}).encode(), (400,), 1.0),
        ("model 10^6 characters", json.dumps({**NORMAL, "model": "m" * 10**6}).encode(), (404,), 1.0),
    ]
    chat = {"model": MODEL_NAME, "max_tokens": 1}
    cases += [
        ("10,000 one-character messages", json.dumps({**chat, "messages": [{"role": "user", "content": "x"}] * 10_000}).encode(),
         (400,), 3.0),
        ("message nested content parts", json.dumps({**chat, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * 50_000}]}).encode(),
         (400,), 3.0),
        ("no messages", json.dumps({**chat, "messages": []}).encode(), (400,), 1.0),
        ("role 10^5 characters", json.dumps({**chat, "messages": [{"role": "r" * 100_000, "content": "x"}]}).encode(), (400,), 1.0),
    ]
    for target, url in targets(hostile_server, hostile_gateway).items():
        for label, content, expected, bound in cases:
            path = "/v1/chat/completions" if b'"messages"' in content else "/v1/completions"
            hostile.check(label, target, lambda: post(url, path, content=content), expected, bound)
    assert_healthy(hostile_server.base_url, hostile_gateway.url)


# -- big things --------------------------------------------------------------------------------------------------
def raw_status(url: str, head: bytes, body_chunks: Iterator[bytes]) -> tuple[int, float]:
    """Send ``head`` then ``body_chunks`` over a socket while reading the status line; (status, seconds from the
    first byte sent to the status line)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        start = time.monotonic()
        s.sendall(head)
        got: list[tuple[int, float]] = []

        def read() -> None:
            line = s.recv(64)
            got.append((int(line.split(b" ", 2)[1]) if line.startswith(b"HTTP/1.1") else 0, time.monotonic() - start))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for chunk in body_chunks:  # all of it, even after the answer: the server must cope while it comes
                s.sendall(chunk)
        except OSError:
            pass  # the server may close once it has answered
        reader.join(timeout=30)
    return got[0] if got else (0, 30.0)


def test_huge_bodies_and_prompts(hostile_server, hostile_gateway, hostile) -> None:
    server, gw = hostile_server.base_url, hostile_gateway.url
    usual = statistics.median(normal_seconds(server) for _ in range(3))
    mb50 = 50 * 2**20
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {mb50}\r\n\r\n").encode()
    during: list[float] = []
    other = threading.Thread(target=lambda: during.append(normal_seconds(server)))

    def fifty_mb() -> Iterator[bytes]:
        other.start()
        chunk = b"x" * 2**20
        for _ in range(50):
            yield chunk

    # The server answers as soon as it has the headers; the gateway reads the body to its end first.
    hostile.check("50 MB body (Content-Length)", "server", lambda: raw_status(server, head, fifty_mb()), (413,), 0.1)
    hostile.check("50 MB body (Content-Length)", "gateway", lambda: raw_status(gw, head, iter([b"x" * 2**20] * 50)),
                  (413,), 3.0)
    other.join(timeout=60)
    assert during and during[0] < 2 * usual + 0.2, (during, usual)

    chunked = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"x" * 2**20
    hostile.check("20 MB chunked body", "server",
                  lambda: raw_status(server, chunked, iter([b"%x\r\n%s\r\n" % (len(piece), piece)] * 20 + [b"0\r\n\r\n"])),
                  (413,), 1.0)
    for target, url, chars in (("server", server, 12_000_000), ("gateway", gw, 3_900_000)):
        hostile.check(f"prompt of {chars:,} characters", target,
                      lambda: post(url, "/v1/completions", {**NORMAL, "prompt": "a" * chars}), (400,), 1.0)
        hostile.check(f"chat of {chars:,} characters in 100 messages", target,
                      lambda: post(url, "/v1/chat/completions", {"model": MODEL_NAME, "messages": [
                          {"role": "user", "content": "b" * (chars // 100)}] * 100}), (400,), 1.0)
        hostile.check("1,000 stop strings", target, lambda: post(url, "/v1/completions", {**NORMAL, "stop": ["s"] * 1000}),
                      (400,), 1.0)
        hostile.check("64 stop strings of 1,024 characters", target,
                      lambda: post(url, "/v1/completions", {**NORMAL, "stop": [f"{i:02d}" * 512 for i in range(64)]}), (200,), 5.0)
        hostile.check("stop_token_ids of 10^5 ids", target,
                      lambda: post(url, "/v1/completions", {**NORMAL, "stop_token_ids": list(range(100_000))}), (400,), 1.0)
    assert_healthy(server, gw)


def test_tokenize_of_a_huge_text_stalls_no_one(hostile_server, hostile) -> None:
    """/tokenize has no context limit to refuse by, so a long text is tokenized, but off the event loop."""
    url = hostile_server.base_url
    usual = statistics.median(normal_seconds(url) for _ in range(3))
    with ThreadPoolExecutor(1) as pool:
        big = pool.submit(post, url, "/tokenize", {"model": MODEL_NAME, "prompt": "lorem ipsum " * 160_000}, timeout=120)
        time.sleep(0.05)
        hostile.check("normal request while /tokenize runs on 2 M characters", "server",
                      lambda: 200 if normal_seconds(url) < 2 * usual + 0.5 else 0, (200,), 10.0)
        hostile.check("/tokenize of 2 M characters", "server", lambda: big.result(timeout=120), (200,), 120.0)
    assert_healthy(url)


def test_headers(hostile_server, hostile_gateway, hostile) -> None:
    for target, url in targets(hostile_server, hostile_gateway).items():
        for label, headers, expected in (
                ("one 100 kB header", {"x-long": "v" * 100_000}, (400, 431)),
                ("1,000 headers", {f"x-h{i}": "v" * 60 for i in range(1000)}, (400, 431)),
                ("100 kB Authorization", {"authorization": "Bearer " + "k" * 100_000}, (400, 401, 431))):
            def send() -> int:
                try:
                    return post(url, "/v1/completions", NORMAL, headers=headers)
                except httpx.RemoteProtocolError:
                    return 400  # the HTTP parser refused the request and closed the connection
            hostile.check(label, target, send, expected, 1.0)
        hostile.check("Content-Length not a number", target,
                      lambda: raw_status(url, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1e9\r\n\r\n",
                                         iter([b"{}"])), (0, 400), 1.0)
    assert_healthy(hostile_server.base_url, hostile_gateway.url)


def test_sampling_controls_at_scale(hostile_server, hostile_gateway, hostile) -> None:
    """Issue #23's fields at sizes no client needs: bounded, or cheap enough to serve."""
    vocab = 49_152
    cases = [("logit_bias on every token", {"logit_bias": {str(i): -1 for i in range(vocab)}}, (200,), 5.0),
             ("logit_bias of 10^5 keys", {"logit_bias": {str(i): 1 for i in range(100_000)}}, (400,), 1.0),
             ("10,000 bad_words", {"bad_words": [f"word{i}" for i in range(10_000)]}, (200, 400), 5.0),
             ("a bad word of 10^5 characters", {"bad_words": ["w" * 100_000]}, (200, 400), 5.0),
             ("min_tokens = max_tokens = 16, ignore_eos", {"min_tokens": 16, "max_tokens": 16, "ignore_eos": True},
              (200,), 30.0)]
    for target, url in targets(hostile_server, hostile_gateway).items():
        for label, extra, expected, bound in cases:
            hostile.check(label, target, lambda: post(url, "/v1/completions", {**NORMAL, "max_tokens": 2, **extra}),
                          expected, bound)
    assert_healthy(hostile_server.base_url, hostile_gateway.url)


# -- slow and many -----------------------------------------------------------------------------------------------
def test_slow_bodies_and_many_connections(hostile_server, hostile_gateway, hostile) -> None:
    server, gw = hostile_server.base_url, hostile_gateway.url
    usual = statistics.median(normal_seconds(server) for _ in range(3))
    body = json.dumps({**NORMAL, "max_tokens": 1}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()

    def trickle() -> Iterator[bytes]:
        for i in range(0, len(body), 4):
            time.sleep(2.0 / (len(body) / 4))  # the whole body over about 2 s
            yield body[i:i + 4]

    with ThreadPoolExecutor(24) as pool:
        for target, url in (("server", server), ("gateway", gw)):
            slow = [pool.submit(raw_status, url, head, trickle()) for _ in range(8)]
            host, port = url.removeprefix("http://").split(":")
            idle = [socket.create_connection((host, int(port))) for _ in range(200)]
            try:
                bad = FIELD_CASES[0]
                floods = [pool.submit(post, url, bad.path, bad.body(MODEL_NAME)) for _ in range(40)]
                hostile.check("normal request beside 8 slow bodies, 200 idle connections and 40 bad requests", target,
                              lambda: 200 if normal_seconds(url) < 2 * usual + 1.0 else 0, (200,), 10.0)
                hostile.check("/health meanwhile", target, lambda: httpx.get(f"{url}/health", timeout=5).status_code,
                              (200,), 1.0)
                for i, f in enumerate(floods):
                    hostile.check(f"bad request {i} of 40 at once", target, lambda: f.result(timeout=30), (400,), 30.0)
                for i, f in enumerate(slow):
                    hostile.check(f"body trickled over 2 s ({i})", target, lambda: f.result(timeout=60), (200,),
                                  2.0 + 3.0 + usual * 8)
            finally:
                for s in idle:
                    s.close()
    assert_healthy(server, gw)


# -- runtime adapter loading -------------------------------------------------------------------------------------
def test_runtime_adapter_loading_is_off_by_default(hostile_server, hostile, tmp_path) -> None:
    url = hostile_server.base_url
    messages = set()
    for label, body in (("load /etc", {"lora_name": "x", "lora_path": "/etc"}),
                        ("load a missing path", {"lora_name": "x", "lora_path": str(tmp_path / "missing")}),
                        ("load ../../etc as ../../etc", {"lora_name": "../../etc", "lora_path": "../../etc"})):
        def send() -> int:
            r = httpx.post(f"{url}/v1/load_lora_adapter", json=body, timeout=10)
            messages.add(r.json()["error"]["message"])
            return r.status_code
        hostile.check(label, "server", send, (403,), 1.0)
    hostile.check("unload", "server", lambda: post(url, "/v1/unload_lora_adapter", {"lora_name": "x"}), (403,), 1.0)
    assert len(messages) == 1 and "--allow-runtime-lora" in messages.pop()
    assert_healthy(url)
