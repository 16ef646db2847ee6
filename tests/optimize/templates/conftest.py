"""Fixtures of the template tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture
def swap_chat_template(tokenizer) -> Callable[[str], contextlib.AbstractContextManager]:
    """``with swap_chat_template(source): ...`` runs a block with the session tokenizer's chat template replaced."""
    @contextlib.contextmanager
    def swap(source: str) -> Iterator[None]:
        original = tokenizer.chat_template
        tokenizer.chat_template = source
        try:
            yield
        finally:
            tokenizer.chat_template = original

    return swap
