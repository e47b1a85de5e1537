"""API keys for HTTP ingest: each key belongs to one tenant, and the key alone decides the tenant.

Keys come from ``GARRISON_API_KEYS`` as ``tenant:key`` pairs (``acme:4f...,beta:9c...``); the key is
everything after the first colon. Only SHA-256 digests are kept, and a presented key is compared with
every one of them in constant time, so neither the time taken nor an early exit tells a caller which key
(or which length of key) came close.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from garrison.config import Settings
from garrison.core.ingest import MAX_TENANT
from garrison.errors import ConfigurationError

# Short keys can be guessed; 16 characters is the least we accept (``openssl rand -hex 32`` gives 64).
MIN_KEY_LENGTH = 16


@dataclass(frozen=True, slots=True)
class ApiKeys:
    """The configured keys, as (digest, tenant) pairs. ``repr`` shows tenants only."""

    entries: tuple[tuple[bytes, str], ...]

    @classmethod
    def parse(cls, pairs: tuple[str, ...] | list[str]) -> ApiKeys:
        """Read ``tenant:key`` pairs. Errors name the pair by position and never show a key."""
        entries: list[tuple[bytes, str]] = []
        seen: dict[bytes, str] = {}
        for position, pair in enumerate(pairs, start=1):
            tenant, sep, secret = pair.partition(":")
            tenant = tenant.strip()
            where = f"GARRISON_API_KEYS pair {position}"
            if not sep or not tenant or not secret:
                raise ConfigurationError(f"{where} must look like tenant:key", field="api_keys", pair=position)
            if len(tenant) > MAX_TENANT:
                raise ConfigurationError(
                    f"{where}: tenant is longer than {MAX_TENANT} characters", field="api_keys", pair=position
                )
            if len(secret) < MIN_KEY_LENGTH:
                raise ConfigurationError(
                    f"{where}: the key for tenant {tenant!r} is shorter than {MIN_KEY_LENGTH} characters "
                    "(generate one with `openssl rand -hex 32`)",
                    field="api_keys", pair=position,
                )
            digest = _digest(secret)
            if digest in seen:
                raise ConfigurationError(
                    f"{where}: the same key is given for tenants {seen[digest]!r} and {tenant!r}",
                    field="api_keys", pair=position,
                )
            seen[digest] = tenant
            entries.append((digest, tenant))
        return cls(tuple(entries))

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        """The keys of ``settings.api_keys``; a server with none would refuse every request, so none is
        a configuration error rather than a silent 401 for everyone."""
        keys = cls.parse(settings.api_keys)
        if not keys.entries:
            raise ConfigurationError(
                "HTTP ingest needs at least one API key: set GARRISON_API_KEYS=tenant:key[,tenant:key...]",
                field="api_keys",
            )
        return keys

    @property
    def tenants(self) -> list[str]:
        return sorted({tenant for _, tenant in self.entries})

    def tenant_for(self, presented: str | None) -> str | None:
        """The tenant whose key this is, or None. Every configured key is compared, whatever matches."""
        if not presented:
            return None
        digest = _digest(presented)
        found: str | None = None
        for expected, tenant in self.entries:
            if hmac.compare_digest(digest, expected):
                found = tenant
        return found

    def __repr__(self) -> str:
        return f"ApiKeys(tenants={self.tenants})"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()
