"""Locust load test for OpenAI-compatible streaming servers (lorafleet serve, the gateway, vLLM, SGLang, ...).

    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --workload chat \\
           --headless --users 8 --spawn-rate 2 --run-time 1m --csv out/locust

Each simulated user sends the workload's requests one at a time (streaming, with usage) and records three
locust request entries per request, so they appear in locust's UI, CSV files and percentiles:

* ``TTFT <model>``: time to the first text event;
* ``TPOT <model>``: (last text event - first) / (output tokens - 1), requests with >= 2 tokens;
* ``E2E <model>``: the whole request; its response length is the output token count, so locust's average
  content size is the mean output tokens.

A failed request (HTTP error, error event in the stream, timeout, broken connection, no tokens) is one
failed ``E2E`` entry with the reason; the user carries on. Locust's "Aggregated" row mixes the three
metrics: read the per-type rows. Extra options: ``--workload`` (shipped name or YAML path), ``--model``
(base model name), ``--api-key``, ``--seed`` and ``--records FILE`` (one JSON line per request, which
``lorafleet bench load`` turns into summary.json and plots).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from typing import Any

import gevent
import requests
from locust import User, events, task
from locust import stats as locust_stats

from bench.openai_client import StreamError, StreamTimer
from bench.workloads import load_workload
from bench.workloads.sampler import PlannedRequest, RequestSampler, resolve_models
from lorafleet.errors import LorafleetError

log = logging.getLogger("lorafleet.locust")


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    parser.add_argument("--workload", default="chat", env_var="LORAFLEET_WORKLOAD",
                        help="Shipped workload (chat, rag, multi-tenant-lora) or path to a workload YAML.")
    parser.add_argument("--model", default="", env_var="LORAFLEET_MODEL",
                        help="Base model name to send (default: the first model the target lists).")
    parser.add_argument("--api-key", default="", env_var="LORAFLEET_API_KEY", help="Bearer token for the target.")
    parser.add_argument("--seed", default="", env_var="LORAFLEET_SEED", help="Override the workload's seed.")
    parser.add_argument("--records", default="", env_var="LORAFLEET_RECORDS",
                        help="Append one JSON line per request to this file.")


class _Run:
    """What every user of one test run shares: the workload, the resolved models and the records file."""

    def __init__(self, environment: Any) -> None:
        opts = environment.parsed_options
        self.workload = load_workload(opts.workload)
        self.headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
        self.seed = int(opts.seed) if str(opts.seed).strip() else None
        self.host = (environment.host or "").rstrip("/")
        try:
            resp = requests.get(f"{self.host}/v1/models", headers=self.headers, timeout=30)
            listed = resp.json().get("data", []) if resp.status_code == 200 else []
        except (requests.RequestException, ValueError) as e:
            raise LorafleetError(f"{self.host}/v1/models: {e}") from None
        self.models = resolve_models(self.workload, listed, opts.model or None)
        self.records = open(opts.records, "a", buffering=1) if opts.records else None
        self.user_ids = itertools.count()

    def record(self, entry: dict) -> None:
        if self.records is not None:
            self.records.write(json.dumps(entry) + "\n")


RUN: _Run | None = None


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    global RUN
    try:
        RUN = _Run(environment)
    except LorafleetError as e:
        log.error("error: %s", e)
        environment.process_exit_code = 2
        if environment.runner is not None:
            gevent.spawn_later(0, environment.runner.quit)  # not from inside the runner's own start-up


@events.test_stop.add_listener
def _on_test_stop(environment: Any, **_: Any) -> None:
    if RUN is not None and RUN.records is not None:
        RUN.records.flush()


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    @events.quit.add_listener
    def _on_quit(**_: Any) -> None:
        # Locust's CSV writer refreshes its files once a second and is closed right after this event, so
        # requests that finished during --stop-timeout could miss the CSVs; one more pass completes them.
        if getattr(environment.parsed_options, "csv_prefix", None):
            gevent.sleep(locust_stats.CSV_STATS_INTERVAL_SEC + 0.25)


def _http_error(resp: requests.Response) -> str:
    try:
        message = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = resp.text[:200]
    return f"HTTP {resp.status_code}: {message}"


class OpenAIStreamUser(User):
    """One client with one request in flight; think time from the workload between requests."""

    sampler: RequestSampler | None = None

    def on_start(self) -> None:
        self.session = requests.Session()
        if RUN is None:  # set-up failed and was logged; the runner is quitting
            return
        self.run = RUN
        self.sampler = RequestSampler(RUN.workload, RUN.models, next(RUN.user_ids), RUN.seed)
        self.session.headers.update(RUN.headers)

    def on_stop(self) -> None:
        self.session.close()

    def wait_time(self) -> float:
        return self.sampler.think_time_s() if self.sampler else 1.0

    @task
    def stream_request(self) -> None:
        if self.sampler is None:
            return
        req = self.sampler.next_request()
        started = time.time()
        users = self.environment.runner.user_count if self.environment.runner else 0
        timer = StreamTimer(time.perf_counter())
        try:
            self._stream(req, timer)
            result = timer.result(time.perf_counter())
            if result.output_tokens < 1:
                raise StreamError("the stream ended without output tokens")
        except (StreamError, requests.RequestException, ValueError) as e:
            error = f"{type(e).__name__}: {e}" if not isinstance(e, StreamError) else str(e)
            self._fire("E2E", req, (time.perf_counter() - timer.start) * 1000, 0, StreamError(error))
            self.run.record({"start": started, "users": users, "model": req.model, "template": req.template,
                             "prefix": req.has_prefix, "max_tokens": req.max_tokens, "ok": False, "error": error[:300]})
            return
        self._fire("TTFT", req, result.ttft_s * 1000, result.prompt_tokens or 0)
        if result.output_tokens >= 2:
            self._fire("TPOT", req, result.tpot_s * 1000, result.output_tokens)
        self._fire("E2E", req, result.e2e_s * 1000, result.output_tokens)
        self.run.record({"start": started, "users": users, "model": req.model, "template": req.template,
                         "prefix": req.has_prefix, "max_tokens": req.max_tokens, "ok": True, "ttft_s": result.ttft_s,
                         "tpot_s": result.tpot_s if result.output_tokens >= 2 else None, "e2e_s": result.e2e_s,
                         "output_tokens": result.output_tokens, "prompt_tokens": result.prompt_tokens})

    def _stream(self, req: PlannedRequest, timer: StreamTimer) -> None:
        timeout = (10, self.run.workload.timeout_s)  # (connect, between bytes)
        with self.session.post(self.run.host + req.path, json=req.body, stream=True, timeout=timeout) as resp:
            if resp.status_code != 200:
                raise StreamError(_http_error(resp))
            deadline = timer.start + self.run.workload.timeout_s
            for line in resp.iter_lines(decode_unicode=True):
                now = time.perf_counter()
                if now > deadline:
                    raise StreamError(f"timed out after {self.run.workload.timeout_s:g} s")
                timer.feed(line or "", now)

    def _fire(self, kind: str, req: PlannedRequest, ms: float, length: int, error: Exception | None = None) -> None:
        self.environment.events.request.fire(request_type=kind, name=req.model, response_time=ms,
                                             response_length=length, exception=error, context={"template": req.template})
