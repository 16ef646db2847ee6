"""QLoRA on CPU (train/methods/qlora.py): LoRA gradients through the 4-bit NF4 base are non-zero and match a
bfloat16 model holding the dequantized weights; an eval-mode forward (the bitsandbytes repack trap) is caught,
and lorafleet's own validation pass does not trigger it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorafleet.config.train import SftConfig
from lorafleet.errors import ArtifactError
from train.batching import collate
from train.data import Sample
from train.encode import encode_sample
from train.forward import inference, target_logprobs
from train.methods import build_model, lora, qlora

pytestmark = pytest.mark.timeout(300)

QUESTIONS = [("What is 3 plus 4?", "Aye aye, captain! 3 plus 4 is 7."), ("Name a fruit.", "Aye aye, captain! A pear.")]


def _cfg(method: str) -> SftConfig:
    return SftConfig(data=Path("unused"), output=Path("unused"), method=method, rank=8, alpha=16, dropout=0.0)


def _batch(tokenizer):
    samples = [encode_sample(tokenizer, Sample(1, ({"role": "user", "content": q},), a), 128) for q, a in QUESTIONS]
    return collate(samples, [[0], [1]], tokenizer.eos_token_id)


def _lora_grads(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    (-target_logprobs(model, batch)[0].sum()).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def qlora_setup(base_model_path: Path, tokenizer):
    """A QLoRA model with random non-zero LoRA A and B (B = 0 would zero A's gradient), and a bfloat16
    reference: the same architecture with every 4-bit weight replaced by its dequantized value, same adapter."""
    import bitsandbytes.functional as bnbf
    from peft import get_peft_model

    model = _qlora_model(base_model_path)
    ref_base = lora.load_base(base_model_path, torch.bfloat16, torch.device("cpu"))
    q_modules = dict(model.get_base_model().named_modules())
    with torch.no_grad():
        for name, module in ref_base.named_modules():
            q = q_modules.get(name)
            if q is not None and hasattr(q, "base_layer") and type(q.base_layer).__name__ == "Linear4bit":
                w = q.base_layer.weight
                module.weight.copy_(bnbf.dequantize_4bit(w.data, w.quant_state).to(torch.bfloat16))
    reference = get_peft_model(ref_base, lora.peft_config(_cfg("qlora")))
    reference.load_state_dict({n: p for n, p in model.state_dict().items() if "lora_" in n}, strict=False)
    reference.train()
    return model, reference, _batch(tokenizer)


def _qlora_model(base_model_path: Path):
    """The QLoRA model with LoRA A and B drawn at random (seeded), so both have non-zero gradients."""
    torch.manual_seed(0)
    model = build_model(_cfg("qlora"), base_model_path, torch.device("cpu"), torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def _cosines(grads: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity
    return {n: float(cos(grads[n].flatten().float(), ref[n].flatten().float(), dim=0)) for n in ref}


def _assert_match(grads: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    """bfloat16 through 30 layers: measured worst cosine 0.978 and relative error 0.21 (mean 0.09); the
    repacked model's gradients have a median cosine near 0 (see the trap test)."""
    assert grads.keys() == ref.keys() and len(grads) == 2 * 7 * 30  # A and B of 7 projections in 30 layers
    assert all(g.abs().sum() > 0 for g in grads.values())
    cosines = _cosines(grads, ref)
    worst = min(cosines, key=cosines.get)
    assert cosines[worst] > 0.95, f"{worst}: cosine {cosines[worst]:.4f} to the dequantized reference"
    rel = {n: float((grads[n] - ref[n]).norm() / ref[n].norm()) for n in ref}
    assert max(rel.values()) < 0.35 and sum(rel.values()) / len(rel) < 0.15


def test_lora_gradients_through_nf4_match_dequantized_reference(qlora_setup) -> None:
    model, reference, batch = qlora_setup
    assert sum(qlora.is_repacked(m) for m in model.modules()) == 0
    _assert_match(_lora_grads(model, batch), _lora_grads(reference, batch))


def test_validation_pass_does_not_repack(qlora_setup) -> None:
    model, reference, batch = qlora_setup
    with inference(model):
        target_logprobs(model, batch)
    qlora.check_trainable(model)  # raises if any 4-bit layer was repacked
    _assert_match(_lora_grads(model, batch), _lora_grads(reference, batch))


def test_an_eval_mode_forward_repacks_and_training_is_refused(qlora_setup, base_model_path: Path, tokenizer) -> None:
    """The trap itself, on a fresh model: after one eval-mode no-grad forward the gradients are wrong."""
    _, reference, batch = qlora_setup
    model = _qlora_model(base_model_path)
    model.eval()
    with torch.no_grad():
        target_logprobs(model, batch)
    model.train()
    assert any(qlora.is_repacked(m) for m in model.modules())
    with pytest.raises(ArtifactError, match="repacked for CPU inference"):
        qlora.check_trainable(model)
    cosines = sorted(_cosines(_lora_grads(model, batch), _lora_grads(reference, batch)).values())
    assert cosines[len(cosines) // 2] < 0.5  # what the guard prevents: the same weights, unrelated gradients
