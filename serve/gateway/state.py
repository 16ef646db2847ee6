"""Everything one gateway app owns, built once by ``build_app`` and kept on ``app.state.gateway``."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
import dataclasses
from dataclasses import dataclass, field

from serve.backends import BackendSpec, make_backend
from serve.gateway.adapters import AdapterRegistry
from serve.gateway.admission import Admission
from serve.gateway.auth import KeyStore
from serve.gateway.config import GatewayConfig
from serve.gateway.fleet import Fleet, Replica
from serve.gateway.metrics import GatewayMetrics
from serve.gateway.ratelimit import RateLimiter
from serve.routing import RoutingPolicy, make_policy
from serve.routing.prefix_index import PrefixIndex

log = logging.getLogger("lorafleet.gateway")


@dataclass
class GatewayState:
    cfg: GatewayConfig
    fleet: Fleet
    adapters: AdapterRegistry
    policy: RoutingPolicy
    prefix_index: PrefixIndex
    metrics: GatewayMetrics
    keys: KeyStore
    limiter: RateLimiter
    admission: Admission
    is_draining: bool = False  #: shutting down: new requests get 503, in-flight ones finish
    tasks: list[asyncio.Task] = field(default_factory=list)  #: background tasks to cancel at shutdown
    _counter: itertools.count = field(default_factory=itertools.count)
    #: prefix of the request ids this gateway makes up (X-Request-Id sent upstream when the client sent none)
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _request_ids: itertools.count = field(default_factory=itertools.count)

    @classmethod
    def build(cls, cfg: GatewayConfig) -> GatewayState:
        metrics = GatewayMetrics()
        state = cls(cfg=cfg, fleet=Fleet(), adapters=AdapterRegistry(cfg.adapters, metrics, cfg.adapter_roots),
                    policy=make_policy(cfg.routing.policy, cfg.routing.params),
                    prefix_index=PrefixIndex(cfg.limits.prefix_index_keys), metrics=metrics, keys=KeyStore(cfg.keys),
                    limiter=RateLimiter(), admission=Admission(cfg.limits.max_in_flight, cfg.limits.max_queue))
        for spec in cfg.backends:
            state.add_backend(spec)
        return state

    def next_request_index(self) -> int:
        return next(self._counter)

    def new_request_id(self) -> str:
        """A request id unique to this gateway instance (cheaper than a uuid4 per request)."""
        return f"gw-{self.instance_id}-{next(self._request_ids)}"

    def add_backend(self, spec: BackendSpec) -> Replica:
        """Register a replica (not yet healthy: the next health check admits it). An embedded engine the
        gateway runs (launched or in-process) may load adapters at runtime from the gateway's adapter roots."""
        if spec.kind == "embedded" and not spec.adapter_roots and (spec.launch_args or spec.engine is not None):
            spec = dataclasses.replace(spec, adapter_roots=tuple(str(r) for r in self.cfg.adapter_roots))
        replica = Replica(spec, make_backend(spec))
        self.fleet.add(replica)
        self.adapters.add_replica(spec.name, spec.max_adapters)
        return replica

    async def remove_backend(self, name: str) -> Replica | None:
        """Stop routing to ``name`` at once; close it once its in-flight requests are done (in the background)."""
        replica = self.fleet.remove(name)
        if replica is None:
            return None
        self.adapters.remove_replica(name)
        self.prefix_index.forget_replica(name)
        for gauge in (self.metrics.healthy, self.metrics.in_flight):
            try:
                gauge.remove(name)
            except KeyError:
                pass

        async def close_when_idle() -> None:
            deadline = asyncio.get_running_loop().time() + self.cfg.limits.drain_timeout_s
            while replica.num_in_flight and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
            await replica.backend.aclose()

        self.tasks.append(asyncio.create_task(close_when_idle()))
        return replica

    def num_in_flight(self) -> int:
        return sum(r.num_in_flight for r in self.fleet) + self.admission.num_waiting
