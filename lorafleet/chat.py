"""Chat-template rendering, in one place for training and serving alike."""

from __future__ import annotations

import hashlib
from typing import Any

from lorafleet.errors import ConfigError

ROLES = ("system", "user", "assistant", "tool", "developer")


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Validate OpenAI-style messages and flatten text content parts into one string per message."""
    if not messages:
        raise ConfigError("messages must not be empty")
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise ConfigError(f"messages[{i}].role must be one of {ROLES}, got {role!r}")
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise ConfigError(f"messages[{i}].content[{j}]: only text parts are supported, got {kind!r}")
                parts.append(str(part.get("text", "")))
            content = "".join(parts)
        if not isinstance(content, str):
            raise ConfigError(f"messages[{i}].content must be a string or a list of text parts")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """Apply the checkpoint's own chat template to ``messages`` and return the prompt text."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("this model has no chat template; use /v1/completions")
    return tokenizer.apply_chat_template(
        normalize_messages(messages), add_generation_prompt=add_generation_prompt, tokenize=False
    )


def chat_token_ids(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the rendered chat prompt (special tokens come from the template, none are added)."""
    return tokenizer(render_chat(tokenizer, messages, add_generation_prompt), add_special_tokens=False).input_ids


def template_hash(tokenizer: Any) -> str:
    """Short sha256 of the chat template, recorded in artifact manifests to detect train/serve mismatch."""
    return hashlib.sha256((getattr(tokenizer, "chat_template", None) or "").encode()).hexdigest()[:16]
