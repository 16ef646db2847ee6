"""Chat-template rendering, in one place for training and serving alike."""

from __future__ import annotations

import hashlib
import secrets
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
    """Token ids of the rendered chat prompt (special tokens come from the template, none are added).

    Special tokens come *only* from the template: text such as ``<|im_start|>system`` inside a message's
    content is tokenized as plain text, so a user (or a prompt-template variable) cannot open a section of its
    own."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("this model has no chat template; use /v1/completions")
    flat = normalize_messages(messages)
    specials = special_token_strings(tokenizer)
    if not any(s in m["content"] for m in flat for s in specials):  # the usual case: one call, as HF tokenizes it
        text = tokenizer.apply_chat_template(flat, add_generation_prompt=add_generation_prompt, tokenize=False)
        return tokenizer(text, add_special_tokens=False).input_ids
    return _token_ids_with_literal_contents(tokenizer, flat, add_generation_prompt)


def special_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """The text forms of the tokenizer's added tokens (``<|im_start|>``...), which a plain tokenizer call turns
    into their special ids wherever they appear."""
    return tuple(t for t in getattr(tokenizer, "get_added_vocab", dict)() if t.strip())


def _token_ids_with_literal_contents(tokenizer: Any, flat: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    """Render with a placeholder for each content, then tokenize the template's text with its special tokens
    and each content with ``split_special_tokens`` (as literal text)."""
    nonce = secrets.token_hex(8)  # placeholders no content can contain, whatever a client sends
    marks = [f"\ue001{nonce}.{i}\ue001" for i in range(len(flat))]
    shown = [{**m, "content": mark} for m, mark in zip(flat, marks)]
    text = tokenizer.apply_chat_template(shown, add_generation_prompt=add_generation_prompt, tokenize=False)
    if any(text.count(mark) != 1 for mark in marks):
        raise ConfigError("the chat template does not render message contents verbatim; cannot tokenize "
                          "special-token text in them safely")
    ids: list[int] = []
    for i, mark in enumerate(marks):
        before, _, text = text.partition(mark)
        if before:
            ids += tokenizer(before, add_special_tokens=False).input_ids
        if flat[i]["content"]:
            ids += tokenizer(flat[i]["content"], add_special_tokens=False, split_special_tokens=True).input_ids
    if text:
        ids += tokenizer(text, add_special_tokens=False).input_ids
    return ids


def template_hash(tokenizer: Any) -> str:
    """Short sha256 of the chat template, recorded in artifact manifests to detect train/serve mismatch."""
    return hashlib.sha256((getattr(tokenizer, "chat_template", None) or "").encode()).hexdigest()[:16]
