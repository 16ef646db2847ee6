"""serve/engine/detokenizer.py with the real SmolLM2 tokenizer: incremental text equals a full decode, and
stop strings are cut without ever being partly emitted."""

from __future__ import annotations

import pytest

from serve.engine.detokenizer import IncrementalDetokenizer

PROMPT = "Here is the text you asked for:"
TEXTS = [
    "Hello world",
    " leading space and trailing space ",
    "The café is naïve — très bien! «Ça va?»",
    "你好，世界！这是一个测试。",
    "Emoji time: 🦙🚀 family 👩‍👩‍👧 flag 🇫🇷 done",
    "日本語のテキストと한국어 텍스트",
    "mixed\nlines\n\n\ttabs and    spaces",
    "ÅÄÖ åäö ß ∑∫√ ≠ ≤ ∞",
    "🙂" * 7,
    "def f(x):\n    return x ** 2  # squares\n",
]


def run(detok: IncrementalDetokenizer, ids: list[int]) -> tuple[list[str], list[str]]:
    """Feed ``ids`` one at a time; return the emitted pieces and, after each token, the text emitted so far."""
    pieces, emitted = [], []
    for t in ids:
        pieces.append(detok.add(t))
        emitted.append("".join(pieces))
    pieces.append(detok.flush())
    return pieces, emitted


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_incremental_text_equals_full_decode(tokenizer, text: str) -> None:
    prompt_ids = tokenizer(PROMPT).input_ids
    ids = tokenizer(text).input_ids
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    pieces, _ = run(detok, ids)
    expected = tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(pieces) == expected == detok.text
    assert not any("\ufffd" in p for p in pieces), "half of a multi-byte character was emitted"


def test_multibyte_characters_are_held_until_complete(tokenizer) -> None:
    ids = tokenizer("🦙").input_ids
    assert len(ids) > 1, "the emoji should span several byte-level tokens"
    detok = IncrementalDetokenizer(tokenizer, tokenizer(PROMPT).input_ids)
    assert [detok.add(t) for t in ids] == [""] * (len(ids) - 1) + ["🦙"]


def test_special_tokens_are_skipped_or_kept(tokenizer) -> None:
    ids = tokenizer("Done.").input_ids + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    skip = IncrementalDetokenizer(tokenizer, [1], skip_special_tokens=True)
    assert "".join(run(skip, ids)[0]) == "Done."
    keep = IncrementalDetokenizer(tokenizer, [1], skip_special_tokens=False)
    assert "".join(run(keep, ids)[0]) == "Done.<|im_end|>"


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("The answer is 42. END of story.", ("END",), "The answer is 42. "),
        ("Call me <stop here> please", ("<stop here>",), "Call me "),  # spans several tokens
        ("I like abalone soup", ("bal",), "I like a"),  # inside one token
        ("hello world", ("world", "lo"), "hel"),  # the earliest match wins
        ("STOP right at the start", ("STOP",), ""),
        ("Two\n\nparagraphs here", ("\n\n",), "Two"),
        ("Emoji 🦙 then more", ("🦙",), "Emoji "),
        ("café au lait", ("é a",), "caf"),
    ],
)
def test_stop_strings_are_cut_and_never_partially_emitted(tokenizer, text: str, stop: tuple[str, ...], expected: str) -> None:
    ids = tokenizer(text).input_ids
    detok = IncrementalDetokenizer(tokenizer, tokenizer(PROMPT).input_ids, stop=stop)
    pieces, emitted = run(detok, ids)
    assert detok.stopped
    assert detok.text == expected == "".join(pieces)
    for so_far in emitted:
        assert expected.startswith(so_far), f"emitted {so_far!r}, which is not a prefix of the final {expected!r}"
    assert detok.add(ids[0]) == "", "nothing is emitted after a stop"


@pytest.mark.parametrize(("text", "stop", "expected"), [
    ("The answer is 42. END of story.", ("END",), "The answer is 42. END"),
    ("hello world", ("world", "lo"), "hello"),  # the earliest match wins, kept whole
    ("Emoji 🦙 then more", ("🦙",), "Emoji 🦙"),
])
def test_include_stop_str_keeps_the_stop_string(tokenizer, text: str, stop: tuple[str, ...], expected: str) -> None:
    """vLLM's include_stop_str_in_output: the text ends with the stop string that ended it."""
    detok = IncrementalDetokenizer(tokenizer, tokenizer(PROMPT).input_ids, stop=stop, include_stop=True)
    pieces, _ = run(detok, tokenizer(text).input_ids)
    assert detok.stopped and detok.text == expected == "".join(pieces)


@pytest.mark.parametrize(("text", "stop"), [("Almost the EN but not quite", ("END",)), ("ends with E", ("END",)),
                                             ("no match at all", ("xyz", "qq"))])
def test_held_back_text_is_flushed_when_no_stop_matches(tokenizer, text: str, stop: tuple[str, ...]) -> None:
    ids = tokenizer(text).input_ids
    detok = IncrementalDetokenizer(tokenizer, tokenizer(PROMPT).input_ids, stop=stop)
    pieces, emitted = run(detok, ids)
    assert not detok.stopped
    assert "".join(pieces) == text
    hold = max(len(s) for s in stop) - 1
    assert len(emitted[-1]) >= len(text) - hold, "at most len(stop) - 1 characters may be held back"
