"""``lorafleet profile ...``: memory planning and backend launch profiles.

Commands are registered on the typer apps of :mod:`lorafleet.cli` when this module is imported.
"""

from __future__ import annotations
