"""``lorafleet train dpo``: direct preference optimization of a LoRA / QLoRA adapter.

The reference policy is the same model with the trained adapter disabled (a fresh run: the base) or switched
to a frozen copy of ``--init-adapter`` (continuing an SFT adapter), so no second model sits in memory. The
reference never changes, so its reply log-probs are computed once before training (TRL's
``precompute_ref_log_probs``) and a step costs one policy forward and backward.

TRL's ``DPOTrainer`` is not used: its evaluation loop calls ``model.eval()`` under ``no_grad``, which on CPU
repacks QLoRA's 4-bit weights and silently breaks the training after it (``train.methods.qlora``), and sharing
``train.loop`` with SFT gives DPO the same exact resume, progress bar and report. The loss is TRL's sigmoid
loss (``train.losses.dpo_sigmoid_loss``, checked against TRL's formula in ``tests/train/test_losses.py``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from lorafleet.config.train import DpoConfig
from train.batching import Batch, collate, epoch_batches, in_order_batches
from train.data import read_pairs
from train.encode import Encoded, EncodedPair, pad_token_id
from train.forward import decoder_and_head, hidden_and_targets, inference, target_logprobs
from train.losses import dpo_sigmoid_loss, head_kl, head_logprobs, per_row_sum, reward_accuracy
from train.loop import fit
from train.memory import read_peak, reset_peak
from train.methods import REFERENCE, TRAINED, add_reference_adapter
from train.session import build_model, finish, load_data, open_session, start_run


@dataclass(frozen=True, slots=True)
class PairBatch:
    """``P`` pairs as ``2P`` rows: chosen replies first, then rejected; ``ref_logps`` [2P] in the same order."""

    tensors: Batch
    ref_logps: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return self.ref_logps.shape[0] // 2

    @property
    def num_tokens(self) -> int:
        return self.tensors.num_tokens

    @property
    def weight(self) -> int:
        return self.num_pairs


@contextlib.contextmanager
def reference_policy(model: Any, has_reference_adapter: bool) -> Iterator[None]:
    """Run the model as the frozen reference inside the block (no gradients, no dropout)."""
    with inference(model):
        if has_reference_adapter:
            model.set_adapter(REFERENCE)
            try:
                yield
            finally:
                model.set_adapter(TRAINED)
        else:
            with model.disable_adapter():
                yield


def sequence_logps(model: Any, batch: Batch) -> torch.Tensor:
    """Summed reply log-probs of every row [rows]."""
    logps, rows = target_logprobs(model, batch)
    return per_row_sum(logps, rows, batch.input_ids.shape[0])


class DpoTask:
    """Pair micro-batches with precomputed reference log-probs, the DPO loss and the reward metrics."""

    def __init__(self, model: Any, train: list[EncodedPair], val: list[EncodedPair], cfg: DpoConfig, pad_id: int,
                 has_reference_adapter: bool) -> None:
        self.cfg, self.pad_id, self.has_ref = cfg, pad_id, has_reference_adapter
        self.train, self.val = _flatten(train), _flatten(val)
        self.num_batches = math.ceil(len(train) / cfg.batch_size)
        self._epoch: tuple[int, list[list[list[int]]]] | None = None
        self.train_ref = self._reference_logps(model, self.train)
        self.val_batches = [self._batch(self.val, b, self._reference_logps(model, self.val))
                            for b in in_order_batches([[i] for i in range(len(val))], cfg.batch_size)]

    def batch(self, epoch: int, index: int) -> PairBatch:
        if self._epoch is None or self._epoch[0] != epoch:
            pairs = [[i] for i in range(len(self.train) // 2)]
            self._epoch = (epoch, epoch_batches(pairs, self.cfg.batch_size, self.cfg.seed, epoch))
        return self._batch(self.train, self._epoch[1][index], self.train_ref)

    def loss_sum(self, model: Any, batch: PairBatch) -> torch.Tensor:
        policy = sequence_logps(model, batch.tensors).chunk(2)
        loss, _, _ = dpo_sigmoid_loss(*policy, *batch.ref_logps.to(policy[0].device).chunk(2), beta=self.cfg.beta)
        return loss.sum()

    def evaluate(self, model: Any) -> dict[str, float]:
        """Held-out DPO loss, reward accuracy and margin, and the per-token KL to the reference on the replies."""
        if not self.val_batches:
            return {}
        losses, chosen, rejected, kls = [], [], [], []
        _, head = decoder_and_head(model)
        for b in self.val_batches:
            with inference(model):
                h_policy, targets, rows = hidden_and_targets(model, b.tensors)
                policy = per_row_sum(head_logprobs(h_policy, head, targets), rows, 2 * b.num_pairs).chunk(2)
            with reference_policy(model, self.has_ref):
                h_ref, _, _ = hidden_and_targets(model, b.tensors)
            loss, c, r = dpo_sigmoid_loss(*policy, *b.ref_logps.to(policy[0].device).chunk(2), beta=self.cfg.beta)
            losses.append(loss), chosen.append(c), rejected.append(r), kls.append(head_kl(h_policy, h_ref, head))
        c, r = torch.cat(chosen).cpu(), torch.cat(rejected).cpu()
        return {"val_loss": float(torch.cat(losses).mean()), "reward_accuracy": reward_accuracy(c, r),
                "reward_margin": float((c - r).mean()), "kl_to_ref": float(torch.cat(kls).mean())}

    def _batch(self, flat: list[Encoded], pair_rows: list[list[int]], ref: torch.Tensor) -> PairBatch:
        pairs = [row[0] for row in pair_rows]
        rows = [[2 * p] for p in pairs] + [[2 * p + 1] for p in pairs]
        ref_logps = torch.cat([ref[[2 * p for p in pairs]], ref[[2 * p + 1 for p in pairs]]])
        return PairBatch(collate(flat, rows, self.pad_id), ref_logps)

    def _reference_logps(self, model: Any, flat: list[Encoded]) -> torch.Tensor:
        """Summed reply log-probs of every sequence under the reference, in ``flat`` order [2 * pairs]."""
        out = []
        with reference_policy(model, self.has_ref):
            for rows in in_order_batches([[i] for i in range(len(flat))], 2 * self.cfg.batch_size):
                out.append(sequence_logps(model, collate(flat, rows, self.pad_id)))
        return torch.cat(out).cpu() if out else torch.zeros(0)


def _flatten(pairs: list[EncodedPair]) -> list[Encoded]:
    return [e for p in pairs for e in (p.chosen, p.rejected)]


def run(cfg: DpoConfig) -> dict[str, Any]:
    """Train per ``cfg`` and write the run directory; returns the report (with the reward metrics)."""
    session = open_session(cfg)
    train, val, data = load_data(session, read_pairs, "pairs")
    start_run(session)
    model = build_model(session)
    if cfg.init_adapter is not None:
        add_reference_adapter(model, cfg.init_adapter)
    session.console.print("computing reference log-probs")
    task = DpoTask(model, train, val, cfg, pad_token_id(session.tokenizer), cfg.init_adapter is not None)
    reset_peak(session.device)
    state = fit(model, task, cfg, session.run_dir, session.console)
    first, last = state.val_curve[0], state.val_curve[-1]
    extra = {k: last.get(k) for k in ("reward_accuracy", "reward_margin", "kl_to_ref")}
    extra.update({f"initial_{k}": first.get(k) for k in ("reward_accuracy", "reward_margin", "kl_to_ref")})
    return finish(session, model, "dpo", state, read_peak(session.device), data, {"beta": cfg.beta, **extra})
