"""API keys: stored as SHA-256 digests, each with an allow-list of models/adapters and rate limits.

The gateway never keeps a plaintext key: config holds digests (or names an environment variable whose value
is hashed at load), and an incoming key is hashed and compared in constant time.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass


def hash_key(key: str) -> str:
    """Hex SHA-256 of an API key: what the config stores (``python -c "from serve.gateway.auth import hash_key; ..."``)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One API key's identity and permissions."""

    name: str  #: who the key belongs to (metric label, logs); never the key itself
    key_sha256: str  #: hex SHA-256 of the key
    models: tuple[str, ...] = ("*",)  #: base models / adapters it may use; shell patterns ("sql-*", "*")
    requests_per_min: float | None = None  #: token-bucket rate of requests; None: unlimited
    tokens_per_min: float | None = None  #: token-bucket rate of prompt + completion tokens; None: unlimited
    admin: bool = False  #: may call /admin/*

    def __post_init__(self) -> None:
        if not isinstance(self.models, tuple) or not all(isinstance(m, str) for m in self.models):
            raise ValueError(f"key '{self.name}': models must be a list of model/adapter names or patterns")
        for n in ("requests_per_min", "tokens_per_min"):
            v = getattr(self, n)
            if v is not None and v <= 0:
                raise ValueError(f"key '{self.name}': {n} must be positive, got {v}")

    def allows(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


class KeyStore:
    """Looks up the key a request presents. Keys can be revoked at runtime (the admin API); a revoked key is
    refused exactly like an unknown one, and stays refused until the gateway restarts with its config."""

    def __init__(self, keys: Sequence[KeySpec]) -> None:
        self._keys = tuple(keys)
        self._is_enabled = bool(self._keys)  # revoking every key must not open the gateway
        self.revoked: set[str] = set()  #: names of keys revoked since start-up

    @property
    def names(self) -> list[str]:
        return [k.name for k in self._keys]

    def revoke(self, name: str) -> bool:
        """Refuse key ``name`` from now on (requests already admitted finish); False if there is no such key."""
        if name not in self.names:
            return False
        self.revoked.add(name)
        self._keys = tuple(k for k in self._keys if k.name != name)
        return True

    @property
    def is_enabled(self) -> bool:
        return self._is_enabled

    def lookup(self, presented: str) -> KeySpec | None:
        """The key whose digest matches ``presented``, or None. Every stored digest is compared (constant
        time each), so timing does not reveal which prefix of a digest matched."""
        digest = hash_key(presented)
        found = None
        for k in self._keys:
            if hmac.compare_digest(digest, k.key_sha256):
                found = k
        return found


def bearer_token(authorization: str | None, x_api_key: str | None = None) -> str | None:
    """The key from ``Authorization: Bearer <key>`` (or an ``x-api-key`` header), if any."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return x_api_key.strip() if x_api_key and x_api_key.strip() else None
