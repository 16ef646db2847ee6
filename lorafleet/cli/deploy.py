"""``lorafleet deploy ...``: render deployment manifests.

Commands are registered on the typer apps of :mod:`lorafleet.cli` when this module is imported.
"""

from __future__ import annotations
