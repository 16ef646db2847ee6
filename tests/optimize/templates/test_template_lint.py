"""lint: each cache-busting pattern of issue #7 is found with its line and a fix; a clean template passes.

Template checks need no model; the chat-template checks render through SmolLM2's real tokenizer, with its own
chat template (clean) and with a Llama-3.1-style one that injects the date.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorafleet.templates import parse_template
from optimize.templates.chat_lint import lint_chat_template
from optimize.templates.lint import Finding, lint_template

EXAMPLES = Path(__file__).resolve().parents[3] / "optimize" / "templates" / "examples"
LORAFLEET = str(Path(sys.executable).with_name("lorafleet"))

# Llama 3.1's header, reduced: it renders today's date into the system message, ahead of everything.
DATE_CHAT_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{{- "<|im_start|>system\\nCutting Knowledge Date: December 2023\\nToday Date: " + date_string + "<|im_end|>\\n" }}
{%- for message in messages %}
{{- "<|im_start|>" + message["role"] + "\\n" + message["content"] + "<|im_end|>\\n" }}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<|im_start|>assistant\\n" }}{%- endif %}"""

# A template that renders the conversation's last message first (as a "query" header), then the rest.
LAST_FIRST_CHAT_TEMPLATE = """{{- "<|im_start|>system\\nQuery: " + messages[-1]["content"] + "<|im_end|>\\n" }}
{%- for message in messages %}
{{- "<|im_start|>" + message["role"] + "\\n" + message["content"] + "<|im_end|>\\n" }}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<|im_start|>assistant\\n" }}{%- endif %}"""

# A template that opens with the conversation's length: per-request content ahead of all static content.
LENGTH_HEADER_CHAT_TEMPLATE = """{{- "<|im_start|>system\\nPrompt length: " + (messages | map(attribute="content") | join | length | string) + "<|im_end|>\\n" }}
{%- for message in messages %}
{{- "<|im_start|>" + message["role"] + "\\n" + message["content"] + "<|im_end|>\\n" }}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<|im_start|>assistant\\n" }}{%- endif %}"""


def lint(text: str) -> list[Finding]:
    return lint_template(parse_template(text))


def only(findings: list[Finding], code: str) -> list[Finding]:
    return [f for f in findings if f.code == code]


def template(static_text: str, extra_sections: str = "", variables: str = "question: {type: string}") -> str:
    return (f"name: t\nvariables:\n  {variables}\nsections:\n  - name: policy\n    kind: system\n    text: |\n"
            + "".join(f"      {line}\n" for line in static_text.splitlines())
            + extra_sections + "  - {name: question, kind: user, text: '{{ question }}'}\n")


@pytest.mark.parametrize("literal, what", [
    ("Today is 2025-03-14.", "a date"),
    ("Today is March 14, 2025.", "a date"),
    ("Generated at 2025-03-14T09:26:53Z.", "an ISO timestamp"),
    ("Local time 09:26 UTC.", "a time of day"),
    ("Trace 3f2b8c1e-9d4a-4e0b-8f1c-2a7d9e6b5c40.", "a UUID"),
    ("Session sess_8f3a9c2e41 is active.", "a random id"),
    ("Cache key 9f86d081884c7d659a2feaa0c55ad015.", "a random id"),
    ("This is request #4711 today.", "a counter"),
    ("Epoch 1741944413 seconds.", "a Unix timestamp"),
])
def test_volatile_literal_in_a_static_section(literal: str, what: str) -> None:
    found = only(lint(template(f"Be brief.\n{literal}")), "volatile-in-static")
    assert len(found) == 1, found
    f = found[0]
    assert (f.line, f.severity, f.section) == (9, "warning", "policy")  # the literal's own line in the file
    assert what in f.message and "per-request section" in f.fix


def test_volatile_variable_in_a_static_section() -> None:
    text = ("name: t\nvariables: {timestamp: {type: string}, question: {type: string}}\nsections:\n"
            "  - name: policy\n    kind: system\n    text: |\n      Be brief.\n      Now: {{ timestamp }}\n"
            "  - {name: question, kind: user, text: '{{ question }}'}\n")
    f = only(lint(text), "volatile-in-static")[0]
    assert (f.line, f.severity, f.section) == (8, "error", "policy")
    assert "'timestamp'" in f.message and "move {{ timestamp }} into a per-request section" in f.fix


def test_per_request_variable_in_a_static_section() -> None:
    text = ("name: t\nvariables: {plan: {type: string}, question: {type: string}}\nsections:\n"
            "  - {name: policy, kind: system, text: 'You serve {{ plan }} customers.'}\n"
            "  - {name: question, kind: user, text: '{{ question }}'}\n")
    f = only(lint(text), "per-request-in-static")[0]
    assert (f.line, f.section) == (4, "policy") and "'plan'" in f.message


def test_per_request_section_before_static_content() -> None:
    text = ("name: t\nvariables: {now: {type: string}, question: {type: string}}\nsections:\n"
            "  - {name: header, kind: context, role: system, text: 'Time: {{ now }}'}\n"
            "  - {name: policy, kind: system, text: Be brief.}\n"
            "  - {name: question, kind: user, text: '{{ question }}'}\n"
            "  - {name: examples, kind: examples, role: user, text: 'Q: hi A: hello'}\n")
    found = only(lint(text), "per-request-before-static")
    assert [(f.line, f.section) for f in found] == [(4, "header"), (6, "question")]
    assert "static section(s) ['policy', 'examples']" in found[0].message
    assert "move 'header' after 'examples'" in found[0].fix and "--reorder" in found[0].fix
    pinned = lint(text.replace("kind: user, text", "kind: user, pinned: true, text"))
    assert "unpin 'question'" in only(pinned, "per-request-before-static")[1].fix


def test_non_canonical_json() -> None:
    text = ("name: t\nconstants: {tools: [{name: a}]}\nvariables: {customer: {type: json}, question: {type: string}}\n"
            "sections:\n"
            "  - name: tools\n    kind: tools\n    text: |\n"
            "      Tools: {{ tools | tojson }}\n"
            '      Also: [{"name": "b", "args": {"z": 1, "a": 2}}]\n'
            "  - {name: customer, kind: context, text: 'Customer: {{ customer }}'}\n"
            "  - {name: question, kind: user, text: '{{ question }}'}\n")
    found = only(lint(text), "non-canonical-json")
    assert [(f.line, f.severity) for f in found] == [(8, "warning"), (9, "warning"), (10, "error")]
    assert "tojson" in found[0].message and "{{ tools | canonical_json }}" in found[0].fix
    assert '[{"args":{"a":2,"z":1},"name":"b"}]' in found[1].fix  # the canonical form
    assert "Python's repr" in found[2].message and "{{ customer | canonical_json }}" in found[2].fix


def test_clean_template_passes_every_check(tokenizer) -> None:
    clean = parse_template((EXAMPLES / "support.yaml").read_text(), EXAMPLES / "support.yaml")
    assert lint_template(clean) == []
    assert lint_chat_template(clean, tokenizer, "smollm2") == []


def test_naive_example_reports_each_problem_once() -> None:
    found = lint_template(parse_template((EXAMPLES / "support_naive.yaml").read_text()))
    assert sorted({f.code for f in found}) == ["non-canonical-json", "per-request-before-static", "volatile-in-static"]
    assert all(f.line > 0 and f.fix for f in found)


def test_lint_ignore_silences_a_code() -> None:
    text = template("Knowledge cutoff: 2024-06-01.").replace("kind: system\n", "kind: system\n    lint_ignore: [volatile-in-static]\n")
    assert lint(text) == []


def test_chat_template_that_injects_the_date(tokenizer, swap_chat_template) -> None:
    clean = parse_template((EXAMPLES / "support.yaml").read_text())
    with swap_chat_template(DATE_CHAT_TEMPLATE):
        found = lint_chat_template(clean, tokenizer, "llama31.jinja")
    assert [(f.code, f.line, f.file) for f in found] == [("chat-template-volatile", 3, "llama31.jinja")]
    assert "Today Date: 01 Jan 2024" in found[0].message and "strftime_now" in found[0].fix


@pytest.mark.parametrize("source, message", [(LAST_FIRST_CHAT_TEMPLATE, "before the static sections"),
                                                     (LENGTH_HEADER_CHAT_TEMPLATE, "prompts diverge at character 36")])
def test_chat_template_that_puts_per_request_content_first(tokenizer, swap_chat_template, source: str,
                                                            message: str) -> None:
    clean = parse_template((EXAMPLES / "support.yaml").read_text())
    with swap_chat_template(source):
        found = lint_chat_template(clean, tokenizer, "custom.jinja")
    assert [(f.code, f.line) for f in found] == [("chat-template-reorders", 2)]  # the line of its message loop
    assert message in found[0].message


def test_cli_exit_codes_and_output(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    chat = tmp_path / "llama31.jinja"
    chat.write_text(DATE_CHAT_TEMPLATE)
    bad = subprocess.run([LORAFLEET, "optimize", "templates", "lint", str(EXAMPLES / "support_naive.yaml"), "--no-model",
                          "--json", str(tmp_path / "f.json")], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1, bad.stderr
    assert f"{EXAMPLES / 'support_naive.yaml'}:14: error [per-request-before-static]" in bad.stdout
    assert "    fix: move 'header' after 'examples'" in bad.stdout
    good = subprocess.run([LORAFLEET, "optimize", "templates", "lint", str(EXAMPLES / "support.yaml"), str(EXAMPLES / "rag_qa.yaml"),
                           "--chat-template", str(chat)], capture_output=True, text=True, env=env, timeout=120)
    assert good.returncode == 1 and f"{chat}:3: error [chat-template-volatile]" in good.stdout
    missing = subprocess.run([LORAFLEET, "optimize", "templates", "lint", "nope.yaml"], capture_output=True, text=True,
                             env=env, timeout=120)
    assert missing.returncode == 2 and "error: template file nope.yaml does not exist" in missing.stderr
