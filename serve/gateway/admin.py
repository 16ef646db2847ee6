"""The admin API: list, add and remove backends at runtime; list and revoke API keys.

``GET /admin/backends`` lists replicas with their state; ``POST /admin/backends`` takes a backend entry as in
the YAML config and adds it (routable after its first passing health check, run at once);
``DELETE /admin/backends/{name}`` stops routing to it and closes it once its in-flight requests finish.
``GET /admin/keys`` lists key names (never digests); ``DELETE /admin/keys/{name}`` revokes a key at once, until
the gateway restarts (remove it from the config to make that permanent).
With API keys configured, only keys marked ``admin: true`` may call these.
"""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Request

from lorafleet.errors import NotFoundError
from serve.backends.base import BackendSpec
from serve.gateway import health
from serve.gateway.errors import GatewayError
from serve.gateway.proxy import authenticate
from serve.gateway.state import GatewayState

log = logging.getLogger("lorafleet.gateway")


def _describe(r) -> dict:
    m = r.metrics
    return {"name": r.name, "kind": r.spec.kind, "url": r.spec.url or "in-process", "base_model": r.spec.base_model,
            "weight": r.spec.weight, "max_adapters": r.spec.max_adapters, "healthy": r.is_healthy,
            "in_flight": r.num_in_flight, "waiting": m.num_waiting if m else None,
            "kv_cache_usage": m.kv_cache_usage if m else None}


def router(state: GatewayState) -> APIRouter:
    api = APIRouter(prefix="/admin")

    def require_admin(raw: Request) -> None:
        key = authenticate(state, raw.headers)
        if key is not None and not key.admin:
            raise GatewayError(403, f"key '{key.name}' is not an admin key")

    @api.get("/backends")
    async def list_backends(raw: Request) -> dict:
        require_admin(raw)
        return {"backends": [{**_describe(r), "adapters": sorted(state.adapters.resident(r.name))} for r in state.fleet]}

    @api.post("/backends", status_code=201)
    async def add_backend(raw: Request) -> dict:
        require_admin(raw)
        try:
            data = json.loads(await raw.body())
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            spec = BackendSpec.from_mapping(data)
        except (ValueError, TypeError) as e:
            raise GatewayError(400, f"invalid backend: {e}") from None
        if state.fleet.get(spec.name) is not None:
            raise GatewayError(409, f"backend '{spec.name}' already exists", "name")
        replica = state.add_backend(spec)
        try:
            await replica.backend.start()
        except Exception as e:
            await state.remove_backend(spec.name)
            raise GatewayError(502, f"backend '{spec.name}' could not be started: {e}") from None
        await health.check_replica(replica, state.adapters, state.prefix_index, state.metrics, 1)
        return _describe(replica)

    @api.delete("/backends/{name}")
    async def remove_backend(name: str, raw: Request) -> dict:
        require_admin(raw)
        replica = await state.remove_backend(name)
        if replica is None:
            raise NotFoundError(f"backend '{name}' does not exist")
        return {"removed": name, "in_flight": replica.num_in_flight}

    @api.get("/keys")
    async def list_keys(raw: Request) -> dict:
        require_admin(raw)
        return {"keys": state.keys.names, "revoked": sorted(state.keys.revoked)}

    @api.delete("/keys/{name}")
    async def revoke_key(name: str, raw: Request) -> dict:
        require_admin(raw)
        if not state.keys.revoke(name):
            raise NotFoundError(f"key '{name}' does not exist")
        log.warning("API key '%s' revoked through the admin API", name)
        return {"revoked": name}

    return api
