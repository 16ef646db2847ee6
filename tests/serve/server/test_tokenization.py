"""``/tokenize`` and ``/detokenize`` on a real ``lorafleet serve``: vLLM's JSON, ids equal to the HF tokenizer's
and to what the chat endpoint counts as the prompt; and vLLM's ``return_token_ids`` on completions and chat."""

from __future__ import annotations

import pytest

from lorafleet.chat import chat_token_ids

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def test_tokenize_prompt_equals_hf(http, server, tokenizer) -> None:
    text = "Les mathématiques sont 🌍 fun"
    r = http.post("/tokenize", json={"model": server.model, "prompt": text})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = tokenizer(text).input_ids
    assert body == {"count": len(ids), "max_model_len": 1024, "tokens": ids}
    strs = http.post("/tokenize", json={"prompt": text, "return_token_strs": True}).json()["token_strs"]
    assert strs == tokenizer.convert_ids_to_tokens(ids)


def test_tokenize_messages_equals_the_chat_prompt(http, server, tokenizer) -> None:
    body = http.post("/tokenize", json={"model": server.model, "messages": CAPITAL}).json()
    assert body["tokens"] == chat_token_ids(tokenizer, CAPITAL)
    chat = http.post("/v1/chat/completions", json={"model": server.model, "messages": CAPITAL, "max_tokens": 1}).json()
    assert chat["usage"]["prompt_tokens"] == body["count"]
    no_gen = http.post("/tokenize", json={"messages": CAPITAL, "add_generation_prompt": False}).json()
    assert no_gen["tokens"] == chat_token_ids(tokenizer, CAPITAL, add_generation_prompt=False)
    assert no_gen["count"] < body["count"]


def test_return_token_ids(http, server, tokenizer) -> None:
    """vLLM's return_token_ids: the prompt's ids and the output's, which decode to the text."""
    body = {"model": server.model, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0,
            "return_token_ids": True}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    assert choice["prompt_token_ids"] == tokenizer("The capital of France is").input_ids
    assert len(choice["token_ids"]) == 6 and tokenizer.decode(choice["token_ids"]) == choice["text"]
    chat = http.post("/v1/chat/completions", json={"model": server.model, "messages": CAPITAL, "max_tokens": 4,
                                                   "return_token_ids": True}).json()
    assert chat["prompt_token_ids"] == chat_token_ids(tokenizer, CAPITAL)
    assert len(chat["choices"][0]["token_ids"]) == chat["usage"]["completion_tokens"]
    r = http.post("/v1/completions", json={**body, "stream": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "return_token_ids"


def test_detokenize_round_trips(http, server, tokenizer) -> None:
    ids = tokenizer("The capital of France is Paris.").input_ids
    r = http.post("/detokenize", json={"model": server.model, "tokens": ids})
    assert r.json() == {"prompt": "The capital of France is Paris."}


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/detokenize", {"tokens": [49152]}, 400, "tokens"),
    ("/tokenize", {"model": "nope", "prompt": "x"}, 404, None),
    ("/tokenize", {"prompt": "x", "bogus": 1}, 400, None),
])
def test_bad_requests(http, path, body, status, param) -> None:
    r = http.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param or param is None
