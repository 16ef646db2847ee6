"""Where a template's static prefix ends in the model's prompt, and what it costs in KV blocks.

The chat template is applied by :func:`lorafleet.chat.render_chat` (the one place lorafleet applies it), to
messages marked with :data:`SENTINEL` where per-request content starts. The tokenizer is passed in, so this
module imports neither torch nor transformers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lorafleet.chat import render_chat
from lorafleet.errors import ConfigError
from lorafleet.templates.render import render_sections, to_messages
from lorafleet.templates.spec import SENTINEL, PromptTemplate


@dataclass(frozen=True, slots=True)
class PromptSplit:
    """One request's prompt text, split where per-request content starts."""

    static_text: str  #: the chat-rendered text before the first per-request section
    full_text: str  #: the whole prompt, generation prompt included

    @property
    def dynamic_text(self) -> str:
        return self.full_text[len(self.static_text):]


def split_prompt(tokenizer: Any, template: PromptTemplate, values: Mapping[str, Any]) -> PromptSplit:
    """Render ``template`` for ``values`` through the model's chat template and find the static prefix."""
    from jinja2 import TemplateError

    messages = to_messages(render_sections(template, values), mark_static_end=True)
    try:
        text = render_chat(tokenizer, messages)
    except TemplateError as e:  # raise_exception() in the chat template, e.g. "roles must alternate"
        raise ConfigError(f"template '{template.name}': the model's chat template refused the messages "
                          f"(roles {[m['role'] for m in messages]}): {e}") from None
    at = text.find(SENTINEL)
    if at < 0:
        raise ConfigError(f"template '{template.name}': the chat template dropped part of the message content, "
                          "so the static prefix cannot be located")
    return PromptSplit(text[:at], text[:at] + text[at + len(SENTINEL):])


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of prompt text as engines tokenize a chat prompt: special tokens come from the text only."""
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def common_prefix_len(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common prefix of two sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


# -- KV-block arithmetic (pure) ------------------------------------------------------------------------------
def num_cacheable_tokens(num_tokens: int, block_size: int) -> int:
    """Tokens of a ``num_tokens`` prefix that sit in full KV blocks (engines share only full blocks)."""
    return num_tokens // block_size * block_size


def num_wasted_tokens(num_tokens: int, block_size: int) -> int:
    """Prefix tokens in the last, partial block: recomputed by every request."""
    return num_tokens % block_size


def num_pad_tokens(num_tokens: int, block_size: int) -> int:
    """Tokens to add so that the prefix ends on a block boundary."""
    return -num_tokens % block_size


def block_size_from_metrics(text: str) -> int | None:
    """The KV block size an engine reports in ``vllm:cache_config_info{block_size="..."}`` on ``/metrics``
    (vLLM and lorafleet serve both export it); None if absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        if family.name == "vllm:cache_config_info":
            for sample in family.samples:
                size = sample.labels.get("block_size")
                if size and size.isdigit() and int(size) > 0:
                    return int(size)
    return None


def fetch_block_size(metrics_url: str, timeout_s: float = 10.0) -> int:
    """Read the block size from a running engine's ``/metrics`` URL (or its base URL)."""
    import httpx

    url = metrics_url if metrics_url.rstrip("/").endswith("/metrics") else metrics_url.rstrip("/") + "/metrics"
    try:
        resp = httpx.get(url, timeout=timeout_s)
        resp.raise_for_status()
    except httpx.HTTPError as e:
        raise ConfigError(f"cannot read {url}: {e}") from None
    size = block_size_from_metrics(resp.text)
    if size is None:
        raise ConfigError(f"{url} has no vllm:cache_config_info with a block_size label")
    return size
