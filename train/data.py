"""Reading training data: JSONL records validated line by line into typed samples, and the held-out split.

Formats (one JSON object per line; see docs/train.md):

* chat: ``{"messages": [...]}`` ending with an assistant message (the last reply is trained, earlier turns
  are context);
* prompt/completion: ``{"prompt": str | messages, "completion": str | [assistant message]}``;
* text: ``{"text": str}`` (plain language modelling, every token trained);
* preference (DPO): ``{"prompt": str | "messages": [...], "chosen": str, "rejected": str}``.

A malformed line raises :class:`ConfigError` naming ``file:line`` and the problem, unless ``skip_bad`` is set;
then it is returned as a :class:`BadLine` so the caller can report it. Nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from lorafleet.chat import normalize_messages
from lorafleet.errors import ConfigError

Message = dict[str, str]


@dataclass(frozen=True, slots=True)
class Sample:
    """One SFT sample: a chat (context messages + the trained assistant reply) or plain text."""

    line: int  #: 1-based line number in its file
    context: tuple[Message, ...]  #: messages before the reply; empty for text samples
    reply: str | None  #: the trained assistant reply; ``None`` for text samples
    text: str | None = None  #: plain text (every token trained); ``None`` for chat samples

    @property
    def is_text(self) -> bool:
        return self.text is not None

    def key(self) -> str:
        """Content digest: the same sample always gets the same key, wherever it sits in the file."""
        return _digest([list(self.context), self.reply, self.text])


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """One DPO sample: a prompt (as messages) with a preferred and a dispreferred reply."""

    line: int
    context: tuple[Message, ...]
    chosen: str
    rejected: str

    def key(self) -> str:
        return _digest([list(self.context), self.chosen, self.rejected])


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line skipped under ``--skip-bad``, with the reason it was refused."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.path, "line": self.line, "reason": self.reason}


T = TypeVar("T", Sample, PreferencePair)


def read_samples(path: Path, skip_bad: bool = False) -> tuple[list[Sample], list[BadLine]]:
    """SFT samples of a JSONL file, and the lines skipped (only with ``skip_bad``)."""
    return _read(path, parse_sample, skip_bad)


def read_pairs(path: Path, skip_bad: bool = False) -> tuple[list[PreferencePair], list[BadLine]]:
    """Preference pairs of a JSONL file, and the lines skipped (only with ``skip_bad``)."""
    return _read(path, parse_pair, skip_bad)


def _read(path: Path, parse: Callable[[Any, int], T], skip_bad: bool) -> tuple[list[T], list[BadLine]]:
    if not path.is_file():
        raise ConfigError(f"data file {path} does not exist")
    items: list[T] = []
    bad: list[BadLine] = []
    with open(path, encoding="utf-8", errors="strict") as f:
        for number, raw in enumerate(_lines(f, path), start=1):
            if not raw.strip():
                continue
            try:
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"not valid JSON ({e.msg} at column {e.colno})") from None
                items.append(parse(record, number))
            except ConfigError as e:
                if not skip_bad:
                    raise ConfigError(f"{path}:{number}: {e} (--skip-bad skips such lines)") from None
                bad.append(BadLine(str(path), number, str(e)))
    if not items:
        raise ConfigError(f"{path}: no usable samples" + (f" ({len(bad)} bad lines skipped)" if bad else ""))
    return items, bad


def _lines(f: Any, path: Path) -> Any:
    try:
        yield from f
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def parse_sample(record: Any, line: int = 0) -> Sample:
    """One SFT record as a :class:`Sample`; raises :class:`ConfigError` saying what is wrong with it."""
    if not isinstance(record, dict):
        raise ConfigError(f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = _messages(record["messages"], "messages")
        if messages[-1]["role"] != "assistant":
            raise ConfigError(f"the last message must be the assistant reply to train on, got role '{messages[-1]['role']}'")
        context, reply = tuple(messages[:-1]), messages[-1]["content"]
    elif "prompt" in record or "completion" in record:
        context = _prompt(record)
        reply = _reply(record, "completion")
    elif "text" in record:
        if not isinstance(record["text"], str) or not record["text"].strip():
            raise ConfigError("'text' must be a non-empty string")
        return Sample(line, (), None, record["text"])
    else:
        raise ConfigError(f"expected 'messages', 'prompt'+'completion' or 'text', got keys {sorted(record)}")
    if not any(m["role"] == "user" for m in context):
        raise ConfigError("a reply needs at least one user message before it")
    if not reply.strip():
        raise ConfigError("the assistant reply is empty")
    return Sample(line, context, reply)


def parse_pair(record: Any, line: int = 0) -> PreferencePair:
    """One preference record as a :class:`PreferencePair`; raises :class:`ConfigError` if malformed."""
    if not isinstance(record, dict):
        raise ConfigError(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("chosen", "rejected") if k not in record]
    if missing or ("prompt" not in record and "messages" not in record):
        raise ConfigError(f"a preference pair needs 'prompt' (or 'messages'), 'chosen' and 'rejected'; got keys {sorted(record)}")
    context = _messages(record["messages"], "messages") if "messages" in record else _prompt(record)
    if context[-1]["role"] == "assistant":
        raise ConfigError("the prompt must not end with an assistant message")
    chosen, rejected = _reply(record, "chosen"), _reply(record, "rejected")
    if chosen == rejected:
        raise ConfigError("'chosen' and 'rejected' are identical")
    return PreferencePair(line, tuple(context), chosen, rejected)


def _messages(value: Any, name: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"'{name}' must be a non-empty list of messages")
    if not all(isinstance(m, dict) for m in value):
        raise ConfigError(f"every entry of '{name}' must be an object with 'role' and 'content'")
    return normalize_messages(value)


def _prompt(record: dict) -> tuple[Message, ...]:
    prompt = record.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        return ({"role": "user", "content": prompt},)
    if isinstance(prompt, list):
        return tuple(_messages(prompt, "prompt"))
    raise ConfigError("'prompt' must be a non-empty string or a list of messages")


def _reply(record: dict, key: str) -> str:
    value = record.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        message = normalize_messages(value)[0]
        if message["role"] != "assistant":
            raise ConfigError(f"'{key}' must be an assistant message, got role '{message['role']}'")
        value = message["content"]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"'{key}' must be a non-empty string (or one assistant message)")
    return value


def read_train_val(reader: Callable[[Path, bool], tuple[list[T], list[BadLine]]], data: Path, val_data: Path | None,
                   val_fraction: float, skip_bad: bool) -> tuple[list[T], list[T], list[BadLine]]:
    """(train, val, skipped lines): ``val_data`` as validation set, else a held-out split of ``data``."""
    items, bad = reader(data, skip_bad)
    if val_data is None:
        train, val = split_holdout(items, val_fraction)
        return train, val, bad
    val, bad_val = reader(val_data, skip_bad)
    return items, val, bad + bad_val


def split_holdout(items: list[T], val_fraction: float) -> tuple[list[T], list[T]]:
    """(train, val): the ``ceil(n * val_fraction)`` items with the smallest content digests are held out.

    The choice depends only on each item's content, so the same data gives the same split in any line order.
    At least one item stays in training.
    """
    if val_fraction <= 0 or len(items) < 2:
        return list(items), []
    num_val = min(len(items) - 1, math.ceil(len(items) * val_fraction))
    held = {id(x) for x in sorted(items, key=lambda x: x.key())[:num_val]}
    return [x for x in items if id(x) not in held], [x for x in items if id(x) in held]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
