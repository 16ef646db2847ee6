"""Settings of ``lorafleet bench routing`` and ``lorafleet bench gateway`` (stdlib only).

Every field is a flag of its command; the defaults are the runs whose results are committed under
``bench/results/``. Tests run the same code with smaller numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from lorafleet.errors import ConfigError


def _check_positive(cfg, names: tuple[str, ...]) -> list[str]:
    return [f"{n.replace('_', '-')} must be positive, got {getattr(cfg, n)}" for n in names if getattr(cfg, n) < 1]


@dataclass(frozen=True, slots=True)
class GatewayBenchConfig:
    """``lorafleet bench gateway``: what the gateway (and LiteLLM) add in front of a backend that answers at once."""

    json_path: Path = field(metadata={"help": "Where to write the results JSON."})
    ttft_requests: int = field(default=2000, metadata={"help": "Streamed requests per system at concurrency 1 for "
                                                               "the added-TTFT percentiles (direct and gateway interleaved)."})
    litellm_ttft_requests: int = field(default=300, metadata={"help": "The same for LiteLLM (it is much slower)."})
    concurrency: int = field(default=64, metadata={"help": "Concurrent streams of the throughput runs."})
    throughput_requests: int = field(default=4000, metadata={"help": "Streamed requests per throughput run "
                                                                     "(direct and gateway)."})
    litellm_throughput_requests: int = field(default=300, metadata={"help": "Streamed requests per LiteLLM "
                                                                            "throughput run."})
    repeats: int = field(default=5, metadata={"help": "Throughput runs per system, alternating (median reported)."})
    output_tokens: int = field(default=8, metadata={"help": "Tokens the fast backend streams per request."})
    litellm_python: str = field(default=".venv-litellm/bin/python",
                                metadata={"help": "Python of the LiteLLM venv (`make litellm-venv`); '' skips LiteLLM."})

    def __post_init__(self) -> None:
        problems = _check_positive(self, ("ttft_requests", "litellm_ttft_requests", "concurrency", "throughput_requests",
                                          "litellm_throughput_requests", "repeats", "output_tokens"))
        if self.ttft_requests < 100 or self.litellm_ttft_requests < 100:
            problems.append("ttft-requests and litellm-ttft-requests must be at least 100 (a p99 needs them)")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True, slots=True)
class RoutingBenchConfig:
    """``lorafleet bench routing``: prefix-cache hits and adapter loads of routing policies on two real replicas."""

    json_path: Path = field(metadata={"help": "Where to write the results JSON."})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Model name or checkpoint dir of the replicas."})
    num_tenants: int = field(default=8, metadata={"help": "Tenants, each with its own long system prompt."})
    system_prompt_tokens: int = field(default=448, metadata={"help": "Approximate length of each tenant's system "
                                                                     "prompt, in tokens."})
    requests_per_tenant: int = field(default=6, metadata={"help": "Requests each tenant sends in the prefix run."})
    tenant_slots: int = field(default=4, metadata={"help": "Tenants' prompts one replica's KV cache holds at once: "
                                                           "sets --num-kv-blocks so the fleet holds all tenants only "
                                                           "if each replica keeps to its share."})
    num_adapters: int = field(default=6, metadata={"help": "Adapters of the LoRA run."})
    adapter_requests: int = field(default=48, metadata={"help": "Requests of the LoRA run (adapters in random order)."})
    max_adapters: int = field(default=3, metadata={"help": "Adapters one replica keeps loaded (gateway max_adapters "
                                                           "and engine --max-loras)."})
    concurrency: int = field(default=2, metadata={"help": "Requests in flight at once."})
    output_tokens: int = field(default=4, metadata={"help": "Tokens generated per request."})
    seed: int = field(default=0, metadata={"help": "Seed of the prompts and of the request order."})

    def __post_init__(self) -> None:
        problems = _check_positive(self, tuple(f.name for f in fields(self) if f.type == "int" and f.name != "seed"))
        if self.num_tenants < 2 or self.num_adapters < 2:
            problems.append("num-tenants and num-adapters must be at least 2")
        if self.tenant_slots >= self.num_tenants:
            problems.append(f"tenant-slots ({self.tenant_slots}) must be fewer than num-tenants ({self.num_tenants}): "
                            "with room for every tenant on every replica, no routing policy matters")
        if self.max_adapters >= self.num_adapters:
            problems.append(f"max-adapters ({self.max_adapters}) must be fewer than num-adapters ({self.num_adapters})")
        if problems:
            raise ConfigError("; ".join(problems))
