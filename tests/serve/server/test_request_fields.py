"""Every request field of vLLM's completions and chat schemas is handled: supported (declared by our request
model, and exercised by the feature tests named in docs/features.md), or a 400 naming it when it asks for
something we do not do. Unknown fields are 400s too; nothing is silently dropped.

The lists are vLLM's ``CompletionRequest`` and ``ChatCompletionRequest`` fields
(``vllm/entrypoints/openai/protocol.py``: the OpenAI fields, the ``*-sampling-params`` and ``*-extra-params``
blocks), plus the ``structured_outputs``/``return_token_ids`` fields of later releases.
"""

from __future__ import annotations

import httpx
import pytest

from serve.server.protocol import ChatCompletionRequest, CompletionRequest
from serve.server.request_fields import NO_OP_VALUES

COMMON = (
    "model", "frequency_penalty", "logit_bias", "n", "presence_penalty", "response_format", "seed", "stop", "stream",
    "stream_options", "temperature", "top_p", "user", "best_of", "use_beam_search", "top_k", "min_p",
    "repetition_penalty", "length_penalty", "stop_token_ids", "include_stop_str_in_output", "ignore_eos",
    "min_tokens", "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
    "allowed_token_ids", "prompt_logprobs", "add_special_tokens", "guided_json", "guided_regex", "guided_choice",
    "guided_grammar", "guided_decoding_backend", "guided_whitespace_pattern", "priority", "request_id",
    "logits_processors", "return_tokens_as_token_ids", "cache_salt", "kv_transfer_params", "vllm_xargs",
    "structured_outputs", "return_token_ids", "max_tokens", "logprobs",
)
VLLM_COMPLETION_FIELDS = COMMON + ("prompt", "prompt_embeds", "echo", "suffix")
VLLM_CHAT_FIELDS = COMMON + (
    "messages", "top_logprobs", "max_completion_tokens", "tools", "tool_choice", "reasoning_effort",
    "include_reasoning", "parallel_tool_calls", "bad_words", "echo", "add_generation_prompt",
    "continue_final_message", "documents", "chat_template", "chat_template_kwargs", "mm_processor_kwargs",
    "structural_tag",
)
#: a value that asks for something, for each field we do not implement
ASKING = {
    "best_of": 3, "use_beam_search": True, "length_penalty": 0.5,
    "spaces_between_special_tokens": False,
    "prompt_embeds": "AAAA", "priority": 1, "request_id": "mine", "logits_processors": ["a.b"],
    "return_tokens_as_token_ids": True,
    "kv_transfer_params": {"a": 1}, "vllm_xargs": {"a": 1}, "mm_processor_kwargs": {"a": 1},
    "chat_template": "{{ messages }}", "chat_template_kwargs": {"a": 1}, "documents": [{"text": "x"}],
    "continue_final_message": True, "reasoning_effort": "low", "echo": True, "suffix": "x",
}
ADD_SPECIAL = {"completions": False, "chat": True}


def cases(endpoint: str, fields: tuple[str, ...], declared: set[str]) -> list[tuple[str, str]]:
    return [(endpoint, f) for f in fields if f not in declared]


def post(http: httpx.Client, model: str, endpoint: str, **body) -> httpx.Response:
    if endpoint == "completions":
        return http.post("/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 1, **body})
    return http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "Hi"}],
                                                   "max_tokens": 1, **body})


#: fields whose every value is a no-op here: the served models emit no separate reasoning
ALWAYS_NO_OP = {"include_reasoning"}
UNDECLARED = (cases("completions", VLLM_COMPLETION_FIELDS, set(CompletionRequest.model_fields))
              + cases("chat", VLLM_CHAT_FIELDS, set(ChatCompletionRequest.model_fields)))
UNSUPPORTED = [(e, f) for e, f in UNDECLARED if f not in ALWAYS_NO_OP]


def test_the_walk_covers_every_field() -> None:
    """Each vLLM field is declared (supported) or has a no-op value and an asking value in the walk."""
    for endpoint, field in UNDECLARED:
        assert field in NO_OP_VALUES, f"{endpoint}: vLLM's {field} is neither supported nor refused"
        assert field in ASKING or field in ALWAYS_NO_OP or field == "add_special_tokens", field
    supported = set(CompletionRequest.model_fields) & set(VLLM_COMPLETION_FIELDS)
    assert {"echo", "logit_bias", "prompt_logprobs", "structured_outputs", "guided_choice", "min_p",
            "allowed_token_ids", "include_stop_str_in_output", "truncate_prompt_tokens", "return_token_ids",
            "cache_salt"} <= supported


@pytest.mark.parametrize(("endpoint", "field"), UNSUPPORTED)
def test_unsupported_field_is_a_400_naming_it(http, server, endpoint, field) -> None:
    value = ADD_SPECIAL[endpoint] if field == "add_special_tokens" else ASKING[field]
    r = post(http, server.model, endpoint, **{field: value})
    assert r.status_code == 400, (field, r.text)
    assert r.json()["error"]["param"] == field


def test_no_op_values_are_accepted(http, server) -> None:
    body = {"use_beam_search": False, "priority": 0, "best_of": 1,
            "spaces_between_special_tokens": True, "add_special_tokens": True, "length_penalty": 1.0}
    assert post(http, server.model, "completions", **body).status_code == 200
    chat = {"echo": False, "add_special_tokens": False, "include_reasoning": True, "continue_final_message": False}
    assert post(http, server.model, "chat", **chat).status_code == 200
    assert post(http, server.model, "chat", include_reasoning=False).status_code == 200


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_unknown_fields_are_400s(http, server, endpoint) -> None:
    for field, value in (("metadata", {"a": "b"}), ("store", True), ("temprature", 0.5)):
        r = post(http, server.model, endpoint, **{field: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    r = post(http, server.model, endpoint, stream=True, stream_options={"include_usage": True,
                                                                        "continuous_usage_stats": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options.continuous_usage_stats"


def test_cache_salt_separates_prefix_caches(http, server) -> None:
    prompt = "A salted prompt that no other test sends, long enough to fill two blocks of sixteen tokens each. " * 2

    def cached(salt: str) -> int:
        r = post(http, server.model, "completions", prompt=prompt, cache_salt=salt)
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]

    assert cached("tenant-a") == 0 and cached("tenant-a") > 0 and cached("tenant-b") == 0
    assert post(http, server.model, "completions", cache_salt="").json()["error"]["param"] == "cache_salt"
