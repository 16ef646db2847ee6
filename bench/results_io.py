"""Writing benchmark results: JSON files replaced atomically, and the pass/fail lines of their targets."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rich.console import Console


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename, so a reader
    never sees half a file and an interrupted run leaves the previous results in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def target(description: str, met: bool | None) -> dict:
    """One target of a results file: what it asks and whether this run met it (None: not measured)."""
    return {"target": description, "met": met}


def print_targets(console: Console, targets: dict[str, dict]) -> None:
    for t in targets.values():
        mark = {True: "[green]met[/]", False: "[red]NOT met[/]", None: "[yellow]not measured[/]"}[t["met"]]
        console.print(f"  {t['target']}: {mark}")
