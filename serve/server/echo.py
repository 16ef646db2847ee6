"""Completions ``choices`` with OpenAI's ``echo`` and vLLM's ``prompt_logprobs``.

``echo: true`` puts the prompt before each choice's text; with ``logprobs: k`` the ``logprobs`` block covers
the prompt's tokens too (the first one ``null``: nothing predicts it), which is how lm-evaluation-harness
scores multiple-choice tasks. ``echo`` with ``max_tokens: 0`` returns the prompt alone (one token is run and
left out, as vLLM does). The prompt's logprobs come from the prefill (``SamplingParams.prompt_logprobs``).
"""

from __future__ import annotations

from typing import Any

from serve.engine.sampling_params import SamplingParams
from serve.server.generation import PromptRun
from serve.server.logprobs_format import TokenStrings, completion_logprobs, echo_completion_logprobs, prompt_logprobs_json
from serve.server.protocol import CompletionRequest


def prompt_texts(tokenizer: Any, prompt: Any, prompts: list[list[int]]) -> list[str]:
    """Each prompt's text: as sent when it was text, decoded when it was token ids."""
    sent = [prompt] if isinstance(prompt, str) else prompt
    return [p if isinstance(p, str) else tokenizer.decode(ids) for p, ids in zip(sent, prompts)]


def completion_choices(strings: TokenStrings, tokenizer: Any, req: CompletionRequest, prompts: list[list[int]],
                       runs: list[PromptRun], params: SamplingParams) -> list[dict[str, Any]]:
    """The ``choices`` of a non-streamed completions response."""
    echo_only = req.echo and req.max_tokens == 0
    texts = prompt_texts(tokenizer, req.prompt, prompts) if req.echo else [""] * len(prompts)
    choices = []
    for i, run in enumerate(runs):
        for j, c in enumerate(run.choices):
            entries = [] if echo_only else c.logprobs
            logprobs = None
            if params.logprobs is not None:
                logprobs = (echo_completion_logprobs(strings, prompts[i], run.prompt_logprobs, entries) if req.echo
                            else completion_logprobs(strings, entries))
            choice = {"index": i * params.n + j, "text": texts[i] + ("" if echo_only else c.text),
                      "finish_reason": "length" if echo_only else c.finish_reason, "logprobs": logprobs}
            if req.prompt_logprobs is not None:
                choice["prompt_logprobs"] = prompt_logprobs_json(strings, run.prompt_logprobs)
            choices.append(choice)
    return choices
