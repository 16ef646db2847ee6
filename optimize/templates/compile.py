"""``lorafleet optimize templates compile``: reorder (on request), pre-tokenize the static prefix, check that it
tokenizes the same inside full prompts, and size it against the target's KV block.

A static prefix whose last tokens merge with what follows (``"...:\\n\\n"`` alone is one token, but two
before a word) would not match the full prompts' tokens there; compile keeps only the *stable* tokens (the
longest run equal alone and inside every sample prompt) and reports the rest as unstable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lorafleet.chat import template_hash
from lorafleet.templates.compiled import CompiledTemplate, StaticPrefix
from lorafleet.templates.prefix import common_prefix_len, encode, num_pad_tokens, split_prompt
from lorafleet.templates.spec import PromptTemplate, Section
from optimize.templates.reorder import apply_reorder, plan_reorder
from optimize.templates.samples import sample_values

#: pad units tried in order; each is one token in common BPE vocabularies and does not merge with itself
PAD_UNITS = (" .", " -", " *", " =")


@dataclass(frozen=True, slots=True)
class CompileOptions:
    block_size: int = 16  #: KV block size of the target engine, in tokens
    reorder: bool = False  #: move per-request sections after static ones where safe
    pad_to_block: bool = False  #: pad the static prefix to a block boundary
    num_samples: int = 8  #: sample requests for the tokenization checks


@dataclass(frozen=True, slots=True)
class PrefixCheck:
    """Tokenization of the static prefix, alone and inside sample prompts."""

    static_ids: tuple[int, ...]  #: the static prefix tokenized on its own
    num_stable: int  #: leading tokens equal alone and inside every sample prompt
    is_static_text_identical: bool  #: every sample renders the same static text
    boundary: str  #: text around the first unstable token ('' if all stable)


def check_prefix(tokenizer: Any, template: PromptTemplate, samples: Sequence[Mapping[str, Any]]) -> PrefixCheck:
    """Tokenize the static prefix alone and the full prompts of ``samples``; find the stable tokens."""
    splits = [split_prompt(tokenizer, template, v) for v in samples]
    static_ids = encode(tokenizer, splits[0].static_text)
    stable = len(static_ids)
    for split in splits:
        stable = min(stable, common_prefix_len(static_ids, encode(tokenizer, split.full_text)))
    boundary = ""
    if stable < len(static_ids):
        boundary = tokenizer.decode(static_ids[max(0, stable - 3):stable + 2])
    return PrefixCheck(tuple(static_ids), stable, len({s.static_text for s in splits}) == 1, boundary)


def _last_static_before_dynamic(template: PromptTemplate) -> Section | None:
    last = None
    for s in template.sections:
        if not s.is_static:
            break
        last = s
    return last


def _with_padding(template: PromptTemplate, section: Section, pad: str) -> PromptTemplate:
    padded = dataclasses.replace(section, text=section.text.rstrip() + pad)
    return dataclasses.replace(template, sections=tuple(padded if s is section else s for s in template.sections))


def pad_to_block(tokenizer: Any, template: PromptTemplate, samples: Sequence[Mapping[str, Any]],
                 check: PrefixCheck, block_size: int) -> tuple[PromptTemplate, PrefixCheck, str | None]:
    """Append pad tokens to the last static section so the stable prefix ends on a block boundary.

    Returns the (possibly unchanged) template, its check and a description of the change (None if none).
    """
    need = num_pad_tokens(check.num_stable, block_size)
    section = _last_static_before_dynamic(template)
    if need == 0 or section is None:
        return template, check, None
    for unit in PAD_UNITS:
        for count in range(need, need + block_size):
            candidate = _with_padding(template, section, unit * count)
            result = check_prefix(tokenizer, candidate, samples)
            if result.num_stable % block_size == 0 and result.num_stable > check.num_stable:
                added = result.num_stable - check.num_stable
                return candidate, result, (f"padded section '{section.name}' with {count} x {unit!r} ({added} tokens) "
                                           f"so the static prefix ends on a {block_size}-token block boundary")
    return template, check, None


def compile_template(template: PromptTemplate, tokenizer: Any, model: str, options: CompileOptions) -> CompiledTemplate:
    """The compiled form of ``template`` for ``tokenizer``'s model and ``options.block_size``."""
    plan = plan_reorder(template)
    changes: list[str] = []
    checks: dict[str, Any] = {"reorder_blocked": list(plan.blocked)}
    if options.reorder:
        template = apply_reorder(template, plan)
        changes += plan.changes
    else:
        checks["reorder_suggested"] = list(plan.changes)
    samples = sample_values(template, options.num_samples) if template.variables else [{}]
    check = check_prefix(tokenizer, template, samples)
    num_pad = 0
    if options.pad_to_block:
        before = check.num_stable
        template, check, change = pad_to_block(tokenizer, template, samples, check, options.block_size)
        if change:
            changes.append(change)
            num_pad = check.num_stable - before
        elif check.num_stable % options.block_size:
            checks["padding"] = "no pad unit reached a block boundary; the prefix is left as is"
    checks.update({
        "num_samples": len(samples),
        "static_text_identical": check.is_static_text_identical,
        "tokenizes_identically": check.num_stable == len(check.static_ids),
        "num_static_tokens_alone": len(check.static_ids),
        "unstable_boundary": check.boundary,
    })
    prefix = StaticPrefix(check.static_ids[: check.num_stable], options.block_size, num_pad,
                          len(check.static_ids) - check.num_stable)
    return CompiledTemplate(template, prefix, model, template_hash(tokenizer), tuple(changes), checks)
