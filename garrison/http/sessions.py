"""Console sign-in: an API key is exchanged for a signed session cookie, scoped to the key's tenant.

A browser cannot send ``Authorization: Bearer``, so the console's sign-in form takes a key once and sets a
cookie (HttpOnly, SameSite=Strict, Secure over HTTPS) that names the key by an id derived from its digest,
the role (``viewer`` for an API key, ``admin`` for an admin key), an expiry, and an HMAC over all three.
The key itself is never stored in the cookie or shown in a page.

The HMAC secret is derived from the digests of every configured key, so every process of a server that has
the same keys accepts the same cookies (uvicorn ``--workers``), and removing or rotating a key signs its
sessions out. Each session has a CSRF token (an HMAC of the cookie) that every form posts back.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from garrison.http.keys import ApiKeys

__all__ = ["COOKIE", "Session", "Sessions"]

COOKIE = "garrison_console"
LIFETIME = 8 * 3600  # seconds a sign-in lasts


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in console user: the tenant every query is scoped to, and whether actions are allowed."""

    tenant: str
    role: str  # "viewer" or "admin"
    csrf: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class Sessions:
    """Signs and checks console cookies for ``viewers`` (API keys) and ``admins`` (admin keys)."""

    def __init__(self, viewers: ApiKeys, admins: ApiKeys, *, lifetime: int = LIFETIME) -> None:
        self.lifetime = lifetime
        self._keys: dict[str, tuple[str, str]] = {}  # key id -> (tenant, role)
        for role, keys in (("viewer", viewers), ("admin", admins)):
            for digest, tenant in keys.entries:
                self._keys[_key_id(digest)] = (tenant, role)
        material = b"".join(sorted(d for keys in (viewers, admins) for d, _ in keys.entries))
        self._secret = hashlib.sha256(b"garrison console sessions\0" + material).digest()
        self.viewers, self.admins = viewers, admins

    def sign_in(self, presented: str | None) -> str | None:
        """The cookie value for a presented key, or None when it is no key of ours. An admin key wins
        when the same key is configured both ways."""
        tenant = self.admins.tenant_for(presented)
        role = "admin"
        if tenant is None:
            tenant, role = self.viewers.tenant_for(presented), "viewer"
        if tenant is None or presented is None:
            return None
        expires = int(time.time()) + self.lifetime
        body = f"{_key_id(hashlib.sha256(presented.encode()).digest())}.{role}.{expires}"
        return f"{body}.{self._sign(body)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session of a cookie, or None when it is missing, forged, expired or its key was removed."""
        if not cookie or cookie.count(".") != 3:
            return None
        body, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        key_id, role, expires = body.split(".")
        if not expires.isdigit() or int(expires) < time.time():
            return None
        found = self._keys.get(key_id)
        if found is None or found[1] != role:
            return None
        return Session(tenant=found[0], role=role, csrf=self._sign("csrf:" + cookie))

    def bearer(self, presented: str | None) -> Session | None:
        """A session for a key sent in a header (scripts, tests): no cookie, so no CSRF token is needed."""
        cookie = self.sign_in(presented)
        return None if cookie is None else self.read(cookie)

    def _sign(self, text: str) -> str:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()


def _key_id(digest: bytes) -> str:
    return hashlib.sha256(b"key id\0" + digest).hexdigest()[:16]
