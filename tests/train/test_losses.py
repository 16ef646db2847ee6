"""train/losses.py and train/schedule.py: the chunked frozen-head log-probs and their gradient, the DPO loss
against TRL's DPOTrainer formula, reward accuracy, and the learning-rate schedules against HF's."""

from __future__ import annotations

import math

import pytest
import torch

from train import losses
from train.losses import dpo_sigmoid_loss, head_distill_kl, head_kl, head_logprobs, per_row_sum, reward_accuracy
from train.schedule import lr_factor, warmup_steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frozen_head_logprobs_and_gradient_match_autograd(monkeypatch, dtype) -> None:
    monkeypatch.setattr(losses, "HEAD_CHUNK", 7)  # several chunks, the last one partial
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True).to(dtype).requires_grad_(False)
    hidden = torch.randn(23, 16, generator=gen).to(dtype).requires_grad_(True)
    targets = torch.randint(0, 50, (23,), generator=gen)
    upstream = torch.randn(23, generator=gen)
    ours = head_logprobs(hidden, head, targets)
    (ours * upstream).sum().backward()
    ours_grad, hidden.grad = hidden.grad.clone(), None
    ref = torch.log_softmax(head(hidden).float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    (ref * upstream).sum().backward()
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(ours, ref, **tol)
    torch.testing.assert_close(ours_grad.float(), hidden.grad.float(), **tol)
    assert ours.dtype == torch.float32


def test_trainable_head_falls_back_to_autograd() -> None:
    head = torch.nn.Linear(8, 20)
    hidden = torch.randn(5, 8)
    logps = head_logprobs(hidden, head, torch.arange(5))
    logps.sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_distill_kl_and_gradient_match_autograd(monkeypatch) -> None:
    monkeypatch.setattr(losses, "HEAD_CHUNK", 7)  # several chunks, the last one partial
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True).requires_grad_(False)
    teacher_head = torch.nn.Linear(12, 50, bias=False).requires_grad_(False)  # another width, same vocabulary
    hidden = torch.randn(23, 16, generator=gen).requires_grad_(True)
    teacher_hidden = torch.randn(23, 12, generator=gen)
    upstream = torch.randn(23, generator=gen)
    ours = head_distill_kl(hidden, head, teacher_hidden, teacher_head)
    (ours * upstream).sum().backward()
    ours_grad, hidden.grad = hidden.grad.clone(), None
    log_p = torch.log_softmax(teacher_head(teacher_hidden), -1)
    ref = torch.nn.functional.kl_div(torch.log_softmax(head(hidden), -1), log_p, log_target=True,
                                     reduction="none").sum(-1)
    (ref * upstream).sum().backward()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_grad, hidden.grad, atol=1e-5, rtol=1e-5)
    assert (ours > 0).all()
    same = head_distill_kl(teacher_hidden, teacher_head, teacher_hidden, teacher_head)  # a model against itself
    torch.testing.assert_close(same, torch.zeros(23), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="frozen"):
        head_distill_kl(hidden, torch.nn.Linear(16, 50), teacher_hidden, teacher_head)


def test_dpo_kl_to_reference_is_kl_div(monkeypatch) -> None:
    monkeypatch.setattr(losses, "HEAD_CHUNK", 7)
    gen = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(16, 50, bias=False).requires_grad_(False)
    h_policy, h_ref = torch.randn(23, 16, generator=gen), torch.randn(23, 16, generator=gen)
    ref = torch.nn.functional.kl_div(torch.log_softmax(head(h_ref), -1), torch.log_softmax(head(h_policy), -1),
                                     log_target=True, reduction="none").sum(-1)  # KL(policy || reference)
    torch.testing.assert_close(head_kl(h_policy, h_ref, head), ref, atol=1e-5, rtol=1e-5)
    assert head_kl(h_policy[:0], h_ref[:0], head).shape == (0,)


def test_per_row_sum() -> None:
    assert per_row_sum(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 2, 2, 0]), 3).tolist() == [5.0, 0.0, 5.0]


def test_dpo_sigmoid_loss_equals_trl_formula() -> None:
    """TRL DPOTrainer (loss_type="sigmoid", reverse KL): -logsigmoid(beta * (chosen_logratio - rejected_logratio))."""
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-5.0, -2.0, -9.0], [-7.0, -1.0, -9.0], [-6.0, -2.5, -8.0], [-6.5, -1.5, -8.0]))
    loss, c, r = dpo_sigmoid_loss(pc, pr, rc, rr, beta=0.1)
    expected = [-math.log(1 / (1 + math.exp(-0.1 * ((a - b) - (x - y))))) for a, x, b, y in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)
    assert c.tolist() == pytest.approx([0.1, 0.05, -0.1], rel=1e-6)
    assert r.tolist() == pytest.approx([-0.05, 0.05, -0.1], rel=1e-6)
    assert loss[1].item() == pytest.approx(math.log(2))  # equal rewards: loss log 2


def test_reward_accuracy_counts_ties_half() -> None:
    assert reward_accuracy(torch.tensor([1.0, 0.0, 2.0, 0.0]), torch.tensor([0.0, 1.0, 2.0, 0.0])) == 0.5
    assert reward_accuracy(torch.zeros(6), torch.zeros(6)) == 0.5
    assert reward_accuracy(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 1.0])) == 1.0


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedules_match_transformers(schedule: str) -> None:
    from transformers import get_scheduler

    total, num_warmup = 40, warmup_steps(40, 0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    name = {"constant": "constant_with_warmup"}.get(schedule, schedule)
    sched = get_scheduler(name, opt, num_warmup_steps=num_warmup, num_training_steps=total)
    for step in range(total):
        assert lr_factor(step, total, num_warmup, schedule) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9), step
        opt.step()
        sched.step()
