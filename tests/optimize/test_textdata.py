"""The shipped held-out and calibration sets and how text is cut into scored windows."""

from __future__ import annotations

import pytest

from lorafleet.errors import ArtifactError
from optimize.textdata import (CALIBRATION, HELDOUT, calibration_texts, healing_texts, read_passages, stdlib_docstrings,
                               token_windows)


def test_shipped_sets_are_disjoint_and_sized() -> None:
    held, calib = read_passages(None, HELDOUT), read_passages(None, CALIBRATION)
    assert len(held) == 8 and len(calib) == 32
    assert all(len(p.split()) > 120 for p in held)
    sentences = {s.strip() for p in held for s in p.split(".") if len(s) > 30}
    assert not any(s in p for s in sentences for p in calib)  # no held-out sentence leaks into calibration
    assert calibration_texts(None, 5) == calib[:5]


def test_token_windows() -> None:
    ids = list(range(100))
    assert token_windows(ids, 40, None) == [ids[:40], ids[40:80], ids[80:]]
    assert token_windows(ids, 40, 7) == [[7] + ids[:39], [7] + ids[39:78], [7] + ids[78:]]
    assert token_windows(list(range(90)), 40, None) == [list(range(40)), list(range(40, 80))]  # a 10-token tail is dropped


def test_passages_and_errors(tmp_path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("one\ntwo\n\n\n\nthree\r\n\r\nfour\n")
    assert read_passages(f, HELDOUT) == ["one\ntwo", "three", "four"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ArtifactError, match="no text"):
        read_passages(tmp_path / "empty.txt", HELDOUT)
    with pytest.raises(ArtifactError, match="cannot read"):
        read_passages(tmp_path / "missing.txt", HELDOUT)


def test_healing_set_is_calibration_plus_stdlib_docs(tmp_path) -> None:
    docs = stdlib_docstrings()
    assert len(docs) > 100 and len(set(docs)) == len(docs) and min(map(len, docs)) >= 200
    assert healing_texts(None) == read_passages(None, CALIBRATION) + docs
    (tmp_path / "h.txt").write_text("a\n\nb")
    assert healing_texts(tmp_path / "h.txt") == ["a", "b"]
