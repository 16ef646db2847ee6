"""Completions ``choices`` with OpenAI's ``echo`` and vLLM's ``prompt_logprobs``.

``echo: true`` puts the prompt before each choice's text; with ``logprobs: k`` the ``logprobs`` block covers
the prompt's tokens too (the first one ``null``: nothing predicts it), which is how lm-evaluation-harness
scores multiple-choice tasks. The output's part ends with the EOS / stop token id that ended a choice, as in
vLLM: lm-eval drops the last entry of a ``max_tokens: 1`` answer as the generated token. ``echo`` with
``max_tokens: 0`` returns the prompt alone (one token is run and left out, as vLLM does). The prompt's
logprobs come from the prefill (``SamplingParams.prompt_logprobs``). Streamed, each choice's first chunk
carries the prompt (:class:`StreamEcho`).
"""

from __future__ import annotations

from typing import Any

from serve.engine.engine import RequestOutput
from serve.engine.sampling_params import SamplingParams
from serve.server.generation import PromptRun
from serve.server.logprobs_format import TokenStrings, completion_logprobs, echo_completion_logprobs, prompt_logprobs_json
from serve.server.protocol import CompletionRequest


def prompt_texts(tokenizer: Any, req: CompletionRequest, prompts: list[list[int]]) -> list[str]:
    """Each prompt's text: as sent when it was text (and not truncated), else its token ids decoded."""
    sent = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    return [p if isinstance(p, str) and req.truncate_prompt_tokens is None else tokenizer.decode(ids)
            for p, ids in zip(sent, prompts)]


def completion_choices(strings: TokenStrings, tokenizer: Any, req: CompletionRequest, prompts: list[list[int]],
                       runs: list[PromptRun], params: SamplingParams) -> list[dict[str, Any]]:
    """The ``choices`` of a non-streamed completions response."""
    echo_only = req.echo and req.max_tokens == 0
    texts = prompt_texts(tokenizer, req, prompts) if req.echo else [""] * len(prompts)
    choices = []
    for i, run in enumerate(runs):
        for j, c in enumerate(run.choices):
            entries = [] if echo_only else c.logprobs + ([c.stop_logprob] if req.echo and c.stop_logprob else [])
            logprobs = None
            if params.logprobs is not None:
                logprobs = (echo_completion_logprobs(strings, prompts[i], run.prompt_logprobs, entries) if req.echo
                            else completion_logprobs(strings, entries))
            choice = {"index": i * params.n + j, "text": texts[i] + ("" if echo_only else c.text),
                      "finish_reason": "length" if echo_only else c.finish_reason, "logprobs": logprobs}
            if req.prompt_logprobs is not None:
                choice["prompt_logprobs"] = prompt_logprobs_json(strings, run.prompt_logprobs)
            if req.return_token_ids:  # vLLM's: the prompt's and the output's token ids
                choice["prompt_token_ids"], choice["token_ids"] = prompts[i], [] if echo_only else c.token_ids
            choices.append(choice)
    return choices


class StreamEcho:
    """``echo`` for streamed completions: each choice's first chunk carries the prompt (and, with
    ``logprobs``, the prompt's logprobs); later chunks' ``text_offset`` count the prompt's characters too."""

    def __init__(self, tokenizer: Any, req: CompletionRequest, prompts: list[list[int]]) -> None:
        self.prompts = prompts
        self.texts = prompt_texts(tokenizer, req, prompts)
        self.echo_only = req.max_tokens == 0
        self._prompt_chars: dict[int, int] = {}  # prompt index -> characters of its token strings
        self._started: set[tuple[int, int]] = set()

    def chunk(self, strings: TokenStrings, i: int, item: RequestOutput, choice_text: str,
              params: SamplingParams) -> tuple[str, dict[str, Any] | None, str | None] | None:
        """``(text, logprobs, finish_reason)`` of one output of prompt ``i`` (``choice_text``: the choice's
        text so far, this output included), or None when there is nothing to send."""
        first = (i, item.index) not in self._started
        self._started.add((i, item.index))
        if self.echo_only and not first:
            return None
        closing = [item.stop_logprob] if item.stop_logprob else []
        entries = [] if self.echo_only else [*(item.logprobs or ()), *closing]
        text = "" if self.echo_only else item.text
        if first:
            lp = None
            if params.logprobs is not None:
                lp = echo_completion_logprobs(strings, self.prompts[i], item.prompt_logprobs, entries)
                self._prompt_chars[i] = sum(len(strings.get(t)[0]) for t in self.prompts[i])
            return self.texts[i] + text, lp, "length" if self.echo_only else item.finish_reason
        if not item.text and not item.finished and not item.logprobs:
            return None
        lp = None
        if params.logprobs is not None:
            lp = completion_logprobs(strings, entries, self._prompt_chars.get(i, 0) + len(choice_text) - len(item.text))
        return text, lp, item.finish_reason
