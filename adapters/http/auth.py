"""Gateway API keys: only SHA-256 digests are compared, in constant time; every key is masked.

Two kinds of gateway key authenticate a request. **Config keys** (``server.api_keys``) are
compared by digest in constant time, no early exit. **Runtime keys**, made through the admin API
(``POST /admin/keys``, ``turnout keys create``), live hashed in the shared store, so every replica
sharing it sees them: one value per key at ``apikey:<sha256 hex>`` (JSON: name, user, team,
created_at) and an index, ``apikey-index`` (a JSON list of name, sha256, user, team, created_at),
changed only under the store lock of the same name. A token that matches no config key is looked
up at its digest in the store: one GET, never cached, so a revoke takes effect at once on every
replica.

The gateway is open (no key needed, loopback only) only when ``server.api_keys`` is empty and
``server.admin_key`` is unset; once an admin key is set every request needs a key, a runtime one
if no key is configured.

The keys are secrets like the provider keys: a key configured as ``key`` is registered for masking
(:func:`~turnout.kernel.observability.register_secret`) when the key ring is built; a key
configured only as ``sha256``, or a runtime key, is registered the first time its token
authenticates (and a runtime key when it is made), so an upstream that echoes it is masked from
then on. A token that fails authentication is never registered (anyone could otherwise make the
gateway mask any text they like) and never quoted in the error.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Any, Callable

import orjson
import structlog

from turnout.kernel.config import ApiKey
from turnout.kernel.errors import (
    AuthenticationFailed,
    BadRequest,
    NotFound,
    TurnoutError,
    clip,
)
from turnout.kernel.observability import register_secret
from turnout.kernel.store import Store

log = structlog.get_logger("turnout.auth")

RUNTIME_KEY = "apikey:"
"""Store key prefix of a runtime key's value; the key's SHA-256 (hex) follows."""

KEY_INDEX = "apikey-index"
"""Store key of the runtime keys' index (and of the lock that guards changes to it)."""

TOKEN_PREFIX = "sk-turnout-"
"""How a runtime key starts; 32 URL-safe random characters follow."""

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
"""What a runtime key's name may be: it shows in logs, records and the admin API's paths."""

INDEX_LOCK_TTL_S = 10.0
INDEX_LOCK_WAIT_S = 5.0


def hash_key(key: str) -> str:
    """The digest stored in config for ``key`` (what ``turnout keys hash`` prints)."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyNameTaken(TurnoutError):
    """A key with that name exists already, in the config or made at run time (409)."""

    status = 409
    type = "invalid_request_error"
    code = "key_name_taken"


class ConfigKeyRefused(TurnoutError):
    """A config key cannot be changed through the admin API (409)."""

    status = 409
    type = "invalid_request_error"
    code = "config_key"


class KeyNotFound(NotFound):
    """No gateway key has that name (404)."""

    code = "key_not_found"


class KeyRing:
    """Checks ``Authorization: Bearer KEY`` against the configured key digests, then the runtime
    keys in the store.

    ``store`` returns the shared store (None before the gateway has started: config keys only);
    ``open`` says that no key is needed (default: when no keys are configured).
    """

    def __init__(self, keys: list[ApiKey], *, store: Callable[[], Store | None] | None = None,
                 open: bool | None = None) -> None:
        self.keys = [(k, bytes.fromhex(k.digest())) for k in keys]
        self._store = store
        self._open = not self.keys if open is None else open
        self._unseen = {i for i, k in enumerate(keys) if k.key is None}
        """Keys configured only by digest whose token has not authenticated yet (so is not
        registered for masking yet)."""
        for k in keys:
            if k.key is not None:
                register_secret(k.key.get_secret_value())

    @property
    def open(self) -> bool:
        """True when requests need no key: no keys configured and no admin key (loopback
        only)."""
        return self._open

    async def check(self, authorization: str | None) -> ApiKey | None:
        """The key that was sent (None when the gateway is open); raises AuthenticationFailed
        for a missing or wrong key. Config keys are compared first, all of them, in constant
        time; a token that matches none is looked up in the store. The error never quotes what
        was sent."""
        if self._open:
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
            store = self._store() if self._store is not None else None
            if store is not None:
                holder = await runtime_key(store, digest.hex())
            if holder is None:
                raise AuthenticationFailed("Incorrect API key provided.")
            register_secret(token)  # a real key: masked from now on (a no-op once it is)
            return holder
        if index in self._unseen:
            # The token matched a configured digest, so it is a real key, known from now on.
            self._unseen.discard(index)
            register_secret(token)
        return holder


async def runtime_key(store: Store, digest: str) -> ApiKey | None:
    """The runtime key whose SHA-256 (hex) is ``digest``, or None: one GET."""
    raw = await store.get(RUNTIME_KEY + digest)
    if raw is None:
        return None
    try:
        found = orjson.loads(raw)
        return ApiKey(name=found["name"], sha256=digest, user=found.get("user"),
                      team=found.get("team"))
    except Exception as exc:  # noqa: BLE001 - a damaged value refuses the key, never the gateway
        log.error("runtime_key_unreadable", sha256_prefix=digest[:8], error=type(exc).__name__)
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class RuntimeKeys:
    """Make, list and revoke the gateway keys kept in the shared store, beside the config's
    ``server.api_keys`` (whose names they share: a name is unique across both)."""

    def __init__(self, store: Store, config_keys: list[ApiKey]) -> None:
        self.store = store
        self.config_keys = config_keys

    async def _index(self) -> list[dict[str, Any]]:
        raw = await self.store.get(KEY_INDEX)
        return orjson.loads(raw) if raw else []

    async def create(self, name: str, user: str | None = None,
                     team: str | None = None) -> dict[str, Any]:
        """Make a key named ``name``; returns its listing entry with ``key``, the only time the
        key is ever shown (only its digest is kept)."""
        if not isinstance(name, str) or not NAME.match(name):
            raise BadRequest("name: give 1 to 64 letters, digits, '.', '_', '@' or '-', starting "
                             "with a letter or digit.", param="name")
        for field, value in (("user", user), ("team", team)):
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 128):
                raise BadRequest(f"{field}: give a string of 1 to 128 characters, or omit it.",
                                 param=field)
        if any(k.name == name for k in self.config_keys):
            raise KeyNameTaken(f"A key named '{name}' is in the config (server.api_keys); "
                               "choose another name.", param="name")
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)  # 24 bytes: 32 characters
        digest = hash_key(token)
        entry = {"name": name, "sha256": digest, "user": user, "team": team,
                 "created_at": _now()}
        async with self.store.lock(KEY_INDEX, ttl_s=INDEX_LOCK_TTL_S, wait_s=INDEX_LOCK_WAIT_S):
            index = await self._index()
            if any(k["name"] == name for k in index):
                raise KeyNameTaken(f"A key named '{name}' exists already; revoke it first "
                                   "(turnout keys revoke) or choose another name.", param="name")
            # Index first: a crash in between leaves a listed key that does not work (revoke
            # clears it), never a working key nobody can list or revoke.
            await self.store.set(KEY_INDEX, orjson.dumps([*index, entry]))
            await self.store.set(RUNTIME_KEY + digest, orjson.dumps(
                {k: entry[k] for k in ("name", "user", "team", "created_at")}))
        register_secret(token)
        log.info("api_key_created", name=name, user=user, team=team, sha256_prefix=digest[:8])
        return {"name": name, "user": user, "team": team, "key": token,
                "created_at": entry["created_at"]}

    async def list(self) -> list[dict[str, Any]]:
        """Every key, config ones first: name, user, team, created_at, source and the first 8
        hex digits of its digest; never a key."""
        out = [{"name": k.name, "user": k.user, "team": k.team, "created_at": None,
                "source": "config", "sha256_prefix": k.digest()[:8]} for k in self.config_keys]
        out += [{"name": k["name"], "user": k.get("user"), "team": k.get("team"),
                 "created_at": k.get("created_at"), "source": "runtime",
                 "sha256_prefix": k["sha256"][:8]} for k in await self._index()]
        return out

    async def revoke(self, name: str) -> dict[str, Any]:
        """Delete the runtime key ``name``; it is refused from the next request on, on every
        replica."""
        if any(k.name == name for k in self.config_keys):
            raise ConfigKeyRefused(f"'{clip(name)}' is a config key (server.api_keys): remove it from "
                                   "the config and restart the gateway to revoke it.",
                                   param="name")
        async with self.store.lock(KEY_INDEX, ttl_s=INDEX_LOCK_TTL_S, wait_s=INDEX_LOCK_WAIT_S):
            index = await self._index()
            found = [k for k in index if k["name"] == name]
            if not found:
                raise KeyNotFound(f"No key named '{clip(name)}'; 'turnout keys list' lists them.",
                                  param="name")
            # The key first: a crash in between leaves a listed key that no longer works.
            for entry in found:
                await self.store.delete(RUNTIME_KEY + entry["sha256"])
            await self.store.set(KEY_INDEX, orjson.dumps([k for k in index if k["name"] != name]))
        log.info("api_key_revoked", name=name)
        return {"name": name, "revoked": True}
