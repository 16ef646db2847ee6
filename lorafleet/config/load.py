"""Load-test settings (issue #8): workloads, ``bench load``, ``bench sweep`` and SLOs. Stdlib only.

A workload YAML file maps onto :class:`WorkloadConfig` (see ``bench/workloads/*.yaml``); durations in flags
and SLOs read "2s", "100ms", "1m" (:func:`parse_duration_s`); an SLO string such as
``ttft_p99=2s,tpot_p99=100ms,error_rate=0.01`` becomes an :class:`Slo`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafleet.errors import ConfigError

APIS = ("chat", "completions")
DIST_KINDS = {  # kind: parameters it needs (min/max are optional clamps for every kind)
    "fixed": ("value",), "uniform": ("min", "max"), "normal": ("mean", "std"),
    "lognormal": ("median", "sigma"), "exponential": ("mean",),
}
SLO_METRICS = ("ttft", "tpot", "e2e")
SLO_STATS = ("p50", "p90", "p99", "mean")
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_SECONDS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration_s(text: str | int | float) -> float:
    """``"2s"``, ``"100ms"``, ``"1.5m"``, ``"1h"`` or a plain number of seconds, as seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        raise ConfigError(f"not a duration: '{text}' (use e.g. 30s, 100ms, 2m)")
    return float(m.group(1)) * _SECONDS[m.group(2)]


@dataclass(frozen=True, slots=True)
class Dist:
    """A distribution of a non-negative quantity (tokens or seconds); ``min``/``max`` clamp every kind."""

    kind: str = "fixed"  #: one of DIST_KINDS
    value: float | None = None  #: fixed
    min: float | None = None  #: uniform lower bound; lower clamp otherwise
    max: float | None = None  #: uniform upper bound; upper clamp otherwise
    mean: float | None = None  #: normal, exponential
    std: float | None = None  #: normal
    median: float | None = None  #: lognormal: exp(mu)
    sigma: float | None = None  #: lognormal: std of the log

    def __post_init__(self) -> None:
        if self.kind not in DIST_KINDS:
            raise ConfigError(f"distribution kind must be one of {tuple(DIST_KINDS)}, got '{self.kind}'")
        missing = [p for p in DIST_KINDS[self.kind] if getattr(self, p) is None]
        if missing:
            raise ConfigError(f"a {self.kind} distribution needs {missing}")
        negative = [n for n in ("value", "min", "max", "mean", "std", "median", "sigma")
                    if getattr(self, n) is not None and getattr(self, n) < 0]
        if negative:
            raise ConfigError(f"distribution parameters must be >= 0, got negative {negative}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"distribution min ({self.min}) is above max ({self.max})")


@dataclass(frozen=True, slots=True)
class ModelChoice:
    name: str  #: model sent in requests; "base" means the target's base model
    weight: float = 1.0  #: relative share of requests

    def __post_init__(self) -> None:
        if not self.name or self.weight < 0:
            raise ConfigError(f"model choice needs a name and a weight >= 0, got {self.name!r}, {self.weight}")


@dataclass(frozen=True, slots=True)
class AdapterDiscovery:
    """Spread requests over the adapters the target lists in /v1/models (entries with a ``parent``)."""

    count: int | None = None  #: use at most this many (sorted by name); None = all
    skew: str = "uniform"  #: uniform | zipf (adapter i gets weight 1/(i+1)^alpha)
    alpha: float = 1.0
    base_weight: float = 0.0  #: share of the base model next to the adapters (as a weight of the total 1)

    def __post_init__(self) -> None:
        if self.skew not in ("uniform", "zipf") or self.alpha < 0 or not 0 <= self.base_weight < 1:
            raise ConfigError("discover_adapters: skew must be uniform|zipf, alpha >= 0, base_weight in [0, 1)")
        if self.count is not None and self.count < 1:
            raise ConfigError(f"discover_adapters.count must be positive, got {self.count}")


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    name: str  #: label of the template
    text: str = "{prompt}"  #: user message or completion prompt; {prompt} is the generated body
    system: str | None = None  #: chat only: a system message
    weight: float = 1.0

    def __post_init__(self) -> None:
        if "{prompt}" not in self.text or self.weight < 0:
            raise ConfigError(f"template '{self.name}': text must contain {{prompt}} and weight must be >= 0")


@dataclass(frozen=True, slots=True)
class SharedPrefix:
    share: float = 0.0  #: fraction of requests whose prompt starts with a shared prefix
    tokens: int = 0  #: length of each shared prefix, in tokens (counted inside prompt_tokens)
    count: int = 1  #: distinct prefixes (e.g. documents or system prompts), chosen uniformly

    def __post_init__(self) -> None:
        if not 0 <= self.share <= 1 or self.tokens < 0 or self.count < 1:
            raise ConfigError("shared_prefix: share must be in [0, 1], tokens >= 0 and count >= 1")


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """One load-test workload. Lengths are in tokens (about one generated word each), times in seconds."""

    name: str
    description: str = ""
    api: str = "chat"  #: chat | completions
    seed: int = 0  #: same seed, same request sequence per user
    prompt_tokens: Dist = Dist("fixed", value=128)  #: total prompt body incl. the shared prefix (template excluded)
    output_tokens: Dist = Dist("fixed", value=64)  #: max_tokens of each request
    ignore_eos: bool = True  #: generate exactly max_tokens (engines that support it)
    temperature: float = 0.0
    shared_prefix: SharedPrefix = SharedPrefix()
    models: tuple[ModelChoice, ...] = (ModelChoice("base"),)
    discover_adapters: AdapterDiscovery | None = None
    templates: tuple[PromptTemplate, ...] = (PromptTemplate("plain"),)
    think_time_s: Dist = Dist("fixed", value=0.0)  #: pause of a user between its requests
    timeout_s: float = 600.0  #: per request

    def __post_init__(self) -> None:
        problems = []
        if self.api not in APIS:
            problems.append(f"api must be one of {APIS}, got '{self.api}'")
        if not self.models and self.discover_adapters is None:
            problems.append("give models or discover_adapters")
        if not self.templates:
            problems.append("templates must not be empty")
        if self.timeout_s <= 0 or not 0 <= self.temperature <= 2:
            problems.append("timeout_s must be positive and temperature in [0, 2]")
        if problems:
            raise ConfigError(f"workload '{self.name}': " + "; ".join(problems))


def _build(cls: type, raw: Any, where: str, problems: list[str], **nested: Any) -> Any:
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping, got {raw!r}")
        return None
    known = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(raw) - known):
        problems.append(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        return None
    try:
        return cls(**{**raw, **nested})
    except (ConfigError, TypeError) as e:
        problems.append(f"{where}: {e}")
        return None


def _dist(raw: Any, where: str, problems: list[str]) -> Dist | None:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return Dist("fixed", value=float(raw))
    return _build(Dist, raw, where, problems)


def workload_from_mapping(raw: Any, where: str = "workload") -> WorkloadConfig:
    """A :class:`WorkloadConfig` from parsed YAML, with every problem reported in one :class:`ConfigError`."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    problems: list[str] = []
    values = dict(raw)
    for key in ("prompt_tokens", "output_tokens", "think_time_s"):
        if key in values:
            values[key] = _dist(values[key], f"{where}.{key}", problems)
    if "shared_prefix" in values:
        values["shared_prefix"] = _build(SharedPrefix, values["shared_prefix"], f"{where}.shared_prefix", problems)
    if values.get("discover_adapters") is not None:
        values["discover_adapters"] = _build(AdapterDiscovery, values["discover_adapters"],
                                             f"{where}.discover_adapters", problems)
    for key, cls in (("models", ModelChoice), ("templates", PromptTemplate)):
        if key in values:
            items = values[key] if isinstance(values[key], list) else [values[key]]
            values[key] = tuple(_build(cls, item, f"{where}.{key}[{i}]", problems) for i, item in enumerate(items))
    config = None if problems else _build(WorkloadConfig, values, where, problems)
    if problems:
        raise ConfigError("; ".join(problems))
    return config


@dataclass(frozen=True, slots=True)
class SloLimit:
    metric: str  #: ttft | tpot | e2e
    stat: str  #: p50 | p90 | p99 | mean
    max_ms: float

    @property
    def key(self) -> str:
        return f"{self.metric}_{self.stat}"


@dataclass(frozen=True, slots=True)
class Slo:
    """Latency limits a load level must meet, plus the largest tolerated share of failed requests."""

    limits: tuple[SloLimit, ...] = ()
    max_error_rate: float = 0.01

    def __str__(self) -> str:
        return ", ".join([f"{lim.key}<={lim.max_ms:g}ms" for lim in self.limits] + [f"error_rate<={self.max_error_rate:g}"])


def parse_slo(text: str) -> Slo:
    """``"ttft_p99=2s,tpot_p99=100ms"`` (plus optional ``error_rate=0.05``) as an :class:`Slo`."""
    limits, error_rate, problems = [], 0.01, []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        key, sep, value = (x.strip() for x in part.lower().partition("="))
        try:
            if not sep:
                raise ConfigError("expected KEY=VALUE")
            if key == "error_rate":
                error_rate = float(value)
                continue
            metric, _, stat = key.partition("_")
            if metric not in SLO_METRICS or stat not in SLO_STATS:
                raise ConfigError(f"unknown key; use <{'|'.join(SLO_METRICS)}>_<{'|'.join(SLO_STATS)}> or error_rate")
            limits.append(SloLimit(metric, stat, 1000 * parse_duration_s(value)))
        except (ConfigError, ValueError) as e:
            problems.append(f"'{part}': {e}")
    if problems or not 0 <= error_rate <= 1:
        raise ConfigError("bad --slo: " + ("; ".join(problems) or f"error_rate must be in [0, 1], got {error_rate}"))
    return Slo(tuple(limits), error_rate)


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One headless locust run; every field is a flag of ``lorafleet bench load``."""

    target: str = field(metadata={"help": "Base URL of an OpenAI-compatible server or gateway (no /v1)."})
    out_dir: Path = field(metadata={"help": "Directory for summary.json, locust CSVs, requests.jsonl, report.html."})
    workload: str = field(default="chat", metadata={"help": "Shipped workload name or path to a workload YAML."})
    users: int = field(default=4, metadata={"help": "Concurrent simulated users (each has one request in flight)."})
    spawn_rate: float = field(default=4.0, metadata={"help": "Users started per second until --users run."})
    duration_s: float = field(default=60.0, metadata={"help": "Run time, e.g. 60s or 5m."})
    warmup_s: float = field(default=0.0, metadata={"help": "Leave requests started in the first T out of the summary."})
    stop_timeout_s: float = field(default=60.0, metadata={"help": "After the run time, how long in-flight requests may finish."})
    model: str | None = field(default=None, metadata={"help": "Base model name to send; default: the target's first."})
    api_key: str | None = field(default=None, metadata={"help": "Bearer token for the target."})
    seed: int | None = field(default=None, metadata={"help": "Override the workload's seed."})

    def __post_init__(self) -> None:
        problems = []
        if not self.target.startswith(("http://", "https://")):
            problems.append(f"target must be an http(s) URL, got '{self.target}'")
        if self.users < 1 or self.spawn_rate <= 0 or self.duration_s <= 0:
            problems.append(f"users, spawn_rate and duration must be positive, got {self.users}, {self.spawn_rate}, "
                            f"{self.duration_s}")
        if self.warmup_s < 0 or self.warmup_s >= self.duration_s or self.stop_timeout_s < 0:
            problems.append("warmup must be in [0, duration) and stop_timeout >= 0")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True, slots=True)
class SweepConfig:
    """Load runs over concurrency levels, or over profiles each launched with ``backend_cmd``."""

    out_dir: Path = field(metadata={"help": "Directory for sweep.json, report.html and one sub-directory per run."})
    target: str | None = field(default=None, metadata={"help": "URL to load (concurrency sweep); not with --profile."})
    workload: str = field(default="chat", metadata={"help": "Shipped workload name or path to a workload YAML."})
    users: tuple[int, ...] = field(default=(1, 2, 4, 8), metadata={"help": "Concurrency levels, e.g. 1,2,4,8."})
    duration_s: float = field(default=60.0, metadata={"help": "Run time of each level."})
    warmup_s: float = field(default=0.0, metadata={"help": "Leave requests started in the first T of each run out."})
    slo: Slo = field(default=Slo(), metadata={"help": "Limits, e.g. ttft_p99=2s,tpot_p99=100ms[,error_rate=0.01]."})
    profiles: tuple[str, ...] = field(default=(), metadata={"help": "Profiles (names or YAML paths) to launch and sweep."})
    backend: str = field(default="vllm", metadata={"help": "Backend the profiles are rendered for: vllm|sglang|trtllm|embedded."})
    backend_cmd: str | None = field(
        default=None, metadata={"help": "Command starting the backend, with {port}; profile flags are appended."})
    model: str | None = field(default=None, metadata={"help": "Base model name to send; default: the target's first."})
    api_key: str | None = field(default=None, metadata={"help": "Bearer token for the target."})
    start_timeout_s: float = field(default=900.0, metadata={"help": "How long a launched backend may take to get healthy."})

    def __post_init__(self) -> None:
        problems = []
        if not self.users or min(self.users) < 1:
            problems.append(f"users must be positive levels, got {self.users}")
        if self.duration_s <= 0 or not 0 <= self.warmup_s < self.duration_s:
            problems.append("duration must be positive and warmup in [0, duration)")
        if self.profiles:
            if self.target:
                problems.append("give --target (concurrency sweep) or --profile (launched backends), not both")
            if not self.backend_cmd or "{port}" not in self.backend_cmd:
                problems.append("--profile needs --backend-cmd containing {port}")
        elif not self.target:
            problems.append("give --target URL, or --profile with --backend-cmd")
        if problems:
            raise ConfigError("; ".join(problems))
