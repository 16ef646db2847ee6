"""Typed errors shared by every stage.

Only ``serve/server/errors.py`` (and the gateway's) turn these into HTTP status codes; the CLI turns them
into one-line messages.
"""

from __future__ import annotations


class LorafleetError(Exception):
    """Base class of every error lorafleet raises on purpose."""


class ConfigError(LorafleetError, ValueError):
    """A user-supplied setting is invalid. The message names the setting and the bad value."""


class ArtifactError(LorafleetError):
    """A checkpoint, adapter or other artifact on disk is missing, incomplete or unsafe to load."""


class NotFoundError(LorafleetError, KeyError):
    """A named thing (model, adapter, request) does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message.
        return str(self.args[0]) if self.args else ""


class BackendError(LorafleetError):
    """A backend failed. ``retryable`` says whether another replica may succeed."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
