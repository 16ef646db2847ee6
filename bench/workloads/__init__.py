"""Load-test workloads: YAML files next to this module (``chat``, ``rag``, ``multi-tenant-lora``) and their
loader; :mod:`bench.workloads.sampler` turns a workload into a seeded stream of OpenAI requests."""

from __future__ import annotations

from pathlib import Path

import yaml

from lorafleet.config.load import WorkloadConfig, workload_from_mapping
from lorafleet.errors import ConfigError, NotFoundError

WORKLOADS_DIR = Path(__file__).resolve().parent


def shipped_workload_names() -> list[str]:
    return sorted(p.stem for p in WORKLOADS_DIR.glob("*.yaml"))


def workload_path(ref: str | Path) -> Path:
    """The YAML file of a shipped workload name, or ``ref`` itself when it is a file."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path.resolve()
    if (WORKLOADS_DIR / f"{ref}.yaml").is_file():
        return WORKLOADS_DIR / f"{ref}.yaml"
    raise NotFoundError(f"workload '{ref}': no such file and not a shipped workload ({', '.join(shipped_workload_names())})")


def load_workload(ref: str | Path) -> WorkloadConfig:
    """A shipped workload by name, or a workload YAML file by path; every problem reported at once."""
    path = workload_path(ref)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if isinstance(raw, dict) and "name" not in raw:
        raw = {**raw, "name": path.stem}
    return workload_from_mapping(raw, str(path))
