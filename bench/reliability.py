"""``bench/results/reliability.json``: the figures of the reliability suites, merged from partial writers.

The soak (``lorafleet bench soak``) and the pytest suites in ``tests/reliability/`` each own sections of one
file and write them while other writers may be running. Every write is a read-modify-write under an
exclusive ``flock`` on a lock file beside the results (in the temp directory, not the repository), finished
by an atomic rename: a reader never sees half a file and no writer loses another's section.

Sections and their keys (the issue's "done when" list first, details after):

* ``soak`` (a run of 30 minutes or more) and ``soak_short`` (shorter runs, e.g. CI's 2 minutes):
  ``minutes, requests, gateway_5xx, rss_growth_pct, ttft_p99_drift_pct``;
* ``faults``: ``injected, survived, cases`` (one entry per fault: outcome, time to outcome, leaks);
* ``fuzz``: ``cases, server_errors`` summed over the fuzzed servers (``targets``: gateway, engine), and the
  hypothesis property tests (``properties``);
* ``security``: ``cases, refused`` over ``checks``;
* ``durability``: ``kills, corrupt_latest, resumed`` over ``checks``;
* ``hostile``: ``cases, server_errors, max_seconds`` over ``checks`` (hand-made hostile input to the engine
  server and a gateway in front of it, issue #24: each check names its expected status and time bound).

Case lists are merged by case name, so running a subset of a suite refreshes those cases and keeps the
others; the totals are recomputed from the merged cases on every write.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lorafleet.atomic import write_json

DEFAULT_PATH = Path(__file__).resolve().parent / "results" / "reliability.json"
ENV_PATH = "LORAFLEET_RELIABILITY_JSON"  #: overrides where the suites write (tests of this module use it)
SOAK_MINUTES_OF_RECORD = 30  #: runs at least this long write ``soak``; shorter ones ``soak_short``


def results_path() -> Path:
    """Where the suites write: ``$LORAFLEET_RELIABILITY_JSON`` or ``bench/results/reliability.json``."""
    return Path(os.environ.get(ENV_PATH) or DEFAULT_PATH)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of results file ``path`` (a lock file in the temp dir, keyed by the path)."""
    digest = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"lorafleet-reliability-{digest}.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_results(path: Path | None = None) -> dict[str, Any]:
    """The whole results document ({} if there is none yet or it does not parse)."""
    try:
        data = json.loads(Path(path or results_path()).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_section(section: str, update: Callable[[dict[str, Any]], dict[str, Any]], path: Path | None = None) -> dict:
    """Replace ``section`` with ``update(old section)`` under the lock; returns the new section."""
    path = Path(path or results_path())
    with locked(path):
        data = read_results(path)
        old = data.get(section)
        new = update(dict(old) if isinstance(old, dict) else {})
        data[section] = {**new, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json(path, dict(sorted(data.items())))
    return data[section]


def merge_cases(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``old`` cases updated with ``new`` ones by ``name`` (new ones win), sorted by name."""
    merged = {c["name"]: dict(c) for c in old if isinstance(c, Mapping) and "name" in c}
    merged.update((c["name"], dict(c)) for c in new)
    return [merged[k] for k in sorted(merged)]


# -- the sections -----------------------------------------------------------------------------------------------
def fault_totals(cases: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``injected`` = faults run, ``survived`` = those that ended in their defined outcome, in bounded time,
    with nothing leaked."""
    return {"injected": len(cases), "survived": sum(1 for c in cases if c.get("survived")), "cases": list(cases)}


def security_totals(checks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``cases`` = hostile requests or artifacts tried, ``refused`` = those the system turned away as it must."""
    return {"cases": len(checks), "refused": sum(1 for c in checks if c.get("refused")), "checks": list(checks)}


def fuzz_totals(targets: Mapping[str, Mapping[str, Any]], properties: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """HTTP cases and 5xx answers summed over the fuzzed servers; property tests listed beside them."""
    return {"cases": sum(int(t.get("cases", 0)) for t in targets.values()),
            "server_errors": sum(int(t.get("server_errors", 0)) for t in targets.values()),
            "targets": {k: dict(v) for k, v in sorted(targets.items())},
            "properties": {k: dict(v) for k, v in sorted(properties.items())}}


def durability_totals(checks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"kills": sum(int(c.get("kills", 0)) for c in checks),
            "corrupt_latest": sum(int(c.get("corrupt_latest", 0)) for c in checks),
            "resumed": sum(int(c.get("resumed", 0)) for c in checks), "checks": list(checks)}


def hostile_totals(checks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``cases`` = hostile requests sent, ``server_errors`` = answers of 500 or more (must be 0),
    ``max_seconds`` = the slowest answer; ``passed`` = checks with their expected status within their bound."""
    return {"cases": len(checks), "server_errors": sum(1 for c in checks if int(c.get("status") or 0) >= 500),
            "max_seconds": round(max((float(c.get("seconds") or 0.0) for c in checks), default=0.0), 3),
            "passed": sum(1 for c in checks if c.get("passed")), "checks": list(checks)}


_CASE_SECTIONS: dict[str, tuple[str, Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]]] = {
    "faults": ("cases", fault_totals), "security": ("checks", security_totals),
    "durability": ("checks", durability_totals), "hostile": ("checks", hostile_totals),
}


def record_cases(section: str, cases: Sequence[Mapping[str, Any]], path: Path | None = None) -> dict:
    """Merge ``cases`` (each with a unique ``name``) into ``faults``, ``security``, ``durability`` or ``hostile``."""
    key, totals = _CASE_SECTIONS[section]
    return update_section(section, lambda old: totals(merge_cases(old.get(key, []), cases)), path)


def record_fuzz(name: str, figures: Mapping[str, Any], is_property: bool = False, path: Path | None = None) -> dict:
    """Set the figures of one fuzzed server (``cases``, ``server_errors`` and details) or, with
    ``is_property``, of one property test (``examples`` and details) in ``fuzz``."""
    def update(old: dict[str, Any]) -> dict[str, Any]:
        targets, properties = dict(old.get("targets") or {}), dict(old.get("properties") or {})
        (properties if is_property else targets)[name] = dict(figures)
        return fuzz_totals(targets, properties)

    return update_section("fuzz", update, path)


def soak_section(minutes: float) -> str:
    """The section a soak of ``minutes`` writes: runs shorter than the run of record do not replace it."""
    return "soak" if minutes >= SOAK_MINUTES_OF_RECORD else "soak_short"


def record_soak(summary: Mapping[str, Any], path: Path | None = None) -> dict:
    return update_section(soak_section(float(summary["minutes"])), lambda _: dict(summary), path)
