"""Profile YAML files: the shipped ones next to this module, loading by name or path, saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lorafleet.atomic import write_bytes
from lorafleet.config.profile import Profile, profile_from_mapping, profile_to_mapping
from lorafleet.errors import ConfigError, NotFoundError

PROFILES_DIR = Path(__file__).resolve().parent


def shipped_profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def named_yaml_path(ref: str | Path, directory: Path, kind: str) -> Path:
    """``ref`` itself when it is a file, else ``directory/<ref>.yaml`` (a shipped ``kind``)."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path.resolve()
    if (directory / f"{ref}.yaml").is_file():
        return directory / f"{ref}.yaml"
    shipped = ", ".join(sorted(p.stem for p in directory.glob("*.yaml")))
    raise NotFoundError(f"{kind} '{ref}': no such file and not a shipped {kind} ({shipped})")


def read_named_yaml(path: Path) -> Any:
    """The parsed YAML file; a mapping without ``name`` gets the file's stem as its name."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return {**raw, "name": path.stem} if isinstance(raw, dict) and "name" not in raw else raw


def load_profile(ref: str | Path) -> Profile:
    """A shipped profile by name, or a profile YAML file by path."""
    path = named_yaml_path(ref, PROFILES_DIR, "profile")
    return profile_from_mapping(read_named_yaml(path), str(path))


def save_profile(profile: Profile, path: Path) -> Path:
    return write_bytes(path, yaml.safe_dump(profile_to_mapping(profile), sort_keys=False))


def list_cli() -> None:
    """``lorafleet profile list``: one row per shipped profile."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"profiles in {PROFILES_DIR}")
    cols = ("name", "max_num_seqs", "max_num_batched_tokens", "max_model_len", "kv_cache_dtype",
            "enable_prefix_caching", "max_loras", "gpu_memory_utilization")
    for col in cols:
        table.add_column(col)
    for name in shipped_profile_names():
        p = load_profile(name)
        table.add_row(*(str(getattr(p, c)) for c in cols))
    console = Console()
    console.print(table)
    for name in shipped_profile_names():
        console.print(f"[bold]{name}[/]: {load_profile(name).description}")
