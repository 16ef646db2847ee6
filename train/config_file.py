"""Settings from a YAML file plus command-line overrides, and the effective config written next to a run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from lorafleet.config.train import from_mapping, to_mapping
from lorafleet.errors import ConfigError

EFFECTIVE_CONFIG = "config.yaml"


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file; a missing file or one that is not a mapping is a :class:`ConfigError`."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where} ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of setting: value, got {type(data).__name__}")
    return data


def load_config(cls: type, path: Path | None, overrides: dict[str, Any]) -> Any:
    """``cls`` from the YAML file at ``path`` (if any) with ``overrides`` (flags given on the command line) on top.

    Relative paths in the file (data, val_data, output, init_adapter) are relative to the file's directory, so a
    config can sit next to its data.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml(path)
        for key in ("data", "val_data", "output", "init_adapter"):
            if isinstance(values.get(key), str) and not Path(values[key]).expanduser().is_absolute():
                values[key] = str(path.parent / values[key])
    values.update(overrides)
    return from_mapping(cls, values, source=str(path) if path else "flags")


def with_absolute_paths(cfg: Any) -> Any:
    """``cfg`` with every path made absolute, so a saved config means the same from any directory."""
    paths = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if isinstance(getattr(cfg, f.name), Path)}
    return dataclasses.replace(cfg, **{k: v.expanduser().absolute() for k, v in paths.items()})


def dump_config(cfg: Any) -> str:
    """YAML text of ``cfg`` that :func:`load_config` reads back to an equal config."""
    return yaml.safe_dump(to_mapping(cfg), sort_keys=False)
