"""``lorafleet optimize templates report``: estimate the prefix-cache hit rate of a sample of real requests,
before and after compiling, by replaying their prompts through a model of an engine's block cache.

The model is the engines' own rule: full blocks of ``block_size`` tokens are keyed by a hash chained over
everything before them; a request reuses its longest run of leading cached blocks, never its last token
(which must be computed for logits); afterwards all its full prompt blocks are cached. Hit rate is reused
tokens / prompt tokens, as ``vllm:prefix_cache_hits / vllm:prefix_cache_queries`` count it. The cache is
unbounded unless ``capacity_blocks`` is given (then least recently used blocks go first).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet.errors import ConfigError


@dataclass(frozen=True, slots=True)
class HitStats:
    num_prompt_tokens: int = 0
    num_hit_tokens: int = 0
    num_requests: int = 0

    @property
    def hit_rate(self) -> float:
        return self.num_hit_tokens / self.num_prompt_tokens if self.num_prompt_tokens else 0.0

    def __add__(self, other: HitStats) -> HitStats:
        return HitStats(self.num_prompt_tokens + other.num_prompt_tokens, self.num_hit_tokens + other.num_hit_tokens,
                        self.num_requests + other.num_requests)


class BlockCache:
    """The prefix cache of one engine, in block hashes only."""

    def __init__(self, block_size: int, capacity_blocks: int | None = None) -> None:
        if block_size < 1 or (capacity_blocks is not None and capacity_blocks < 1):
            raise ConfigError(f"block_size and capacity_blocks must be positive, got {block_size}, {capacity_blocks}")
        self.block_size, self.capacity_blocks = block_size, capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def _keys(self, token_ids: Sequence[int]) -> list[int]:
        keys, parent = [], None
        for i in range(len(token_ids) // self.block_size):
            parent = hash((parent, tuple(token_ids[i * self.block_size:(i + 1) * self.block_size])))
            keys.append(parent)
        return keys

    def serve(self, token_ids: Sequence[int]) -> int:
        """Admit one prompt; returns its reused (hit) tokens and caches its full blocks."""
        keys = self._keys(token_ids)
        max_hits = (len(token_ids) - 1) // self.block_size
        hits = 0
        while hits < max_hits and keys[hits] in self._blocks:
            hits += 1
        for key in keys:
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        while self.capacity_blocks is not None and len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)
        return hits * self.block_size


def simulate(prompts: Iterable[Sequence[int]], block_size: int, capacity_blocks: int | None = None) -> HitStats:
    """Replay ``prompts`` (token ids, in arrival order) through one :class:`BlockCache`."""
    cache = BlockCache(block_size, capacity_blocks)
    total = HitStats()
    for ids in prompts:
        total = total + HitStats(len(ids), cache.serve(ids), 1)
    return total


@dataclass(frozen=True, slots=True)
class SampleRequest:
    template: str  #: template name
    variables: Mapping[str, Any]
    line: int  #: line in the JSONL file


def read_requests(path: Path) -> list[SampleRequest]:
    """Requests from JSONL: ``{"template": NAME, "variables": {...}}`` per line, or a gateway request body with
    ``"prompt_template": {"name": NAME, "variables": {...}}``. Blank lines are skipped."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read requests {path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"{path}:{n}: not valid JSON ({e})") from None
        spec = row.get("prompt_template", row) if isinstance(row, dict) else None
        name = spec.get("name", spec.get("template")) if isinstance(spec, dict) else None
        variables = spec.get("variables", {}) if isinstance(spec, dict) else None
        if not isinstance(name, str) or not isinstance(variables, dict):
            raise ConfigError(f"{path}:{n}: expected {{\"template\": NAME, \"variables\": {{...}}}}")
        out.append(SampleRequest(name, variables, n))
    if not out:
        raise ConfigError(f"{path}: no requests")
    return out
