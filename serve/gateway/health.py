"""Background health checks: every ``health_interval_s`` each replica's /health and /metrics are polled.
A replica is taken out after ``unhealthy_after`` consecutive failures and brought back at its first success,
when its adapter residency is re-read from /v1/models (a restarted engine has lost its adapters)."""

from __future__ import annotations

import asyncio
import logging

from lorafleet.errors import BackendError
from serve.gateway.adapters import AdapterRegistry
from serve.gateway.fleet import Fleet, Replica
from serve.gateway.metrics import GatewayMetrics
from serve.routing.prefix_index import PrefixIndex

log = logging.getLogger("lorafleet.gateway")


async def check_replica(replica: Replica, adapters: AdapterRegistry, index: PrefixIndex, metrics: GatewayMetrics,
                        unhealthy_after: int) -> None:
    """One health check of ``replica``, updating its state."""
    ok = await replica.backend.health()
    if ok and not replica.is_healthy:
        try:  # coming (back) up: learn which adapters it holds before routing to it
            adapters.sync(replica.name, (await replica.backend.list_models()).adapters)
        except BackendError as e:
            log.warning("backend %s is up but /v1/models failed: %s", replica.name, e)
            ok = False
    if ok:
        if not replica.is_healthy:
            log.info("backend %s is healthy", replica.name)
            index.forget_replica(replica.name)  # its cache is unknown (it may have restarted)
        replica.is_healthy, replica.num_failed_checks = True, 0
        replica.metrics = await replica.backend.scrape_metrics() or replica.metrics
    else:
        replica.num_failed_checks += 1
        if replica.is_healthy and replica.num_failed_checks >= unhealthy_after:
            log.warning("backend %s failed %d health check(s); taking it out", replica.name, replica.num_failed_checks)
            replica.is_healthy = False
    metrics.healthy.labels(replica.name).set(1 if replica.is_healthy else 0)


async def monitor(fleet: Fleet, adapters: AdapterRegistry, index: PrefixIndex, metrics: GatewayMetrics,
                  interval_s: float, unhealthy_after: int) -> None:
    """Run health checks forever (until cancelled)."""
    while True:
        replicas = list(fleet)
        await asyncio.gather(*(check_replica(r, adapters, index, metrics, unhealthy_after) for r in replicas),
                             return_exceptions=True)
        await asyncio.sleep(interval_s)
