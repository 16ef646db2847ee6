"""The engine's step loop: requests in, per-step outputs out. Synchronous; see ``async_engine`` for the
thread that drives it under an asyncio server."""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from lorafleet.errors import ConfigError, NotFoundError
from lorafleet.loading import load_tokenizer, resolve_model
from serve.engine.adapter_slots import AdapterSlots
from serve.engine.block_manager import BlockManager
from lorafleet.config import EngineConfig
from serve.engine.detokenizer import IncrementalDetokenizer
from serve.engine.logprobs import TokenLogprob
from serve.engine.lora import LoraAdapter, load_peft_adapter
from serve.engine.model_runner import EngineLayout, ModelRunner
from serve.engine.penalties import tokenize_bad_words
from serve.engine.sampling_params import SamplingParams
from serve.engine.scheduler import Scheduler, SchedulerStats
from serve.engine.sequence import Sequence, SeqStatus, SeqTimes
from serve.engine.speculative import SpecStats, propose_ngram
from serve.engine.structured import GrammarCache


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """What one step produced for one choice of a request. ``text``/``token_ids`` are the *new* pieces of this
    step (several tokens when speculated drafts were accepted)."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finished: bool  #: this choice finished (the request is done once all ``n`` choices are)
    finish_reason: str | None  #: "stop", "length" or "abort" once finished
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    times: SeqTimes | None = None  #: set on the final output
    index: int = 0  #: choice index, 0 .. n - 1
    #: raw logprobs of the new tokens that are part of the text (not of a closing EOS / stop token id), when
    #: the request asked for them
    logprobs: tuple[TokenLogprob, ...] | None = None
    #: raw logprobs of the prompt's tokens (``None`` for the first), on the choice's first output when the
    #: request asked for ``prompt_logprobs``
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    #: raw logprob of the EOS / stop token id that ended the choice (not in ``logprobs``), when the request
    #: asked for logprobs; completions ``echo`` lists it last, as vLLM does
    stop_logprob: TokenLogprob | None = None


@dataclass(frozen=True, slots=True)
class EngineStats:
    scheduler: SchedulerStats
    num_pending_adapter: int  #: requests waiting for a free LoRA slot
    resident_adapters: tuple[str, ...]
    registered_adapters: tuple[str, ...]
    spec_decode: SpecStats = field(default_factory=SpecStats)  #: speculative-decoding counters (a snapshot)


@dataclass(slots=True)
class _Choice:
    seq: Sequence
    detok: IncrementalDetokenizer
    has_output: bool = False  #: the first output (which carries the prompt logprobs) was returned


@dataclass(slots=True)
class _Request:
    request_id: str
    choices: list[_Choice]
    num_unfinished: int
    holds_slot: bool = False  #: pins a LoRA slot (released when the last choice finishes)
    #: prompt logprobs by prompt position (index 0 stays None), filled chunk by chunk during the prefill
    prompt_logprobs: list[TokenLogprob | None] | None = None


def cache_key(adapter: str | None, cache_salt: str | None) -> int:
    """Prefix-cache key of a request's blocks: 0 for the base model, else a stable id of its adapter and
    cache salt, so that only requests with the same adapter and salt share blocks (vLLM's ``cache_salt``
    keeps other tenants from probing which prompts are cached)."""
    if adapter is None and cache_salt is None:
        return 0
    key = zlib.crc32(adapter.encode()) + 1 if adapter else 0
    if cache_salt is not None:
        salt = int.from_bytes(hashlib.sha256(cache_salt.encode()).digest()[:8], "little")
        key = (key << 64) | salt | 1 << 63  # (never 0: a salted base-model request is not the base key)
    return key


def check_params(params: SamplingParams, layout: EngineLayout) -> None:
    """Raise :class:`ConfigError` for token ids in ``params`` (logit_bias, bad_words_token_ids,
    allowed_token_ids) outside the vocabulary."""
    bad = next((t for t, _ in params.logit_bias if t >= layout.vocab_size), None)
    if bad is not None:
        raise ConfigError(f"logit_bias: token id {bad} is outside the vocabulary (size {layout.vocab_size})")
    bad = next((t for w in params.bad_words_token_ids for t in w if not 0 <= t < layout.vocab_size), None)
    if bad is not None:
        raise ConfigError(f"bad_words: token id {bad} is outside the vocabulary (size {layout.vocab_size})")
    bad = next((t for t in params.allowed_token_ids if not 0 <= t < layout.vocab_size), None)
    if bad is not None:
        raise ConfigError(f"allowed_token_ids: token id {bad} is outside the vocabulary (size {layout.vocab_size})")


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
        self.grammars = GrammarCache(self.tokenizer, self.layout.vocab_size, self.eos_token_ids)
        self.spec_stats = SpecStats()
        self.adapters: dict[str, LoraAdapter] = {}
        self.slots = AdapterSlots(cfg.max_loras)
        self._requests: dict[str, _Request] = {}
        self._choices: dict[str, tuple[_Request, _Choice]] = {}  # by sequence id
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
        """Queue a request of ``params.n`` choices. Raises :class:`ConfigError` (bad prompt, duplicate id, a
        grammar that cannot be compiled) or :class:`NotFoundError` (unknown adapter) without queuing it."""
        self.check_request(prompt_token_ids, adapter)
        if request_id in self._requests:
            raise ConfigError(f"request id '{request_id}' is already running")
        check_params(params, self.layout)
        guides = [self.grammars.guide(params.structured) if params.structured else None for _ in range(params.n)]
        bad_words = params.bad_words_token_ids + tokenize_bad_words(self.tokenizer, params.bad_words)
        stop_ids = tuple(sorted({*params.stop_token_ids, *(() if params.ignore_eos else self.eos_token_ids)}))
        seqs = [Sequence(
            seq_id=request_id if i == 0 else f"{request_id}#{i}",
            prompt_token_ids=list(prompt_token_ids),
            params=params,
            adapter=adapter,
            adapter_key=cache_key(adapter, params.cache_salt),
            max_len=min(self.layout.max_model_len, len(prompt_token_ids) + params.max_tokens),
            request_id=request_id,
            index=i,
            guide=guides[i],
            bad_words_token_ids=bad_words,
            min_tokens_stop_ids=stop_ids if params.min_tokens else (),
        ) for i in range(params.n)]
        first = seqs[0]
        first.forks = seqs[1:]  # they start from its computed prompt (shared KV blocks)
        choices = [_Choice(seq, IncrementalDetokenizer(self.tokenizer, seq.prompt_token_ids, params.stop,
                                                       params.skip_special_tokens, params.include_stop_str_in_output))
                   for seq in seqs]
        req = _Request(request_id, choices, len(choices))
        if params.prompt_logprobs is not None:
            req.prompt_logprobs = [None] * len(prompt_token_ids)
        self._requests[request_id] = req
        self._choices.update((c.seq.seq_id, (req, c)) for c in choices)
        if adapter is None or self._acquire_slot(req):
            self.scheduler.add(first)
        else:
            self._waiting_for_slot.append(first)

    def abort(self, request_id: str) -> bool:
        """Cancel a request (all its choices). Returns whether it was known."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return False
        for choice in req.choices:
            seq = choice.seq
            if seq in self._waiting_for_slot:
                self._waiting_for_slot.remove(seq)
            elif not seq.is_finished:
                self.scheduler.abort(seq.seq_id)  # unknown there (None) while it waits in its parent's forks
            seq.forks = []
            seq.status = SeqStatus.FINISHED_ABORTED
            self.runner.release(seq.seq_id)
            self._choices.pop(seq.seq_id, None)
        self._release_slot(req)
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
        if any(r.choices[0].seq.adapter == name for r in self._requests.values()):
            return False
        slot = self.slots.evict(name)
        if slot is not None:
            self.runner.set_adapter_slot(slot, None)
        del self.adapters[name]
        return True

    def _acquire_slot(self, req: _Request) -> bool:
        adapter = req.choices[0].seq.adapter
        got = self.slots.try_acquire(adapter)
        if got is None:
            return False
        if got.needs_load:
            self.runner.set_adapter_slot(got.slot, self.adapters[adapter])
        for choice in req.choices:
            choice.seq.lora_slot = got.slot
        req.holds_slot = True
        return True

    def _release_slot(self, req: _Request) -> None:
        if req.holds_slot:
            self.slots.release(req.choices[0].seq.adapter)
            req.holds_slot = False
            for choice in req.choices:
                choice.seq.lora_slot = -1

    # -- the step ---------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one scheduler decision + forward pass; return outputs of choices that progressed."""
        while self._waiting_for_slot and self._acquire_slot(self._choices[self._waiting_for_slot[0].seq_id][0]):
            self.scheduler.add(self._waiting_for_slot.popleft())
        self._propose_drafts()
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        result = self.runner.execute(sched)
        for seq_id, chunk in result.prompt_logprobs.items():
            req = self._choices[seq_id][0]
            req.prompt_logprobs[chunk.first_position:chunk.first_position + len(chunk.entries)] = chunk.entries
        accepted = {it.seq.seq_id: len(result.sampled.get(it.seq.seq_id, ())) - 1
                    for it in sched.scheduled if it.num_draft_tokens}
        self.scheduler.commit(sched, accepted)
        progressed: list[Sequence] = []
        for item in sched.scheduled:
            seq = item.seq
            if item.num_draft_tokens:
                self.spec_stats.record(item.num_draft_tokens, accepted[seq.seq_id])
            seq.draft_token_ids = []
            if seq.seq_id in result.sampled:
                progressed.append(seq)
                if seq.forks:  # its prompt is computed: the other choices start from its blocks
                    forks, seq.forks = seq.forks, []
                    self.scheduler.fork(seq, forks)
                    progressed.extend(forks)
        now = time.monotonic()
        return [self._append_tokens(seq, result.sampled[seq.seq_id], result.logprobs.get(seq.seq_id), now)
                for seq in progressed]

    def _num_speculative_tokens(self, seq: Sequence) -> int:
        """Draft tokens ``seq`` may verify next step: its request's setting (else the engine default), capped
        so that accepted drafts plus the bonus token never pass max_tokens or the context length."""
        p = seq.params
        k = self.cfg.num_speculative_tokens if p.num_speculative_tokens is None else p.num_speculative_tokens
        room = min(p.max_tokens - seq.num_output_tokens, seq.max_len - seq.num_tokens) - 1
        return max(0, min(k, room))

    def _propose_drafts(self) -> None:
        """Prompt-lookup drafts for running decodes that speculate (not constrained ones: the grammar state
        would have to be rolled back on rejection; not ones with penalties, biases or bans either)."""
        for seq in self.scheduler.running:
            # verify_drafts applies no grammar, penalty, bias, ban or min-p
            plain = seq.guide is None and not seq.params.has_logits_adjust and not seq.params.min_p
            k = self._num_speculative_tokens(seq) if plain and seq.num_uncomputed_tokens == 1 else 0
            seq.draft_token_ids = propose_ngram(seq.token_ids, k, self.cfg.prompt_lookup_max,
                                                self.cfg.prompt_lookup_min) if k else []

    def _append_tokens(self, seq: Sequence, tokens: list[int], logprobs: list[TokenLogprob] | None,
                       now: float) -> RequestOutput:
        """Append a step's tokens to ``seq``, stopping at the first one that ends it (later ones are dropped)."""
        req, choice = self._choices[seq.seq_id]
        params = seq.params
        seq.times.first_token = seq.times.first_token or now
        seq.times.last_token = now
        status, text, kept, closing = None, "", [], None
        for j, token in enumerate(tokens):
            seq.token_ids.append(token)
            if seq.guide is not None:
                seq.guide.accept(token)
            if token in params.stop_token_ids or (token in self.eos_token_ids and not params.ignore_eos):
                status, closing = SeqStatus.FINISHED_STOPPED, j
            else:
                kept.append(j)
                text += choice.detok.add(token)
                if choice.detok.stopped or (seq.guide is not None and seq.guide.is_terminated):
                    status = SeqStatus.FINISHED_STOPPED
            if status is None and (seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= seq.max_len):
                status = SeqStatus.FINISHED_LENGTH_CAPPED
            if status is not None:
                break
        appended = tuple(tokens[:j + 1])
        prompt_logprobs = None
        if not choice.has_output and req.prompt_logprobs is not None:
            prompt_logprobs = tuple(req.prompt_logprobs)
        choice.has_output = True
        if status is not None:
            text += choice.detok.flush()
            self._finish(req, seq, status, now)
        return RequestOutput(
            request_id=req.request_id,
            text=text,
            token_ids=appended,
            finished=status is not None,
            finish_reason=status.finish_reason if status else None,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_output_tokens=seq.num_output_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            times=seq.times if status else None,
            index=seq.index,
            logprobs=tuple(logprobs[k] for k in kept) if logprobs is not None else None,
            prompt_logprobs=prompt_logprobs,
            stop_logprob=logprobs[closing] if logprobs is not None and closing is not None else None,
        )

    def _finish(self, req: _Request, seq: Sequence, status: SeqStatus, now: float) -> None:
        seq.times.finished = now
        self.scheduler.finish(seq, status)
        self.runner.release(seq.seq_id)
        del self._choices[seq.seq_id]
        req.num_unfinished -= 1
        if req.num_unfinished == 0:
            self._release_slot(req)
            del self._requests[req.request_id]

    def stats(self) -> EngineStats:
        return EngineStats(
            scheduler=self.scheduler.stats(),
            num_pending_adapter=len(self._waiting_for_slot),
            resident_adapters=tuple(self.slots.resident),
            registered_adapters=tuple(self.adapters),
            spec_decode=replace(self.spec_stats),
        )

    # -- offline use ------------------------------------------------------------------------------------
    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
        adapters: list[str | None] | None = None,
    ) -> list[list[int]]:
        """Run prompts (token ids) to completion together; return each one's output token ids. ``params`` is one
        for all prompts or one per prompt (e.g. a seed each); ``n`` must be 1 (use :meth:`add_request` and
        :meth:`step` for several choices)."""
        per_prompt = params if isinstance(params, list) else [params] * len(prompts)
        if any(p.n != 1 for p in per_prompt):
            raise ConfigError("generate() returns one output per prompt; n must be 1")
        adapters = adapters or [None] * len(prompts)
        ids = [f"offline-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
        results: dict[str, list[int]] = {i: [] for i in ids}
        for rid, prompt, p, adapter in zip(ids, prompts, per_prompt, adapters):
            self.add_request(rid, prompt, p, adapter)
        while self.has_unfinished:
            for out in self.step():
                results[out.request_id].extend(out.token_ids)
        return [results[i] for i in ids]
