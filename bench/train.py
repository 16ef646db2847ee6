"""``lorafleet bench train``: our SFT path vs a plain HF ``Trainer`` + PEFT baseline, same data, one run.

The data: generated chat samples whose replies (a fixed lead-in, then counting, multiples or repeated words:
learnable, so the validation loss means something) are spread evenly between ``--min-tokens`` and
``--max-tokens`` long; ``--num-val`` more samples from the same generator are held out (64 by default: on 5% of
128, 7 samples, batch composition moved the comparison more than precision did). *Ours* is
``lorafleet train sft --packing`` with every other setting at its default, run as a subprocess (stages do not
import each other). The *baseline* is what a user writes first: the checkpoint in float32, PEFT LoRA with the
same rank, alpha, dropout, targets, learning rate, schedule, batch size and epochs, HF ``Trainer`` with
``DataCollatorForSeq2Seq`` padding each batch to its longest sample.

``tokens_per_s``: non-padding tokens trained per second of training (model loading and evaluation excluded).
``val_loss``: token-weighted cross-entropy on the held-out replies, computed the same way for both: each
adapter on the float32 base, one sample at a time (``ours.report_val_loss`` is what our run measured in its own
compute dtype).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.sysinfo import cpu_info, versions
from lorafleet.atomic import write_json
from lorafleet.chat import chat_token_ids, render_chat
from lorafleet.config.train import SftConfig, TrainBenchConfig
from lorafleet.errors import BackendError
from lorafleet.loading import load_tokenizer, resolve_model

IGNORE = -100
TARGET_SPEEDUP = 1.3
_WORDS = ("apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano", "orbit", "candle")


def make_records(num_samples: int, min_tokens: int, max_tokens: int, seed: int) -> list[dict]:
    """Chat samples with reply lengths spread evenly over [min_tokens, max_tokens] (about 2 tokens per item)."""
    r = random.Random(seed)
    records = []
    for i in range(num_samples):
        n = max(1, round((min_tokens + (max_tokens - min_tokens) * i / max(1, num_samples - 1)) / 2))
        kind = r.randrange(3)
        if kind == 0:
            start = r.randint(1, 500)
            q, a = f"Count from {start} to {start + n - 1}.", ", ".join(str(start + k) for k in range(n)) + "."
        elif kind == 1:
            k = r.randint(2, 9)
            q, a = f"List the first {n} multiples of {k}.", ", ".join(str(k * (j + 1)) for j in range(n)) + "."
        else:
            w = r.choice(_WORDS)
            q, a = f"Repeat the word {w} {n} times.", " ".join([w] * n)
        # The lead-in is a habit the base model lacks, so the validation loss has something to learn.
        records.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"Done: {a}"}]})
    r.shuffle(records)
    return records


def run(cfg: TrainBenchConfig) -> dict[str, Any]:
    """Run both, print a summary and write ``cfg.json_path``. Returns the results."""
    model_dir = resolve_model(cfg.model)
    records = make_records(cfg.num_samples + cfg.num_val, cfg.min_tokens, cfg.max_tokens, cfg.seed)
    train, val = records[cfg.num_val:], records[:cfg.num_val]
    with tempfile.TemporaryDirectory(prefix="lorafleet-bench-train-") as tmp:
        work = Path(tmp)
        for name, rows in (("train", train), ("val", val)):
            (work / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        load = {"before_ours": os.getloadavg()[0]}
        ours = _ours(cfg, model_dir, work)
        load["before_baseline"] = os.getloadavg()[0]
        baseline = _baseline(cfg, model_dir, train, val, work)
        load["after_baseline"] = os.getloadavg()[0]
        tokenizer = load_tokenizer(model_dir)
        ours_val, untrained_val = _adapter_val_loss(model_dir, work / "ours" / "adapter", tokenizer, val)
    lengths = [len(_encode(tokenizer, r)[0]) for r in train]
    results = {
        "tokens_per_s": {"ours": ours["tokens_per_s"], "baseline": baseline["tokens_per_s"]},
        "speedup": ours["tokens_per_s"] / baseline["tokens_per_s"],
        "val_loss": {"ours": ours_val, "baseline": baseline["val_loss"]},
        "initial_val_loss": untrained_val,
        # share of the baseline's val-loss reduction that ours achieves (1.0: the same loss)
        "val_loss_reduction_vs_baseline": _share(untrained_val - ours_val, untrained_val - baseline["val_loss"]),
        "target": {"speedup_min": TARGET_SPEEDUP, "met": ours["tokens_per_s"] >= TARGET_SPEEDUP * baseline["tokens_per_s"]},
        "data": {"num_train": len(train), "num_val": len(val), "tokens_min": min(lengths), "tokens_max": max(lengths),
                 "tokens_mean": sum(lengths) / len(lengths), "epochs": cfg.epochs},
        "ours": {k: ours[k] for k in ("dtype", "steps", "train_time_s", "peak_memory_bytes")}
        | {"flags": ours["flags"], "report_val_loss": ours["val_loss"], "report_initial_val_loss": ours["initial_val_loss"]},
        "baseline": baseline,
        "settings": _shared_settings(cfg),
        "system": {"cpu": cpu_info(), "load_avg_1min": load,
                   "versions": versions("torch", "transformers", "peft", "bitsandbytes")},
    }
    write_json(cfg.json_path, results)
    print(f"tokens/s  ours {results['tokens_per_s']['ours']:.0f}  baseline {results['tokens_per_s']['baseline']:.0f}  "
          f"speedup {results['speedup']:.2f}x (target {TARGET_SPEEDUP}x: {'met' if results['target']['met'] else 'NOT met'})")
    print(f"val_loss  ours {results['val_loss']['ours']:.4f}  baseline {results['val_loss']['baseline']:.4f}  "
          f"(untrained {results['initial_val_loss']:.4f}; ours removes {results['val_loss_reduction_vs_baseline']} "
          f"of the baseline's reduction)")
    return results


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


def _shared_settings(cfg: TrainBenchConfig) -> dict[str, Any]:
    """The settings both runs use: our SFT defaults plus the bench's batch size, epochs and seed."""
    d = {f: SftConfig.__dataclass_fields__[f].default for f in ("rank", "alpha", "dropout", "lr", "schedule", "warmup_ratio")}
    return {**d, "target_modules": "all-linear", "batch_size": cfg.batch_size, "epochs": cfg.epochs, "seed": cfg.seed}


def _ours(cfg: TrainBenchConfig, model_dir: Path, work: Path) -> dict[str, Any]:
    flags = ["--packing", "--batch-size", str(cfg.batch_size), "--epochs", str(cfg.epochs), "--seed", str(cfg.seed),
             "--save-every", "0"]
    if cfg.num_threads:
        flags += ["--num-threads", str(cfg.num_threads)]
    cmd = [str(Path(sys.executable).with_name("lorafleet")), "train", "sft", "--model", str(model_dir),
           "--data", str(work / "train.jsonl"), "--val-data", str(work / "val.jsonl"), "--output", str(work / "ours"), *flags]
    print("ours: lorafleet train sft " + " ".join(flags), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise BackendError(f"lorafleet train sft failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    report = json.loads((work / "ours" / "report.json").read_text())
    return {**report, "flags": flags}


def _encode(tokenizer: Any, record: dict) -> tuple[list[int], list[int]]:
    """input_ids and labels (prompt masked), the usual recipe: prompt with generation prompt, then the reply."""
    messages = record["messages"]
    prompt_ids = chat_token_ids(tokenizer, messages[:-1])
    prompt = render_chat(tokenizer, messages[:-1])
    reply = render_chat(tokenizer, messages, add_generation_prompt=False)[len(prompt):].rstrip()
    reply_ids = tokenizer(reply, add_special_tokens=False).input_ids
    return prompt_ids + reply_ids, [IGNORE] * len(prompt_ids) + reply_ids


def _baseline(cfg: TrainBenchConfig, model_dir: Path, train: list[dict], val: list[dict], work: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    s = _shared_settings(cfg)
    tokenizer = load_tokenizer(model_dir)
    rows = [dict(zip(("input_ids", "labels"), _encode(tokenizer, r))) for r in train]
    for row in rows:
        row["attention_mask"] = [1] * len(row["input_ids"])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=s["rank"], lora_alpha=s["alpha"], lora_dropout=s["dropout"],
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=str(work / "baseline"), per_device_train_batch_size=s["batch_size"],
                             num_train_epochs=s["epochs"], learning_rate=s["lr"], lr_scheduler_type=s["schedule"],
                             warmup_steps=s["warmup_ratio"], save_strategy="no", report_to=[], seed=s["seed"],
                             logging_steps=10, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE))
    print("baseline: HF Trainer + PEFT, float32, padded batches", flush=True)
    t0 = time.perf_counter()
    metrics = trainer.train().metrics
    wall = time.perf_counter() - t0
    num_tokens = sum(len(r["input_ids"]) for r in rows) * s["epochs"]
    return {"tokens_per_s": num_tokens / metrics["train_runtime"], "val_loss": _val_loss(model, tokenizer, val),
            "train_time_s": metrics["train_runtime"], "wall_s": wall, "steps": trainer.state.global_step,
            "dtype": "float32"}


def _adapter_val_loss(model_dir: Path, adapter: Path, tokenizer: Any, val: list[dict]) -> tuple[float, float]:
    """(with ``adapter``, without it): validation loss of our adapter on the float32 base, computed exactly as
    the baseline's, so the comparison is of training and not of evaluation precision."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), adapter)
    with model.disable_adapter():
        untrained = _val_loss(model, tokenizer, val)
    return _val_loss(model, tokenizer, val), untrained


def _val_loss(model: Any, tokenizer: Any, val: list[dict]) -> float:
    """Token-weighted cross-entropy over every held-out reply token (one sample at a time, no padding)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for record in val:
            ids, labels = _encode(tokenizer, record)
            device = next(model.parameters()).device
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1].float()
            targets = torch.tensor(labels[1:], device=device)
            total += float(torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum"))
            count += int((targets != IGNORE).sum())
    return total / count
