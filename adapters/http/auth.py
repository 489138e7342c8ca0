"""Gateway API keys: only SHA-256 digests are held, and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from turnout.kernel.config import ApiKey
from turnout.kernel.errors import AuthenticationFailed


def hash_key(key: str) -> str:
    """The digest stored in config for ``key`` (what ``turnout keys hash`` prints)."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """Checks ``Authorization: Bearer KEY`` against the configured key digests."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = [(k.name, bytes.fromhex(k.digest())) for k in keys]

    @property
    def open(self) -> bool:
        """True when no keys are configured: requests need no key (loopback only)."""
        return not self.keys

    def check(self, authorization: str | None) -> str | None:
        """The key holder's name; raises AuthenticationFailed for a missing or wrong key."""
        if self.open:
            return None
        if not authorization:
            raise AuthenticationFailed(
                "Missing API key: send it as 'Authorization: Bearer YOUR_KEY'.")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed(
                "Malformed Authorization header: expected 'Bearer YOUR_KEY'.")
        digest = hashlib.sha256(token.strip().encode()).digest()
        holder = None
        for name, stored in self.keys:  # no early exit: time does not depend on which key
            if hmac.compare_digest(digest, stored):
                holder = name
        if holder is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return holder
