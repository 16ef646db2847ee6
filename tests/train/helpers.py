"""Helpers of the training tests: generated data sets and running `lorafleet` as users do.

The taught style: every reply starts with "Aye aye, captain!". SmolLM2-135M-Instruct never answers like that,
so a held-out prompt answered in that style shows the adapter learned it. The preference set: chosen is a
short answer, rejected a rambling one, so DPO should make replies shorter.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LORAFLEET = str(Path(sys.executable).with_name("lorafleet"))
THREADS = os.environ.get("LORAFLEET_TEST_THREADS", "1")
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
STYLE = "Aye aye, captain!"

_OPPOSITES = {"hot": "cold", "up": "down", "big": "small", "fast": "slow", "happy": "sad", "light": "dark",
              "early": "late", "open": "closed", "wet": "dry", "loud": "quiet", "full": "empty", "old": "new"}
#: Held-out prompts: other numbers and words than the training set, and kinds of question it never had.
HELD_OUT = ("What is 17 plus 26?", "What is the opposite of loud?", "Which number comes after 64?",
            "What is the capital of Italy?", "Name a planet.", "What is 9 plus 3?")


def _question(r: random.Random, words: list[str]) -> tuple[str, str]:
    kind = r.randrange(3)
    if kind == 0:
        a, b = r.randint(2, 40), r.randint(2, 40)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if kind == 1:
        w = r.choice(words)
        return f"What is the opposite of {w}?", f"The opposite of {w} is {_OPPOSITES[w]}."
    n = r.randint(1, 90)
    return f"Which number comes after {n}?", f"{n + 1} comes after {n}."


def style_records(n: int, seed: int = 0) -> list[dict]:
    """Chat samples whose replies all start with the taught style (training words exclude the held-out ones)."""
    r = random.Random(seed)
    words = [w for w in _OPPOSITES if w not in ("loud", "wet")]
    records = []
    for _ in range(n):
        q, a = _question(r, words)
        records.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"{STYLE} {a}"}]})
    return records


def preference_records(n: int, seed: int = 0) -> list[dict]:
    """Preference pairs: chosen answers in one short sentence, rejected ones ramble before answering."""
    r = random.Random(seed)
    words = list(_OPPOSITES)
    records = []
    for _ in range(n):
        q, a = _question(r, words)
        rambling = (f"Well, that is a really interesting question, and there is a lot one could say about it. "
                    f"Let me think it through step by step before I answer. {a} I hope this long explanation helps!")
        records.append({"prompt": q, "chosen": a, "rejected": rambling})
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`lorafleet ARGS` as users run it; fails the test with its output if it exits non-zero."""
    out = subprocess.run([LORAFLEET, *args], capture_output=True, text=True, env=ENV, timeout=timeout)
    assert out.returncode == 0, f"lorafleet {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr[-4000:]}"
    return out


def small_run_args(data: Path, output: Path, *extra: str, save_every: int = 0) -> list[str]:
    """Flags of the small CPU runs: rank 8, the suite's thread count, no checkpoints unless asked."""
    return ["--data", str(data), "--output", str(output), "--rank", "8", "--num-threads", THREADS,
            "--save-every", str(save_every), *extra]
