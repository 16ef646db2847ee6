"""Declared adapters and their residency on each replica: on-demand loading with one load per (replica,
adapter) however many requests ask at once, LRU unloading at the replica's ``max_adapters``, and pins that
keep an adapter loaded while requests use it.

A load goes: make room (unload the least recently used unpinned adapter, if the replica is full) -> the
backend's load call -> check that the replica's /v1/models now lists the adapter. It runs as its own task,
so a requester that disconnects does not cancel a load others are waiting for.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lorafleet.errors import BackendError, NotFoundError
from serve.backends.base import UpstreamError
from serve.adapter_files import check_adapter_dir
from serve.gateway.config import AdapterSpec
from serve.gateway.fleet import Replica
from serve.gateway.metrics import GatewayMetrics


class AdapterSlotsBusy(BackendError):
    """Every adapter slot of a replica holds an adapter that requests are using (retryable elsewhere)."""


class AdapterLoadError(BackendError):
    """A replica answered an adapter load with an error (bad rank, missing file, unsupported modules...).

    Retryable on another replica when the answer was a 5xx (engines report some adapter problems that way,
    e.g. vLLM's "LoRA rank 16 is greater than max_lora_rank 8"), but shown to the client as 400: the adapter,
    not the request or the gateway, is at fault, and a client retry would fail the same way."""


@dataclass
class Residency:
    """Adapters of one replica as the gateway tracks them."""

    max_adapters: int
    lru: OrderedDict[str, None] = field(default_factory=OrderedDict)  #: loaded, least recently used first
    pins: Counter = field(default_factory=Counter)  #: requests using each adapter now
    loading: dict[str, asyncio.Task] = field(default_factory=dict)
    unloading: dict[str, asyncio.Task] = field(default_factory=dict)
    num_reserved: int = 0  #: slots held by loads in progress
    slot_freed: asyncio.Event = field(default_factory=asyncio.Event)  #: set when an adapter stops being in use


class AdapterRegistry:
    def __init__(self, adapters: Sequence[AdapterSpec], metrics: GatewayMetrics, roots: Sequence[Path] = ()) -> None:
        self.specs = {a.name: a for a in adapters}
        self._roots = tuple(roots)  #: adapter roots; with any, each load re-checks the directory first
        self._metrics = metrics
        self._residency: dict[str, Residency] = {}

    # -- names ---------------------------------------------------------------------------------------------
    def resolve(self, model: str, base_models: set[str]) -> tuple[str, str | None]:
        """(base model, adapter or None) for a request's ``model``; NotFoundError if nothing serves it."""
        if model in base_models:
            return model, None
        spec = self.specs.get(model)
        if spec is None or spec.base_model not in base_models:
            raise NotFoundError(f"The model '{model}' does not exist; see /v1/models")
        return spec.base_model, model

    # -- replicas ------------------------------------------------------------------------------------------
    def add_replica(self, name: str, max_adapters: int) -> None:
        self._residency.setdefault(name, Residency(max_adapters))

    def remove_replica(self, name: str) -> None:
        self._residency.pop(name, None)

    def resident(self, replica: str) -> frozenset[str]:
        res = self._residency.get(replica)
        return frozenset(res.lru) if res else frozenset()

    def sync(self, replica: str, loaded: Sequence[str]) -> None:
        """Replace what the gateway believes is loaded on ``replica`` with what it reports (declared
        adapters only; engines may hold others the gateway does not manage)."""
        res = self._residency.get(replica)
        if res is None:
            return
        reported = [a for a in loaded if a in self.specs]
        kept = [a for a in res.lru if a in reported]
        res.lru = OrderedDict.fromkeys([*[a for a in reported if a not in kept], *kept])

    def forget(self, replica: str, adapter: str) -> None:
        """The replica turned out not to have ``adapter`` (it restarted, or evicted it itself)."""
        res = self._residency.get(replica)
        if res is not None:
            res.lru.pop(adapter, None)
            res.slot_freed.set()

    def pin(self, replica: str, adapter: str) -> None:
        self._residency[replica].pins[adapter] += 1

    def unpin(self, replica: str, adapter: str) -> None:
        res = self._residency.get(replica)
        if res is not None:
            res.pins[adapter] -= 1
            if res.pins[adapter] <= 0:
                del res.pins[adapter]
                res.slot_freed.set()

    # -- loading -------------------------------------------------------------------------------------------
    async def ensure_loaded(self, replica: Replica, adapter: str, wait_for_slot: bool = False) -> None:
        """Return once ``adapter`` is loaded on ``replica``; concurrent callers share one load.

        When every slot holds an adapter in use, :class:`AdapterSlotsBusy` is raised at once, or with
        ``wait_for_slot`` the call waits until one is released (the caller's deadline bounds the wait): the
        last replica a request can go to waits, as the engines queue requests for a free LoRA slot."""
        res = self._residency[replica.name]
        while True:
            if adapter in res.lru:
                res.lru.move_to_end(adapter)
                return
            task = res.loading.get(adapter)
            if task is None:
                task = asyncio.create_task(self._load(replica, res, adapter), name=f"load {adapter} on {replica.name}")
                task.add_done_callback(lambda t: t.cancelled() or t.exception())  # never "exception not retrieved"
                res.loading[adapter] = task
            res.slot_freed.clear()
            try:
                await asyncio.shield(task)
                return
            except AdapterSlotsBusy:
                if not wait_for_slot:
                    raise
            await res.slot_freed.wait()

    async def _load(self, replica: Replica, res: Residency, adapter: str) -> None:
        try:
            if (pending := res.unloading.get(adapter)) is not None:
                await asyncio.shield(pending)
            path = self._checked_path(adapter)  # before making room: a doomed load must not evict anything
            await self._make_room(replica, res)
            res.num_reserved += 1
            try:
                try:
                    await replica.backend.load_adapter(adapter, path)
                except UpstreamError as e:
                    raise AdapterLoadError(f"adapter '{adapter}' failed to load on backend '{replica.name}': "
                                           f"{_reason(e)}", retryable=e.retryable) from None
                served = await replica.backend.list_models()
                if adapter not in served.adapters:
                    raise BackendError(f"backend '{replica.name}' accepted adapter '{adapter}' but does not list it in "
                                       f"/v1/models", retryable=True)
            finally:
                res.num_reserved -= 1
            res.lru[adapter] = None
            self._metrics.adapter_loads.labels(replica.name, adapter, "ok").inc()
        except BaseException:
            self._metrics.adapter_loads.labels(replica.name, adapter, "error").inc()
            raise
        finally:
            res.loading.pop(adapter, None)

    def _checked_path(self, adapter: str) -> Path:
        """The adapter's directory, checked again now (it may have been deleted, swapped for a symlink out of
        the roots or corrupted since start-up); AdapterLoadError (400, not retried) if it fails."""
        spec = self.specs[adapter]
        if not self._roots:
            return spec.path
        real, problems = check_adapter_dir(adapter, spec.path, self._roots)
        if real is None:
            raise AdapterLoadError("; ".join(problems), retryable=False)
        return real

    async def _make_room(self, replica: Replica, res: Residency) -> None:
        while len(res.lru) + res.num_reserved >= res.max_adapters:
            victim = next((a for a in res.lru if res.pins[a] <= 0), None)
            if victim is None:
                raise AdapterSlotsBusy(f"backend '{replica.name}': all {res.max_adapters} adapter slots are in use",
                                       retryable=True)
            del res.lru[victim]  # first, so no new request starts using it
            task = asyncio.create_task(replica.backend.unload_adapter(victim))
            res.unloading[victim] = task
            try:
                await asyncio.shield(task)
            except BackendError:
                res.lru[victim] = None
                res.lru.move_to_end(victim, last=False)
                raise
            finally:
                res.unloading.pop(victim, None)
            self._metrics.adapter_unloads.labels(replica.name, victim).inc()


def _reason(e: UpstreamError) -> str:
    """The engine's own words from an UpstreamError message ("backend 'x' could not load adapter 'y': <why>")."""
    return str(e).split(": ", 1)[-1]
