"""Issue #11's engine features on CUDA (the pure-torch paths): speculation keeps greedy output, forked choices
(copy-on-write on the GPU's KV pool) equal independent seeded runs, logprobs equal HF's log-softmax, and the
grammar bitmask applies to CUDA logits. Uses test_cuda.py's model (the provisioned SmolLM2, or random
weights of its shape from ``LORAFLEET_GPU_SHAPE_DIR``). Skipped where there is no CUDA device."""

from __future__ import annotations

import json

import pytest

from tests.serve.engine.test_cuda import cuda_model_dir, hf_cuda, make_engine, tok  # noqa: F401 (fixtures)

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def engine(cuda_model_dir):  # noqa: F811
    return make_engine(cuda_model_dir, num_kv_blocks=128)


def run(engine, prompt: list[int], params) -> tuple[dict[int, list[int]], dict[int, list]]:
    engine.add_request("r", prompt, params)
    ids: dict[int, list[int]] = {}
    lps: dict[int, list] = {}
    while engine.has_unfinished:
        for o in engine.step():
            ids.setdefault(o.index, []).extend(o.token_ids)
            lps.setdefault(o.index, []).extend(o.logprobs or ())
    return ids, lps


def test_speculation_keeps_greedy_output_on_cuda(engine, tok, monkeypatch) -> None:  # noqa: F811
    """Random weights never repeat their context, so prompt lookup would propose nothing here: drafts come
    from the known greedy output instead, every third one wrong, so verification both accepts and rejects."""
    import serve.engine.engine as engine_module
    from serve.engine.sampling_params import SamplingParams

    prompt = tok("1 2 3 4 5 6 7 8 1 2 3 4").input_ids
    kw = dict(max_tokens=32, temperature=0.0, ignore_eos=True)
    off, _ = run(engine, prompt, SamplingParams(**kw, num_speculative_tokens=0))

    def drafts(token_ids, k, *_):
        j = len(token_ids) - len(prompt)
        return [t if (j + i) % 3 else (t + 1) % 49152 for i, t in enumerate(off[0][j:j + k])]

    monkeypatch.setattr(engine_module, "propose_ngram", drafts)
    on, _ = run(engine, prompt, SamplingParams(**kw, num_speculative_tokens=6))
    spec = engine.stats().spec_decode
    assert on == off and 0 < spec.num_accepted_tokens < spec.num_draft_tokens


def test_forked_choices_equal_independent_runs_on_cuda(engine, tok) -> None:  # noqa: F811
    from serve.engine.sampling_params import SamplingParams

    prompt = tok("Once upon a time, in a small village by the sea, there lived").input_ids
    assert len(prompt) % 16
    many, _ = run(engine, prompt, SamplingParams(max_tokens=16, temperature=1.0, seed=5, n=3, ignore_eos=True))
    for i in range(3):
        alone, _ = run(engine, prompt, SamplingParams(max_tokens=16, temperature=1.0, seed=5 + i, ignore_eos=True))
        assert alone[0] == many[i]


def test_logprobs_equal_hf_on_cuda(engine, tok, hf_cuda) -> None:  # noqa: F811
    from serve.engine.sampling_params import SamplingParams

    prompt = tok("The capital of France is").input_ids
    ids, lps = run(engine, prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=3))
    with torch.inference_mode():
        ref = torch.log_softmax(hf_cuda(torch.tensor([prompt + ids[0][:-1]], device="cuda")).logits[0, len(prompt) - 1:]
                                .float(), -1)
    for i, e in enumerate(lps[0]):
        assert abs(e.logprob - float(ref[i, e.token_id])) < 1e-3 and e.top[0][0] == e.token_id


def test_grammar_mask_on_cuda_logits(engine, tok) -> None:  # noqa: F811
    pytest.importorskip("xgrammar")
    from serve.engine.sampling_params import SamplingParams, StructuredOutput

    schema = {"type": "object", "properties": {"a": {"enum": ["x", "y"]}, "b": {"type": "boolean"},
                                               "c": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["a", "b", "c"]}
    params = SamplingParams(max_tokens=40, temperature=1.0, seed=1, n=2,
                            structured=StructuredOutput.json_schema(schema))
    ids, _ = run(engine, tok("JSON:").input_ids, params)
    for out in ids.values():
        value = json.loads(tok.decode(out, skip_special_tokens=True))
        assert value["a"] in ("x", "y") and isinstance(value["b"], bool) and 0 <= value["c"] <= 9
