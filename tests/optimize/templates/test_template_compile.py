"""compile: the static prefix is pre-tokenized and is, token for token, the start of every full prompt (checked
here on requests compile never saw); an unstable token boundary is detected and left out; block fit and
padding; --reorder moves only what is safe; the artifact the gateway reads. Real SmolLM2 tokenizer."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lorafleet.chat import chat_token_ids
from lorafleet.errors import ConfigError
from lorafleet.templates import load_compiled, load_template, parse_template, render_messages
from lorafleet.templates.prefix import encode, split_prompt
from optimize.templates.compile import CompileOptions, check_prefix, compile_template
from optimize.templates.reorder import plan_reorder

EXAMPLES = Path(__file__).resolve().parents[3] / "optimize" / "templates" / "examples"
LORAFLEET = str(Path(sys.executable).with_name("lorafleet"))
WORDS = "order router refund orange light reset firmware ticket delivery Norway".split()
# Joins message contents with nothing in between, so a static message's last word can merge with the next one's.
CONCAT_CHAT_TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}"


def random_requests(n: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        question = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 12)))
        values = {"now": f"2025-0{rnd.randint(1, 9)}-1{rnd.randint(0, 9)}T0{rnd.randint(0, 9)}:00:00Z",
                  "question": rnd.choice(["", " ", "\n", "¿"]) + question + rnd.choice(["?", "", " !", "\n\nthanks"])}
        if i % 2:
            values["customer"] = {"name": rnd.choice(WORDS), "plan": rnd.choice(["free", "pro"]), "n": rnd.randint(0, 99)}
        out.append(values)
    return out


@pytest.fixture(scope="module")
def support():
    return load_template(EXAMPLES / "support.yaml")


def test_static_prefix_starts_every_full_prompt(tokenizer, support) -> None:
    compiled = compile_template(support, tokenizer, "smollm2", CompileOptions(block_size=16))
    ids = list(compiled.prefix.token_ids)
    assert len(ids) > 200 and compiled.checks["tokenizes_identically"] and compiled.prefix.num_unstable_tokens == 0
    for values in random_requests(40, seed=1):
        full = encode(tokenizer, split_prompt(tokenizer, compiled.template, values).full_text)
        assert full[: len(ids)] == ids, values
        # and the gateway's path (messages through the chat template, as the engine renders them) agrees
        assert chat_token_ids(tokenizer, render_messages(compiled.template, values)) == full


def test_unstable_boundary_is_detected_and_left_out(tokenizer, swap_chat_template) -> None:
    t = parse_template("name: t\nvariables: {q: {type: string}}\nsections:\n"
                       "  - {name: policy, kind: system, text: You are very help}\n"
                       "  - {name: q, kind: user, text: '{{ q }}'}\n")
    with swap_chat_template(CONCAT_CHAT_TEMPLATE):
        check = check_prefix(tokenizer, t, [{"q": "ful and kind."}, {"q": "ing hands."}])
        compiled = compile_template(t, tokenizer, "smollm2", CompileOptions())
        samples = [{"q": "ful"}, {"q": "s"}, {"q": " hi"}]
        fulls = [encode(tokenizer, split_prompt(tokenizer, t, v).full_text) for v in samples]
    # "help" alone is one token; inside "helpful" it is not there at all
    assert check.num_stable == len(check.static_ids) - 1 and "help" in check.boundary
    assert compiled.prefix.num_unstable_tokens >= 1 and not compiled.checks["tokenizes_identically"]
    assert all(f[: compiled.prefix.num_tokens] == list(compiled.prefix.token_ids) for f in fulls)


@pytest.mark.parametrize("block_size", [16, 128])
def test_block_fit_and_padding(tokenizer, block_size: int) -> None:
    rag = load_template(EXAMPLES / "rag_qa.yaml")
    plain = compile_template(rag, tokenizer, "smollm2", CompileOptions(block_size=block_size))
    n = plain.prefix.num_tokens
    assert plain.prefix.num_wasted_tokens == n % block_size and plain.prefix.num_cacheable_tokens == n - n % block_size
    padded = compile_template(rag, tokenizer, "smollm2", CompileOptions(block_size=block_size, pad_to_block=True))
    p = padded.prefix
    assert p.num_tokens % block_size == 0 and p.num_wasted_tokens == 0 and p.num_pad_tokens == p.num_tokens - n > 0
    assert p.num_unstable_tokens == 0 and p.token_ids[:100] == plain.prefix.token_ids[:100]
    assert "block boundary" in padded.changes[0]
    for values in ({"question": "What does solid orange mean?"}, {"question": "x"}):
        full = encode(tokenizer, split_prompt(tokenizer, padded.template, values).full_text)
        assert full[: p.num_tokens] == list(p.token_ids)


def test_reorder_is_reported_unless_asked_for(tokenizer) -> None:
    naive = load_template(EXAMPLES / "support_naive.yaml")
    kept = compile_template(naive, tokenizer, "smollm2", CompileOptions())
    assert kept.template.sections == naive.sections and kept.changes == ()
    assert [m.split("'")[1] for m in kept.checks["reorder_suggested"] if m.startswith("moved")] == ["header", "customer", "question"]
    moved = compile_template(naive, tokenizer, "smollm2", CompileOptions(reorder=True))
    order = [(s.name, s.scope, s.role) for s in moved.template.sections]
    assert order == [("policy", "static", "system"), ("tools", "static", "system"), ("examples", "static", "user"),
                     ("header", "per_request", "user"), ("customer", "per_request", "user"),
                     ("question", "per_request", "user")]
    assert "section 'header' joins the user turn (role system -> user)" in " ".join(moved.changes)
    assert moved.prefix.num_tokens > 10 * kept.prefix.num_tokens


def test_reorder_never_moves_pinned_or_assistant_sections(support) -> None:
    t = parse_template("name: t\nvariables: {a: {type: string}, b: {type: string}}\nsections:\n"
                       "  - {name: ctx, kind: context, text: '{{ a }}'}\n"
                       "  - {name: s1, kind: system, role: user, text: one}\n"
                       "  - {name: prefill, kind: context, role: assistant, text: '{{ b }}'}\n"
                       "  - {name: s2, kind: system, role: user, text: two}\n")
    plan = plan_reorder(t)
    assert [s.name for s in plan.sections] == ["s1", "ctx", "prefill", "s2"]
    assert plan.blocked == ("static section 's2' stays after 'prefill', which cannot move (an assistant turn)",)
    pinned = parse_template(t and "name: t\nvariables: {a: {type: string}}\nsections:\n"
                            "  - {name: ctx, kind: context, pinned: true, text: '{{ a }}'}\n"
                            "  - {name: s1, kind: system, text: one}\n")
    assert plan_reorder(pinned).is_noop and "pinned" in plan_reorder(pinned).blocked[0]
    assert plan_reorder(support).is_noop


def test_cli_compile_writes_artifacts_for_the_gateway(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    out = subprocess.run([LORAFLEET, "optimize", "templates", "compile", str(EXAMPLES / "support_naive.yaml"),
                          str(EXAMPLES / "rag_qa.yaml"), "--out", str(tmp_path / "c"), "--reorder", "--block-size", "128",
                          "--pad-to-block"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tmp_path / "c" / "support-naive"), str(tmp_path / "c" / "rag-qa")]
    assert "moved per-request section 'header' after static section 'examples'" in out.stderr
    manifest = json.loads((tmp_path / "c" / "rag-qa" / "manifest.json").read_text())
    assert manifest["static_prefix"]["block_size"] == 128 and manifest["static_prefix"]["num_tokens"] % 128 == 0
    compiled = load_compiled(tmp_path / "c" / "support-naive")
    assert compiled.template.sections[0].name == "policy" and compiled.model == "smollm2-135m-instruct"
    bad = subprocess.run([LORAFLEET, "optimize", "templates", "compile", str(EXAMPLES / "rag_qa.yaml"), "--block-size", "0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "error: block_size must be positive, got 0" in bad.stderr


def test_a_chat_template_that_refuses_the_messages_is_a_clear_error(tokenizer, swap_chat_template) -> None:
    refusing = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}" \
               "{% endif %}{{ m.content }}{% endfor %}"
    with swap_chat_template(refusing), pytest.raises(ConfigError, match=r"refused the messages \(roles \['system', "
                                                                        r"'user'\]\): System role not supported"):
        compile_template(load_template(EXAMPLES / "rag_qa.yaml"), tokenizer, "m", CompileOptions())
