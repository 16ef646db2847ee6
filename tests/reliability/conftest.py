"""Fixtures of the reliability suites (issue #10): a small real engine server, gateways in front of it or of
protocol fakes, metric scraping for leak checks, and the recording of every case into
``bench/results/reliability.json`` (``$LORAFLEET_RELIABILITY_JSON`` overrides the path).

A case is recorded with the outcome its test observed; ``survived``/``refused`` are true only if the test
passed, so a failing test can never be counted as a success. The file is merged by case name
(``bench/reliability.py``), so running a subset of a suite refreshes only those cases.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.reliability import record_cases
from bench.soak_figures import metric_total, parse_prometheus
from tests.conftest import ServerHandle, running_server
from tests.serve.conftest import FakeServer, fake_server  # noqa: F401  (fixtures shared with tests/serve)
from tests.serve.gateway.conftest import GatewayHandle, run_gateway  # noqa: F401

ENGINE_KV_BLOCKS = 32  #: 512 tokens of KV: a handful of concurrent requests fills it
ENGINE_MAX_MODEL_LEN = 512


# -- recording ---------------------------------------------------------------------------------------------------
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _passed(node) -> bool:
    call = getattr(node, "rep_call", None)
    return bool(call is not None and call.passed)


@pytest.fixture(scope="session")
def reliability_cases() -> Iterator[dict[str, list[dict]]]:
    """Cases collected by the session's tests, merged into the results file at its end."""
    pending: dict[str, list[dict]] = {"faults": [], "security": [], "durability": [], "hostile": []}
    yield pending
    for section, cases in pending.items():
        if cases:
            record_cases(section, cases)


@pytest.fixture
def fault_case(request, reliability_cases) -> Iterator[dict[str, Any]]:
    """A dict the test fills (``fault``, ``expected``, ``outcome``, ``time_to_outcome_s``, ``bound_s``,
    ``leaks``); recorded as one fault case, ``survived`` if the test passed."""
    case: dict[str, Any] = {"name": request.node.name}
    yield case
    case["survived"] = _passed(request.node)
    reliability_cases["faults"].append(case)


class Refusals:
    """Security checks of one test: each :meth:`expect` records a hostile case and asserts it was refused."""

    def __init__(self, test_name: str) -> None:
        self.test_name = test_name
        self.checks: list[dict[str, Any]] = []

    def expect(self, name: str, refused: bool, got: Any, expected: str) -> None:
        self.checks.append({"name": f"{self.test_name}:{name}", "expected": expected, "got": got, "refused": bool(refused)})
        assert refused, f"{name}: expected {expected}, got {got!r}"


@pytest.fixture
def refusals(request, reliability_cases) -> Iterator[Refusals]:
    r = Refusals(request.node.name)
    yield r
    passed = _passed(request.node)
    reliability_cases["security"].extend({**c, "refused": c["refused"] and passed} for c in r.checks)


@pytest.fixture
def durability_check(request, reliability_cases) -> Iterator[dict[str, Any]]:
    check: dict[str, Any] = {"name": request.node.name}
    yield check
    check["passed"] = _passed(request.node)
    reliability_cases["durability"].append(check)


# -- metrics --------------------------------------------------------------------------------------------------------
def scrape(url: str) -> list:
    return parse_prometheus(httpx.get(f"{url}/metrics", timeout=10).text)


def gateway_leaks(gw: GatewayHandle) -> dict[str, float]:
    """What a gateway still holds, by its /metrics and its state (all zero once every request is over)."""
    m = scrape(gw.url)
    return {"in_flight": metric_total(m, "gateway:requests_in_flight"), "queued": metric_total(m, "gateway:requests_queued"),
            "state_in_flight": float(gw.state.num_in_flight()),
            "admission_active": float(gw.state.admission.num_active)}


def engine_leaks(url: str) -> dict[str, float]:
    """What an engine server still holds: running and waiting sequences, KV blocks in use (share)."""
    m = scrape(url)
    return {"running": metric_total(m, "vllm:num_requests_running"), "waiting": metric_total(m, "vllm:num_requests_waiting"),
            "kv_usage": metric_total(m, "vllm:kv_cache_usage_perc")}


def wait_until_released(probes: dict[str, Callable[[], dict[str, float]]], timeout_s: float = 10.0) -> dict[str, float]:
    """Poll every probe until all report zero; return the last readings (non-zero ones are leaks)."""
    deadline = time.monotonic() + timeout_s
    while True:
        readings = {f"{name}.{k}": v for name, probe in probes.items() for k, v in probe().items()}
        if not any(readings.values()) or time.monotonic() > deadline:
            return {k: v for k, v in readings.items() if v}
        time.sleep(0.1)


# -- servers --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def engine_server(base_model_path: Path, tmp_path_factory) -> Iterator[ServerHandle]:
    """``lorafleet serve`` with a small KV cache (32 blocks of 16 tokens), 2 LoRA slots and a 512-token
    context: the target of the engine fault, fuzz and security cases (it may be flooded and fuzzed)."""
    with running_server(tmp_path_factory, "reliability-server", "--num-kv-blocks", str(ENGINE_KV_BLOCKS),
                        "--max-model-len", str(ENGINE_MAX_MODEL_LEN), "--max-num-seqs", "8", "--max-loras", "2",
                        # gateways in front of it load adapters from the session's temporary directories (#24)
                        "--allow-runtime-lora", str(tmp_path_factory.getbasetemp())) as handle:
        yield handle


@pytest.fixture
def gateways(run_gateway) -> Callable[..., GatewayHandle]:
    """``gateways(raw_config, base_dir=..., env=...)``: a gateway (in a thread of this process), stopped at teardown."""
    return run_gateway


@pytest.fixture
def fakes(fake_server) -> Callable[..., FakeServer]:
    """``fakes(model="base")``: a vLLM protocol fake in its own process group; all killed at teardown."""
    return lambda model="base", port=None: fake_server("vllm", model, port=port)
