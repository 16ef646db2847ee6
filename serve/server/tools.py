"""Tool calls in chat completions: ``tools`` and ``tool_choice`` in, OpenAI ``tool_calls`` out.

* The tools are rendered through the chat template (``apply_chat_template(..., tools=...)``) when the template
  uses them; a template that ignores tools (SmolLM2's) gets them in the system message instead, with the
  Hermes-style ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` convention.
* ``tool_choice="required"`` and a named function constrain decoding with a JSON schema, as vLLM does, so the
  arguments always parse and validate against the function's ``parameters``: ``required`` generates
  ``[{"name": ..., "parameters": {...}}, ...]`` (one of the tools per item), a named function generates its
  arguments object directly. Several calls in one reply need ``parallel_tool_calls: true``; by default the
  list holds one call (llama.cpp's default too): a small model given an open list repeats its call until
  max_tokens cuts the JSON.
* ``auto`` lets the model choose; its text is parsed for tool calls (``<tool_call>`` blocks, or a whole reply
  that is a ``{"name", "arguments"}`` object). ``none`` leaves the tools out of the prompt (vLLM's
  ``--exclude-tools-when-tool-choice-none``), so the model cannot call them.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from lorafleet.chat import chat_token_ids, normalize_messages
from serve.engine.sampling_params import StructuredOutput
from serve.server.errors import HTTPError
from serve.server.response_format import schema_output

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
TOOLS_SYSTEM_PROMPT = (
    "You can call these functions. To call one, reply with <tool_call>{\"name\": <function name>, "
    "\"arguments\": <arguments as a JSON object>}</tool_call>.\n<tools>\n{tools}\n</tools>"
)
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How one chat request uses its tools."""

    mode: str  #: "auto", "required" or "named" ("none" needs no plan)
    functions: tuple[dict[str, Any], ...]  #: ``{"name", "description", "parameters"}`` of each tool
    named: str | None = None  #: the function of a named ``tool_choice``
    structured: StructuredOutput | None = None  #: the decoding constraint of "required" and "named"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f["name"] for f in self.functions)


def _function(i: int, tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise HTTPError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}", "tools")
    fn = tool["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise HTTPError(400, f"tools[{i}].function.name must be 1-64 letters, digits, '_' or '-', got {name!r}", "tools")
    params = fn.get("parameters") or EMPTY_PARAMETERS
    if not isinstance(params, dict):
        raise HTTPError(400, f"tools[{i}].function.parameters must be a JSON Schema object", "tools")
    return {"name": name, "description": fn.get("description") or "", "parameters": params}


def plan_tools(tools: list[Any] | None, tool_choice: Any, parallel_tool_calls: bool | None) -> ToolPlan | None:
    """Validate ``tools``/``tool_choice`` (400 naming the field) and decide the mode; None when no tool can be
    called (no tools, or ``tool_choice="none"``)."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise HTTPError(400, "tool_choice needs tools", "tool_choice")
        return None
    functions = tuple(_function(i, t) for i, t in enumerate(tools))
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names):
        raise HTTPError(400, f"tool names must be unique, got {names}", "tools")
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return None
    if choice == "auto":
        return ToolPlan("auto", functions)
    if choice == "required":
        return ToolPlan("required", functions, structured=schema_output(_required_schema(functions, parallel_tool_calls),
                                                                          "tools"))
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
        raise HTTPError(400, "tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": "
                             "{\"name\": ...}}", "tool_choice")
    if name not in names:
        raise HTTPError(400, f"tool_choice names function '{name}', which is not in tools", "tool_choice")
    params = functions[names.index(name)]["parameters"]
    return ToolPlan("named", functions, name, schema_output(params, "tools"))


def _required_schema(functions: tuple[dict[str, Any], ...], parallel_tool_calls: bool | None) -> dict[str, Any]:
    """``[{"name": <one tool>, "parameters": <its arguments>}, ...]`` with at least one call (vLLM's schema), at
    most one unless ``parallel_tool_calls`` is true; each tool's ``$defs`` are hoisted to the top so its
    ``$ref``s still resolve."""
    defs: dict[str, Any] = {}
    options = []
    for f in functions:
        params = dict(f["parameters"])
        for key, value in (params.pop("$defs", None) or {}).items():
            if defs.setdefault(key, value) != value:
                raise HTTPError(400, f"tools define '$defs/{key}' differently; rename one", "tools")
        options.append({"type": "object", "properties": {"name": {"type": "string", "enum": [f["name"]]},
                                                         "parameters": params},
                        "required": ["name", "parameters"]})
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": options}}
    if not parallel_tool_calls:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


# -- the prompt --------------------------------------------------------------------------------------------
def template_renders_tools(tokenizer: Any) -> bool:
    """Whether the chat template reads the ``tools`` variable."""
    return bool(re.search(r"\btools\b", getattr(tokenizer, "chat_template", None) or ""))


def _as_text(message: dict[str, Any]) -> dict[str, Any]:
    """A message with assistant ``tool_calls`` written into its content, as the text convention says."""
    calls = message.get("tool_calls")
    if message.get("role") != "assistant" or not calls:
        return message
    blocks = []
    for call in calls:
        fn = call.get("function", {}) if isinstance(call, dict) else {}
        args = fn.get("arguments", "{}")
        blocks.append('<tool_call>{"name": %s, "arguments": %s}</tool_call>'
                      % (json.dumps(fn.get("name")), args if isinstance(args, str) else json.dumps(args)))
    content = message.get("content") or ""
    return {**message, "content": (content + "\n" if content else "") + "\n".join(blocks)}


def prompt_token_ids(tokenizer: Any, messages: list[dict[str, Any]], plan: ToolPlan | None,
                     add_generation_prompt: bool) -> list[int]:
    """Token ids of the chat prompt, with the plan's tools rendered in."""
    if plan is None:
        return chat_token_ids(tokenizer, [_as_text(m) for m in messages], add_generation_prompt)
    tools = [{"type": "function", "function": f} for f in plan.functions]
    if template_renders_tools(tokenizer):
        flat = normalize_messages(messages)
        for m, original in zip(flat, messages):  # keep what tool-aware templates read besides content
            m.update({k: original[k] for k in ("tool_calls", "tool_call_id", "name") if k in original})
        text = tokenizer.apply_chat_template(flat, tools=tools, add_generation_prompt=add_generation_prompt,
                                             tokenize=False)
        return tokenizer(text, add_special_tokens=False).input_ids
    note = TOOLS_SYSTEM_PROMPT.replace("{tools}", "\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
    msgs = [_as_text(m) for m in messages]
    if msgs and msgs[0].get("role") in ("system", "developer"):
        first = normalize_messages(msgs[:1])[0]
        msgs = [{"role": "system", "content": f"{first['content']}\n\n{note}"}] + msgs[1:]
    else:
        msgs = [{"role": "system", "content": note}] + msgs
    return chat_token_ids(tokenizer, msgs, add_generation_prompt)


# -- the output --------------------------------------------------------------------------------------------
def _call(name: str, arguments: Any) -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": args}}


def _parse_auto(text: str, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Tool calls in a free reply: ``<tool_call>`` blocks, else the whole reply as one call object or a list."""
    bodies = TOOL_CALL_BLOCK.findall(text) or [text.strip()]
    calls = []
    for body in bodies:
        try:
            value = json.loads(body)
        except ValueError:
            return []
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict) or item.get("name") not in names:
                return []
            args = item.get("arguments", item.get("parameters", {}))
            if not isinstance(args, (dict, str)):
                return []
            calls.append(_call(item["name"], args))
    return calls


def parse_tool_calls(text: str, plan: ToolPlan) -> tuple[str | None, list[dict[str, Any]]]:
    """``(content, tool_calls)`` of a finished reply. Output that does not parse (cut by max_tokens) stays
    content with no calls."""
    if plan.mode == "named":
        return None, [_call(plan.named, text)]
    if plan.mode == "required":
        try:
            items = json.loads(text)
        except ValueError:
            return text, []
        return None, [_call(item["name"], item["parameters"]) for item in items]
    calls = _parse_auto(text, plan.names)
    if not calls:
        return text, []
    before = text.split("<tool_call>", 1)[0].strip() if "<tool_call>" in text else ""
    return before or None, calls


def finish_reason(reason: str | None, plan: ToolPlan | None, has_calls: bool) -> str | None:
    """OpenAI's: "tool_calls" when the model chose to call (auto/required); a forced named call ends "stop"."""
    if has_calls and reason == "stop" and plan is not None and plan.mode != "named":
        return "tool_calls"
    return reason
