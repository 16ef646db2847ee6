"""bench/reliability.py: partial results from several writers merge into one file without losing any."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from bench.reliability import (read_results, record_cases, record_fuzz, record_soak, soak_section, update_section)


def _writer(path: str, worker: int, count: int) -> None:
    for i in range(count):
        section = ("faults", "security")[worker % 2]
        record_cases(section, [{"name": f"w{worker}-{i}", "survived": True, "refused": True}], Path(path))
        record_fuzz(f"target{worker}", {"cases": i + 1, "server_errors": 0}, path=Path(path))


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "reliability.json"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    data = json.loads(path.read_text())
    assert data["faults"]["injected"] == data["faults"]["survived"] == 30
    assert data["security"]["cases"] == data["security"]["refused"] == 30
    assert data["fuzz"]["cases"] == 4 * 15 and data["fuzz"]["server_errors"] == 0
    assert not list(tmp_path.glob(".reliability.json-*")), "a temporary file was left behind"


def test_cases_merge_by_name_and_totals_follow(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    record_cases("faults", [{"name": "a", "survived": True}, {"name": "b", "survived": False}], path)
    record_cases("faults", [{"name": "b", "survived": True, "outcome": "503"}], path)
    faults = read_results(path)["faults"]
    assert (faults["injected"], faults["survived"]) == (2, 2)
    assert [c["name"] for c in faults["cases"]] == ["a", "b"] and faults["cases"][1]["outcome"] == "503"
    record_cases("durability", [{"name": "k", "kills": 3, "corrupt_latest": 0, "resumed": 1}], path)
    assert {k: read_results(path)["durability"][k] for k in ("kills", "corrupt_latest", "resumed")} == \
        {"kills": 3, "corrupt_latest": 0, "resumed": 1}


def test_short_soaks_never_replace_the_run_of_record(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    assert soak_section(30) == "soak" and soak_section(2) == "soak_short"
    record_soak({"minutes": 30, "requests": 900}, path)
    record_soak({"minutes": 2, "requests": 60}, path)
    data = read_results(path)
    assert data["soak"]["requests"] == 900 and data["soak_short"]["requests"] == 60
    path.write_text("{torn")
    update_section("faults", lambda old: {"injected": len(old)}, path)  # a torn file is replaced, not a crash
    assert read_results(path)["faults"]["injected"] == 0


def test_hostile_totals_count_server_errors_and_the_slowest_answer(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    record_cases("hostile", [{"name": "a", "status": 400, "seconds": 0.01, "passed": True},
                             {"name": "b", "status": 413, "seconds": 0.002, "passed": True}], path)
    out = record_cases("hostile", [{"name": "b", "status": 502, "seconds": 1.5, "passed": False}], path)
    assert (out["cases"], out["server_errors"], out["max_seconds"], out["passed"]) == (2, 1, 1.5, 1)
    assert read_results(path)["hostile"]["checks"][1]["status"] == 502
