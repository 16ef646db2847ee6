"""Out-of-range request fields (issue #24), shared by the quick checks (tests/serve/server/test_hardening.py)
and the hostile-input suite (tests/reliability/test_hostile.py): each case is a path, what it adds to a
small valid body, and the field the 400 must name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BIG = 2**70  #: a number no field may hold
SEED_BIG = 2**80  #: the seed of the issue (1208925819614629174706176)


@dataclass(frozen=True, slots=True)
class FieldCase:
    label: str
    path: str  #: /v1/completions or /v1/chat/completions
    extra: dict[str, Any]  #: merged into the valid body
    param: str  #: the field the 400 names

    def body(self, model: str) -> dict[str, Any]:
        if self.path == "/v1/completions":
            return {"model": model, "prompt": "Hi", "max_tokens": 2, **self.extra}
        return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **self.extra}


_C, _CHAT = "/v1/completions", "/v1/chat/completions"
FIELD_CASES: tuple[FieldCase, ...] = (
    FieldCase("seed 2^80", _C, {"seed": SEED_BIG}, "seed"),
    FieldCase("seed -2^80", _C, {"seed": -SEED_BIG}, "seed"),
    FieldCase("seed 2^63", _C, {"seed": 2**63}, "seed"),
    FieldCase("chat seed 2^80", _CHAT, {"seed": SEED_BIG}, "seed"),
    FieldCase("top_k 2^70", _C, {"top_k": BIG}, "top_k"),
    FieldCase("top_k vocab+1", _C, {"top_k": 49_153}, "top_k"),
    FieldCase("top_k -2", _C, {"top_k": -2}, "top_k"),
    FieldCase("n 2^70", _C, {"n": BIG}, "n"),
    FieldCase("n -1", _C, {"n": -1}, "n"),
    FieldCase("temperature 1e308", _C, {"temperature": 1e308}, "temperature"),
    FieldCase("temperature -2^70", _CHAT, {"temperature": -BIG}, "temperature"),
    FieldCase("top_p 2^70", _C, {"top_p": BIG}, "top_p"),
    FieldCase("top_p -1", _C, {"top_p": -1}, "top_p"),
    FieldCase("max_tokens 2^70", _C, {"max_tokens": BIG}, "max_tokens"),
    FieldCase("max_tokens -2^70", _C, {"max_tokens": -BIG}, "max_tokens"),
    FieldCase("chat max_tokens 2^70", _CHAT, {"max_tokens": BIG}, "max_tokens"),
    FieldCase("stop_token_ids [2^70]", _C, {"stop_token_ids": [BIG]}, "stop_token_ids"),
    FieldCase("stop_token_ids [-1]", _CHAT, {"stop_token_ids": [-1]}, "stop_token_ids"),
    FieldCase("logprobs 2^70", _C, {"logprobs": BIG}, "logprobs"),
    FieldCase("logprobs -1", _C, {"logprobs": -1}, "logprobs"),
    FieldCase("top_logprobs 2^70", _CHAT, {"logprobs": True, "top_logprobs": BIG}, "top_logprobs"),
    FieldCase("num_speculative_tokens 2^70", _C, {"num_speculative_tokens": BIG}, "num_speculative_tokens"),
    FieldCase("num_speculative_tokens -1", _C, {"num_speculative_tokens": -1}, "num_speculative_tokens"),
    FieldCase("prompt token id 2^70", _C, {"prompt": [1, BIG]}, "prompt"),
    FieldCase("prompt token id -1", _C, {"prompt": [[5], [-1]]}, "prompt"),
    FieldCase("logit_bias key 2^70", _C, {"logit_bias": {str(BIG): 1}}, "logit_bias"),
    FieldCase("logit_bias key -1", _CHAT, {"logit_bias": {"-1": 1}}, "logit_bias"),
    FieldCase("logit_bias value 2^70", _C, {"logit_bias": {"5": BIG}}, "logit_bias"),
    FieldCase("min_tokens 2^70", _C, {"min_tokens": BIG}, "min_tokens"),
    FieldCase("min_tokens above max_tokens", _CHAT, {"min_tokens": 3}, "min_tokens"),
    FieldCase("min_tokens -1", _C, {"min_tokens": -1}, "min_tokens"),
    FieldCase("min_p 2^70", _C, {"min_p": BIG}, "min_p"),
    FieldCase("repetition_penalty -1", _C, {"repetition_penalty": -1}, "repetition_penalty"),
    FieldCase("presence_penalty 2^70", _CHAT, {"presence_penalty": BIG}, "presence_penalty"),
    FieldCase("frequency_penalty -2^70", _C, {"frequency_penalty": -BIG}, "frequency_penalty"),
    FieldCase("prompt_logprobs 2^70", _C, {"prompt_logprobs": BIG}, "prompt_logprobs"),
    FieldCase("1,000 stop strings", _C, {"stop": ["x"] * 1000}, "stop"),
    FieldCase("100,000-character stop string", _CHAT, {"stop": "x" * 100_000}, "stop"),
)
