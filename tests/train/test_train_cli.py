"""`lorafleet train ...` and `lorafleet bench train` as users run them: every setting is a documented flag,
and mistakes stop the command with one `error:` line (exit 2) before anything is written."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from lorafleet.config.train import DpoConfig, MergeConfig, SftConfig
from tests.train.helpers import ENV, LORAFLEET, style_records, write_jsonl

pytestmark = pytest.mark.timeout(300)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LORAFLEET, *args], capture_output=True, text=True, env=ENV, timeout=240)


def _flags(cls: type) -> list[str]:
    return ["--" + f.name.replace("_", "-") for f in dataclasses.fields(cls)]


@pytest.mark.parametrize(("command", "cls"), [("sft", SftConfig), ("dpo", DpoConfig), ("merge", MergeConfig)])
def test_every_config_field_is_a_documented_flag(command: str, cls: type) -> None:
    out = run("train", command, "--help")
    assert out.returncode == 0, out.stderr
    for flag in _flags(cls):
        assert flag in out.stdout, flag
    if command != "merge":
        assert "--config" in out.stdout


def test_command_groups_list_train() -> None:
    assert all(c in run("train", "--help").stdout for c in ("sft", "dpo", "merge"))
    assert "train" in run("bench", "--help").stdout
    assert "--json" in run("bench", "train", "--help").stdout


def _error(*args: str) -> str:
    out = run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def test_bad_settings_are_reported_together(tmp_path: Path) -> None:
    line = _error("train", "sft", "--data", "d.jsonl", "--output", str(tmp_path / "o"), "--rank", "7", "--lr", "0",
                  "--method", "ia3")
    assert line.startswith("error: method must be one of") and "rank must be one of vLLM's" in line and "lr must be positive" in line
    assert _error("train", "sft", "--output", str(tmp_path / "o")) == "error: data is required (--data)"


def test_config_file_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rank: 8\ncolour: blue\n")
    assert f"{cfg}: unknown setting 'colour'" in _error("train", "sft", "--config", str(cfg), "--data", "d", "--output", "o")
    assert "does not exist" in _error("train", "dpo", "--config", str(tmp_path / "none.yaml"))


def test_bad_data_line_names_file_and_line_and_writes_nothing(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", style_records(3))
    with open(data, "a") as f:
        f.write('{"messages": [{"role": "user", "content": "hi"}]}\n')
    out_dir = tmp_path / "run"
    line = _error("train", "sft", "--data", str(data), "--output", str(out_dir))
    assert line == (f"error: {data}:4: the last message must be the assistant reply to train on, got role 'user' "
                    "(--skip-bad skips such lines)")
    assert not out_dir.exists()


def test_a_finished_run_is_never_overwritten(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "report.json").write_text(json.dumps({}))
    line = _error("train", "sft", "--data", "d.jsonl", "--output", str(run_dir))
    assert line == f"error: {run_dir} already holds a finished run (report.json); choose another --output"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert "exists and is not empty" in _error("train", "sft", "--data", "d.jsonl", "--output", str(tmp_path / "other"))


def test_a_teacher_with_another_vocabulary_is_refused_before_anything_is_written(tmp_path: Path, base_model_path) -> None:
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for f in base_model_path.iterdir():
        (teacher / f.name).symlink_to(f)
    (teacher / "tokenizer.json").unlink()
    tok = json.loads((base_model_path / "tokenizer.json").read_text())
    tok["added_tokens"].append({**tok["added_tokens"][-1], "id": max(tok["model"]["vocab"].values()) + 1,
                                "content": "<|lorafleet_extra|>"})
    (teacher / "tokenizer.json").write_text(json.dumps(tok))
    data = write_jsonl(tmp_path / "d.jsonl", style_records(4))
    out_dir = tmp_path / "run"
    line = _error("train", "sft", "--data", str(data), "--output", str(out_dir), "--teacher", str(teacher))
    assert line.startswith(f"error: teacher {teacher} has another vocabulary than the model"), line
    assert not out_dir.exists()
