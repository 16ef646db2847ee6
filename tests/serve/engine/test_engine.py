"""serve/engine/engine.py's request API on the real model: validation, finish reasons, text, seeds, aborts."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from lorafleet.errors import ConfigError, NotFoundError
from serve.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.timeout(300)

STORY = "Once upon a time, in a small village by the sea,"


@dataclass
class Result:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0


def run(engine, requests: dict[str, tuple[list[int], SamplingParams]], adapter: str | None = None) -> dict[str, Result]:
    """Add ``requests`` (id -> (prompt ids, params)) and step the engine until all finish."""
    results = {rid: Result() for rid in requests}
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params, adapter)
    while engine.has_unfinished:
        for out in engine.step():
            r = results[out.request_id]
            r.token_ids.extend(out.token_ids)
            r.text += out.text
            r.num_prompt_tokens, r.num_cached_tokens = out.num_prompt_tokens, out.num_cached_tokens
            if out.finished:
                assert r.finish_reason is None, "a request finishes once"
                r.finish_reason = out.finish_reason
    return results


@pytest.fixture(scope="module")
def story_ids(tokenizer) -> list[int]:
    return tokenizer(STORY).input_ids


def test_check_request_rejects_bad_prompts(engine) -> None:
    cap = engine.layout.max_model_len
    with pytest.raises(ConfigError, match="prompt is empty"):
        engine.check_request([], None)
    with pytest.raises(ConfigError, match=f"context length is {cap}"):
        engine.check_request([1] * cap, None)
    with pytest.raises(ConfigError, match="token id 49152 is outside the vocabulary"):
        engine.check_request([1, 49152], None)
    with pytest.raises(NotFoundError, match="adapter 'nope' is not loaded"):
        engine.check_request([1, 2], "nope")
    assert not engine.has_unfinished, "checks must not queue anything"


def test_duplicate_request_id_is_refused(engine, story_ids) -> None:
    engine.add_request("dup", story_ids, SamplingParams(max_tokens=2))
    with pytest.raises(ConfigError, match="request id 'dup' is already running"):
        engine.add_request("dup", story_ids, SamplingParams(max_tokens=2))
    assert engine.abort("dup")
    assert not engine.abort("dup"), "an unknown id is reported, not raised"


def test_finish_reasons_and_text(engine, tokenizer, story_ids) -> None:
    greedy = run(engine, {"g": (story_ids, SamplingParams(max_tokens=12, temperature=0.0))})["g"]
    assert greedy.finish_reason == "length" and len(greedy.token_ids) == 12
    assert greedy.text == tokenizer.decode(greedy.token_ids, skip_special_tokens=True)
    assert greedy.num_prompt_tokens == len(story_ids)

    third = greedy.token_ids[2]
    by_token = run(engine, {"t": (story_ids, SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=(third,)))})["t"]
    assert by_token.finish_reason == "stop" and by_token.token_ids == greedy.token_ids[:3]
    assert by_token.text == tokenizer.decode(greedy.token_ids[:2], skip_special_tokens=True), "the stop token is not text"

    word = greedy.text.split()[3]
    by_string = run(engine, {"s": (story_ids, SamplingParams(max_tokens=12, temperature=0.0, stop=(word,)))})["s"]
    assert by_string.finish_reason == "stop"
    assert by_string.text == greedy.text[:greedy.text.index(word)]
    assert by_string.token_ids == greedy.token_ids[:len(by_string.token_ids)]


def test_eos_stops_unless_ignored(engine, tokenizer, eos_token_ids) -> None:
    from lorafleet.chat import chat_token_ids

    prompt = chat_token_ids(tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    stopped = run(engine, {"e": (prompt, SamplingParams(max_tokens=64, temperature=0.0))})["e"]
    assert stopped.finish_reason == "stop" and stopped.token_ids[-1] in eos_token_ids
    assert "Paris" in stopped.text and "<|im_end|>" not in stopped.text
    ignored = run(engine, {"i": (prompt, SamplingParams(max_tokens=len(stopped.token_ids) + 3, temperature=0.0,
                                                        ignore_eos=True))})["i"]
    assert ignored.finish_reason == "length" and ignored.token_ids[:len(stopped.token_ids)] == stopped.token_ids


def test_context_length_caps_generation(make_engine, story_ids) -> None:
    small = make_engine(num_kv_blocks=8, max_model_len=40, max_loras=0)
    assert small.layout.max_model_len == 40
    out = run(small, {"c": (story_ids, SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True))})["c"]
    assert out.finish_reason == "length"
    assert len(story_ids) + len(out.token_ids) == 40
    assert small.block_manager.num_free_blocks == small.block_manager.num_blocks


@pytest.mark.slow  # full tier: ~7 s; test_openai_sdk checks seeded sampling through the server
def test_seeds_make_sampling_reproducible(engine, story_ids) -> None:
    def sample(seed: int | None, **kw) -> list[int]:
        params = SamplingParams(max_tokens=16, temperature=1.0, seed=seed, ignore_eos=True, **kw)
        return run(engine, {f"seed-{seed}": (story_ids, params)})[f"seed-{seed}"].token_ids

    assert sample(7) == sample(7)
    assert len({tuple(sample(s)) for s in (7, 8, 9)}) > 1
    greedy = run(engine, {"g": (story_ids, SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))})["g"]
    assert sample(3, top_k=1) == greedy.token_ids
    assert sample(4, top_p=1e-9) == greedy.token_ids


def test_sampled_and_greedy_requests_share_a_batch(engine, story_ids, tokenizer) -> None:
    other = tokenizer("The three primary colors are").input_ids
    solo = run(engine, {"solo": (other, SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))})["solo"]
    seeded = run(engine, {"s": (story_ids, SamplingParams(max_tokens=10, temperature=1.0, seed=11, ignore_eos=True))})["s"]
    both = run(engine, {
        "greedy": (other, SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)),
        "sampled": (story_ids, SamplingParams(max_tokens=10, temperature=1.0, seed=11, ignore_eos=True)),
    })
    assert both["greedy"].token_ids == solo.token_ids
    assert both["sampled"].token_ids == seeded.token_ids, "a seeded request samples the same in any batch"


def test_abort_frees_blocks_and_adapter_pins(engine, lora_adapters, story_ids) -> None:
    engine.load_adapter("tmp-a2", lora_adapters["a2"])
    try:
        params = SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True)
        engine.add_request("keep", story_ids, params)
        engine.add_request("drop", story_ids, params, "tmp-a2")
        for _ in range(3):
            engine.step()
        assert set(engine.request_ids) == {"keep", "drop"}
        assert not engine.unload_adapter("tmp-a2"), "an adapter in use must not be unloaded"
        assert engine.abort("drop")
        assert engine.request_ids == ["keep"]
        assert engine.unload_adapter("tmp-a2"), "the abort must release the adapter"
        while engine.has_unfinished:
            engine.step()
        stats = engine.stats()
        assert (stats.scheduler.num_running, stats.scheduler.num_waiting, stats.num_pending_adapter) == (0, 0, 0)
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    finally:
        if "tmp-a2" in engine.adapters:
            engine.unload_adapter("tmp-a2")
