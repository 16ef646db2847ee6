"""Streamed chat deltas of one choice: plain content, or tool calls (see :mod:`serve.server.tools`).

* no tools: text goes out as ``content`` as it is produced;
* a named function: the arguments stream as ``tool_calls[0].function.arguments`` pieces (the first delta
  also carries the call's id, type and name), as OpenAI streams a forced call;
* ``required``: the JSON list is complete only at the end, so the calls go out in one delta when it ends;
* ``auto``: text streams as content unless its start looks like a tool call (``<tool_call>``, ``{`` or ``[``),
  in which case it is held and parsed at the end (content again if it does not parse).

Logprob entries ride along with the text they belong to: held text keeps its entries until it is sent.
"""

from __future__ import annotations

from typing import Any

from serve.engine.logprobs import TokenLogprob
from serve.server.tools import ToolPlan, parse_tool_calls

TOOL_CALL_OPEN = "<tool_call>"
Delta = tuple[dict[str, Any], list[TokenLogprob]]  # (the ``delta`` object, logprob entries for its tokens)


class ChoiceDeltas:
    def __init__(self, plan: ToolPlan | None) -> None:
        self.plan = plan
        self._held = ""
        self._held_logprobs: list[TokenLogprob] = []
        self._mode = "content" if plan is None else {"named": "named", "required": "hold"}.get(plan.mode, "undecided")
        self._named_started = False
        self.has_tool_calls = False  #: tool calls were sent (the finish reason may change)

    def feed(self, text: str, logprobs: list[TokenLogprob]) -> list[Delta]:
        """Deltas to send now for newly produced ``text``."""
        if self._mode == "content":
            return [({"content": text}, logprobs)] if text or logprobs else []
        if self._mode == "named":
            return [self._named(text, logprobs)] if text or logprobs else []
        self._held += text
        self._held_logprobs.extend(logprobs)
        if self._mode == "undecided":
            start = self._held.lstrip()
            if start and not (start.startswith((TOOL_CALL_OPEN, "{", "[")) or TOOL_CALL_OPEN.startswith(start)):
                self._mode = "content"  # an ordinary reply: send what was held and stream on
                return [self._take_held_as_content()]
            if start.startswith((TOOL_CALL_OPEN, "{", "[")):
                self._mode = "hold"
        return []

    def finish(self) -> list[Delta]:
        """Deltas that end the choice (held text or parsed tool calls)."""
        if self._mode == "named":
            return [self._named("", [])] if not self._named_started else []
        if self._mode == "content" or not (self._held or self._held_logprobs):
            return []
        if self._mode == "undecided":
            return [self._take_held_as_content()]
        content, calls = parse_tool_calls(self._held, self.plan)
        if not calls:
            return [self._take_held_as_content()]
        self.has_tool_calls = True
        delta: dict[str, Any] = {"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]}
        if content:
            delta["content"] = content
        out = [(delta, self._held_logprobs)]
        self._held, self._held_logprobs = "", []
        return out

    def _named(self, text: str, logprobs: list[TokenLogprob]) -> Delta:
        if self._named_started:
            return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}, logprobs
        self._named_started = self.has_tool_calls = True
        (call,) = parse_tool_calls(text, self.plan)[1]
        return {"tool_calls": [{"index": 0, **call}]}, logprobs

    def _take_held_as_content(self) -> Delta:
        out = ({"content": self._held}, self._held_logprobs)
        self._held, self._held_logprobs = "", []
        return out
