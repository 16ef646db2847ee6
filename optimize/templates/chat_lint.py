"""Lint of the model's chat template against one prompt template: does the chat template put something that
changes between requests ahead of the end of the static prefix?

Two probes, both through the chat template itself (``lorafleet.chat.render_chat``):

* ``chat-template-volatile``: render at two different clock readings (transformers' ``strftime_now`` reads
  ``datetime.now``, which is frozen for the probe); a static prefix that changes means the template injects
  the date or time ahead of it (Llama 3.1's "Today Date: ..." header does).
* ``chat-template-reorders``: render two requests with different variables; if the second prompt does not
  start with the first one's static prefix, the template moves per-request content ahead of static content.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from lorafleet.errors import ConfigError
from lorafleet.templates.render import referenced_names, render_sections
from lorafleet.templates.prefix import common_prefix_len, split_prompt
from lorafleet.templates.spec import PromptTemplate
from optimize.templates.lint import ERROR, Finding
from optimize.templates.samples import sample_values

PROBE_TIMES = (datetime(2024, 1, 1, 8, 0, 0), datetime(2025, 7, 15, 17, 30, 45))
#: what renders the clock, most specific first (the finding points at the first line using one)
_CLOCK_WORDS = tuple(re.compile(p, re.IGNORECASE) for p in (r"strftime_now", r"datetime|now\(\)", r"date_string|today",
                                                            r"random|uuid"))
_MESSAGE_LOOP = (re.compile(r"for\s+\w+\s+in\s+(?:loop_)?messages"),)


@contextlib.contextmanager
def frozen_clock(when: datetime) -> Iterator[bool]:
    """Make transformers' chat-template ``strftime_now`` read ``when``; yields False if that is not possible
    (a transformers version without it), in which case the clock probe is skipped."""
    try:
        from transformers.utils import chat_template_utils as ctu
    except ImportError:
        yield False
        return
    real = getattr(ctu, "datetime", None)
    if not isinstance(real, type) or not issubclass(real, datetime):
        yield False
        return

    class Frozen(real):  # type: ignore[misc, valid-type]
        @classmethod
        def now(cls, tz: Any = None) -> datetime:
            return when

    ctu.datetime = Frozen
    try:
        yield True
    finally:
        ctu.datetime = real


def lint_chat_template(template: PromptTemplate, tokenizer: Any, origin: str) -> list[Finding]:
    """Chat-template findings for ``template`` rendered with ``tokenizer``'s chat template (``origin`` names it)."""
    source = getattr(tokenizer, "chat_template", None) or ""
    if not source:
        raise ConfigError(f"{origin}: the model has no chat template; pass --chat-template FILE or --no-model")
    first, second = sample_values(template, 2) if template.variables else ({}, {})
    # Variables of static sections keep their first value, so any divergence below is the chat template's.
    pinned = set().union(*(referenced_names(s) for s in template.sections if s.is_static))
    second = {k: (first[k] if k in pinned and k in first else v) for k, v in second.items()}
    out: list[Finding] = []
    with frozen_clock(PROBE_TIMES[0]) as ok:
        early = split_prompt(tokenizer, template, first)
    if ok:
        with frozen_clock(PROBE_TIMES[1]):
            late = split_prompt(tokenizer, template, first)
        if early.static_text != late.static_text:
            at = common_prefix_len(early.static_text, late.static_text)
            out.append(Finding(
                "chat-template-volatile", ERROR, _line(source, _CLOCK_WORDS), f"the chat template renders the "
                f"clock inside the static prefix ({_around(early.static_text, at)!r} changes with the date), so the "
                f"cache is invalidated at least daily and the {len(early.static_text) - at} characters after it are "
                "recomputed", "serve with a chat template that does not call strftime_now (or pins date_string), e.g. "
                "`--chat-template` on the server; keep the date, if needed, in a per-request section", None, origin))
    with frozen_clock(PROBE_TIMES[0]):
        other = split_prompt(tokenizer, template, second)
    last_static = _last_static_text(template, first)
    if last_static is not None and last_static not in early.static_text:
        out.append(Finding(
            "chat-template-reorders", ERROR, _line(source, _MESSAGE_LOOP), "the chat template renders per-request "
            f"content before the static sections (the static prefix ends after {len(early.static_text)} characters, "
            f"{_around(early.static_text, len(early.static_text))!r}, ahead of the last static section)",
            "use a chat template that renders messages in order without moving later content forward", None, origin))
    elif not other.full_text.startswith(early.static_text):
        at = common_prefix_len(early.static_text, other.full_text)
        out.append(Finding(
            "chat-template-reorders", ERROR, _line(source, _MESSAGE_LOOP), "the chat template puts per-request "
            f"content ahead of the end of the static prefix (prompts diverge at character {at} of "
            f"{len(early.static_text)}: {_around(early.static_text, at)!r})", "use a chat template that renders messages "
            "in order without moving later content forward, or put the per-request sections in the last user message",
            None, origin))
    return out


def _last_static_text(template: PromptTemplate, values: dict[str, Any]) -> str | None:
    """Rendered text of the last static section before the first per-request one (None if there is none)."""
    last = None
    for section in render_sections(template, values):
        if not section.is_static:
            return last
        last = section.text
    return last


def _line(source: str, patterns: tuple[re.Pattern[str], ...]) -> int:
    """Line of the first match of the first pattern that matches the chat template (1 if none does)."""
    for pattern in patterns:
        if m := pattern.search(source):
            return source.count("\n", 0, m.start()) + 1
    return 1


def _around(text: str, at: int, width: int = 30) -> str:
    return text[max(0, at - width // 2): at + width // 2]
