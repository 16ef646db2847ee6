"""The compose stacks. CPU: its processes, started directly with its own commands and gateway config
(tests/deploy/conftest.py `cpu_stack`), serve chat through the gateway, adapters included. GPU (no GPU and no
Docker here): the file is checked for what makes it work: vLLM args rendered from the profile, one GPU per
replica, the gateway pointing at the replicas' real ports, shared adapter paths, Prometheus targets."""

from __future__ import annotations

import httpx
import pytest
import yaml
from openai import OpenAI

from tests.deploy.helpers import DEPLOY, MODEL, compose, flag_value, gateway_config, render_profile

pytestmark = pytest.mark.timeout(600)
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def _volumes(service: dict) -> dict[str, str]:
    """container path → source of a service's volumes (sources may hold ``${VAR:-default}``)."""
    out = {}
    for v in service.get("volumes", []):
        v = v.removesuffix(":ro").removesuffix(":rw")
        source, target = v.rsplit(":", 1)
        out[target] = source
    return out


def test_chat_goes_through_the_cpu_stack(cpu_stack) -> None:
    gw = OpenAI(base_url=f"{cpu_stack.gateway.url}/v1", api_key="none", max_retries=0, timeout=120)
    direct = OpenAI(base_url=f"{cpu_stack.engine.url}/v1", api_key="none", max_retries=0, timeout=120)
    via = gw.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0)
    ref = direct.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0)
    assert "Paris" in via.choices[0].message.content
    assert via.choices[0].message.content == ref.choices[0].message.content  # greedy: the gateway only relays
    assert via.model == MODEL
    stream = gw.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == via.choices[0].message.content
    # The adapter declared in the stack's config is loaded on demand on the discovered replica.
    tuned = gw.chat.completions.create(model="a0", messages=CHAT, max_tokens=12, temperature=0)
    assert tuned.model == "a0" and tuned.choices[0].message.content
    backends = httpx.get(f"{cpu_stack.gateway.url}/admin/backends", timeout=10).json()["backends"]
    port = cpu_stack.config["discovery"][0]["port"]
    assert [(b["name"], b["healthy"], b["adapters"]) for b in backends] == [("engine-127.0.0.1", True, ["a0"])]
    assert backends[0]["url"] == f"http://127.0.0.1:{port}"
    assert sorted(m.id for m in gw.models.list()) == ["a0", MODEL]


def test_cpu_stack_wiring(tmp_path) -> None:
    """Ports and names agree across the compose file, the gateway config and Prometheus."""
    services = compose("cpu")["services"]
    cfg, roots = gateway_config(yaml.safe_load((DEPLOY / "compose/cpu/gateway.yaml").read_text()), tmp_path)
    (disc,) = cfg.discovery
    engine_args = services["engine"]["command"]
    assert disc.service == "engine" and disc.port == int(flag_value(engine_args, "--port"))
    assert disc.template.base_model == flag_value(engine_args, "--served-model-name")
    assert disc.template.max_adapters <= int(flag_value(engine_args, "--max-loras"))
    assert flag_value(engine_args, "--allow-runtime-lora") == roots[0] == "/adapters"  # the gateway loads from there
    assert services["gateway"]["ports"] == [f"{cfg.server.port}:{cfg.server.port}"]
    assert services["gateway"]["environment"]["LORAFLEET_HEALTHCHECK_URL"] == f"http://127.0.0.1:{cfg.server.port}/health"
    assert _volumes(services["gateway"])["/etc/lorafleet/gateway.yaml"] == "./gateway.yaml"
    assert roots == ["/adapters"]  # read by the gateway (checks) and the engine (loads) at one path
    assert _volumes(services["gateway"])["/adapters"] == _volumes(services["engine"])["/adapters"]
    prom = yaml.safe_load((DEPLOY / "prometheus/compose-cpu.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["gateway"]["static_configs"][0]["targets"] == [f"gateway:{cfg.server.port}"]
    assert jobs["engines"]["dns_sd_configs"][0] == {"names": [disc.service], "type": "A", "port": disc.port,
                                                    "refresh_interval": "15s"}


def test_gpu_stack_wiring(tmp_path) -> None:
    services = compose("gpu")["services"]
    rendered = render_profile(DEPLOY / "profiles/smollm2-gpu.yaml", "vllm", f"/models/{MODEL}")
    engines = {n: s for n, s in services.items() if n.startswith("vllm-")}
    assert len(engines) == 2
    gpus = []
    for name, s in engines.items():
        assert s["entrypoint"] == rendered["command"] and s["command"] == rendered["args"], name
        assert s["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
        assert all(s["environment"].get(k) == v for k, v in rendered["env"].items())
        (dev,) = s["deploy"]["resources"]["reservations"]["devices"]
        assert dev["capabilities"] == ["gpu"] and dev["driver"] == "nvidia"
        gpus += dev["device_ids"]
        assert s["ipc"] == "host" or "shm_size" in s
        assert _volumes(s)["/models"] and f"/models/{MODEL}" == s["command"][0]
    assert sorted(gpus) == ["0", "1"]  # one GPU each, never shared
    cfg, roots = gateway_config(yaml.safe_load((DEPLOY / "compose/gpu/gateway.yaml").read_text()), tmp_path)
    port = flag_value(rendered["args"], "--port")
    assert sorted(b.url for b in cfg.backends) == [f"http://{n}:{port}" for n in sorted(engines)]
    assert {b.base_model for b in cfg.backends} == {flag_value(rendered["args"], "--served-model-name")}
    assert all(b.kind == "vllm" and b.max_adapters <= int(flag_value(rendered["args"], "--max-loras")) for b in cfg.backends)
    gateway = services["gateway"]
    assert roots == ["/adapters"]
    assert all(_volumes(gateway)["/adapters"] == _volumes(s)["/adapters"] for s in engines.values())
    assert {"LORAFLEET_API_KEY", "LORAFLEET_ADMIN_KEY"} <= set(gateway["environment"])  # keys from the environment
    assert set(gateway["depends_on"]) == set(engines)
    prom = yaml.safe_load((DEPLOY / "prometheus/compose-gpu.yml").read_text())
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in prom["scrape_configs"]}
    assert sorted(targets["engines"]) == [f"{n}:{port}" for n in sorted(engines)]
    assert targets["gateway"] == [f"gateway:{cfg.server.port}"]


@pytest.mark.parametrize("stack", ["cpu", "gpu"])
def test_grafana_mounts_exist(stack) -> None:
    grafana = compose(stack)["services"]["grafana"]
    for source in _volumes(grafana).values():
        assert (DEPLOY / "compose" / stack / source).resolve().is_dir(), source
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/var/lib/grafana/dashboards/")
    assert (DEPLOY / "grafana/dashboards" / home.rsplit("/", 1)[1]).is_file()
