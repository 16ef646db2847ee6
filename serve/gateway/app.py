"""The gateway app: one OpenAI endpoint in front of many engine replicas.

:func:`build_app` builds the whole state once (replicas, adapter registry, policy, metrics, keys) and keeps
it on ``app.state.gateway``; nothing is global, so tests can run several gateways in one process. The
lifespan starts the backends, runs a first health check so requests can be routed at once, keeps checking
in the background, and at shutdown drains in-flight streams before closing the backends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from serve.gateway import admin, discovery, health
from serve.gateway.asgi import GatewayApp
from serve.gateway.config import GatewayConfig
from serve.gateway.errors import install_error_handlers
from serve.gateway.openapi import install_openapi
from serve.gateway.proxy import authenticate
from serve.gateway.state import GatewayState

log = logging.getLogger("lorafleet.gateway")


def build_app(cfg: GatewayConfig) -> GatewayApp:
    """The app for ``cfg``, not yet started (its lifespan starts the backends and health checks).

    The generation endpoints are served by :class:`GatewayApp` itself; FastAPI serves the rest."""
    state = GatewayState.build(cfg)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await asyncio.gather(*(r.backend.start() for r in state.fleet))
        await asyncio.gather(*(health.check_replica(r, state.adapters, state.prefix_index, state.metrics, 1)
                               for r in state.fleet), return_exceptions=True)
        state.tasks += await discovery.start(state)  # DNS-discovered replicas (no-op without discovery:)
        state.tasks.append(asyncio.create_task(health.monitor(
            state.fleet, state.adapters, state.prefix_index, state.metrics, cfg.limits.health_interval_s,
            cfg.limits.unhealthy_after)))
        try:
            yield
        finally:
            await drain(state)

    app = FastAPI(title="lorafleet gateway", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = state
    install_error_handlers(app)
    install_openapi(app)

    @app.get("/v1/models")
    async def list_models(raw: Request) -> dict:
        """Base models with at least one replica, and declared adapters of those bases, that the caller's key
        may use. ``parent`` names an adapter's base model, as in vLLM."""
        key = authenticate(state, raw.headers)
        bases = sorted(state.fleet.base_models())
        cards = [{"id": b, "object": "model", "created": created, "owned_by": "lorafleet", "parent": None,
                  "root": b} for b in bases]
        cards += [{"id": a.name, "object": "model", "created": created, "owned_by": "lorafleet",
                   "parent": a.base_model, "root": str(a.path)}
                  for a in sorted(state.adapters.specs.values(), key=lambda a: a.name) if a.base_model in bases]
        if key is not None:
            cards = [c for c in cards if key.allows(c["id"])]
        return {"object": "list", "data": cards}

    @app.get("/health")
    async def gateway_health() -> JSONResponse:
        """200 while the gateway accepts requests (503 while draining); lists each replica's health."""
        body = {"status": "draining" if state.is_draining else "ok",
                "backends": {r.name: r.is_healthy for r in state.fleet}}
        return JSONResponse(body, status_code=503 if state.is_draining else 200)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        state.metrics.queued.set(state.admission.num_waiting)
        for r in state.fleet:
            state.metrics.in_flight.labels(r.name).set(r.num_in_flight)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(admin.router(state))
    return GatewayApp(state, app)


async def drain(state: GatewayState) -> None:
    """Stop taking requests, let in-flight ones finish (up to ``drain_timeout_s``), then close everything."""
    state.is_draining = True
    deadline = time.monotonic() + state.cfg.limits.drain_timeout_s
    while state.num_in_flight() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if state.num_in_flight():
        log.warning("closing with %d request(s) still in flight", state.num_in_flight())
    for task in state.tasks:
        task.cancel()
    await asyncio.gather(*state.tasks, return_exceptions=True)
    await asyncio.gather(*(r.backend.aclose() for r in state.fleet), return_exceptions=True)
