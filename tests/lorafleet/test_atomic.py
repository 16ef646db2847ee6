"""lorafleet.atomic: an artifact is either the old one or the new one, never half of one."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from lorafleet.atomic import atomic_dir, atomic_file, remove_stale_temporaries, write_bytes, write_json


def test_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.json"
    write_json(path, {"a": 1})
    assert write_json(path, {"a": 2, "p": Path("/x")}) == path
    assert json.loads(path.read_text()) == {"a": 2, "p": "/x"} and path.read_text().endswith("\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "f.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_file_keeps_the_suffix(tmp_path: Path) -> None:
    with atomic_file(tmp_path / "plot.png", suffix=".png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"\x89PNG")
    assert (tmp_path / "plot.png").read_bytes() == b"\x89PNG"


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    with atomic_dir(out) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / ".tmp-x-123").mkdir()
    (tmp_path / ".tmp-y.json-9").write_text("{")
    (tmp_path / "keep.json").write_text("{}")
    remove_stale_temporaries(tmp_path)
    remove_stale_temporaries(tmp_path / "missing")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]
