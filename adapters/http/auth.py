"""Gateway API keys: only SHA-256 digests are compared, in constant time; every key is masked.

The keys are secrets like the provider keys: a key configured as ``key`` is registered for masking
(:func:`~turnout.kernel.observability.register_secret`) when the key ring is built, and for a key
configured only as ``sha256`` the token a client presents is registered the first time it
authenticates, so an upstream that echoes it is masked from then on. A token that fails
authentication is never registered (anyone could otherwise make the gateway mask any text they
like) and never quoted in the error.
"""

from __future__ import annotations

import hashlib
import hmac

from turnout.kernel.config import ApiKey
from turnout.kernel.errors import AuthenticationFailed
from turnout.kernel.observability import register_secret


def hash_key(key: str) -> str:
    """The digest stored in config for ``key`` (what ``turnout keys hash`` prints)."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """Checks ``Authorization: Bearer KEY`` against the configured key digests."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = [(k, bytes.fromhex(k.digest())) for k in keys]
        self._unseen = {i for i, k in enumerate(keys) if k.key is None}
        """Keys configured only by digest whose token has not authenticated yet (so is not
        registered for masking yet)."""
        for k in keys:
            if k.key is not None:
                register_secret(k.key.get_secret_value())

    @property
    def open(self) -> bool:
        """True when no keys are configured: requests need no key (loopback only)."""
        return not self.keys

    def check(self, authorization: str | None) -> ApiKey | None:
        """The key that was sent (None when no keys are configured); raises
        AuthenticationFailed for a missing or wrong key. The error never quotes what was
        sent."""
        if self.open:
            return None
        if not authorization:
            raise AuthenticationFailed(
                "Missing API key: send it as 'Authorization: Bearer YOUR_KEY'.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed(
                "Malformed Authorization header: expected 'Bearer YOUR_KEY'.")
        digest = hashlib.sha256(token.encode()).digest()
        holder = None
        index = -1
        for i, (key, stored) in enumerate(self.keys):  # no early exit: time does not depend on which key
            if hmac.compare_digest(digest, stored):
                holder, index = key, i
        if holder is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        if index in self._unseen:
            # The token matched a configured digest, so it is a real key, known from now on.
            self._unseen.discard(index)
            register_secret(token)
        return holder
