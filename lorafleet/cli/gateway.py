"""``lorafleet bench routing`` and ``lorafleet bench gateway``.

Commands are registered on the typer apps of :mod:`lorafleet.cli` when this module is imported.
"""

from __future__ import annotations

from pathlib import Path

import typer

from lorafleet.cli import _help, bench_app, build, call, opt
from lorafleet.config.gateway_bench import GatewayBenchConfig, RoutingBenchConfig


@bench_app.command("gateway")
def bench_gateway(
    json_path: Path = typer.Option(..., "--json", help=_help(GatewayBenchConfig, "json_path")),
    ttft_requests: int = opt(GatewayBenchConfig, "ttft_requests"),
    litellm_ttft_requests: int = opt(GatewayBenchConfig, "litellm_ttft_requests"),
    concurrency: int = opt(GatewayBenchConfig, "concurrency"),
    throughput_requests: int = opt(GatewayBenchConfig, "throughput_requests"),
    litellm_throughput_requests: int = opt(GatewayBenchConfig, "litellm_throughput_requests"),
    repeats: int = opt(GatewayBenchConfig, "repeats"),
    output_tokens: int = opt(GatewayBenchConfig, "output_tokens"),
    litellm_python: str = opt(GatewayBenchConfig, "litellm_python"),
) -> None:
    """Gateway overhead vs calling a fast backend directly, and vs the LiteLLM proxy: added TTFT and req/s."""
    cfg = build(GatewayBenchConfig, json_path=json_path, ttft_requests=ttft_requests,
                litellm_ttft_requests=litellm_ttft_requests, concurrency=concurrency,
                throughput_requests=throughput_requests, litellm_throughput_requests=litellm_throughput_requests,
                repeats=repeats, output_tokens=output_tokens, litellm_python=litellm_python)
    call("bench.gateway:run", cfg)


@bench_app.command("routing")
def bench_routing(
    json_path: Path = typer.Option(..., "--json", help=_help(RoutingBenchConfig, "json_path")),
    model: str = opt(RoutingBenchConfig, "model"),
    num_tenants: int = opt(RoutingBenchConfig, "num_tenants"),
    system_prompt_tokens: int = opt(RoutingBenchConfig, "system_prompt_tokens"),
    requests_per_tenant: int = opt(RoutingBenchConfig, "requests_per_tenant"),
    tenant_slots: int = opt(RoutingBenchConfig, "tenant_slots"),
    num_adapters: int = opt(RoutingBenchConfig, "num_adapters"),
    adapter_requests: int = opt(RoutingBenchConfig, "adapter_requests"),
    max_adapters: int = opt(RoutingBenchConfig, "max_adapters"),
    concurrency: int = opt(RoutingBenchConfig, "concurrency"),
    output_tokens: int = opt(RoutingBenchConfig, "output_tokens"),
    seed: int = opt(RoutingBenchConfig, "seed"),
) -> None:
    """Routing policies on two real replicas: prefix-cache hit rate (8 tenants) and adapter loads (6 adapters)."""
    cfg = build(RoutingBenchConfig, json_path=json_path, model=model, num_tenants=num_tenants,
                system_prompt_tokens=system_prompt_tokens, requests_per_tenant=requests_per_tenant,
                tenant_slots=tenant_slots, num_adapters=num_adapters, adapter_requests=adapter_requests,
                max_adapters=max_adapters, concurrency=concurrency, output_tokens=output_tokens, seed=seed)
    call("bench.routing:run", cfg)
