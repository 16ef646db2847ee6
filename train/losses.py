"""Loss math: log-probabilities and distillation KL through a frozen LM head, the DPO sigmoid loss and its reward metrics.

Pure tensor functions: no model, no I/O. Shapes: N = labelled positions of a batch, H = hidden size,
V = vocabulary, P = preference pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Positions per chunk of the LM head: bounds the [chunk, V] logits held at once (~200 MB at V=49k, fp32).
HEAD_CHUNK = 1024


class _FrozenHead(torch.autograd.Function):
    """A per-position value of the logits ``h W^T + b`` of a head that is not trained, in chunks of positions.

    ``chunk_fn(start, logits, need_grad)`` turns one chunk's fp32 logits [c, V] into its values [c] and, when
    asked, their gradient with respect to those logits [c, V] (else ``None``). The gradient with respect to
    ``h`` is that times ``W``, computed in the forward pass chunk by chunk: only that [N, H] tensor is kept for
    backward instead of the [N, V] logits and their softmax.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, chunk_fn):  # type: ignore[override]
        need_grad = ctx.needs_input_grad[0]
        values = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        for s in range(0, hidden.shape[0], HEAD_CHUNK):
            logits = F.linear(hidden[s:s + HEAD_CHUNK].to(weight.dtype), weight, bias).float()  # [c, V]
            values[s:s + HEAD_CHUNK], d_logits = chunk_fn(s, logits, need_grad)
            if need_grad:
                grad_hidden[s:s + HEAD_CHUNK] = (d_logits.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad_hidden)
        return values

    @staticmethod
    def backward(ctx, grad_values):  # type: ignore[override]
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_values[:, None].to(grad_hidden.dtype), None, None, None


def _is_trained(head: torch.nn.Linear) -> bool:
    return head.weight.requires_grad or (head.bias is not None and head.bias.requires_grad)


def head_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for each position: ``hidden`` [N, H], ``targets`` [N] -> [N] float32.

    Uses the chunked frozen-head path when the head has no trainable weights, plain autograd otherwise.
    """
    if _is_trained(head):
        return torch.log_softmax(head(hidden).float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)

    def chunk(start: int, logits: torch.Tensor, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = targets[start:start + len(logits)]
        lse = torch.logsumexp(logits, dim=-1)
        logps = logits.gather(-1, t[:, None]).squeeze(-1) - lse
        if not need_grad:
            return logps, None
        d_logits = torch.exp(logits - lse[:, None]).neg_()  # d logp / d logits = onehot - softmax
        d_logits[torch.arange(len(t), device=t.device), t] += 1
        return logps, d_logits

    return _FrozenHead.apply(hidden, head.weight, head.bias, chunk)


def head_distill_kl(hidden: torch.Tensor, head: torch.nn.Linear, teacher_hidden: torch.Tensor,
                    teacher_head: torch.nn.Linear) -> torch.Tensor:
    """Per-position KL(teacher ‖ student) in nats, [N] float32: ``hidden`` [N, H] through the (frozen) student
    ``head`` against ``teacher_hidden`` [N, H'] through ``teacher_head``; gradients reach ``hidden`` only.

    With ``p`` the teacher's and ``q`` the student's softmax, KL = Σ p (log p − log q), and its gradient with
    respect to the student logits is ``q − p``.
    """
    if _is_trained(head):
        raise ValueError("distillation needs a frozen student LM head")
    return _kl_chunks(hidden, head, teacher_hidden, teacher_head)


def _kl_chunks(hidden: torch.Tensor, head: torch.nn.Linear, teacher_hidden: torch.Tensor,
               teacher_head: torch.nn.Linear) -> torch.Tensor:
    def chunk(start: int, logits: torch.Tensor, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        log_q = torch.log_softmax(logits, dim=-1)
        with torch.no_grad():
            teacher_logits = teacher_head(teacher_hidden[start:start + len(logits)].to(teacher_head.weight.dtype))
        log_p = torch.log_softmax(teacher_logits.float(), dim=-1)
        p = log_p.exp()
        return (p * (log_p - log_q)).sum(-1), (log_q.exp_() - p) if need_grad else None

    return _FrozenHead.apply(hidden, head.weight, head.bias, chunk)


def head_kl(h_policy: torch.Tensor, h_ref: torch.Tensor, head: torch.nn.Linear) -> torch.Tensor:
    """Per-position KL(policy || reference) over the whole vocabulary, in nats: [N, H] x2 -> [N] (no grad).
    The distillation KL with the policy as teacher and the reference as student."""
    with torch.no_grad():
        return _kl_chunks(h_ref, head, h_policy, head)


def per_row_sum(values: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Sum ``values`` [N] into ``num_rows`` buckets by ``rows`` [N] (row index of each position) -> [num_rows]."""
    return torch.zeros(num_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)


def dpo_sigmoid_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                     ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023), TRL's ``loss_type="sigmoid"``: all inputs are summed reply log-probs [P].

    Returns (per-pair loss [P], chosen rewards [P], rejected rewards [P]); a reward is
    ``beta * (log pi(y|x) - log pi_ref(y|x))`` and the loss is ``-log sigmoid(chosen - rejected reward)``.
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards.detach(), rejected_rewards.detach()


def reward_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> float:
    """Share of pairs whose chosen reward is above the rejected one; a tie counts half (untrained: 0.5)."""
    wins = (chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()
    return float(wins.mean()) if wins.numel() else float("nan")
