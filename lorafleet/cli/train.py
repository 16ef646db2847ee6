"""``lorafleet train ...``: SFT and DPO fine-tuning into PEFT adapters and merged checkpoints.

Commands are registered on the typer apps of :mod:`lorafleet.cli` when this module is imported.
"""

from __future__ import annotations
