"""OpenAI-compatible request bodies (pydantic), plus vLLM's extensions and adapter-management bodies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")  # vLLM's continuous_usage_stats: a 400 unless false

    include_usage: bool = False


class _SamplingFields(BaseModel):
    # Undeclared fields are kept so that serve/server/request_fields.py can answer each (400 naming it).
    model_config = ConfigDict(extra="allow")

    model: str
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # vLLM extension
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None  # vLLM extension
    ignore_eos: bool = False  # vLLM extension
    skip_special_tokens: bool = True  # vLLM extension
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # vLLM extension
    min_p: float = 0.0  # vLLM extension
    logit_bias: dict[str, float] | None = None  # token id (as a JSON key) -> bias in [-100, 100]
    bad_words: list[str] | None = None  # vLLM extension
    min_tokens: int = 0  # vLLM extension
    allowed_token_ids: list[int] | None = None  # vLLM extension: only these tokens may be generated
    include_stop_str_in_output: bool = False  # vLLM extension
    truncate_prompt_tokens: int | None = None  # vLLM extension: keep the prompt's last k tokens
    return_token_ids: bool = False  # vLLM extension: prompt_token_ids and token_ids in the answer (not streamed)
    cache_salt: str | None = None  # vLLM extension: only requests with the same salt share cached prefixes
    prompt_logprobs: int | None = None  # vLLM extension: logprobs of the prompt's tokens (k alternatives)
    # vLLM's constrained outputs (serve/server/structured_fields.py): one of them, or response_format
    structured_outputs: dict[str, Any] | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: str | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None  # {"type": "text" | "json_object" | "json_schema", ...}
    num_speculative_tokens: int | None = None  # lorafleet extension: prompt-lookup drafts per step (0 off)


#: most prompts in one /v1/completions request: each becomes an engine request, so a list of 10^5 one-token
#: prompts would queue 10^5 sequences from one small body (the gateway's default limit is 64)
MAX_PROMPTS = 1024


class CompletionRequest(_SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]

    @field_validator("prompt", mode="before")
    @classmethod
    def _bounded_prompt_list(cls, value: Any) -> Any:
        # Before the union is tried: pydantic would first record an error per item for each wrong member (0.8 s
        # for 10^5 prompts, measured by tests/reliability/test_hostile.py).
        if isinstance(value, list) and len(value) > MAX_PROMPTS and not isinstance(value[0], int):
            raise ValueError(f"holds {len(value)} prompts; at most {MAX_PROMPTS} are allowed")
        return value
    max_tokens: int | None = 16
    logprobs: int | None = None  # the chosen token's logprob plus this many most likely ones
    echo: bool = False
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    add_generation_prompt: bool = True  # vLLM extension
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None  # "none" | "auto" | "required" | {"type": "function", ...}
    parallel_tool_calls: bool | None = None
    structural_tag: str | None = None  # vLLM's legacy chat field (JSON text)


class LoadLoraAdapterRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoraAdapterRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None


FinishReason = Literal["stop", "length", "abort", "tool_calls"]
