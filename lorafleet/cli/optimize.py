"""``lorafleet optimize ...`` and ``lorafleet eval ...``: quantization, pruning, KV scales, templates, quality.

Commands are registered on the typer apps of :mod:`lorafleet.cli` when this module is imported.
"""

from __future__ import annotations
