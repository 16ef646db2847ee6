"""Fuzzing (issue #10): schemathesis generates requests from the gateway's and the engine server's OpenAPI
documents, valid ones (positive) and invalid ones (negative: wrong types, missing fields, broken JSON), and
sends them to a real gateway in front of a real ``lorafleet serve`` and to that engine server directly.
Pass: no answer is a 5xx. Figures go to ``fuzz`` in bench/results/reliability.json.

Generated requests are made realistic and cheap before they are sent (:func:`tame`): half name the served
model or a declared adapter instead of a random string (so they reach the engine), ``max_tokens`` and ``n``
within the limits are lowered to 2 and prompt lists cut to 3 (values beyond the limits are kept: the gateway
must refuse them). Examples are derandomized, so a run is reproducible.
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from bench.reliability import record_fuzz
from serve.gateway.auth import hash_key
from tests.conftest import MODEL_NAME

pytestmark = pytest.mark.timeout(900)
KEY = "sk-fuzz"
ADAPTER = "fz-a0"
#: examples per operation: (positive, negative); operations not listed get DEFAULT_EXAMPLES
# (generation costs differ: a negative chat body takes ~10x longer to draw than a negative completion body)
GATEWAY_EXAMPLES = {"POST /v1/completions": (300, 450), "POST /v1/chat/completions": (200, 40)}
ENGINE_EXAMPLES = {"POST /v1/completions": (120, 40), "POST /v1/chat/completions": (120, 30),
                   "POST /v1/load_lora_adapter": (40, 20), "POST /v1/unload_lora_adapter": (30, 15)}
DEFAULT_EXAMPLES = (40, 20)
GATEWAY_MAX_TOKENS = 16_384  # the gateway's default limits (tame keeps values above them)
GATEWAY_MAX_N = 16


@dataclass
class FuzzStats:
    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    by_operation: dict[str, int] = field(default_factory=dict)
    server_errors: list[dict[str, Any]] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {"cases": self.cases, "server_errors": len(self.server_errors),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}, "by_operation": self.by_operation,
                "first_server_errors": self.server_errors[:5]}


def tame(body: Any, models: tuple[str, ...]) -> Any:
    """``body`` with a real model half of the time and costs bounded (see the module docstring)."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    pick = zlib.crc32(json.dumps(body, sort_keys=True, default=str).encode()) % (2 * len(models))
    if isinstance(body.get("model"), str) and pick < len(models):
        body["model"] = models[pick]
    for name in ("max_tokens", "max_completion_tokens"):
        v = body.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and 2 < v <= GATEWAY_MAX_TOKENS:
            body[name] = 2
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = 2  # the chat default is the whole context: hundreds of CPU decode steps
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and 2 < n <= GATEWAY_MAX_N:
        body["n"] = 2
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        body["prompt"] = prompt[:3]
    return body


def fuzz(schema_url: str, base_url: str, examples: dict[str, tuple[int, int]], models: tuple[str, ...],
         headers: dict[str, str] | None = None) -> FuzzStats:
    """Run every operation of the schema at ``schema_url`` against ``base_url``; collect 5xx answers."""
    schema = schemathesis.openapi.from_dict(httpx.get(schema_url, timeout=30).json())
    stats = FuzzStats()
    for result in schema.get_all_operations():
        op = result.ok()
        positive, negative = examples.get(op.label, DEFAULT_EXAMPLES)
        before = stats.cases
        for mode, num in ((GenerationMode.POSITIVE, positive), (GenerationMode.NEGATIVE, negative)):
            @settings(max_examples=num, database=None, deadline=None, derandomize=True, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def send(case) -> None:
                if isinstance(case.body, dict):
                    case.body = tame(case.body, models)
                response = case.call(base_url=base_url, headers=headers, timeout=120)
                stats.cases += 1
                stats.statuses[response.status_code] += 1
                if response.status_code >= 500:
                    stats.server_errors.append({"operation": op.label, "mode": mode.value, "status": response.status_code,
                                                "body": repr(case.body)[:300], "answer": response.text[:300]})

            try:
                send()
            except Unsatisfiable:  # an operation without parameters has no invalid requests
                pass
        stats.by_operation[op.label] = stats.cases - before
    return stats


@pytest.fixture(scope="module")
def fuzz_gateway(engine_server, lora_adapters, tmp_path_factory):
    from serve.gateway.config import parse_config
    from tests.serve.gateway.conftest import start_gateway

    root = tmp_path_factory.mktemp("fuzz-adapters")
    shutil.copytree(lora_adapters["a0"], root / ADAPTER)
    gw = start_gateway(parse_config({
        "backends": [{"name": "r0", "kind": "embedded", "url": engine_server.base_url, "base_model": MODEL_NAME}],
        "adapter_roots": [str(root)], "adapters": [{"name": ADAPTER, "path": ADAPTER, "base_model": MODEL_NAME}],
        "auth": {"keys": [{"name": "fuzz", "key_sha256": hash_key(KEY)}]},
        "limits": {"health_interval_s": 1.0, "drain_timeout_s": 5}}, Path("."), {}))
    gw.wait_healthy("r0")
    yield gw
    gw.stop()


def test_fuzz_gateway_openapi(fuzz_gateway) -> None:
    """>= 1000 generated requests to every operation of the gateway's schema; none answered 5xx."""
    stats = fuzz(f"{fuzz_gateway.url}/openapi.json", fuzz_gateway.url, GATEWAY_EXAMPLES, (MODEL_NAME, ADAPTER),
                 {"Authorization": f"Bearer {KEY}"})
    record_fuzz("gateway", stats.figures())
    assert not stats.server_errors, stats.server_errors[:5]
    assert stats.cases >= 1000, stats.by_operation
    assert stats.statuses[200] >= 50, "too few generated requests reached the engine"
    assert httpx.get(f"{fuzz_gateway.url}/health").status_code == 200


def test_fuzz_engine_server_openapi(engine_server) -> None:
    """Generated requests to every operation of the engine server's own schema; none answered 5xx."""
    stats = fuzz(f"{engine_server.base_url}/openapi.json", engine_server.base_url, ENGINE_EXAMPLES, (MODEL_NAME,))
    record_fuzz("engine", stats.figures())
    assert not stats.server_errors, stats.server_errors[:5]
    # (its schema has no value bounds, so most generated bodies hold some out-of-range field: 400)
    assert stats.statuses[200] >= 3, "no generated request reached the model"
    assert httpx.get(f"{engine_server.base_url}/health").status_code == 200
