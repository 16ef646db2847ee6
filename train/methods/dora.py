"""DoRA (Liu et al. 2024): LoRA whose update is split into a direction (the low-rank term) and a per-output
magnitude vector. Trained with PEFT's ``use_dora``; vLLM and lorafleet's engine serve plain LoRA only, so a
DoRA adapter is served merged into its base."""

from __future__ import annotations

import json
from pathlib import Path

NOT_SERVABLE = ("DoRA adapters are not served by vLLM or by `lorafleet serve`; serve the merged checkpoint "
                "instead (--merge, or `lorafleet train merge --adapter {adapter} --output DIR`)")


def is_dora(adapter_dir: Path) -> bool:
    """Whether the PEFT adapter in ``adapter_dir`` is a DoRA adapter."""
    cfg = adapter_dir / "adapter_config.json"
    return cfg.is_file() and bool(json.loads(cfg.read_text()).get("use_dora"))
