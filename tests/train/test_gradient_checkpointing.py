"""--gradient-checkpointing recomputes activations in the backward pass: the LoRA gradients must be the same
as without it (the recompute is deterministic), for LoRA and for DoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorafleet.config.train import SftConfig
from train.batching import collate
from train.data import Sample
from train.encode import encode_sample
from train.forward import target_logprobs
from train.methods import build_model

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_same_gradients_with_and_without_checkpointing(base_model_path: Path, tokenizer, method: str) -> None:
    samples = [encode_sample(tokenizer, Sample(1, ({"role": "user", "content": "Name a color."},), "Blue."), 64)]
    batch = collate(samples, [[0]], tokenizer.eos_token_id)
    grads = []
    for checkpointing in (False, True):
        cfg = SftConfig(data=Path("d"), output=Path("o"), method=method, rank=8, dropout=0.0,
                        gradient_checkpointing=checkpointing)
        torch.manual_seed(0)
        model = build_model(cfg, base_model_path, torch.device("cpu"), torch.bfloat16)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.01)  # B = 0 would leave A without gradient
        (-target_logprobs(model, batch)[0].sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert all(grads[0][n].abs().sum() > 0 for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-4, msg=n)
