"""lm-evaluation-harness (``lm-eval`` 0.4.13, its own venv) scores a small multiple-choice task, written here to a
local JSONL file, twice: with its ``local-completions`` model against a real fp32 ``lorafleet serve`` (token-id
prompts, ``echo: true``, ``logprobs: 1``, ``max_tokens: 1``) and with its own HF backend on the same checkpoint in
fp32. The accuracy, each document's chosen answer and every choice's loglikelihood must agree. No hub is used."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(900)

TASK = "lorafleet_mc"
TOLERANCE = 1e-3  # absolute, per choice's summed loglikelihood; fp32 on both sides
QUESTIONS = [  # (question, choices, index of the right one)
    ("What is the capital of France?", ["Paris", "Berlin", "Rome", "Madrid"], 0),
    ("What is the capital of Japan?", ["Seoul", "Tokyo", "Beijing", "Bangkok"], 1),
    ("What is the capital of Italy?", ["Milan", "Naples", "Rome", "Venice"], 2),
    ("What is 2 + 2?", ["3", "4", "5", "22"], 1),
    ("What is 3 + 5?", ["8", "7", "9", "35"], 0),
    ("What is 10 - 4?", ["5", "14", "6", "4"], 2),
    ("What is 6 times 7?", ["42", "36", "48", "13"], 0),
    ("How many days are in a week?", ["Five", "Six", "Seven", "Ten"], 2),
    ("How many legs does a spider have?", ["Six", "Eight", "Four", "Ten"], 1),
    ("What color is the sky on a clear day?", ["Green", "Red", "Blue"], 2),
    ("What do bees make?", ["Milk", "Honey", "Silk"], 1),
    ("Which planet is known as the Red Planet?", ["Mars", "Venus", "Jupiter", "Saturn"], 0),
    ("What is the largest ocean on Earth?", ["Atlantic", "Indian", "Arctic", "Pacific"], 3),
    ("What is frozen water called?", ["Steam", "Ice", "Sand"], 1),
    ("Which animal is known as the king of the jungle?", ["Lion", "Mouse", "Cow", "Sheep"], 0),
    ("How many hours are in a day?", ["12", "24", "60", "100"], 1),
    ("What gas do plants take in from the air?", ["Oxygen", "Helium", "Carbon dioxide"], 2),
    ("Who wrote Romeo and Juliet?", ["Charles Dickens", "William Shakespeare", "Mark Twain"], 1),
    ("What is the opposite of hot?", ["Cold", "Warm", "Loud"], 0),
    ("Which is the fastest land animal?", ["Snail", "Turtle", "Cheetah", "Cow"], 2),
]


def write_task(task_dir: Path) -> None:
    """The data file and the task's YAML, for ``--include_path task_dir``."""
    data = task_dir / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    (task_dir / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
""")


def run_lm_eval(lmeval_python: Path, task_dir: Path, out: Path, *model_args: str) -> tuple[float, list[dict]]:
    """``lm_eval MODEL_ARGS --tasks TASK``; returns the accuracy and the logged samples, ordered by doc id."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(task_dir / "datasets-cache"), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(lmeval_python.with_name("lm_eval")), *model_args, "--tasks", TASK, "--include_path", str(task_dir),
           "--log_samples", "--output_path", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, \
        f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    (results,) = out.rglob("results_*.json")
    (samples,) = out.rglob(f"samples_{TASK}_*.jsonl")
    acc = json.loads(results.read_text())["results"][TASK]["acc,none"]
    return acc, sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda s: s["doc_id"])


def choice_loglikelihoods(sample: dict) -> list[float]:
    """Each choice's summed loglikelihood as lm-eval logged it (``filtered_resps``: ``[loglikelihood, is_greedy]``)."""
    return [float(resp[0]) for resp in sample["filtered_resps"]]


def test_local_completions_matches_hf_backend(lmeval_python: Path, server, base_model_path: Path,
                                              tmp_path: Path) -> None:
    write_task(tmp_path)
    hf_acc, hf = run_lm_eval(lmeval_python, tmp_path, tmp_path / "hf", "--model", "hf", "--model_args",
                             f"pretrained={base_model_path},dtype=float32", "--device", "cpu", "--batch_size", "1")
    api_acc, api = run_lm_eval(lmeval_python, tmp_path, tmp_path / "api", "--model", "local-completions",
                               "--model_args",
                               f"model={server.model},base_url={server.base_url}/v1/completions,"
                               f"tokenizer={base_model_path},tokenizer_backend=huggingface,tokenized_requests=True,"
                               "num_concurrent=1,max_retries=1")
    assert [s["doc_id"] for s in hf] == [s["doc_id"] for s in api] == list(range(len(QUESTIONS)))
    diffs = []
    for h, a in zip(hf, api):
        assert h["arguments"] == a["arguments"]  # the same contexts and continuations were scored
        hf_ll, api_ll = choice_loglikelihoods(h), choice_loglikelihoods(a)
        assert len(hf_ll) == len(api_ll) == len(QUESTIONS[h["doc_id"]][1])
        assert hf_ll.index(max(hf_ll)) == api_ll.index(max(api_ll)), (h["doc"], hf_ll, api_ll)
        assert h["acc"] == a["acc"]
        diffs += [abs(x - y) for x, y in zip(hf_ll, api_ll)]
    assert api_acc == hf_acc
    assert max(diffs) < TOLERANCE, max(diffs)
    print(f"\nlm-eval {TASK}: acc hf={hf_acc:.3f} local-completions={api_acc:.3f}; "
          f"{len(diffs)} choice loglikelihoods, largest |difference| {max(diffs):.2e}")
