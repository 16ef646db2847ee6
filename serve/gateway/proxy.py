"""The path of one generation request: auth, limits, admission, routing, adapter loading, the upstream call
with failover before the first byte, and the relay back.

Failover rule: an attempt that fails before the client has received anything (connection refused, reset,
timeout, 5xx, adapter slots busy, the replica dying before its first event) is retried on another replica,
at most ``limits.max_retries`` times. Once a stream has started it is never replayed: a failure then ends
the stream with an SSE error event.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from lorafleet.errors import BackendError
from serve.backends.base import RESPONSES_KINDS, Endpoint, UpstreamError, UpstreamRequest, UpstreamResponse
from serve.gateway.admission import QueueFull
from serve.gateway.auth import KeySpec, bearer_token
from serve.gateway.errors import GatewayError, status_of
from serve.gateway.fleet import Replica, replica_stats
from serve.gateway.relay import InFlight, RequestRecord, Send, finish_request, relay_stream
from serve.gateway.request_limits import check_request_limits
from serve.gateway.requests import ClientRequest, Incoming, prefix_keys, upstream_body
from serve.gateway.state import GatewayState
from serve.gateway.templates import parse_templated_request, template_prefix_keys
from serve.routing import RouteContext, RouteReason

JSON_HEADERS = [(b"content-type", b"application/json")]


def authenticate(state: GatewayState, headers: Mapping[str, str]) -> KeySpec | None:
    """The caller's key (None when auth is off); 401 without a valid key. ``headers``: lower-case names."""
    if not state.keys.is_enabled:
        return None
    token = bearer_token(headers.get("authorization"), headers.get("x-api-key"))
    if token is None:
        raise GatewayError(401, "missing API key: send 'Authorization: Bearer <key>'")
    key = state.keys.lookup(token)
    if key is None:
        raise GatewayError(401, "invalid API key")
    return key


async def handle_generation(state: GatewayState, incoming: Incoming, endpoint: Endpoint, send: Send) -> None:
    """Serve one completion or chat request, writing the response with ``send``. Errors before the response
    starts are raised (the caller answers them as OpenAI error JSON); after it starts, they end the stream."""
    arrival = time.monotonic()
    key = authenticate(state, incoming.headers)
    if state.is_draining:
        raise GatewayError(503, "the gateway is shutting down")
    req = parse_templated_request(state.cfg.templates, incoming.body, endpoint)
    check_request_limits(req.body, endpoint, state.cfg.limits)
    base, adapter = state.adapters.resolve(req.model, state.fleet.base_models())
    if key is not None and not key.allows(req.model):
        raise GatewayError(403, f"this API key may not use model '{req.model}'", "model")
    if key is not None and (wait := state.limiter.try_admit(key)) is not None:
        raise GatewayError(429, f"rate limit of key '{key.name}' exceeded; retry in {wait:.1f}s",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
    record = RequestRecord(arrival, base, adapter, key)
    try:
        await state.admission.acquire()
    except QueueFull as e:
        record.status = 503
        finish_request(state, record)
        raise GatewayError(503, str(e)) from None
    flight = InFlight(state, record)
    try:
        await _serve(state, incoming, req, flight, arrival + state.cfg.limits.request_timeout_s, send)
    except BaseException as e:
        if not flight.is_finished:
            record.status = 499 if isinstance(e, asyncio.CancelledError) else status_of(e)
        raise
    finally:
        flight.finish()


async def _serve(state: GatewayState, incoming: Incoming, req: ClientRequest, flight: InFlight, deadline_s: float,
                 send: Send) -> None:
    limits, record = state.cfg.limits, flight.record
    salt = record.adapter or record.base_model
    keys = (template_prefix_keys(req, salt, limits.prefix_max_blocks)
            or prefix_keys(req.body, salt, limits.prefix_block_chars, limits.prefix_max_blocks))
    body, raw_body = upstream_body(req)
    upstream = UpstreamRequest(req.endpoint, body, record.adapter,
                               timeout_s=min(limits.upstream_idle_timeout_s, limits.request_timeout_s),
                               request_id=incoming.headers.get("x-request-id") or state.new_request_id(),
                               raw_body=raw_body)
    if req.is_stream:
        async def open_stream(replica: Replica) -> tuple[list[bytes], AsyncIterator[list[bytes]]]:
            batches = replica.backend.stream_batches(upstream)
            try:
                return await anext(batches), batches
            except BaseException:
                await batches.aclose()
                raise

        replica, (first, batches) = await _with_deadline(deadline_s, dispatch(state, record, upstream, keys, open_stream))
        flight.release_replica = _releaser(state, record, replica)
        await relay_stream(send, flight, first, batches, req.include_usage, deadline_s,
                           send_done=req.endpoint is not Endpoint.RESPONSES)
        return

    async def call(replica: Replica) -> UpstreamResponse:
        return await replica.backend.generate(upstream)

    replica, result = await _with_deadline(deadline_s, dispatch(state, record, upstream, keys, call))
    flight.release_replica = _releaser(state, record, replica)
    record.status = result.status
    record.take_usage(result.body.get("usage"))
    content = json.dumps(result.body, separators=(",", ":"), ensure_ascii=False).encode()
    flight.finish()
    await send({"type": "http.response.start", "status": result.status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": content})


async def dispatch(state: GatewayState, record: RequestRecord, upstream: UpstreamRequest, keys: tuple[int, ...],
                   attempt: Callable[[Replica], Awaitable[Any]]) -> tuple[Replica, Any]:
    """Route and run ``attempt`` on a replica, failing over before the first byte. On success the replica's
    in-flight count and adapter pin stay taken; the caller releases them when the response is done."""
    tried: list[str] = []
    last_error: BaseException | None = None
    for num_attempt in range(state.cfg.limits.max_retries + 1):
        candidates = _serving(state.fleet.candidates(record.base_model, exclude=tried), upstream.endpoint, not tried)
        if not candidates:
            break
        replica = _route(state, record, candidates, keys)
        record.backend = replica.name
        _take(state, record, replica)
        try:
            if record.adapter is not None:  # the last replica to try waits for a busy adapter slot to free
                is_last = len(candidates) == 1 or num_attempt == state.cfg.limits.max_retries
                await state.adapters.ensure_loaded(replica, record.adapter, wait_for_slot=is_last)
            record.queue_s = time.monotonic() - record.arrival_s
            state.prefix_index.record(keys, replica.name)
            result = await attempt(replica)
            if isinstance(result, UpstreamResponse) and result.status == 404 and record.adapter is not None:
                raise UpstreamError(404, f"backend '{replica.name}' does not have adapter '{record.adapter}'")
            return replica, result
        except BaseException as e:
            _releaser(state, record, replica)()
            if isinstance(e, UpstreamError) and e.status == 404 and record.adapter is not None:
                state.adapters.forget(replica.name, record.adapter)  # it lost the adapter: reload next time
                e.retryable = True
            if not (isinstance(e, BackendError) and e.retryable) or num_attempt == state.cfg.limits.max_retries:
                raise
            state.metrics.retries.labels(replica.name).inc()
            tried.append(replica.name)
            last_error = e
    detail = f"; last error: {last_error}" if last_error else ""
    raise GatewayError(503, f"no healthy backend serves '{record.adapter or record.base_model}'{detail}")


def _serving(candidates: list[Replica], endpoint: Endpoint, is_first: bool) -> list[Replica]:
    """The candidates that serve ``endpoint``: SGLang and TensorRT-LLM have no /v1/responses (400 if only they
    serve the model, since no retry can help)."""
    if endpoint is not Endpoint.RESPONSES:
        return candidates
    serving = [r for r in candidates if r.spec.kind in RESPONSES_KINDS]
    if is_first and candidates and not serving:
        kinds = ", ".join(sorted({r.spec.kind for r in candidates}))
        raise GatewayError(400, f"/v1/responses is not served by this model's backends ({kinds}); use "
                                "/v1/chat/completions", "model")
    return serving


def _route(state: GatewayState, record: RequestRecord, candidates: list[Replica], keys: tuple[int, ...]) -> Replica:
    if len(candidates) == 1:  # what every policy answers; skips building the snapshot
        state.metrics.route_decisions.labels(candidates[0].name, RouteReason.ONLY_CANDIDATE.value).inc()
        return candidates[0]
    stats = tuple(replica_stats(r, state.adapters.resident(r.name), keys, state.prefix_index) for r in candidates)
    decision = state.policy.choose(RouteContext(state.next_request_index(), record.base_model, record.adapter, stats, keys))
    state.metrics.route_decisions.labels(decision.replica, decision.reason.value).inc()
    return next(r for r in candidates if r.name == decision.replica)


def _take(state: GatewayState, record: RequestRecord, replica: Replica) -> None:
    replica.num_in_flight += 1  # (exported by /metrics when scraped)
    if record.adapter is not None:
        state.adapters.pin(replica.name, record.adapter)


def _releaser(state: GatewayState, record: RequestRecord, replica: Replica) -> Callable[[], None]:
    """A function that gives back what :func:`_take` took (and the admission slot, for a finished stream);
    safe to call more than once."""
    done = False

    def release() -> None:
        nonlocal done
        if done:
            return
        done = True
        replica.num_in_flight -= 1
        if record.adapter is not None:
            state.adapters.unpin(replica.name, record.adapter)

    return release


async def _with_deadline(deadline_s: float, coro: Awaitable[Any]) -> Any:
    try:
        async with asyncio.timeout(max(0.0, deadline_s - time.monotonic())):
            return await coro
    except TimeoutError:
        raise GatewayError(504, "request timed out in the gateway") from None
