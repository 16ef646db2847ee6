"""Score text on the engine's own forward pass: per-token log-likelihood (perplexity), next-token argmax
(greedy agreement) and single-stream decode speed, with any ``EngineConfig`` (dtype, ``kv_cache_dtype``); and
sample continuations in batches (the text ``optimize prune`` heals on).

Other stages use it as a process, ``python -m serve.engine.scoring REQUEST.json RESULT.json``, and exchange
only JSON: the request holds ``engine`` (``EngineConfig`` fields), ``windows`` (token-id lists to score) and
optionally ``decode`` (``{"prompt_ids": [...], "num_tokens": N, "repeats": R}``) and ``sample``
(``{"prompts": [[...], ...], "max_tokens": N, "temperature": T, "seed": S}``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lorafleet.atomic import write_json
from lorafleet.config import EngineConfig
from serve.engine.engine import LLMEngine
from serve.engine.kv_math import cdiv
from serve.engine.sampling_params import SamplingParams
from serve.engine.scheduler import ScheduledSeq
from serve.engine.sequence import Sequence

#: prompt tokens per forward chunk; later chunks attend to the earlier ones through the (maybe quantized) cache
CHUNK_TOKENS = 256


@dataclass(frozen=True, slots=True)
class WindowScore:
    """Scores of one token window ``t[0..n-1]``: tokens 1..n-1 are predicted from their prefix."""

    nll_sum: float  #: -Σ log p(t[i] | t[:i]) over i = 1..n-1, in nats
    num_predicted: int  #: n - 1
    argmax_ids: list[int]  #: the most likely next token after each of t[0..n-2]


def score_window(engine: LLMEngine, token_ids: list[int], chunk_tokens: int = CHUNK_TOKENS) -> WindowScore:
    """Teacher-forced scoring of one window in blocks ``0..`` of the engine's cache (nothing else may run)."""
    runner, n = engine.runner, len(token_ids)
    bs = runner.layout.block_size
    if cdiv(n, bs) > runner.layout.num_kv_blocks:
        raise ValueError(f"window of {n} tokens does not fit the engine's {runner.layout.num_kv_blocks} KV blocks")
    seq = Sequence("score", list(token_ids), SamplingParams(max_tokens=1), block_table=list(range(cdiv(n, bs))))
    nll, argmax = 0.0, []
    targets = torch.tensor(token_ids[1:] + [0])
    for start in range(0, n, chunk_tokens):
        m = min(chunk_tokens, n - start)
        logp = torch.log_softmax(runner.chunk_logits(ScheduledSeq(seq, start, m)), dim=-1)
        rows = slice(0, m - 1) if start + m == n else slice(0, m)  # the last token predicts nothing
        picked = logp[rows].gather(1, targets[start:start + m][rows, None])
        nll -= float(picked.sum())
        argmax.extend(logp[rows].argmax(-1).tolist())
    return WindowScore(nll, n - 1, argmax)


def decode_tpot_ms(engine: LLMEngine, prompt_ids: list[int], num_tokens: int, repeats: int = 3) -> float:
    """Median time per output token (ms) of one greedy stream of ``num_tokens`` tokens after its prefill."""
    def run(max_tokens: int) -> float:
        t0 = time.perf_counter()
        engine.generate([list(prompt_ids)], SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
        return time.perf_counter() - t0

    run(4)  # warm-up
    samples = sorted((run(num_tokens + 1) - run(1)) / num_tokens * 1000 for _ in range(repeats))
    return samples[len(samples) // 2]


def sample_continuations(engine: LLMEngine, prompts: list[list[int]], max_tokens: int, temperature: float,
                         seed: int) -> list[list[int]]:
    """One sampled continuation of each prompt (all in flight together); prompt ``i`` samples with seed
    ``seed + i``, so equal prompts still give different text and a rerun gives the same text."""
    params = [SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed + i) for i in range(len(prompts))]
    return engine.generate([list(p) for p in prompts], params)


def _blocks_needed(windows: list[list[int]], decode: dict | None, sample: dict | None, cfg: EngineConfig) -> int:
    """KV blocks for the longest window or decode stream (they run one at a time), or for a full batch of the
    longest samples (they run ``max_num_seqs`` at a time), whichever is more."""
    one = [len(w) for w in windows] + ([len(decode["prompt_ids"]) + decode["num_tokens"] + 1] if decode else [])
    blocks = cdiv(max(one), cfg.block_size) if one else 0
    if sample and sample["prompts"]:
        longest = max(len(p) for p in sample["prompts"]) + sample["max_tokens"]
        blocks = max(blocks, min(len(sample["prompts"]), cfg.max_num_seqs) * cdiv(longest, cfg.block_size))
    return blocks + 1


def main(argv: list[str]) -> int:
    request_path, result_path = Path(argv[0]), Path(argv[1])
    request = json.loads(request_path.read_text())
    engine_fields = {"max_loras": 0, "enable_prefix_caching": False, **request["engine"]}
    windows, decode, sample = request.get("windows", []), request.get("decode"), request.get("sample")
    if engine_fields.get("num_kv_blocks") is None:  # just enough for what runs at once
        engine_fields["num_kv_blocks"] = _blocks_needed(windows, decode, sample, EngineConfig(**engine_fields))
    engine = LLMEngine(EngineConfig(**engine_fields))
    result: dict = {"windows": [asdict(score_window(engine, w)) for w in windows],
                    "kv_bytes_per_token": engine.layout.kv_bytes_per_token,
                    "kv_cache_dtype": engine.layout.kv_cache_dtype}
    if sample:
        result["samples"] = sample_continuations(engine, sample["prompts"], sample["max_tokens"], sample["temperature"],
                                                 sample.get("seed", 0))
    if decode:
        result["decode_tpot_ms"] = decode_tpot_ms(engine, decode["prompt_ids"], decode["num_tokens"], decode.get("repeats", 3))
    write_json(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
