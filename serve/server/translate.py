"""OpenAI request bodies → engine inputs: prompt token ids and :class:`SamplingParams` (400 naming the
field on bad values), and the usage block of responses."""

from __future__ import annotations

from dataclasses import dataclass

from lorafleet.errors import ConfigError
from serve.engine.async_engine import AsyncEngine
from serve.engine.sampling_params import MAX_TOP_LOGPROBS, SamplingParams, StructuredOutput
from serve.server.errors import HTTPError
from serve.server.protocol import ChatCompletionRequest, CompletionRequest
from serve.server.request_fields import check_extra_fields


@dataclass(frozen=True, slots=True)
class PromptUsage:
    """Token counts of one prompt's engine request (all its choices)."""

    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int  #: summed over the request's choices


def reject_unsupported(req: CompletionRequest | ChatCompletionRequest) -> None:
    """400 naming the field for anything asked that we do not do (see serve/server/request_fields.py)."""
    check_extra_fields(req.model_extra, "completions" if isinstance(req, CompletionRequest) else "chat")
    if req.stream_options is not None and req.stream_options.model_extra:
        name = next(iter(req.stream_options.model_extra))
        if req.stream_options.model_extra[name] not in (False, None):
            raise HTTPError(400, f"stream_options.{name} is not supported", f"stream_options.{name}")
    if isinstance(req, CompletionRequest) and req.suffix:
        raise HTTPError(400, "suffix is not supported", "suffix")
    if req.return_token_ids and req.stream:
        raise HTTPError(400, "return_token_ids is not available with stream: true yet", "return_token_ids")
    if req.prompt_logprobs is not None and req.stream:  # (vLLM refuses it too)
        raise HTTPError(400, "prompt_logprobs are not available with stream: true", "prompt_logprobs")


def truncated(prompts: list[list[int]], keep: int | None) -> list[list[int]]:
    """vLLM's ``truncate_prompt_tokens``: each prompt's last ``keep`` tokens (None: unchanged; 400 if < 1)."""
    if keep is None:
        return prompts
    if keep < 1:
        raise HTTPError(400, f"truncate_prompt_tokens must be at least 1, got {keep}", "truncate_prompt_tokens")
    return [p[-keep:] for p in prompts]


def completion_max_tokens(req: CompletionRequest) -> int | None:
    """``max_tokens``, except that ``echo`` with ``max_tokens: 0`` (the prompt only, as vLLM allows) runs one
    token, which the response leaves out."""
    return 1 if req.echo and req.max_tokens == 0 else req.max_tokens


def requested_prompt_logprobs(req: CompletionRequest | ChatCompletionRequest) -> int | None:
    """vLLM's ``prompt_logprobs``; completions with ``echo`` and ``logprobs: k`` need them too (k each)."""
    if req.prompt_logprobs is None and isinstance(req, CompletionRequest) and req.echo:
        return req.logprobs
    return req.prompt_logprobs


def logit_bias(raw: dict[str, float] | None, vocab_size: int | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``logit_bias`` (token id as a JSON key → bias) as (id, bias) pairs; 400 naming the field for a
    key that is not a token id of the vocabulary."""
    pairs = []
    for key, bias in (raw or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise HTTPError(400, f"logit_bias keys must be token ids, got {key[:40]!r}", "logit_bias") from None
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise HTTPError(400, f"logit_bias: token id {token} is outside the vocabulary [0, {vocab_size})",
                            "logit_bias")
        pairs.append((token, float(bias)))
    return tuple(pairs)


def logits_controls(req: CompletionRequest | ChatCompletionRequest, vocab_size: int | None) -> dict:
    """SamplingParams keyword arguments of vLLM's sampling fields added for issue 23: penalties, min_p, biases,
    bans, min_tokens, allowed_token_ids and include_stop_str_in_output (ranges checked by SamplingParams)."""
    return dict(presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                repetition_penalty=req.repetition_penalty, min_p=req.min_p,
                logit_bias=logit_bias(req.logit_bias, vocab_size), bad_words=tuple(req.bad_words or ()),
                min_tokens=req.min_tokens, allowed_token_ids=allowed_token_ids(req.allowed_token_ids, vocab_size),
                include_stop_str_in_output=req.include_stop_str_in_output, cache_salt=req.cache_salt)


def allowed_token_ids(ids: list[int] | None, vocab_size: int | None) -> tuple[int, ...]:
    """vLLM's ``allowed_token_ids``: a non-empty list of vocabulary ids (400 naming the field otherwise)."""
    if ids is None:
        return ()
    bad = next((t for t in ids if t < 0 or (vocab_size is not None and t >= vocab_size)), None)
    if not ids or bad is not None:
        what = "must not be empty" if not ids else f"token id {bad} is outside the vocabulary [0, {vocab_size})"
        raise HTTPError(400, f"allowed_token_ids: {what}", "allowed_token_ids")
    return tuple(ids)


def prompt_ids(engine: AsyncEngine, prompt) -> list[list[int]]:
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    if not prompt:
        raise HTTPError(400, "prompt must not be empty", "prompt")
    return [engine.tokenizer(p).input_ids if isinstance(p, str) else list(p) for p in prompt]


def requested_logprobs(req: CompletionRequest | ChatCompletionRequest) -> int | None:
    """Top alternatives per token to return (None: no logprobs). Chat: ``logprobs`` + ``top_logprobs``;
    completions: ``logprobs`` = k."""
    if isinstance(req, CompletionRequest):
        return req.logprobs
    if req.top_logprobs is not None and not req.logprobs:
        raise HTTPError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
        raise HTTPError(400, f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {req.top_logprobs}", "top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None


def sampling_params(req: CompletionRequest | ChatCompletionRequest, max_tokens: int | None, prompts: list[list[int]],
                    max_model_len: int, structured: StructuredOutput | None = None,
                    vocab_size: int | None = None) -> SamplingParams:
    longest = max(len(p) for p in prompts)
    if longest >= max_model_len:
        raise HTTPError(400, f"This model's maximum context length is {max_model_len} tokens, but the prompt has "
                             f"{longest} tokens.", "prompt")
    if max_tokens is None:
        max_tokens = max_model_len - longest
    elif longest + max_tokens > max_model_len:
        raise HTTPError(400, f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                             f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} for the completion).",
                        "max_tokens")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    try:
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                              seed=req.seed, stop=stop, stop_token_ids=tuple(req.stop_token_ids or ()),
                              ignore_eos=req.ignore_eos, skip_special_tokens=req.skip_special_tokens, n=req.n,
                              logprobs=requested_logprobs(req), structured=structured,
                              prompt_logprobs=requested_prompt_logprobs(req),
                              num_speculative_tokens=req.num_speculative_tokens,
                              **logits_controls(req, vocab_size))
    except ConfigError as e:
        raise HTTPError(400, str(e), str(e).split(" ", 1)[0]) from None


def usage(prompts: list[PromptUsage]) -> dict:
    """OpenAI's usage block: each prompt counted once however many choices it has."""
    prompt = sum(p.num_prompt_tokens for p in prompts)
    completion = sum(p.num_output_tokens for p in prompts)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(p.num_cached_tokens for p in prompts)}}
