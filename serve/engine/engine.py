"""The engine's step loop: requests in, per-step outputs out. Synchronous; see ``async_engine`` for the
thread that drives it under an asyncio server."""

from __future__ import annotations

import json
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from lorafleet.errors import ConfigError, NotFoundError
from lorafleet.loading import load_tokenizer, resolve_model
from serve.engine.adapter_slots import AdapterSlots
from serve.engine.block_manager import BlockManager
from lorafleet.config import EngineConfig
from serve.engine.detokenizer import IncrementalDetokenizer
from serve.engine.lora import LoraAdapter, load_peft_adapter
from serve.engine.model_runner import EngineLayout, ModelRunner
from serve.engine.sampling_params import SamplingParams
from serve.engine.scheduler import Scheduler, SchedulerStats
from serve.engine.sequence import Sequence, SeqStatus, SeqTimes


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """What one step produced for one request. ``text``/``token_ids`` are the *new* pieces of this step."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finished: bool
    finish_reason: str | None  #: "stop", "length" or "abort" once finished
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    times: SeqTimes | None = None  #: set on the final output


@dataclass(frozen=True, slots=True)
class EngineStats:
    scheduler: SchedulerStats
    num_pending_adapter: int  #: requests waiting for a free LoRA slot
    resident_adapters: tuple[str, ...]
    registered_adapters: tuple[str, ...]


@dataclass(slots=True)
class _Request:
    seq: Sequence
    detok: IncrementalDetokenizer
    pending_ids: list[int] = field(default_factory=list)


def check_prompt(prompt_token_ids: list[int], layout: EngineLayout) -> None:
    """Raise :class:`ConfigError` for an empty prompt, one that leaves no room to generate, or bad token ids."""
    n, cap = len(prompt_token_ids), layout.max_model_len
    if n == 0:
        raise ConfigError("prompt is empty")
    if n >= cap:
        raise ConfigError(f"prompt is {n} tokens but the model's context length is {cap} (prompt + at least 1 output token)")
    bad = next((t for t in prompt_token_ids if not 0 <= t < layout.vocab_size), None)
    if bad is not None:
        raise ConfigError(f"token id {bad} is outside the vocabulary (size {layout.vocab_size})")


class LLMEngine:
    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.checkpoint = resolve_model(cfg.model)
        self.tokenizer = load_tokenizer(self.checkpoint)
        self.runner = ModelRunner(cfg, self.checkpoint)
        self.layout = self.runner.layout
        self.block_manager = BlockManager(self.layout.num_kv_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, cfg.max_num_seqs, cfg.max_num_batched_tokens)
        self.eos_token_ids = self._eos_ids()
        self.adapters: dict[str, LoraAdapter] = {}
        self.slots = AdapterSlots(cfg.max_loras)
        self._requests: dict[str, _Request] = {}
        self._waiting_for_slot: deque[Sequence] = deque()

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        gen = self.checkpoint / "generation_config.json"
        if gen.is_file():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return frozenset(ids)

    # -- requests ---------------------------------------------------------------------------------------
    def check_request(self, prompt_token_ids: list[int], adapter: str | None) -> None:
        """Raise the error a request would get, without queuing it."""
        check_prompt(prompt_token_ids, self.layout)
        if adapter is not None and adapter not in self.adapters:
            raise NotFoundError(f"adapter '{adapter}' is not loaded")

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, adapter: str | None = None) -> None:
        self.check_request(prompt_token_ids, adapter)
        if request_id in self._requests:
            raise ConfigError(f"request id '{request_id}' is already running")
        seq = Sequence(
            seq_id=request_id,
            prompt_token_ids=list(prompt_token_ids),
            params=params,
            adapter=adapter,
            adapter_key=zlib.crc32(adapter.encode()) + 1 if adapter else 0,
            max_len=min(self.layout.max_model_len, len(prompt_token_ids) + params.max_tokens),
        )
        detok = IncrementalDetokenizer(self.tokenizer, seq.prompt_token_ids, params.stop, params.skip_special_tokens)
        self._requests[request_id] = _Request(seq, detok)
        if adapter is None or self._acquire_slot(seq):
            self.scheduler.add(seq)
        else:
            self._waiting_for_slot.append(seq)

    def abort(self, request_id: str) -> bool:
        """Cancel a request. Returns whether it was known."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return False
        seq = req.seq
        if seq in self._waiting_for_slot:
            self._waiting_for_slot.remove(seq)
        else:
            self.scheduler.abort(request_id)
            self._release_slot(seq)
        seq.status = SeqStatus.FINISHED_ABORTED
        self.runner.release(request_id)
        return True

    @property
    def request_ids(self) -> list[str]:
        return list(self._requests)

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished or bool(self._waiting_for_slot)

    # -- adapters ---------------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: Path) -> None:
        """Register a PEFT adapter (read to host memory now; put in a slot when first used)."""
        if self.cfg.max_loras == 0:
            raise ConfigError("LoRA is disabled (max_loras=0)")
        adapter = load_peft_adapter(name, Path(path), self.runner.spec, self.cfg.max_lora_rank)
        old = self.adapters.get(name)
        if old is not None and not self.unload_adapter(name):
            raise ConfigError(f"adapter '{name}' is in use and cannot be replaced now")
        self.adapters[name] = adapter

    def unload_adapter(self, name: str) -> bool:
        """Forget an adapter. Returns ``False`` (and keeps it) while requests use it."""
        if name not in self.adapters:
            raise NotFoundError(f"adapter '{name}' is not loaded")
        if any(r.seq.adapter == name for r in self._requests.values()):
            return False
        slot = self.slots.evict(name)
        if slot is not None:
            self.runner.set_adapter_slot(slot, None)
        del self.adapters[name]
        return True

    def _acquire_slot(self, seq: Sequence) -> bool:
        got = self.slots.try_acquire(seq.adapter)
        if got is None:
            return False
        if got.needs_load:
            self.runner.set_adapter_slot(got.slot, self.adapters[seq.adapter])
        seq.lora_slot = got.slot
        return True

    def _release_slot(self, seq: Sequence) -> None:
        if seq.adapter is not None and seq.lora_slot >= 0:
            self.slots.release(seq.adapter)
            seq.lora_slot = -1

    # -- the step ---------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one scheduler decision + forward pass; return outputs of requests that progressed."""
        while self._waiting_for_slot and self._acquire_slot(self._waiting_for_slot[0]):
            self.scheduler.add(self._waiting_for_slot.popleft())
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        result = self.runner.execute(sched)
        self.scheduler.commit(sched)
        now = time.monotonic()
        outputs = []
        for item in sched.scheduled:
            token = result.sampled.get(item.seq.seq_id)
            if token is not None:
                outputs.append(self._append_token(self._requests[item.seq.seq_id], token, now))
        return outputs

    def _append_token(self, req: _Request, token: int, now: float) -> RequestOutput:
        seq, params = req.seq, req.seq.params
        seq.token_ids.append(token)
        seq.times.first_token = seq.times.first_token or now
        seq.times.last_token = now
        status = None
        if token in params.stop_token_ids or (token in self.eos_token_ids and not params.ignore_eos):
            status = SeqStatus.FINISHED_STOPPED
            text = ""
        else:
            text = req.detok.add(token)
            if req.detok.stopped:
                status = SeqStatus.FINISHED_STOPPED
        if status is None and (seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= seq.max_len):
            status = SeqStatus.FINISHED_LENGTH_CAPPED
        if status is not None:
            text += req.detok.flush()
            self._finish(seq, status, now)
        return RequestOutput(
            request_id=seq.seq_id,
            text=text,
            token_ids=(token,),
            finished=status is not None,
            finish_reason=status.finish_reason if status else None,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_output_tokens=seq.num_output_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            times=seq.times if status else None,
        )

    def _finish(self, seq: Sequence, status: SeqStatus, now: float) -> None:
        seq.times.finished = now
        self.scheduler.finish(seq, status)
        self._release_slot(seq)
        self.runner.release(seq.seq_id)
        del self._requests[seq.seq_id]

    def stats(self) -> EngineStats:
        return EngineStats(
            scheduler=self.scheduler.stats(),
            num_pending_adapter=len(self._waiting_for_slot),
            resident_adapters=tuple(self.slots.resident),
            registered_adapters=tuple(self.adapters),
        )

    # -- offline use ------------------------------------------------------------------------------------
    def generate(
        self, prompts: list[list[int]], params: SamplingParams, adapters: list[str | None] | None = None
    ) -> list[list[int]]:
        """Run prompts (token ids) to completion together; return each one's output token ids."""
        adapters = adapters or [None] * len(prompts)
        ids = [f"offline-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
        results: dict[str, list[int]] = {i: [] for i in ids}
        for rid, prompt, adapter in zip(ids, prompts, adapters):
            self.add_request(rid, prompt, params, adapter)
        while self.has_unfinished:
            for out in self.step():
                results[out.request_id].extend(out.token_ids)
        return [results[i] for i in ids]
