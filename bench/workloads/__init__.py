"""Load-test workloads: YAML files next to this module (``chat``, ``rag``, ``multi-tenant-lora``) and their
loader; :mod:`bench.workloads.sampler` turns a workload into a seeded stream of OpenAI requests."""

from __future__ import annotations

from pathlib import Path

from bench.profiles.store import named_yaml_path, read_named_yaml
from lorafleet.config.load import WorkloadConfig, workload_from_mapping

WORKLOADS_DIR = Path(__file__).resolve().parent


def shipped_workload_names() -> list[str]:
    return sorted(p.stem for p in WORKLOADS_DIR.glob("*.yaml"))


def workload_path(ref: str | Path) -> Path:
    """The YAML file of a shipped workload name, or ``ref`` itself when it is a file."""
    return named_yaml_path(ref, WORKLOADS_DIR, "workload")


def load_workload(ref: str | Path) -> WorkloadConfig:
    """A shipped workload by name, or a workload YAML file by path; every problem reported at once."""
    path = workload_path(ref)
    return workload_from_mapping(read_named_yaml(path), str(path))
