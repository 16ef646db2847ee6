"""The server through the official ``openai`` client, unmodified, against a real ``lorafleet serve`` process.

Greedy outputs are checked against HF (and PEFT for adapters) reference tokens: the HTTP path must return
exactly what the model computes, decoded.
"""

from __future__ import annotations

import pytest
from openai import OpenAI

from lorafleet.chat import chat_token_ids

pytestmark = pytest.mark.timeout(240)  # includes starting the server on first use

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
STORY = "Once upon a time, in a small village by the sea,"


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_list(client: OpenAI, server) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert {server.model, "a0", "a1"} <= set(models)
    assert models[server.model].owned_by == "lorafleet"
    assert models["a0"].model_extra["parent"] == server.model
    assert models[server.model].model_extra["max_model_len"] == 1024


def test_chat_greedy_answers_paris_like_hf(client: OpenAI, server, tokenizer, hf_greedy) -> None:
    r = client.chat.completions.create(model=server.model, messages=CAPITAL, temperature=0, max_tokens=32)
    content = r.choices[0].message.content
    assert "Paris" in content
    assert r.choices[0].message.role == "assistant"
    prompt_ids = chat_token_ids(tokenizer, CAPITAL)
    ref = hf_greedy(prompt_ids, 32)
    assert content == tokenizer.decode(ref, skip_special_tokens=True)
    assert r.choices[0].finish_reason == ("length" if len(ref) == 32 and ref[-1] != tokenizer.eos_token_id else "stop")
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert r.usage.completion_tokens == len(ref)
    assert r.usage.total_tokens == len(prompt_ids) + len(ref)


def test_streaming_chat_equals_non_streaming(client: OpenAI, server) -> None:
    kw = dict(model=server.model, messages=[{"role": "user", "content": "Name three fruits."}], temperature=0, max_tokens=24)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in content_chunks) == full.choices[0].message.content
    assert content_chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in content_chunks[:-1])
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
    assert usage_chunks[0].usage.prompt_tokens == full.usage.prompt_tokens
    assert usage_chunks[0].usage.completion_tokens == full.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_streaming_completion_equals_non_streaming(client: OpenAI, server) -> None:
    kw = dict(model=server.model, prompt=STORY, temperature=0, max_tokens=24)
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens == 24
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert full.choices[0].finish_reason == "length"


def test_streaming_without_usage_sends_none(client: OpenAI, server) -> None:
    chunks = list(client.completions.create(model=server.model, prompt="Hello", temperature=0, max_tokens=4, stream=True))
    assert chunks and all(c.usage is None for c in chunks)


def test_completion_with_an_adapter_matches_peft(client: OpenAI, server, tokenizer, hf_greedy) -> None:
    ids = tokenizer(STORY).input_ids
    texts = {}
    for model in ("a0", "a1", server.model):
        r = client.completions.create(model=model, prompt=STORY, temperature=0, max_tokens=16)
        assert r.model == model
        ref = hf_greedy(ids, 16, None if model == server.model else model)
        assert r.choices[0].text == tokenizer.decode(ref, skip_special_tokens=True), model
        texts[model] = r.choices[0].text
    assert len(set(texts.values())) == 3, "each adapter changes the output"


def test_stop_strings_cut_the_text(client: OpenAI, server) -> None:
    kw = dict(model=server.model, prompt="1, 2, 3, 4, 5,", temperature=0, max_tokens=30)
    full = client.completions.create(**kw).choices[0].text
    assert " 9" in full, full
    r = client.completions.create(**kw, stop=[" 9", "never-there"])
    assert r.choices[0].text == full[:full.index(" 9")]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stop=" 9", stream=True) if c.choices)
    assert streamed == r.choices[0].text


def test_max_tokens_caps_with_length(client: OpenAI, server) -> None:
    r = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "Tell me a long story."}],
                                       temperature=0, max_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_seeded_sampling_is_reproducible(client: OpenAI, server) -> None:
    kw = dict(model=server.model, prompt=STORY, temperature=1.0, max_tokens=16)
    a = client.completions.create(**kw, seed=1234).choices[0].text
    b = client.completions.create(**kw, seed=1234).choices[0].text
    assert a == b
    others = {client.completions.create(**kw, seed=s).choices[0].text for s in (1, 2, 3)}
    assert len(others | {a}) > 1, "different seeds should not all give the same sample"


def test_batched_and_token_id_prompts(client: OpenAI, server, tokenizer) -> None:
    prompts = ["The capital of France is", STORY]
    batch = client.completions.create(model=server.model, prompt=prompts, temperature=0, max_tokens=8)
    assert [c.index for c in batch.choices] == [0, 1]
    for i, p in enumerate(prompts):
        single = client.completions.create(model=server.model, prompt=p, temperature=0, max_tokens=8)
        assert batch.choices[i].text == single.choices[0].text
        by_ids = client.completions.create(model=server.model, prompt=tokenizer(p).input_ids, temperature=0, max_tokens=8)
        assert by_ids.choices[0].text == single.choices[0].text
    assert batch.usage.prompt_tokens == sum(len(tokenizer(p).input_ids) for p in prompts)
