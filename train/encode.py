"""Samples to token ids and labels, with the base checkpoint's own chat template.

The prompt (every message before the trained reply, plus the template's generation prompt) is rendered and
tokenized exactly as the server does (:func:`lorafleet.chat.chat_token_ids`), so the model trains on the very
prompt tokens it will be served. The reply is the rest of the rendered conversation up to and including the
template's end-of-turn token (trailing whitespace after it is never generated, so it is not trained).
Prompt tokens carry label ``IGNORE`` (-100): loss falls on the reply only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from lorafleet.chat import render_chat
from lorafleet.errors import ConfigError
from train.data import Message, PreferencePair, Sample

IGNORE = -100  #: label of tokens that carry no loss (PyTorch's cross-entropy ignore_index)


@dataclass(frozen=True, slots=True)
class Encoded:
    """One tokenized sample. ``labels[i]`` is ``input_ids[i]`` where the token is trained, else ``IGNORE``."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    is_truncated: bool  #: cut at max_seq_len

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_targets(self) -> int:
        """Tokens that carry loss (the model predicts each from the tokens before it)."""
        return sum(1 for i, x in enumerate(self.labels) if x != IGNORE and i > 0)


@dataclass(frozen=True, slots=True)
class EncodedPair:
    """A preference pair as two sequences sharing the prompt tokens."""

    chosen: Encoded
    rejected: Encoded

    @property
    def is_truncated(self) -> bool:
        return self.chosen.is_truncated or self.rejected.is_truncated

    @property
    def num_tokens(self) -> int:
        return self.chosen.num_tokens + self.rejected.num_tokens

    @property
    def num_targets(self) -> int:
        """Trained tokens of the shorter reply (0 when truncation left either reply empty)."""
        return min(self.chosen.num_targets, self.rejected.num_targets)


S = TypeVar("S", Sample, PreferencePair)


def encode_all(tokenizer: Any, items: list[S], max_seq_len: int) -> tuple[list[Any], list[S]]:
    """(encoded, dropped): every sample or pair encoded; those left with no trained token are dropped and returned."""
    encoded, dropped = [], []
    for item in items:
        e = encode_pair(tokenizer, item, max_seq_len) if isinstance(item, PreferencePair) else \
            encode_sample(tokenizer, item, max_seq_len)
        if e.num_targets:
            encoded.append(e)
        else:
            dropped.append(item)
    return encoded, dropped


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's padding id, or its EOS id when it has none (padding is never attended to or trained)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_sample(tokenizer: Any, sample: Sample, max_seq_len: int) -> Encoded:
    """Token ids and labels of ``sample`` (chat: reply tokens labelled; text: every token labelled)."""
    if sample.is_text:
        ids = tokenizer(sample.text, add_special_tokens=True).input_ids
        return _truncate(list(ids), list(ids), max_seq_len)
    prompt_ids, reply_ids = _prompt_and_reply(tokenizer, sample.context, sample.reply)
    return _truncate(prompt_ids + reply_ids, [IGNORE] * len(prompt_ids) + reply_ids, max_seq_len)


def encode_pair(tokenizer: Any, pair: PreferencePair, max_seq_len: int) -> EncodedPair:
    """Both replies of ``pair`` after the same prompt tokens."""
    encoded = []
    for reply in (pair.chosen, pair.rejected):
        prompt_ids, reply_ids = _prompt_and_reply(tokenizer, pair.context, reply)
        encoded.append(_truncate(prompt_ids + reply_ids, [IGNORE] * len(prompt_ids) + reply_ids, max_seq_len))
    return EncodedPair(*encoded)


def _prompt_and_reply(tokenizer: Any, context: tuple[Message, ...], reply: str) -> tuple[list[int], list[int]]:
    prompt = render_chat(tokenizer, list(context), add_generation_prompt=True)
    full = render_chat(tokenizer, [*context, {"role": "assistant", "content": reply}], add_generation_prompt=False)
    if not full.startswith(prompt):
        raise ConfigError("the chat template renders the prompt differently once the reply is added, so reply "
                          "tokens cannot be told from prompt tokens; use prompt/completion text data instead")
    reply_text = full[len(prompt):].rstrip()
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    reply_ids = tokenizer(reply_text, add_special_tokens=False).input_ids
    return list(prompt_ids), list(reply_ids)


def _truncate(ids: list[int], labels: list[int], max_seq_len: int) -> Encoded:
    is_truncated = len(ids) > max_seq_len
    return Encoded(tuple(ids[:max_seq_len]), tuple(labels[:max_seq_len]), is_truncated)
