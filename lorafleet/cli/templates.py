"""``lorafleet optimize templates ...``: prefix-cache-aware prompt templates.

Commands are registered on the typer apps of :mod:`lorafleet.cli` when this module is imported.
"""

from __future__ import annotations
