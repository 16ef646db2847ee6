"""Writing benchmark results: JSON files replaced atomically, and the pass/fail lines of their targets."""

from __future__ import annotations

from rich.console import Console


def target(description: str, met: bool | None) -> dict:
    """One target of a results file: what it asks and whether this run met it (None: not measured)."""
    return {"target": description, "met": met}


def print_targets(console: Console, targets: dict[str, dict]) -> None:
    for t in targets.values():
        mark = {True: "[green]met[/]", False: "[red]NOT met[/]", None: "[yellow]not measured[/]"}[t["met"]]
        console.print(f"  {t['target']}: {mark}")
