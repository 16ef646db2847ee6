"""Backend discovery through DNS: the gateway follows a DNS name whose A/AAAA records are the replicas of one
base model, such as a Kubernetes headless Service (``clusterIP: None``) or a scaled docker-compose service.

Each ``discovery:`` entry of the gateway config names the DNS name, the engines' port and what every replica
behind it is (kind, base model and any other ``backends:`` field). Every ``interval_s`` the name is resolved;
an address that appears becomes a backend named ``<name>-<address>`` and gets a health check at once (so it
is routable within one resolution), an address that disappears is removed the way ``DELETE
/admin/backends/{name}`` removes one: no new requests, in-flight ones finish, then it is closed. Scaling
the engine Deployment up or down is therefore followed by the gateway with no restart and no admin call::

    discovery:
      - {name: smollm2, service: engine-smollm2, port: 8000, kind: vllm, base_model: smollm2, max_adapters: 4}

A headless Service lists only ready pods, so an engine shows up once its readiness probe passes. A name that
does not exist (NXDOMAIN, which is also what a headless Service with no ready pod answers) means "no
replicas"; a failed lookup (resolver down, timeout) keeps the replicas known so far. Only backends a
discoverer added are ever removed by it; backends from ``backends:`` or the admin API are left alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lorafleet.errors import ConfigError
from serve.backends.base import BackendSpec

if TYPE_CHECKING:
    from serve.gateway.state import GatewayState

log = logging.getLogger("lorafleet.gateway")

#: Keys of a ``discovery:`` entry that are not :class:`BackendSpec` fields.
OWN_KEYS = ("name", "service", "port", "scheme", "interval_s", "resolve_timeout_s")
#: ``resolve(host, port)`` → addresses, or None when the lookup failed (keep what is known).
Resolver = Callable[[str, int], Awaitable["frozenset[str] | None"]]


@dataclass(frozen=True, slots=True)
class DiscoverySpec:
    """One DNS name followed by the gateway; every address behind it is a replica like ``template``."""

    name: str  #: prefix of the backend names, ``<name>-<address>``
    service: str  #: DNS name, e.g. ``engine-smollm2`` (same namespace) or ``engine-smollm2.ns.svc.cluster.local``
    port: int  #: the engines' HTTP port, the same on every replica
    template: BackendSpec  #: kind, base_model and the other backend fields shared by all replicas
    scheme: str = "http"  #: ``http`` or ``https``
    interval_s: float = 5.0  #: seconds between resolutions
    resolve_timeout_s: float = 5.0  #: longest wait for one resolution before it counts as failed

    def __post_init__(self) -> None:
        problems = check_fields(self.service, self.port, self.scheme, self.interval_s, self.resolve_timeout_s)
        if self.template.launch_args:
            problems.append("launch_args cannot be used with discovery (the replicas already run)")
        if problems:
            raise ConfigError(f"discovery '{self.name}': " + "; ".join(problems))

    def backend_name(self, address: str) -> str:
        return f"{self.name}-{address}"

    def backend_spec(self, address: str) -> BackendSpec:
        """The backend of the replica at ``address``."""
        host = f"[{address}]" if ":" in address else address  # IPv6 literals are bracketed in URLs
        return dataclasses.replace(self.template, name=self.backend_name(address),
                                   url=f"{self.scheme}://{host}:{self.port}")


def check_fields(service: Any, port: Any, scheme: Any = "http", interval_s: Any = 5.0,
                 resolve_timeout_s: Any = 5.0) -> list[str]:
    """Problems with a discovery entry's own fields (empty when they are fine)."""
    problems = []
    if not isinstance(service, str) or not service or "/" in service or ":" in service:
        problems.append(f"service must be a DNS name or an IPv4 address, got {service!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        problems.append(f"port must be an integer in 1..65535, got {port!r}")
    if scheme not in ("http", "https"):
        problems.append(f"scheme must be http or https, got {scheme!r}")
    for what, value in (("interval_s", interval_s), ("resolve_timeout_s", resolve_timeout_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            problems.append(f"{what} must be a positive number, got {value!r}")
    return problems


def parse_discovery(raw: Any, problems: list[str]) -> tuple[DiscoverySpec, ...]:
    """The ``discovery:`` section (a list of mappings); problems are appended to ``problems``."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append("discovery: expected a list of entries")
        return ()
    specs = []
    for i, entry in enumerate(raw):
        where = f"discovery[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: expected a mapping")
            continue
        own = {k: entry[k] for k in OWN_KEYS if k in entry}
        missing = [k for k in ("name", "service", "port", "kind", "base_model") if k not in entry]
        # Not url (each replica has its own) nor an in-process engine (discovered replicas run elsewhere).
        known = set(OWN_KEYS) | {f.name for f in dataclasses.fields(BackendSpec)} - {"url", "engine", "engine_loop"}
        unknown = sorted(set(entry) - known)
        if missing or unknown:
            problems.append(f"{where}: " + "; ".join(
                ([f"missing key(s) {missing}"] if missing else []) + ([f"unknown key(s) {unknown}"] if unknown else [])))
            continue
        rest = {k: v for k, v in entry.items() if k not in OWN_KEYS}
        own_problems = check_fields(**{k: v for k, v in own.items() if k != "name"})
        try:  # the URL is a placeholder: each replica gets its own address
            template = BackendSpec(name=str(own["name"]), url="http://discovered", **rest)
            if not own_problems:
                specs.append(DiscoverySpec(template=template, **own))
        except (ConfigError, TypeError, ValueError) as e:
            own_problems.append(str(e))
        if own_problems:
            problems.append(f"{where}: " + "; ".join(own_problems))
    names = [s.name for s in specs]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"discovery: duplicate names {dupes}")
    return tuple(specs)


async def resolve_addresses(host: str, port: int) -> frozenset[str] | None:
    """The addresses ``host`` resolves to (A and AAAA records through the system resolver, or the address
    itself for a literal); an empty set for a name that does not exist, None when the lookup failed."""
    try:
        ipaddress.ip_address(host)
        return frozenset({host})
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        if e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return frozenset()
        log.warning("discovery: resolving %s failed (%s); keeping the replicas known so far", host, e)
        return None
    return frozenset(str(info[4][0]) for info in infos)


class Discoverer:
    """Keeps the gateway's replicas of one :class:`DiscoverySpec` equal to what its DNS name resolves to."""

    def __init__(self, spec: DiscoverySpec, state: GatewayState, resolve: Resolver | None = None) -> None:
        self.spec, self.state = spec, state
        self.resolve = resolve  #: None: this module's :func:`resolve_addresses`, looked up at each resolution
        self.addresses: set[str] = set()  #: addresses whose backend this discoverer added and still holds

    async def sync_once(self) -> None:
        """Resolve the name once and add/remove backends to match."""
        try:
            resolve = self.resolve or resolve_addresses
            found = await asyncio.wait_for(resolve(self.spec.service, self.spec.port), self.spec.resolve_timeout_s)
        except asyncio.TimeoutError:
            log.warning("discovery: resolving %s timed out; keeping the replicas known so far", self.spec.service)
            return
        if found is None:
            return
        if not found and self.addresses:
            log.warning("discovery: %s has no addresses any more", self.spec.service)
        for address in sorted(self.addresses - found):
            await self._remove(address)
        await asyncio.gather(*(self._add(a) for a in sorted(found - self.addresses)))

    async def _add(self, address: str) -> None:
        from serve.gateway import health

        spec = self.spec.backend_spec(address)
        if self.state.fleet.get(spec.name) is not None:  # added by hand with the same name: not ours
            return
        replica = self.state.add_backend(spec)
        self.addresses.add(address)
        log.info("discovery: %s resolves to %s; added backend %s", self.spec.service, address, spec.name)
        try:
            await replica.backend.start()
            await health.check_replica(replica, self.state.adapters, self.state.prefix_index, self.state.metrics, 1)
        except Exception as e:  # it stays in the fleet; the health monitor admits it once it answers
            log.warning("discovery: first check of backend %s failed: %s", spec.name, e)

    async def _remove(self, address: str) -> None:
        self.addresses.discard(address)
        name = self.spec.backend_name(address)
        if await self.state.remove_backend(name) is not None:
            log.info("discovery: %s no longer resolves to %s; removed backend %s", self.spec.service, address, name)

    async def run(self) -> None:
        """Resolve every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.spec.interval_s)
            try:
                await self.sync_once()
            except Exception:  # never let one bad round stop discovery
                log.exception("discovery of %s failed", self.spec.service)


async def start(state: GatewayState, resolve: Resolver | None = None) -> list[asyncio.Task]:
    """Resolve every ``discovery:`` entry of the gateway's config once (so replicas are known before the
    first request), then follow each in a background task; the tasks are returned for the caller to cancel."""
    discoverers = [Discoverer(spec, state, resolve) for spec in getattr(state.cfg, "discovery", ())]
    await asyncio.gather(*(d.sync_once() for d in discoverers))
    return [asyncio.create_task(d.run(), name=f"discovery-{d.spec.name}") for d in discoverers]


__all__ = ["DiscoverySpec", "Discoverer", "parse_discovery", "resolve_addresses", "start"]
