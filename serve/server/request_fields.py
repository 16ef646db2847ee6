"""Request fields we do not implement: each is a 400 naming it, never silently dropped.

The request models (:mod:`serve.server.protocol`) declare every field we support and keep any other as an
extra (``extra="allow"``). :func:`check_extra_fields` then answers each extra field:

* a field of vLLM's request schema (``vllm/entrypoints/openai/protocol.py``) we do not implement is accepted
  only with a value that changes nothing (its default, listed in :data:`NO_OP_VALUES`), and is otherwise a
  400 saying it is not supported;
* any other field (a typo, an OpenAI field such as ``store`` or ``metadata``) is a 400 naming it.

``docs/features.md`` has the table; ``tests/serve/server/test_request_fields.py`` walks vLLM's field lists.
"""

from __future__ import annotations

import json
from typing import Any

from serve.server.errors import HTTPError

#: vLLM request fields we do not implement → the values that ask for nothing (accepted and without effect)
NO_OP_VALUES: dict[str, tuple[Any, ...]] = {
    "best_of": (None, 1),
    "use_beam_search": (False,),
    "length_penalty": (1, 1.0),  # beam search only
    "spaces_between_special_tokens": (True,),
    "prompt_embeds": (None,),
    "priority": (0,),
    "request_id": (None,),
    "logits_processors": (None,),
    "return_tokens_as_token_ids": (None, False),
    "kv_transfer_params": (None,),
    "vllm_xargs": (None,),
    "mm_processor_kwargs": (None,),
    "media_io_kwargs": (None,),
    "chat_template": (None,),
    "chat_template_kwargs": (None,),
    "documents": (None,),
    "continue_final_message": (False,),
    "reasoning_effort": (None,),
    "include_reasoning": (True, False),  # the served models emit no separate reasoning
    "thinking_token_budget": (None,),
    "add_special_tokens": (),  # per endpoint, see below
    "echo": (),  # chat's echo (prepend the last message) only
}
#: the value of ``add_special_tokens`` we do: completions tokenize with special tokens, chat renders the template
ADD_SPECIAL_TOKENS_DEFAULT = {"completions": True, "chat": False}


def check_extra_fields(extra: dict[str, Any] | None, endpoint: str) -> None:
    """400 naming the first field of ``extra`` (the request's undeclared fields) that asks for something we do
    not do. ``endpoint`` is "completions" or "chat"."""
    for name, value in (extra or {}).items():
        accepted = NO_OP_VALUES.get(name)
        if name == "add_special_tokens":
            accepted = (ADD_SPECIAL_TOKENS_DEFAULT[endpoint],)
        elif name == "echo" and endpoint == "chat":
            accepted = (False,)
        if accepted is None:
            raise HTTPError(400, f"{name}: unknown field for /v1/{endpoint.replace('chat', 'chat/completions')}",
                            name)
        if not any(value == a and type(value) is type(a) or value is a for a in accepted):
            shown = json.dumps(value, default=str)[:40]
            raise HTTPError(400, f"{name} = {shown} is not supported by this server", name)
