"""``lorafleet train sft``: supervised fine-tuning of a LoRA / QLoRA / DoRA adapter, loss on reply tokens only.

The loss is the cross-entropy of the reply tokens, or with ``--teacher`` the KL divergence from a teacher
model's next-token distribution at the same positions (distillation; ``optimize prune`` heals with it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lorafleet.config.train import SftConfig
from lorafleet.errors import ConfigError
from lorafleet.loading import load_tokenizer, resolve_model
from train.batching import Batch, collate, epoch_batches, in_order_batches, plan_rows
from train.data import read_samples
from train.encode import Encoded, pad_token_id
from train.forward import decoder_and_head, hidden_and_targets, inference, target_logprobs
from train.losses import head_distill_kl
from train.loop import fit
from train.memory import read_peak, reset_peak
from train.session import build_model, finish, load_data, open_session, start_run


@dataclass(frozen=True, slots=True)
class SftBatch:
    """A collated micro-batch; the loss is normalized by its target tokens."""

    tensors: Batch

    @property
    def num_tokens(self) -> int:
        return self.tensors.num_tokens

    @property
    def weight(self) -> int:
        return self.tensors.num_targets


class SftTask:
    """Micro-batches of encoded samples (packed or not) and the token-level loss on their replies: cross-entropy,
    or KL(teacher ‖ student) when a ``teacher`` model is given. Validation is cross-entropy either way."""

    def __init__(self, train: list[Encoded], val: list[Encoded], cfg: SftConfig, pad_id: int,
                 teacher: Any | None = None) -> None:
        self.train, self.val, self.cfg, self.pad_id, self.teacher = train, val, cfg, pad_id, teacher
        self.rows = plan_rows([len(e.input_ids) for e in train], cfg.max_seq_len, cfg.packing)
        self.rows_per_batch = rows_per_batch(len(train), len(self.rows), cfg.batch_size)
        self.num_batches = math.ceil(len(self.rows) / self.rows_per_batch)
        self._epoch: tuple[int, list[list[list[int]]]] | None = None
        val_rows = plan_rows([len(e.input_ids) for e in val], cfg.max_seq_len, cfg.packing)
        self.val_batches = [collate(val, b, pad_id) for b in in_order_batches(val_rows, cfg.batch_size)]

    def batch(self, epoch: int, index: int) -> SftBatch:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, epoch_batches(self.rows, self.rows_per_batch, self.cfg.seed, epoch))
        return SftBatch(collate(self.train, self._epoch[1][index], self.pad_id))

    def loss_sum(self, model: Any, batch: SftBatch) -> torch.Tensor:
        if self.teacher is None:
            logps, _ = target_logprobs(model, batch.tensors)
            return -logps.sum()
        hidden, _, _ = hidden_and_targets(model, batch.tensors)
        with torch.no_grad():
            teacher_hidden, _, _ = hidden_and_targets(self.teacher, batch.tensors)
        return head_distill_kl(hidden, decoder_and_head(model)[1], teacher_hidden, decoder_and_head(self.teacher)[1]).sum()

    def evaluate(self, model: Any) -> dict[str, float]:
        """Token-weighted mean cross-entropy over every validation reply token."""
        if not self.val_batches:
            return {}
        total, count = 0.0, 0
        with inference(model):
            for b in self.val_batches:
                logps, _ = target_logprobs(model, b)
                total, count = total - float(logps.sum()), count + logps.numel()
        return {"val_loss": total / max(count, 1)}


def rows_per_batch(num_samples: int, num_rows: int, batch_size: int) -> int:
    """Rows per micro-batch so that one holds about ``batch_size`` samples, packed or not.

    Packing then changes how fast an epoch goes, not how many optimizer steps it makes, so learning rate and
    schedule carry over when --packing is switched on.
    """
    return max(1, round(batch_size * num_rows / num_samples))


def load_teacher(cfg: SftConfig, session: Any) -> Any | None:
    """The frozen ``--teacher`` model in the run's dtype and device, or ``None``; its tokenizer must be the model's."""
    if cfg.teacher is None:
        return None
    from transformers import AutoModelForCausalLM

    path = resolve_model(cfg.teacher)
    if load_tokenizer(path).get_vocab() != session.tokenizer.get_vocab():
        raise ConfigError(f"teacher {path} has another vocabulary than the model {session.model_dir}; distillation "
                          "compares next-token distributions, so both must share one tokenizer")
    session.console.print(f"distilling from {path}")
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=session.dtype)
    return teacher.to(session.device).eval().requires_grad_(False)


def run(cfg: SftConfig) -> dict[str, Any]:
    """Train per ``cfg`` and write the run directory; returns the report."""
    session = open_session(cfg)
    teacher = load_teacher(cfg, session)
    train, val, data = load_data(session, read_samples, "samples")
    start_run(session)
    model = build_model(session)
    task = SftTask(train, val, cfg, pad_token_id(session.tokenizer), teacher)
    reset_peak(session.device)
    state = fit(model, task, cfg, session.run_dir, session.console)
    # with a teacher, train_loss is the KL in nats per reply token; val_loss stays cross-entropy
    extra = {"loss": "distill", "teacher": teacher.name_or_path} if teacher is not None else {}
    return finish(session, model, "sft", state, read_peak(session.device), data, extra)
