"""serve/gateway/config.py and adapter_files.py: typed config from YAML, every problem reported at once,
adapter paths confined to the roots and to safetensors weights."""

from __future__ import annotations

import os

import pytest

from lorafleet.errors import ConfigError
from serve.gateway.auth import hash_key
from serve.gateway.config import load_config, parse_config

BACKEND = {"name": "r0", "kind": "vllm", "url": "http://127.0.0.1:8001", "base_model": "smol"}


def test_full_yaml_file(tmp_path, adapter_dir) -> None:
    adapter_dir("sql")
    (tmp_path / "gw.yaml").write_text(f"""
server: {{host: 0.0.0.0, port: 9100}}
backends:
  - {{name: r0, kind: vllm, url: "http://10.0.0.1:8000", base_model: smol, served_model: /models/smol, max_adapters: 2}}
  - {{name: r1, kind: sglang, url: "http://10.0.0.2:30000", base_model: smol, weight: 2}}
adapter_roots: [adapters]
adapters:
  - {{name: sql, path: sql, base_model: smol}}
routing: {{policy: prefix_aware, params: {{load_factor: 1.5}}}}
auth:
  keys:
    - {{name: team-a, key_sha256: {hash_key("secret-a")}, models: [smol, "sql*"], requests_per_min: 60, tokens_per_min: 1000}}
    - {{name: ops, key_env: OPS_KEY, admin: true}}
limits: {{max_queue: 10, max_retries: 2}}
""")
    cfg = load_config(tmp_path / "gw.yaml", env={"OPS_KEY": "ops-secret"})
    assert (cfg.server.host, cfg.server.port) == ("0.0.0.0", 9100)
    assert [b.name for b in cfg.backends] == ["r0", "r1"] and cfg.backends[0].upstream_model == "/models/smol"
    assert cfg.adapters[0].path == (tmp_path / "adapters" / "sql").resolve()
    assert cfg.routing.policy == "prefix_aware" and cfg.limits.max_retries == 2
    assert cfg.keys[1].key_sha256 == hash_key("ops-secret") and cfg.keys[1].admin
    assert cfg.keys[0].allows("sql-v2") and not cfg.keys[0].allows("other")
    assert "ops-secret" not in repr(cfg)  # only digests are kept


def test_every_problem_is_reported_at_once(tmp_path, adapter_dir) -> None:
    root = adapter_dir("ok").parent
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "pickled").mkdir()
    (root / "pickled" / "adapter_config.json").write_text("{}")
    (root / "pickled" / "adapter_model.bin").write_bytes(b"\x80\x04")
    (root / "no-weights").mkdir()
    (root / "no-weights" / "adapter_config.json").write_text("{}")
    os.symlink(outside, root / "escape")
    raw = {
        "backends": [BACKEND, {**BACKEND, "name": "r1", "kind": "triton"}, {**BACKEND, "name": "r2", "colour": "red"}],
        "adapter_roots": [str(root)],
        "adapters": [{"name": "up", "path": "../elsewhere", "base_model": "smol"},
                     {"name": "abs", "path": str(outside), "base_model": "smol"},
                     {"name": "link", "path": "escape", "base_model": "smol"},
                     {"name": "pickled", "path": "pickled", "base_model": "smol"},
                     {"name": "no-weights", "path": "no-weights", "base_model": "smol"},
                     {"name": "orphan", "path": "ok", "base_model": "nobody"}],
        "routing": {"policy": "fastest"},
        "auth": {"keys": [{"name": "k", "models": ["*"]}, {"name": "e", "key_env": "MISSING"}]},
        "limits": {"max_in_flight": 0},
        "extra": 1,
    }
    with pytest.raises(ConfigError) as e:
        parse_config(raw, tmp_path, env={})
    msg = str(e.value)
    for needle in ("unknown top-level key(s) ['extra']", "kind must be one of", "unknown key(s) ['colour']",
                   "adapter 'up': path '../elsewhere' is outside the adapter roots",
                   "adapter 'abs': path", "adapter 'link': path 'escape' is outside",
                   "pickle weights ['adapter_model.bin']", "'no-weights'", "has no adapter_model.safetensors",
                   "adapter 'orphan': base_model 'nobody' is served by no backend",
                   "routing.policy must be one of", "exactly one of key_sha256", "MISSING is not set",
                   "limits.max_in_flight must be positive"):
        assert needle in msg, needle
    assert msg.startswith("gateway config has 14 problem(s)")


def test_truncated_safetensors_is_refused(adapter_dir, tmp_path) -> None:
    path = adapter_dir("broken")
    (path / "adapter_model.safetensors").write_bytes(b"\xff" * 8)
    with pytest.raises(ConfigError, match="not a safetensors file"):
        parse_config({"backends": [BACKEND], "adapter_roots": [str(path.parent)],
                      "adapters": [{"name": "broken", "path": "broken", "base_model": "smol"}]})


def test_names_must_be_unique_and_distinct_from_bases(adapter_dir) -> None:
    root = adapter_dir("smol").parent
    with pytest.raises(ConfigError) as e:
        parse_config({"backends": [BACKEND, BACKEND], "adapter_roots": [str(root)],
                      "adapters": [{"name": "smol", "path": "smol", "base_model": "smol"}]})
    assert "duplicate backend names: ['r0']" in str(e.value)


def test_no_backends_and_bad_yaml(tmp_path) -> None:
    with pytest.raises(ConfigError, match="at least one backend"):
        parse_config({})
    (tmp_path / "bad.yaml").write_text("backends: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_in_process_engine_entries() -> None:
    engine = {"model": "smollm2-135m-instruct", "dtype": "float32", "num_kv_blocks": 64, "max_loras": 2}
    cfg = parse_config({"backends": [{"name": "own", "kind": "embedded", "base_model": "smol", "engine": engine,
                                      "engine_loop": "process"}]})
    spec = cfg.backends[0]
    assert spec.engine.dtype == "float32" and spec.engine.num_kv_blocks == 64 and spec.engine_loop == "process"
    assert spec.url == "" and spec.upstream_model == "smol"
    with pytest.raises(ConfigError) as e:
        parse_config({"backends": [
            {"name": "a", "kind": "embedded", "base_model": "smol", "engine": {**engine, "dtype": "int3"}},
            {"name": "b", "kind": "embedded", "base_model": "smol", "engine": {**engine, "colour": "red"}},
            {"name": "c", "kind": "vllm", "base_model": "smol", "engine": engine},
            {"name": "d", "kind": "embedded", "base_model": "smol", "url": "http://x:1", "engine": engine},
            {"name": "e", "kind": "embedded", "base_model": "smol", "engine": engine, "engine_loop": "fiber"},
            {"name": "f", "kind": "embedded", "base_model": "smol"}]})
    text = str(e.value)
    assert "6 problem(s)" in text
    for needle in ("backend 'a': engine: dtype must be one of", "backend 'b': engine:", "colour",
                   "backend 'c': an in-process engine is only for kind 'embedded'", "backend 'd': an in-process engine",
                   "engine_loop must be 'thread' or 'process'", "backend 'f': url must start with http://"):
        assert needle in text, needle


def test_adapter_names_follow_the_engine_rule(adapter_dir) -> None:
    root = adapter_dir("ok").parent
    for bad in ("../../etc", "a/b", ".hidden", "with space"):
        with pytest.raises(ConfigError, match="must match"):
            parse_config({"backends": [BACKEND], "adapter_roots": [str(root)],
                          "adapters": [{"name": bad, "path": "ok", "base_model": "smol"}]})


def test_backend_keys_from_the_environment_and_embedded_adapter_roots(adapter_dir) -> None:
    from serve.gateway.state import GatewayState

    root = adapter_dir("ok").parent
    entry = {"name": "e0", "kind": "embedded", "url": "http://127.0.0.1:8123", "base_model": "smol",
             "launch_args": ["--model", "m"], "api_key_env": "E0_KEY"}
    with pytest.raises(ConfigError, match="environment variable E0_KEY"):
        parse_config({"backends": [entry]}, env={})
    with pytest.raises(ConfigError, match="not both"):
        parse_config({"backends": [{**entry, "api_key": "k"}]}, env={"E0_KEY": "k"})
    cfg = parse_config({"backends": [entry], "adapter_roots": [str(root)]}, env={"E0_KEY": "secret-e0"})
    assert cfg.backends[0].api_key == "secret-e0" and "secret-e0" not in repr(cfg.backends[0])
    backend = GatewayState.build(cfg).fleet.get("e0").backend
    command = backend.launch_command()
    assert command[command.index("--allow-runtime-lora") + 1] == str(root) and "secret-e0" not in command
