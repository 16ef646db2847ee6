"""Settings of ``lorafleet bench soak`` (issue #10). Stdlib only.

A soak runs locust for a long time at a rate the fleet sustains, against a gateway in front of real
``lorafleet serve`` replicas, and watches for slow failures: errors, latency that drifts upwards, memory that
keeps growing, requests or KV blocks that are never given back. Every field is a flag; the defaults are the
30-minute run of record (``--minutes 30``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorafleet.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SoakConfig:
    """One soak run: the fleet it starts, the load it offers and the pass criteria it checks."""

    out_dir: Path = field(metadata={"help": "Directory for soak.json, samples.jsonl, the locust run and server logs."})
    minutes: float = field(default=30.0, metadata={"help": "Length of the soak after the calibration, warm-up "
                                                          "included, in minutes."})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Model name or checkpoint dir of the replicas."})
    replicas: int = field(default=2, metadata={"help": "lorafleet serve replicas behind the gateway."})
    num_adapters: int = field(default=3, metadata={"help": "Random LoRA adapters declared in the gateway (0: base "
                                                           "model only); requests spread over them and the base."})
    max_adapters: int = field(default=2, metadata={"help": "Adapters the gateway keeps loaded per replica (fewer "
                                                           "than --num-adapters makes it load and unload them)."})
    num_kv_blocks: int = field(default=256, metadata={"help": "KV blocks of 16 tokens per replica."})
    num_threads: int = field(default=1, metadata={"help": "Torch threads per replica."})
    users: int = field(default=4, metadata={"help": "Concurrent locust users (one request in flight each)."})
    think_time_s: float | None = field(default=None, metadata={
        "help": "Mean think time between a user's requests, in seconds; default: calibrated so the offered "
                "rate is --load-fraction of the measured capacity."})
    load_fraction: float = field(default=0.6, metadata={"help": "Share of the calibrated capacity (req/s at "
                                                                "--users with no think time) to offer."})
    calibrate_s: float = field(default=30.0, metadata={"help": "Length of the capacity calibration, in seconds "
                                                               "(skipped with --think-time)."})
    warmup_s: float | None = field(default=None, metadata={
        "help": "Leave the first T seconds out of drift and growth figures; default: 20% of the run, at most 5 min."})
    sample_interval_s: float = field(default=10.0, metadata={"help": "Seconds between RSS and metrics samples."})
    prompt_tokens: int = field(default=64, metadata={"help": "Median prompt length of the soak workload, in tokens."})
    output_tokens: int = field(default=24, metadata={"help": "Mean output length of the soak workload, in tokens."})
    max_rss_growth_pct: float = field(default=10.0, metadata={"help": "Pass: RSS growth of any process after warm-up."})
    max_ttft_drift_pct: float = field(default=20.0, metadata={"help": "Pass: p99 TTFT of the last third of the run "
                                                                      "over that of the first third."})
    json_path: Path | None = field(default=None, metadata={
        "help": "Reliability results to merge into (default: bench/results/reliability.json); runs of 30 "
                "minutes or more write `soak`, shorter ones `soak_short`."})
    record: bool = field(default=True, metadata={"help": "Merge the summary into the reliability results."})

    def __post_init__(self) -> None:
        problems = []
        if self.minutes <= 0:
            problems.append(f"minutes must be positive, got {self.minutes}")
        for name in ("replicas", "users", "num_kv_blocks", "num_threads", "prompt_tokens", "output_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.num_adapters < 0 or self.max_adapters < 1:
            problems.append("num-adapters must be >= 0 and max-adapters >= 1")
        if self.think_time_s is not None and self.think_time_s < 0:
            problems.append(f"think-time must be >= 0, got {self.think_time_s}")
        if not 0 < self.load_fraction <= 1:
            problems.append(f"load-fraction must be in (0, 1], got {self.load_fraction}")
        if self.calibrate_s < 5 or self.sample_interval_s <= 0:
            problems.append("calibrate must be at least 5 s and sample-interval positive")
        duration = 60 * self.minutes
        if self.warmup_s is not None and not 0 <= self.warmup_s < duration:
            problems.append(f"warmup must be in [0, {duration:g}) s, got {self.warmup_s}")
        if duration < 3 * self.sample_interval_s + self.effective_warmup_s:
            problems.append(f"a {self.minutes:g}-minute run leaves fewer than 3 samples after the warm-up; run longer "
                            "or sample more often")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def duration_s(self) -> float:
        return 60.0 * self.minutes

    @property
    def effective_warmup_s(self) -> float:
        """The warm-up left out of drift and growth figures."""
        return self.warmup_s if self.warmup_s is not None else min(300.0, 0.2 * self.duration_s)
