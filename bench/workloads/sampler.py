"""A workload as a seeded stream of OpenAI streaming requests, one stream per simulated user.

Prompt text is drawn from :data:`WORDS`, 243 common English words that are each one token (with their
leading space) in the SmolLM2 and Llama tokenizers, so a body of N words is about N tokens. Shared prefixes
are fixed word sequences keyed by (seed, prefix index); with a fixed seed every user sends the same sequence
of requests in every run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lorafleet.config.load import Dist, ModelChoice, WorkloadConfig
from lorafleet.errors import ConfigError

WORDS = tuple("""time year people way day man thing woman life child world school state family student group country
problem hand part place case week company system program question work government number night point home water
room mother area money story fact month lot right study book eye job word business issue side kind head house service
friend father power hour game line end member law car city community name president team minute idea kid body
information back parent face others level office door health person art war history party result change morning reason
research girl guy moment air teacher force education foot boy age policy process music market sense nation plan college
interest death experience effect class control care field development role effort rate heart drug show leader light
voice wife police mind price report decision son view relationship town road arm difference value building action model
season society tax director position player record paper space ground form event official matter center couple site
project activity star table need court oil situation cost industry figure street image phone data picture practice
piece land product doctor wall patient worker news test movie north love support technology step baby computer type
attention film tree source organization hair window evidence population truth song river mountain cloud stone garden
sound bridge tower flower winter summer letter ocean forest chair bread horse bird green blue small large early late
simple clear open strong quick happy bright quiet warm cold""".split())
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request of the workload, ready to send."""

    path: str  #: /v1/chat/completions or /v1/completions
    body: dict[str, Any]  #: the JSON body (streaming, with usage)
    model: str
    template: str
    prompt_tokens: int  #: planned body length (shared prefix included, template excluded)
    max_tokens: int
    has_prefix: bool


def sample_dist(dist: Dist, rng: random.Random) -> float:
    """One draw of ``dist``, clamped to its [min, max] and to >= 0."""
    if dist.kind == "fixed":
        x = dist.value
    elif dist.kind == "uniform":
        x = rng.uniform(dist.min, dist.max)
    elif dist.kind == "normal":
        x = rng.gauss(dist.mean, dist.std)
    elif dist.kind == "lognormal":
        x = rng.lognormvariate(math.log(max(dist.median, 1e-9)), dist.sigma)
    else:
        x = rng.expovariate(1 / dist.mean) if dist.mean > 0 else 0.0
    if dist.min is not None:
        x = max(x, dist.min)
    if dist.max is not None:
        x = min(x, dist.max)
    return max(float(x), 0.0)


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def resolve_models(workload: WorkloadConfig, listed: Iterable[Mapping[str, Any]], base: str | None = None
                   ) -> tuple[ModelChoice, ...]:
    """Concrete model names and weights, given the target's ``/v1/models`` entries.

    ``base`` (or the first listed model without a ``parent``) replaces the name "base"; adapters are the
    entries with a parent. Named models the target does not list are an error, as every request would fail.
    """
    listed = list(listed)
    ids = [str(m.get("id")) for m in listed]
    roots = [str(m["id"]) for m in listed if not m.get("parent")]
    base = base or (roots[0] if roots else None)
    if workload.discover_adapters is not None:
        d = workload.discover_adapters
        adapters = sorted(str(m["id"]) for m in listed if m.get("parent") and (base is None or m["parent"] == base))
        adapters = adapters[: d.count] if d.count else adapters
        if not adapters:
            raise ConfigError(f"workload '{workload.name}' spreads over adapters, but the target lists none of base '{base}'")
        raw = [1.0 if d.skew == "uniform" else 1 / (i + 1) ** d.alpha for i in range(len(adapters))]
        choices = [ModelChoice(a, (1 - d.base_weight) * w / sum(raw)) for a, w in zip(adapters, raw)]
        return tuple(([ModelChoice(base, d.base_weight)] if d.base_weight and base else []) + choices)
    out = []
    for choice in workload.models:
        name = base if choice.name == "base" else choice.name
        if name is None:
            raise ConfigError("the target lists no base model; pass --model NAME")
        if ids and name not in ids:
            raise ConfigError(f"model '{name}' is not served by the target (it lists {ids})")
        out.append(ModelChoice(name, choice.weight))
    return tuple(out)


class RequestSampler:
    """Seeded requests of one user: user ``i`` of a run with seed ``s`` always sends the same sequence."""

    def __init__(self, workload: WorkloadConfig, models: tuple[ModelChoice, ...], user_index: int = 0,
                 seed: int | None = None) -> None:
        self.workload = workload
        self.models = models
        self.seed = workload.seed if seed is None else seed
        self.rng = random.Random(f"{self.seed}:user:{user_index}")
        sp = workload.shared_prefix
        self.prefixes = [words(random.Random(f"{self.seed}:prefix:{k}"), sp.tokens) for k in range(sp.count)]

    def think_time_s(self) -> float:
        return sample_dist(self.workload.think_time_s, self.rng)

    def next_request(self) -> PlannedRequest:
        w, rng = self.workload, self.rng
        model = rng.choices([m.name for m in self.models], [m.weight for m in self.models])[0]
        template = rng.choices(w.templates, [t.weight for t in w.templates])[0]
        prompt_tokens = max(1, round(sample_dist(w.prompt_tokens, rng)))
        max_tokens = max(1, round(sample_dist(w.output_tokens, rng)))
        has_prefix = w.shared_prefix.tokens > 0 and rng.random() < w.shared_prefix.share
        prefix = rng.choice(self.prefixes) if has_prefix else ""
        body_words = max(1, prompt_tokens - (w.shared_prefix.tokens if has_prefix else 0))
        text = template.text.replace("{prompt}", (prefix + " " if prefix else "") + words(rng, body_words))
        body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": w.temperature, "stream": True,
                                "stream_options": {"include_usage": True}}
        if w.temperature > 0:
            body["seed"] = rng.randrange(2**31)
        if w.ignore_eos:
            body["ignore_eos"] = True
        if w.api == "chat":
            system = [{"role": "system", "content": template.system}] if template.system else []
            body["messages"] = system + [{"role": "user", "content": text}]
        else:
            body["prompt"] = (template.system + "\n\n" if template.system else "") + text
        return PlannedRequest(PATHS[w.api], body, model, template.name, prompt_tokens, max_tokens, has_prefix)
