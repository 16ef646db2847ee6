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


#: One-sentence facts: the chosen (concise) replies of the preference set.
FACTS = {
    "cats": "Cats are small, independent pets that love to nap.", "dogs": "Dogs are loyal pets that love walks.",
    "the moon": "The Moon is Earth's only natural satellite.", "rain": "Rain is water falling from clouds.",
    "bread": "Bread is baked from flour, water and yeast.", "music": "Music is sound arranged in time.",
    "trees": "Trees are tall plants with woody trunks.", "the ocean": "The ocean covers most of Earth's surface.",
    "snow": "Snow is frozen water falling as flakes.", "coffee": "Coffee is a drink brewed from roasted beans.",
    "volcanoes": "Volcanoes are openings where molten rock erupts.", "bees": "Bees are insects that make honey.",
    "the sun": "The Sun is the star at the center of our solar system.",
    "chess": "Chess is a strategy game played on a checkered board.",
    "bicycles": "Bicycles are two-wheeled vehicles moved by pedals.", "rivers": "Rivers are flowing bodies of fresh water.",
    "apples": "Apples are crunchy fruits that grow on trees.", "clouds": "Clouds are tiny water droplets in the sky.",
    "libraries": "Libraries are places that lend books.", "mountains": "Mountains are high, steep landforms.",
}
ASKS = ("Tell me about {}.", "What do you know about {}?", "Explain {}.")
#: Held-out open questions for the DPO test: topics the preference set never mentions.
HELD_OUT_OPEN = ("Tell me about owls.", "Explain gravity.", "What do you know about pianos?", "Tell me about deserts.",
                 "Explain photosynthesis.", "What do you know about trains?")


def preference_prompts() -> list[tuple[str, str]]:
    """(prompt, concise reply) for every topic and phrasing: 60 open questions the base answers at length."""
    return [(ask.format(topic), fact) for topic, fact in FACTS.items() for ask in ASKS]


def preference_records(prompts: list[tuple[str, str]], rejected: list[str]) -> list[dict]:
    """Preference pairs: the concise reply is chosen over ``rejected`` (the base model's own long answer, so
    DPO moves the model away from what it actually generates)."""
    return [{"prompt": q, "chosen": a, "rejected": r} for (q, a), r in zip(prompts, rejected)]


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
