"""train/data.py: JSONL formats, one-line errors with the line number, --skip-bad, the stable held-out split."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lorafleet.errors import ConfigError
from train.data import read_pairs, read_samples, read_train_val, split_holdout


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def test_reads_every_format(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [
        CHAT,
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"},
                      {"role": "assistant", "content": "6"}]},
        {"prompt": "Say hi", "completion": "Hi!"},
        {"prompt": [{"role": "user", "content": "Say bye"}], "completion": [{"role": "assistant", "content": "Bye!"}]},
        {"text": "Plain text to model."},
        "",
    ])
    samples, bad = read_samples(path)
    assert bad == []
    assert [s.line for s in samples] == [1, 2, 3, 4, 5]
    assert samples[0].context == ({"role": "user", "content": "Hi"},) and samples[0].reply == "Hello."
    assert [m["content"] for m in samples[1].context] == ["Be brief.", "2+2?", "4", "3+3?"] and samples[1].reply == "6"
    assert samples[2].context == ({"role": "user", "content": "Say hi"},) and samples[2].reply == "Hi!"
    assert samples[3].reply == "Bye!"
    assert samples[4].is_text and samples[4].text == "Plain text to model."


@pytest.mark.parametrize(("line", "reason"), [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object, got list"),
    ('{"foo": 1}', "expected 'messages', 'prompt'+'completion' or 'text', got keys ['foo']"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "the last message must be the assistant reply"),
    ('{"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}', "messages[0].role must be one of"),
    ('{"messages": [{"role": "assistant", "content": "a"}]}', "a reply needs at least one user message before it"),
    ('{"prompt": "q", "completion": "  "}', "'completion' must be a non-empty string"),
    ('{"text": ""}', "'text' must be a non-empty string"),
])
def test_a_bad_line_stops_with_file_line_and_reason(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(CHAT) + "\n" + line + "\n")
    with pytest.raises(ConfigError) as e:
        read_samples(path)
    assert str(e.value).startswith(f"{path}:2: {reason}")
    assert "--skip-bad" in str(e.value)


def test_skip_bad_returns_every_skipped_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT, "{oops", CHAT, '{"text": 5}', CHAT])
    samples, bad = read_samples(path, skip_bad=True)
    assert [s.line for s in samples] == [1, 3, 5]
    assert [(b.line, b.reason.split(" (")[0]) for b in bad] == [(2, "not valid JSON"), (4, "'text' must be a non-empty string")]


def test_no_usable_sample_and_missing_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no usable samples .1 bad lines skipped"):
        read_samples(write_jsonl(tmp_path / "d.jsonl", ["{x"]), skip_bad=True)
    with pytest.raises(ConfigError, match="does not exist"):
        read_samples(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_samples(tmp_path / "latin1.jsonl")


def test_preference_pairs(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Well, let me think at length..."},
        {"messages": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hi."}], "rejected": "Hello there, friend!"},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": "a"},
    ])
    pairs, bad = read_pairs(path, skip_bad=True)
    assert [(p.line, p.chosen) for p in pairs] == [(1, "Paris."), (2, "Hi.")]
    assert pairs[1].context == ({"role": "user", "content": "Hi"},)
    assert [b.line for b in bad] == [3, 4]
    assert "identical" in bad[0].reason and "needs 'prompt'" in bad[1].reason


def test_holdout_split_is_stable_under_reordering(tmp_path: Path) -> None:
    records = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(200)]
    train_a, val_a = split_holdout(read_samples(write_jsonl(tmp_path / "a.jsonl", records))[0], 0.05)
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    train_b, val_b = split_holdout(read_samples(write_jsonl(tmp_path / "b.jsonl", shuffled))[0], 0.05)
    assert len(val_a) == 10 and len(train_a) == 190
    assert sorted(s.reply for s in val_a) == sorted(s.reply for s in val_b)
    assert not {s.reply for s in val_a} & {s.reply for s in train_a}
    assert split_holdout(read_samples(write_jsonl(tmp_path / "c.jsonl", records[:1]))[0], 0.05)[1] == []


def test_explicit_validation_file_replaces_the_split(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "t.jsonl", [CHAT] * 30)
    val = write_jsonl(tmp_path / "v.jsonl", [{"text": "held out"}])
    train, held, bad = read_train_val(read_samples, data, val, 0.5, False)
    assert len(train) == 30 and [s.text for s in held] == ["held out"] and bad == []
