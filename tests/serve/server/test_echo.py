"""``echo`` + ``logprobs`` and ``prompt_logprobs`` through the ``openai`` SDK against a real ``lorafleet serve``,
as lm-evaluation-harness's ``local-completions`` model asks for them (token-id prompts, ``echo: true``,
``logprobs: 1``, ``max_tokens`` 1 or 0), against HF transformers' fp32 log-softmax of the same prompt."""

from __future__ import annotations

import pytest
import torch
from openai import BadRequestError, OpenAI

from lorafleet.chat import chat_token_ids

pytestmark = pytest.mark.timeout(300)

TOLERANCE = 1e-4
CONTEXT = "Question: What is the capital of France?\nAnswer:"
CONTINUATIONS = (" Paris", " Berlin", " a large city on the Seine")
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


def hf_token_logprobs(hf_model, ids: list[int]) -> list[float]:
    with torch.inference_mode():
        lp = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0, :-1].float(), -1)
    return lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist()


@pytest.mark.parametrize("max_tokens", [1, 0])
def test_lm_eval_style_echo_equals_hf(client, server, tokenizer, hf_model, max_tokens) -> None:
    prompts = [tokenizer(CONTEXT + c).input_ids for c in CONTINUATIONS]
    r = client.completions.create(model=server.model, prompt=prompts, echo=True, logprobs=1, max_tokens=max_tokens,
                                  temperature=0)
    assert len(r.choices) == len(prompts)
    for ids, choice in zip(prompts, r.choices):
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) + max_tokens
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        ref = hf_token_logprobs(hf_model, ids)
        assert max(abs(a - b) for a, b in zip(lp.token_logprobs[1:len(ids)], ref)) < TOLERANCE
        for value, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
            assert value in top.values() and len(top) in (1, 2)
        assert choice.text.startswith(tokenizer.decode(ids))
        assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
        if max_tokens == 0:
            assert choice.text == tokenizer.decode(ids) and choice.finish_reason == "length"
    # lm-eval's score: the continuation's summed logprob; " Paris" must beat " Berlin"
    ctx = len(tokenizer(CONTEXT).input_ids)
    scores = [sum(c.logprobs.token_logprobs[ctx:len(ids)]) for c, ids in zip(r.choices, prompts)]
    assert scores[0] > scores[1]


def test_echo_text_is_prompt_plus_completion(client, server) -> None:
    plain = client.completions.create(model=server.model, prompt=CONTEXT, max_tokens=5, temperature=0)
    echoed = client.completions.create(model=server.model, prompt=CONTEXT, max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == CONTEXT + plain.choices[0].text
    assert echoed.choices[0].logprobs is None


def test_truncate_prompt_tokens_keeps_the_last_tokens(client, server, tokenizer) -> None:
    ids = tokenizer(CONTEXT + CONTINUATIONS[2]).input_ids
    r = client.completions.create(model=server.model, prompt=CONTEXT + CONTINUATIONS[2], max_tokens=0, echo=True,
                                  logprobs=0, extra_body={"truncate_prompt_tokens": 5})
    assert r.choices[0].text == tokenizer.decode(ids[-5:]) and len(r.choices[0].logprobs.tokens) == 5
    assert r.usage.prompt_tokens == 5
    with pytest.raises(BadRequestError) as e:
        client.completions.create(model=server.model, prompt="Hi", max_tokens=1, extra_body={"truncate_prompt_tokens": 0})
    assert e.value.body["param"] == "truncate_prompt_tokens"


def test_prompt_logprobs_on_completions_and_chat(client, server, tokenizer, hf_model) -> None:
    ids = tokenizer(CONTEXT).input_ids
    r = client.completions.create(model=server.model, prompt=CONTEXT, max_tokens=1, temperature=0,
                                  extra_body={"prompt_logprobs": 2})
    plp = r.choices[0].model_extra["prompt_logprobs"]
    assert len(plp) == len(ids) and plp[0] is None
    ref = hf_token_logprobs(hf_model, ids)
    for i, entry in enumerate(plp[1:]):
        mine = entry[str(ids[i + 1])]
        assert abs(mine["logprob"] - ref[i]) < TOLERANCE and mine["rank"] >= 1
        assert mine["decoded_token"] == tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens([ids[i + 1]]))
        assert 2 <= len(entry) <= 3 and {e["rank"] for e in entry.values()} >= {1, 2}
    chat = client.chat.completions.create(model=server.model, messages=CAPITAL, max_tokens=1, temperature=0,
                                          extra_body={"prompt_logprobs": 0})
    chat_ids = chat_token_ids(tokenizer, CAPITAL)
    plp = chat.model_extra["prompt_logprobs"]
    assert len(plp) == len(chat_ids) and plp[0] is None and all(len(e) == 1 for e in plp[1:])
    ref = hf_token_logprobs(hf_model, chat_ids)
    assert max(abs(e[str(t)]["logprob"] - v) for e, t, v in zip(plp[1:], chat_ids[1:], ref)) < TOLERANCE


@pytest.mark.parametrize("max_tokens", [4, 0])
def test_streamed_echo_equals_non_streamed(client, server, tokenizer, max_tokens) -> None:
    prompts = [tokenizer(CONTEXT + c).input_ids for c in CONTINUATIONS[:2]]
    kw = dict(model=server.model, prompt=prompts, echo=True, logprobs=2, max_tokens=max_tokens, temperature=0)
    full = client.completions.create(**kw).choices
    chunks = [c for c in client.completions.create(**kw, stream=True) for c in c.choices]
    for i, choice in enumerate(full):
        mine = [c for c in chunks if c.index == i]
        assert "".join(c.text for c in mine) == choice.text and mine[-1].finish_reason == choice.finish_reason
        lps = [c.logprobs for c in mine if c.logprobs]
        assert [t for lp in lps for t in lp.tokens] == choice.logprobs.tokens
        values = [v for lp in lps for v in lp.token_logprobs]  # (batches differ: equal within fp32 noise)
        assert values[0] is None and choice.logprobs.token_logprobs[0] is None
        assert values[1:] == pytest.approx(choice.logprobs.token_logprobs[1:], abs=TOLERANCE)
        assert [o for lp in lps for o in lp.text_offset] == choice.logprobs.text_offset


def test_prompt_logprobs_are_refused_when_streamed(client, server) -> None:
    with pytest.raises(BadRequestError) as e:
        client.completions.create(model=server.model, prompt=CONTEXT, max_tokens=1, stream=True,
                                  extra_body={"prompt_logprobs": 1})
    assert e.value.body["param"] == "prompt_logprobs"


@pytest.mark.parametrize("stream", [False, True])
def test_echo_logprobs_end_with_the_stop_token(client, server, tokenizer, stream) -> None:
    """As in vLLM, the token id that ends a choice (EOS or a stop token id) is the echo block's last entry:
    lm-eval drops the last entry of a ``max_tokens: 1`` answer as the generated one, whatever it is."""
    ids = tokenizer(CONTEXT + CONTINUATIONS[0]).input_ids
    kw = dict(model=server.model, prompt=[ids], echo=True, logprobs=1, max_tokens=1, temperature=0)
    plain = client.completions.create(**kw).choices[0].logprobs
    # the token the model picks there, sent back as a stop token id: it ends the choice instead of being text
    nxt = client.completions.create(**kw, extra_body={"return_token_ids": True}).choices[0].model_extra["token_ids"]
    stop_kw = dict(kw, extra_body={"stop_token_ids": nxt})
    if stream:
        chunks = [c for c in client.completions.create(**stop_kw, stream=True) for c in c.choices]
        tokens = [t for c in chunks if c.logprobs for t in c.logprobs.tokens]
        values = [v for c in chunks if c.logprobs for v in c.logprobs.token_logprobs]
        text, finish = "".join(c.text for c in chunks), chunks[-1].finish_reason
    else:
        choice = client.completions.create(**stop_kw).choices[0]
        tokens, values = choice.logprobs.tokens, choice.logprobs.token_logprobs
        text, finish = choice.text, choice.finish_reason
    assert finish == "stop" and text == tokenizer.decode(ids) and len(tokens) == len(ids) + 1
    assert tokens == plain.tokens and values[1:] == pytest.approx(plain.token_logprobs[1:], abs=TOLERANCE)
