"""The engine on CUDA: the pure-torch paths (no C++ CPU kernels) on a GPU, checked against HF transformers on
the same GPU. Skipped where there is no CUDA device.

The model is the provisioned SmolLM2 checkpoint when it is on the machine. GPU machines here have no
package index, so ``LORAFLEET_GPU_SHAPE_DIR`` may instead name a directory holding SmolLM2's config and
tokenizer files only; the test then writes seeded random weights of that shape (a correctness check does not
need trained weights: engine and HF read the same ones).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village by the sea,",
           "1, 2, 3, 4, 5,", "Q: What is the largest planet in the solar system?\nA:", "Les mathématiques sont",
           "The quick brown fox jumps over the lazy dog. " * 12, "Water boils at")
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def cuda_model_dir(tmp_path_factory) -> Path:
    from lorafleet.config import models_dir

    provisioned = models_dir() / "smollm2-135m-instruct"
    if (provisioned / "model.safetensors").is_file():
        return provisioned
    shape_dir = os.environ.get("LORAFLEET_GPU_SHAPE_DIR")
    if not shape_dir:
        pytest.skip("no provisioned model and no LORAFLEET_GPU_SHAPE_DIR")
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    out = tmp_path_factory.mktemp("random-smollm2")
    for f in Path(shape_dir).iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, out / f.name)
    cfg = AutoConfig.from_pretrained(out)
    cfg.initializer_range = 0.08  # peakier logits than the default 0.02, so greedy choices are not near-ties
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tok(cuda_model_dir: Path):
    from lorafleet.loading import load_tokenizer

    return load_tokenizer(cuda_model_dir)


@pytest.fixture(scope="module")
def hf_cuda(cuda_model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(cuda_model_dir, dtype=torch.float32).to("cuda").eval()


def make_engine(model_dir: Path, **kw):
    from lorafleet.config import EngineConfig
    from serve.engine.engine import LLMEngine

    args = dict(model=str(model_dir), dtype="float32", device="cuda", num_kv_blocks=256, max_loras=4)
    args.update(kw)
    return LLMEngine(EngineConfig(**args))


def greedy(engine, prompts: list[list[int]], adapters=None) -> list[list[int]]:
    from serve.engine.sampling_params import SamplingParams

    return engine.generate(prompts, SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True), adapters)


def assert_hf_greedy(model, prompt: list[int], out: list[int]) -> None:
    """Every engine token is HF's argmax at that position (or within 1e-4 of it: a tie in fp32)."""
    ids = torch.tensor([prompt + out], device="cuda")
    with torch.inference_mode():
        logits = model(ids).logits[0, len(prompt) - 1:-1].float()
    chosen = logits.gather(1, torch.tensor(out, device="cuda")[:, None])[:, 0]
    gap = logits.max(dim=1).values - chosen
    assert gap.max().item() <= 1e-4, f"engine token not HF's greedy choice at step {int(gap.argmax())}"


def test_fp32_greedy_equals_hf_on_cuda_alone_and_batched(cuda_model_dir: Path, tok, hf_cuda) -> None:
    engine = make_engine(cuda_model_dir)
    prompts = [tok(p).input_ids for p in PROMPTS]
    batched = greedy(engine, prompts)
    for prompt, out in zip(prompts, batched):
        assert len(out) == NEW_TOKENS
        assert_hf_greedy(hf_cuda, prompt, out)
    assert [greedy(engine, [p])[0] for p in prompts[:3]] == batched[:3], "batching changed greedy tokens"
    assert greedy(engine, prompts) == batched, "prefix-cache hits changed greedy tokens"


def test_multi_lora_batch_on_cuda_matches_each_request_alone(cuda_model_dir: Path, tok, tmp_path: Path) -> None:
    from lorafleet.synthetic import make_random_lora_adapter

    engine = make_engine(cuda_model_dir)
    for i in range(3):
        engine.load_adapter(f"a{i}", make_random_lora_adapter(cuda_model_dir, tmp_path / f"a{i}", seed=i, std=0.05))
    prompts = [tok(p).input_ids for p in PROMPTS[:4]]
    adapters = [None, "a0", "a1", "a2"]
    mixed = greedy(engine, prompts, adapters)
    alone = [greedy(engine, [p], [a])[0] for p, a in zip(prompts, adapters)]
    assert mixed == alone
    assert len({tuple(o) for o in mixed}) == 4 or mixed[0] != mixed[1], "adapters had no effect"


def test_bf16_on_cuda_is_as_close_to_fp32_as_hf_bf16(cuda_model_dir: Path, tok, hf_cuda) -> None:
    """bf16 breaks near-ties differently from fp32, so tokens are not compared one for one. Instead, on each
    generated sequence, the fp32 logit lost by each bf16 choice (in units of the row's std) is measured for
    our engine and for HF's own bf16 model: ours must not be meaningfully worse."""
    from transformers import AutoModelForCausalLM

    hf_bf16 = AutoModelForCausalLM.from_pretrained(cuda_model_dir, dtype=torch.bfloat16).to("cuda").eval()
    engine = make_engine(cuda_model_dir, dtype="bfloat16")
    prompts = [tok(p).input_ids for p in PROMPTS]
    ours, theirs = [], []
    for prompt, out in zip(prompts, greedy(engine, prompts)):
        ids = torch.tensor([prompt + out], device="cuda")
        with torch.inference_mode():
            ref = hf_cuda(ids).logits[0, len(prompt) - 1:-1].float()
            hf_choice = hf_bf16(ids).logits[0, len(prompt) - 1:-1].argmax(dim=1)
        best, std = ref.max(dim=1).values, ref.std(dim=1)
        ours.append((best - ref.gather(1, torch.tensor(out, device="cuda")[:, None])[:, 0]) / std)
        theirs.append((best - ref.gather(1, hf_choice[:, None])[:, 0]) / std)
    ours_mean, theirs_mean = torch.cat(ours).mean().item(), torch.cat(theirs).mean().item()
    assert ours_mean <= 2 * theirs_mean + 0.01, f"engine bf16 loses {ours_mean:.4f} std per token, HF bf16 {theirs_mean:.4f}"
