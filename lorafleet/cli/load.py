"""``lorafleet bench load`` and ``lorafleet bench sweep``: locust load tests.

Commands are registered on the typer apps of :mod:`lorafleet.cli` when this module is imported.
"""

from __future__ import annotations
