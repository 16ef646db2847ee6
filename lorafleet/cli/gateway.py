"""``lorafleet bench routing`` and ``lorafleet bench gateway``.

Commands are registered on the typer apps of :mod:`lorafleet.cli` when this module is imported.
"""

from __future__ import annotations
