"""Engine-only step timings: the decode step at several batch sizes, base-only and with distinct adapters.

No HTTP, no detokenizing: this is the number the profile in ``bench/PROFILE.md`` reasons about, and the one to
compare before and after a change to the model runner, attention or LoRA kernels. Wall time is reported, and
on CPU also the process CPU time per step, which other jobs on the machine disturb much less.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lorafleet.config import EngineConfig
from lorafleet.loading import resolve_model


@dataclass(frozen=True, slots=True)
class StepTiming:
    batch: int
    adapters: int  #: distinct adapters across the batch (0 = base model only)
    wall_ms: float  #: median decode step
    cpu_ms: float  #: median process CPU time per step (CPU runs; wall time on CUDA)
    tok_s: float  #: batch / wall


def measure(model: str, device: str, dtype: str, batches: tuple[int, ...], num_adapters: int, steps: int,
            work_dir: Path, num_threads: int | None = None) -> list[StepTiming]:
    import torch

    from lorafleet.synthetic import make_random_lora_adapter
    from serve.engine.engine import LLMEngine
    from serve.engine.sampling_params import SamplingParams

    base = resolve_model(model)
    engine = LLMEngine(EngineConfig(model=str(base), dtype=dtype, device=device, max_loras=max(num_adapters, 1),
                                    max_lora_rank=8, num_threads=num_threads, max_num_seqs=max(batches)))
    names = []
    for i in range(num_adapters):
        path = work_dir / f"adapter{i}"
        if not path.exists():
            make_random_lora_adapter(base, path, rank=8, seed=1000 + i)
        engine.load_adapter(f"adapter{i}", path)
        names.append(f"adapter{i}")
    sync = torch.cuda.synchronize if engine.runner.device.type == "cuda" else (lambda: None)
    params = SamplingParams(max_tokens=steps + 8, ignore_eos=True, temperature=0.0)
    results = []
    for batch in batches:
        for use in ([0, num_adapters] if num_adapters else [0]):
            for i in range(batch):
                adapter = names[i % use] if use else None
                engine.add_request(f"b{batch}-{use}-{i}-{time.monotonic_ns()}", list(range(100, 132 + i % 16)), params,
                                   adapter)
            walls, cpus = [], []
            while engine.has_unfinished:
                sync()
                w, c = time.perf_counter(), time.process_time()
                engine.step()
                sync()
                walls.append(time.perf_counter() - w)
                cpus.append(time.process_time() - c)
            walls, cpus = walls[4:-2], cpus[4:-2]  # drop the prefill and the ragged tail
            wall = statistics.median(walls) * 1000
            results.append(StepTiming(batch, min(use, batch), round(wall, 3), round(statistics.median(cpus) * 1000, 3),
                                      round(batch / wall * 1000, 1)))
    return results


def main() -> None:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--adapters", type=int, default=8, help="distinct adapters for the LoRA rows (0: base only)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args.model, args.device, args.dtype, tuple(args.batch), args.adapters, args.steps, Path(tmp),
                       args.threads)
    text = json.dumps([asdict(r) for r in rows], indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = args.json.with_suffix(".tmp")
        tmp_path.write_text(text + "\n")
        tmp_path.replace(args.json)


if __name__ == "__main__":
    main()
