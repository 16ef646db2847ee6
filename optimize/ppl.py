"""Perplexity and next-token predictions of a checkpoint on held-out text, on one of three backends.

* ``hf``: transformers (fp32 activations); loads plain and bitsandbytes checkpoints.
* ``engine``: lorafleet's engine, any ``dtype`` / ``kv_cache_dtype``; loads plain and int8-engine checkpoints.
  It runs as ``python -m serve.engine.scoring`` (a separate process: stages never import each other).
* ``vllm``: a vLLM-CPU server's ``prompt_logprobs``; loads compressed-tensors checkpoints (w4a16, w8a8, KV fp8).
* ``auto``: the backend that serves the checkpoint's format (see :func:`auto_backend`).

All backends score the same token windows, so their perplexities are comparable.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafleet.config.optimize import EvalConfig
from lorafleet.errors import ArtifactError, BackendError
from lorafleet.loading import load_hf_config, load_tokenizer, resolve_model
from optimize.textdata import eval_windows

ENGINE_QUANT_METHOD = "lorafleet-int8"  #: quantization_config.quant_method of int8-engine checkpoints
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class PplResult:
    """Perplexity of one checkpoint on one backend."""

    model: str
    backend: str
    ppl: float  #: exp(mean NLL per predicted token)
    num_tokens: int  #: tokens predicted
    num_windows: int
    argmax_ids: list[list[int]] = field(repr=False)  #: per window, the most likely next token at each position
    extra: dict[str, Any] = field(default_factory=dict)  #: backend facts (KV bytes/token, vLLM answer, ...)

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "backend": self.backend, "ppl": self.ppl, "num_tokens": self.num_tokens,
                "num_windows": self.num_windows, **self.extra}


def checkpoint_format(path: Path) -> str:
    """plain | engine-int8 | kv-scales (plain weights, calibrated KV scales) | compressed-tensors | bitsandbytes."""
    qc = load_hf_config(path).get("quantization_config") or {}
    method = qc.get("quant_method")
    if method is None:
        return "plain"
    if method == ENGINE_QUANT_METHOD:
        return "engine-int8"
    if method == "compressed-tensors":
        return "kv-scales" if not qc.get("config_groups") and qc.get("kv_cache_scheme") else "compressed-tensors"
    return "bitsandbytes" if method == "bitsandbytes" else method


def auto_backend(path: Path) -> str:
    """engine for int8-engine checkpoints, vllm for compressed-tensors (and KV-scale) ones, hf otherwise."""
    fmt = checkpoint_format(path)
    return {"engine-int8": "engine", "compressed-tensors": "vllm", "kv-scales": "vllm"}.get(fmt, "hf")


def engine_loads(path: Path) -> bool:
    """Whether lorafleet's engine can load the checkpoint (plain weights, int8-engine, KV scales)."""
    return checkpoint_format(path) in ("plain", "engine-int8", "kv-scales")


def evaluate(model: str, cfg: EvalConfig) -> PplResult:
    """Score ``model`` on the held-out windows of ``cfg``."""
    path = resolve_model(model)
    backend = auto_backend(path) if cfg.backend == "auto" else cfg.backend
    windows = eval_windows(load_tokenizer(path), cfg.data, cfg.window_tokens)
    scorer = {"hf": _score_hf, "engine": _score_engine, "vllm": _score_vllm}[backend]
    scores, extra = scorer(path, windows, cfg)
    nll = sum(s[0] for s in scores)
    n = sum(s[1] for s in scores)
    return PplResult(str(path), backend, math.exp(nll / n), n, len(windows), [s[2] for s in scores], extra)


def _score_hf(path: Path, windows: list[list[int]], cfg: EvalConfig):
    import torch
    from rich.progress import track
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar says what is scored
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if auto_backend(path) != "hf":
        raise ArtifactError(f"{path}: transformers cannot load this format; use --backend {auto_backend(path)}")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu").eval()
    scores = []
    with torch.inference_mode():
        for w in track(windows, description=f"scoring {path.name} (hf)", transient=True):
            logits = model(torch.tensor([w])).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)
            picked = logp.gather(1, torch.tensor(w[1:])[:, None])
            scores.append((-float(picked.sum()), len(w) - 1, logp.argmax(-1).tolist()))
    return scores, {}


def run_engine_scoring(path: Path, cfg: EvalConfig, windows: list[list[int]], decode: dict | None = None,
                       sample: dict | None = None) -> dict:
    """Run ``serve.engine.scoring`` in a subprocess of this Python (``sample``: continuations to sample, see
    that module); its JSON result."""
    engine = {"model": str(path), "dtype": cfg.dtype, "device": "cpu", "kv_cache_dtype": cfg.kv_cache_dtype}
    if cfg.num_threads:
        engine["num_threads"] = cfg.num_threads
    with tempfile.TemporaryDirectory(prefix="lorafleet-score-") as tmp:
        req, out = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps({"engine": engine, "windows": windows, "decode": decode, "sample": sample}))
        proc = subprocess.run([sys.executable, "-m", "serve.engine.scoring", str(req), str(out)], cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            raise BackendError(f"engine scoring of {path} failed: {lines[-1] if lines else proc.returncode}")
        return json.loads(out.read_text())


def _score_engine(path: Path, windows: list[list[int]], cfg: EvalConfig):
    from rich.console import Console

    with Console(stderr=True).status(f"scoring {path.name} on the engine ({cfg.dtype}, KV {cfg.kv_cache_dtype})"):
        res = run_engine_scoring(path, cfg, windows)
    scores = [(w["nll_sum"], w["num_predicted"], w["argmax_ids"]) for w in res["windows"]]
    return scores, {"kv_cache_dtype": res["kv_cache_dtype"], "kv_bytes_per_token": res["kv_bytes_per_token"],
                    "dtype": cfg.dtype}


def _score_vllm(path: Path, windows: list[list[int]], cfg: EvalConfig):
    from rich.progress import Progress

    from optimize.vllm_server import VllmServer

    python = cfg.vllm_python if Path(cfg.vllm_python).is_absolute() else str(ROOT / cfg.vllm_python)
    log = Path(tempfile.mkdtemp(prefix="lorafleet-vllm-")) / "vllm.log"
    with Progress(transient=True) as bar:
        task = bar.add_task(f"starting vLLM on {path.name}", total=len(windows) + 1)
        with VllmServer(python, path, log, dtype=cfg.dtype, kv_cache_dtype=cfg.kv_cache_dtype,
                        max_model_len=max(1024, cfg.window_tokens + 8)) as server:
            facts = server.facts()
            bar.update(task, advance=1, description=f"scoring {path.name} (vllm)")
            scores = []
            for w in windows:
                scores.append(server.score(w))
                bar.advance(task)
    return scores, {"dtype": cfg.dtype, "kv_cache_dtype": cfg.kv_cache_dtype, "vllm_answer": facts.answer,
                    "vllm_completion": facts.completion,
                    "vllm_kv_cache_tokens": facts.kv_cache_tokens, "vllm_log": facts.log_path}


def greedy_agreement(a: PplResult, b: PplResult) -> float:
    """Share of held-out positions where both checkpoints predict the same next token."""
    pairs = [(x, y) for wa, wb in zip(a.argmax_ids, b.argmax_ids) for x, y in zip(wa, wb)]
    if not pairs:
        raise ArtifactError("no positions to compare")
    return sum(x == y for x, y in pairs) / len(pairs)
