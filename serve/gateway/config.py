"""The gateway's configuration: typed, frozen dataclasses read from one YAML file.

:func:`load_config` collects every problem in the file (unknown keys, wrong types, bad values, adapter paths
outside the roots or without safetensors weights, keys without a secret) and raises one :class:`ConfigError`
listing them all. Example::

    server: {host: 127.0.0.1, port: 9000}
    backends:
      - {name: r0, kind: vllm, url: http://127.0.0.1:8001, base_model: smollm2, max_adapters: 4, api_key_env: R0_KEY}
    adapter_roots: [/srv/adapters]
    adapters:
      - {name: sql, path: sql-v2, base_model: smollm2}      # relative to a root
    routing: {policy: hybrid, params: {load_factor: 1.5}}
    auth:
      keys:
        - {name: team-a, key_sha256: 9f86d0..., models: [smollm2, "sql*"], requests_per_min: 600, tokens_per_min: 200000}
        - {name: ops, key_env: LORAFLEET_OPS_KEY, models: ["*"], admin: true}
    limits: {request_timeout_s: 300, max_in_flight: 1024, max_queue: 4096, max_body_bytes: 4194304, max_tokens: 16384}
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafleet.config import adapter_name_problem
from lorafleet.errors import ConfigError
from lorafleet.templates import CompiledTemplate, load_compiled_templates
from serve.adapter_files import check_adapter_dir
from serve.backends.base import BackendSpec
from serve.gateway.auth import KeySpec, hash_key
from serve.gateway.discovery import DiscoverySpec, parse_discovery
from serve.routing import DEFAULT_POLICY, make_policy

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"  #: address to bind
    port: int = 9000


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """A declared adapter. ``path`` is resolved and checked (under a root, safetensors) by :func:`load_config`."""

    name: str  #: the ``model`` value clients use
    path: Path  #: adapter directory, as every replica of ``base_model`` can read it
    base_model: str

    def __post_init__(self) -> None:
        if (why := adapter_name_problem(self.name)) is not None:  # the rule `lorafleet serve` applies too
            raise ConfigError(why)


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    policy: str = DEFAULT_POLICY  #: a name from serve.routing.POLICIES
    params: Mapping[str, Any] = field(default_factory=dict)  #: the policy's settings


@dataclass(frozen=True, slots=True)
class LimitSettings:
    request_timeout_s: float = 600.0  #: whole-request deadline, from arrival to the last byte
    upstream_idle_timeout_s: float = 120.0  #: longest silence from a replica before the attempt fails
    max_in_flight: int = 1024  #: requests relayed at once; more wait in the queue
    max_queue: int = 4096  #: requests waiting for a slot; beyond this the gateway answers 503
    max_retries: int = 1  #: extra replicas tried when an attempt fails before its first byte
    health_interval_s: float = 2.0  #: period of /health and /metrics polling of every replica
    unhealthy_after: int = 1  #: consecutive failed health checks that take a replica out
    drain_timeout_s: float = 30.0  #: on shutdown, how long in-flight streams may finish
    prefix_block_chars: int = 64  #: characters per prefix block for prefix-aware routing (~16 tokens)
    prefix_max_blocks: int = 128  #: prefix blocks hashed per request
    prefix_index_keys: int = 200_000  #: prefix keys remembered (LRU)
    max_body_bytes: int = 4 * 2**20  #: largest request body; larger ones are refused with 413
    max_tokens: int = 16_384  #: largest max_tokens / max_completion_tokens a request may ask for (400 above)
    max_n: int = 16  #: most choices (``n``) per request
    max_prompts: int = 64  #: most prompts in one /v1/completions request

    def __post_init__(self) -> None:
        positive = ("request_timeout_s", "upstream_idle_timeout_s", "max_in_flight", "health_interval_s",
                    "unhealthy_after", "drain_timeout_s", "prefix_block_chars", "prefix_index_keys", "max_body_bytes",
                    "max_tokens", "max_n", "max_prompts")
        bad = [f"limits.{n} must be positive, got {getattr(self, n)}" for n in positive if getattr(self, n) <= 0]
        bad += [f"limits.{n} must be >= 0, got {getattr(self, n)}" for n in ("max_queue", "max_retries", "prefix_max_blocks")
                if getattr(self, n) < 0]
        if bad:
            raise ConfigError("; ".join(bad))


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    backends: tuple[BackendSpec, ...]
    server: ServerSettings = ServerSettings()
    adapter_roots: tuple[Path, ...] = ()
    adapters: tuple[AdapterSpec, ...] = ()
    keys: tuple[KeySpec, ...] = ()  #: API keys; with none configured the gateway is open (no auth)
    routing: RoutingSettings = RoutingSettings()
    limits: LimitSettings = LimitSettings()
    discovery: tuple[DiscoverySpec, ...] = ()  #: DNS names followed for replicas (serve/gateway/discovery.py)
    templates: tuple[CompiledTemplate, ...] = ()  #: registered prompt templates (serve/gateway/templates.py)

    def __post_init__(self) -> None:
        problems = []
        for what, names in (("backend", [b.name for b in self.backends]), ("adapter", [a.name for a in self.adapters]),
                            ("key", [k.name for k in self.keys])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                problems.append(f"duplicate {what} names: {dupes}")
        bases = {b.base_model for b in self.backends}
        for a in self.adapters:
            if a.name in bases:
                problems.append(f"adapter '{a.name}' has the same name as a base model")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def auth_enabled(self) -> bool:
        return bool(self.keys)


# -- reading YAML ----------------------------------------------------------------------------------------------
def _build(cls: type, data: Any, where: str, problems: list[str], **override: Any) -> Any:
    """``cls(**data)`` with unknown keys and constructor errors recorded in ``problems``; None on failure."""
    if not isinstance(data, Mapping):
        problems.append(f"{where}: expected a mapping, got {type(data).__name__}")
        return None
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        return None
    values = {**data, **override}
    for f in dataclasses.fields(cls):  # light type checks: YAML gives str/int/float/bool/list
        v = values.get(f.name)
        if v is not None and f.type in ("int", "float") and (isinstance(v, bool) or not isinstance(v, (int, float))):
            problems.append(f"{where}.{f.name}: expected a number, got {v!r}")
            return None
    try:
        return cls(**values)
    except (ConfigError, TypeError, ValueError) as e:
        problems.append(f"{where}: {e}")
        return None


def _backend(data: Any, where: str, problems: list[str], env: Mapping[str, str]) -> BackendSpec | None:
    """A backend entry; ``api_key_env`` names a variable holding the engine's key (kept out of the YAML)."""
    if isinstance(data, Mapping) and "api_key_env" in data:
        data = dict(data)
        name = str(data.pop("api_key_env"))
        if "api_key" in data:
            problems.append(f"{where}: give api_key or api_key_env, not both")
            return None
        if not env.get(name):
            problems.append(f"{where}: environment variable {name} (api_key_env) is not set")
            return None
        data["api_key"] = env[name]
    try:
        converted = BackendSpec.converted(data) if isinstance(data, Mapping) else {}
    except ConfigError as e:
        problems.append(f"{where}: {e}")
        return None
    return _build(BackendSpec, data, where, problems, **converted)


def _key(data: Any, where: str, problems: list[str], env: Mapping[str, str]) -> KeySpec | None:
    if not isinstance(data, Mapping):
        problems.append(f"{where}: expected a mapping")
        return None
    data = dict(data)
    secret_env, digest = data.pop("key_env", None), data.get("key_sha256")
    if (secret_env is None) == (digest is None):
        problems.append(f"{where}: give exactly one of key_sha256 (hex SHA-256 of the key) or key_env (variable holding it)")
        return None
    if secret_env is not None:
        if not env.get(str(secret_env)):
            problems.append(f"{where}: environment variable {secret_env} is not set")
            return None
        data["key_sha256"] = hash_key(env[str(secret_env)])
    elif not _HEX64.match(str(digest)):
        problems.append(f"{where}: key_sha256 must be 64 lowercase hex digits")
        return None
    if "models" in data:
        data["models"] = tuple(data["models"]) if isinstance(data["models"], list) else data["models"]
    return _build(KeySpec, data, where, problems)


def parse_config(raw: Any, base_dir: Path = Path("."), env: Mapping[str, str] | None = None) -> GatewayConfig:
    """A :class:`GatewayConfig` from parsed YAML (``raw``); relative adapter roots are taken from ``base_dir``."""
    env = os.environ if env is None else env
    problems: list[str] = []
    if not isinstance(raw, Mapping):
        raise ConfigError("gateway config: expected a mapping at the top level")
    known = {"server", "backends", "adapter_roots", "adapters", "auth", "routing", "limits", "discovery", "templates"}
    if unknown := sorted(set(raw) - known):
        problems.append(f"unknown top-level key(s) {unknown}; known: {sorted(known)}")
    server = _build(ServerSettings, raw.get("server") or {}, "server", problems)
    limits = _build(LimitSettings, raw.get("limits") or {}, "limits", problems)
    routing = _build(RoutingSettings, raw.get("routing") or {}, "routing", problems)
    if routing is not None:
        try:
            make_policy(routing.policy, routing.params)
        except ConfigError as e:
            problems.append(str(e))
    backends = []
    for i, b in enumerate(raw.get("backends") or []):
        backends.append(_backend(b, f"backends[{i}]", problems, env))
    roots = tuple((base_dir / str(r)).resolve() for r in raw.get("adapter_roots") or [])
    for r in roots:
        if not r.is_dir():
            problems.append(f"adapter_roots: '{r}' is not a directory")
    discovery = parse_discovery(raw.get("discovery"), problems)
    templates = load_compiled_templates(raw.get("templates") or [], base_dir, problems)
    bases = {b.base_model for b in backends if b is not None} | {d.template.base_model for d in discovery}
    adapters = []
    for i, a in enumerate(raw.get("adapters") or []):
        spec = _build(AdapterSpec, a, f"adapters[{i}]", problems, path=Path(str(a.get("path", ""))) if isinstance(a, Mapping) else None)
        if spec is None:
            continue
        real, why = check_adapter_dir(spec.name, spec.path, roots)
        problems.extend(why)
        if spec.base_model not in bases:
            problems.append(f"adapter '{spec.name}': base_model '{spec.base_model}' is served by no backend")
        adapters.append(dataclasses.replace(spec, path=real or spec.path))
    auth = raw.get("auth") or {}
    if not isinstance(auth, Mapping) or set(auth) - {"keys"}:
        problems.append("auth: expected a mapping with only 'keys'")
        auth = {}
    keys = [_key(k, f"auth.keys[{i}]", problems, env) for i, k in enumerate(auth.get("keys") or [])]
    if not raw.get("backends") and not discovery:
        problems.append("backends: at least one backend (or a discovery entry) is needed")
    if not problems:
        try:
            return GatewayConfig(tuple(backends), server, roots, tuple(adapters), tuple(keys), routing, limits, discovery,
                                 templates)
        except ConfigError as e:
            problems.append(str(e))
    raise ConfigError("gateway config has {} problem(s):\n  - {}".format(len(problems), "\n  - ".join(problems)))


def load_config(path: Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate the YAML file at ``path``; relative paths in it are relative to its directory."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read gateway config {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"gateway config {path} is not valid YAML: {e}") from None
    return parse_config(raw, Path(path).resolve().parent, env)
