"""Prompt templates in the gateway (issue #7, "done when" 4): a registered compiled template plus variables,
sent through the ``openai`` SDK's ``extra_body``, is rendered server-side and answered by a real
``lorafleet serve`` exactly as the rendered messages are answered directly; bad variables are a 400 naming
the variable; plain requests are unchanged; routing keys are the compiled static prefix's block hashes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import openai
import pytest

from lorafleet.templates import load_compiled, render_messages
from serve.backends.base import Endpoint
from serve.gateway.config import parse_config
from serve.gateway.templates import TemplatedRequest, parse_templated_request, template_prefix_keys
from serve.routing.scores import token_prefix_keys

pytestmark = pytest.mark.timeout(300)
EXAMPLES = Path(__file__).resolve().parents[3] / "optimize" / "templates" / "examples"
MODEL = "smollm2-135m-instruct"
QUESTION = {"now": "2025-03-14T09:26:53Z", "question": "Where is my order 10023?", "customer": {"plan": "pro", "name": "Ada"}}


@pytest.fixture(scope="module")
def compiled_dir(tmp_path_factory) -> Path:
    """support.yaml and rag_qa.yaml compiled by the CLI, as an operator would."""
    out = tmp_path_factory.mktemp("templates")
    done = subprocess.run([str(Path(sys.executable).with_name("lorafleet")), "optimize", "templates", "compile",
                           str(EXAMPLES / "support.yaml"), str(EXAMPLES / "rag_qa.yaml"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def gateway(server, compiled_dir, gateway_starter):
    """A gateway in front of the real server, listed twice (r0, r1) so that routing has a choice."""
    cfg = parse_config({"backends": [{"name": f"r{i}", "kind": "embedded", "url": server.base_url, "base_model": MODEL}
                                     for i in range(2)],
                        "templates": [str(compiled_dir)], "routing": {"policy": "prefix_aware"},
                        "limits": {"health_interval_s": 0.5, "drain_timeout_s": 5}})
    gw = gateway_starter(cfg)
    gw.wait_healthy("r0", "r1")
    yield gw
    gw.stop()


def templated(name: str = "support", **variables) -> dict:
    return {"prompt_template": {"name": name, "variables": variables or QUESTION}}


def test_openai_sdk_extra_body_renders_the_template(gateway, server, compiled_dir) -> None:
    client = gateway.openai()
    reply = client.chat.completions.create(model=MODEL, messages=[], max_tokens=12, temperature=0, extra_body=templated())
    messages = render_messages(load_compiled(compiled_dir / "support").template, QUESTION)
    direct = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    expected = direct.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == expected.choices[0].message.content
    assert reply.usage.prompt_tokens == expected.usage.prompt_tokens > 300  # the whole rendered prompt went upstream
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=[], max_tokens=12, temperature=0, stream=True, extra_body=templated()) if c.choices)
    assert streamed == expected.choices[0].message.content


def test_plain_requests_are_unchanged(gateway, server) -> None:
    messages = [{"role": "user", "content": "Name a colour of the rainbow."}]
    via = gateway.openai().chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    direct = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    assert via.choices[0].message.content == direct.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0).choices[0].message.content


@pytest.mark.parametrize("variables, param, message", [
    ({"now": "t", "question": 42}, "prompt_template.variables.question", "variable 'question': expected a string, got integer 42"),
    ({"now": "t"}, "prompt_template.variables.question", "missing required variable 'question'"),
    ({"now": "t", "question": "q", "qestion": "q"}, "prompt_template.variables.qestion", "unknown variable 'qestion'"),
    ({"now": "t", "question": "q" * 4001}, "prompt_template.variables.question", "longer than max_length 4000"),
])
def test_bad_variables_are_a_400_naming_the_variable(gateway, variables, param, message) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        gateway.openai().chat.completions.create(model=MODEL, messages=[], max_tokens=4,
                                                 extra_body={"prompt_template": {"name": "support", "variables": variables}})
    body = err.value.body
    assert err.value.status_code == 400 and body["param"] == param and message in body["message"]
    assert "prompt template 'support'" in body["message"]


def test_other_misuse_is_a_clear_error(gateway) -> None:
    with gateway.client() as c:
        def post(path: str, body: dict):
            r = c.post(path, json={"model": MODEL, "max_tokens": 2, **body})
            return r.status_code, r.json()["error"]["param"], r.json()["error"]["message"]

        status, param, message = post("/v1/chat/completions", {"messages": [], **templated("nope")})
        assert (status, param) == (404, "prompt_template.name") and "known: rag-qa, support" in message
        status, param, _ = post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], **templated()})
        assert (status, param) == (400, "messages")
        status, param, message = post("/v1/completions", {"prompt": "", **templated()})
        assert (status, param) == (400, "prompt_template") and "/v1/chat/completions" in message
        status, param, _ = post("/v1/chat/completions", {"messages": [], "prompt_template": {"name": "support", "version": 9,
                                                                                         "variables": QUESTION}})
        assert (status, param) == (400, "prompt_template.version")
        status, param, _ = post("/v1/chat/completions", {"messages": [], "prompt_template": "support"})
        assert (status, param) == (400, "prompt_template")


def test_routing_keys_are_the_static_prefix_blocks(gateway, compiled_dir) -> None:
    compiled = load_compiled(compiled_dir / "support")
    expected = token_prefix_keys(compiled.prefix.token_ids, 16, 128, MODEL)
    assert len(expected) == compiled.prefix.num_tokens // 16 > 10
    client = gateway.openai()
    for i in range(4):
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=2, extra_body=templated(
            now=f"2025-03-1{i}T10:00:00Z", question=f"Question number {i}?"))
    holders = [r for r in ("r0", "r1") if gateway.state.prefix_index.num_cached_blocks(expected, r) == len(expected)]
    assert len(holders) == 1  # every request went to the replica holding the prefix
    decisions = {(s.labels["backend"], s.labels["reason"]): s.value for m in gateway.state.metrics.route_decisions.collect()
                 for s in m.samples if s.name.endswith("_total")}
    assert decisions.get((holders[0], "prefix_match"), 0) >= 3


def test_parse_keeps_plain_bodies_and_salts_keys(compiled_dir) -> None:
    templates = (load_compiled(compiled_dir / "support"),)
    plain = parse_templated_request(templates, b'{"model": "m", "messages": [{"role": "user", "content": "template"}]}',
                                    Endpoint.CHAT)
    assert not isinstance(plain, TemplatedRequest) and template_prefix_keys(plain, "m", 128) == ()
    raw = ('{"model": "m", "messages": [], "temperature": 0, "prompt_template": {"name": "support", "variables": '
           '{"now": "t", "question": "q"}}}').encode()
    req = parse_templated_request(templates, raw, Endpoint.CHAT)
    assert isinstance(req, TemplatedRequest) and "prompt_template" not in req.body and req.body["temperature"] == 0
    assert [m["role"] for m in req.body["messages"]] == ["system", "user"]
    assert template_prefix_keys(req, "m", 128) != template_prefix_keys(req, "adapter-x", 128)  # salted per model
    assert Counter(len(template_prefix_keys(req, "m", n)) for n in (1, 3)) == Counter({1: 1, 3: 1})
