"""The admin API: gateway keys made, and budgets and rate limits set, while the gateway runs.

Served beside the API under ``/admin/``, JSON in and out, errors in OpenAI's error format, each
request authenticated by ``Authorization: Bearer <server.admin_key>`` (its SHA-256 compared in
constant time). Without ``server.admin_key`` the admin API is off: every endpoint answers 403
saying to set it. The admin key is not a gateway key (it cannot make chat requests), and no
gateway key opens the admin API.

- ``POST /admin/keys`` ``{name, user?, team?}``: 201 ``{name, user, team, key, created_at}``; the
  only time the key is shown. Names are unique across config keys and runtime keys (409).
- ``GET /admin/keys``: ``{"data": [{name, user, team, created_at, source, sha256_prefix}]}``,
  ``source`` being ``config`` or ``runtime``; never a key.
- ``DELETE /admin/keys/{name}``: 200 ``{name, revoked: true}``; 404 for no such key, 409 for a
  config key (remove it from the config instead).
- ``GET /admin/budgets``: ``{"budgets": [...], "rate_limits": [...]}``, config and runtime
  rules, each with its ``source``; a budget for one value (a ``match``, or ``global``) carries
  its current window's ``spent_usd``, ``left_usd`` and ``resets_at``, a per-value one (no
  ``match``) the rule alone.
- ``PUT /admin/budgets``: a budget (``scope, match?, limit_usd, window?, thresholds?``) or a
  rate limit (``scope, match?, rpm?, tpm?``), told apart by its fields (or ``kind``:
  ``budget``/``rate_limit``): adds it, or replaces the runtime one with the same identity
  (scope, match and window for a budget; scope and match for a rate limit). 200 with the entry
  stored. Entries are validated by the same models as ``[[budgets]]`` and ``[[rate_limits]]``;
  a bad one is a 400 naming the field.
- ``DELETE /admin/budgets`` with the identity (body or query: ``scope, match?, window?,
  kind?``): removes a runtime entry; 404 when there is none, 409 for a config one.

Runtime keys live in the shared store (see :mod:`turnout.adapters.http.auth`); runtime budgets
and rate limits at ``limits:runtime`` (JSON ``{"budgets": [...], "rate_limits": [...]}``, changed
under the store lock of the same name), which the ``budgets`` and ``rate_limits`` plugins re-read
at most once a second on every replica; the replica that changed them re-reads at once.

The plugin also registers the CLI that talks to it: ``turnout keys hash|create|list|revoke`` and
``turnout budget show|set``, with ``--url`` (default ``$TURNOUT_URL``, else
``http://127.0.0.1:4000``) and the admin key from ``--admin-key`` or ``$TURNOUT_ADMIN_KEY``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import os
import sys
import time
from typing import Any

import orjson
import structlog
from pydantic import BaseModel, ValidationError

from turnout.kernel.errors import (
    AuthenticationFailed,
    BadRequest,
    BodyTooLarge,
    ConfigError,
    NotFound,
    TurnoutError,
    clip,
)
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.observability import register_secret
from turnout.kernel.store import Store

from .budgets import (
    RUNTIME_LIMITS,
    Budget,
    Budgets,
    budget_identity,
    window_bounds,
)
from .rate_limits import WINDOW_S, RateLimit, RateLimits, rate_limit_identity, window_key

log = structlog.get_logger("turnout.admin")

PREFIX = "/admin"
MAX_BODY_BYTES = 64 * 1024
"""Largest admin request body accepted."""

LIMITS_LOCK_TTL_S = 10.0
LIMITS_LOCK_WAIT_S = 5.0

DEFAULT_URL = "http://127.0.0.1:4000"
URL_ENV = "TURNOUT_URL"
ADMIN_KEY_ENV = "TURNOUT_ADMIN_KEY"

KINDS: dict[str, tuple[str, type[BaseModel]]] = {
    "budget": ("budgets", Budget), "budgets": ("budgets", Budget),
    "rate_limit": ("rate_limits", RateLimit), "rate_limits": ("rate_limits", RateLimit),
}
"""What ``kind`` may say, and the stored list and model it names."""

IDENTITY = {"budgets": budget_identity, "rate_limits": rate_limit_identity}


class AdminDisabled(TurnoutError):
    """The admin API is off: no ``server.admin_key`` (403)."""

    status = 403
    type = "permission_error"
    code = "admin_api_disabled"


class Conflict(TurnoutError):
    """The change cannot be made as asked (409)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class Starting(TurnoutError):
    """The gateway has not started yet (503)."""

    status = 503
    type = "api_error"
    code = "starting"


# --- runtime budgets and rate limits ---------------------------------------------------------


def parse_entry(body: Any) -> tuple[str, BaseModel]:
    """A budget or rate-limit entry of a PUT, validated: (``budgets`` or ``rate_limits``, the
    rule). 400 naming the field when it does not validate."""
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object: a budget (scope, match, limit_usd, "
                         "window) or a rate limit (scope, match, rpm, tpm).")
    body = dict(body)
    kind, model = _kind(body.pop("kind", None), body)
    if kind is None:
        raise BadRequest("Give limit_usd (a budget) or rpm and/or tpm (a rate limit).",
                         param="limit_usd")
    try:
        return kind, model.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc, model, kind) from None


def _kind(said: Any, body: dict) -> tuple[str | None, type[BaseModel]]:
    if said is not None:
        if said not in KINDS:
            raise BadRequest(f"kind: give 'budget' or 'rate_limit', not '{clip(said)}'.",
                             param="kind")
        return KINDS[said]
    budget = any(f in body for f in ("limit_usd", "window", "thresholds"))
    rate = any(f in body for f in ("rpm", "tpm"))
    if budget and rate:
        raise BadRequest("An entry is a budget (limit_usd, window) or a rate limit (rpm, tpm), "
                         "not both: set them one at a time.", param="rpm")
    if budget:
        return KINDS["budget"]
    if rate:
        return KINDS["rate_limit"]
    return None, Budget


def _invalid(exc: ValidationError, model: type[BaseModel], kind: str) -> BadRequest:
    """The first problem of a pydantic error as a 400 naming its field."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or None
    what = "budget" if kind == "budgets" else "rate limit"
    if err["type"] == "extra_forbidden":
        message = (f"{field}: not a field of a {what}; it takes "
                   f"{', '.join(model.model_fields)}.")
    elif err["type"] == "missing":
        message = f"{field}: required for a {what}."
    else:
        text = err["msg"].removeprefix("Value error, ")
        if field is None:  # a rule about the entry as a whole: name the field it is about
            field = "match" if "'match'" in text else "rpm" if "'rpm'" in text else None
            message = f"{field or what}: {text}"
        else:
            message = f"{field}: {text}"
            if not isinstance(err.get("input"), (dict, list)):
                message += f" (got {clip(err.get('input'))})"
        message += "."
    return BadRequest(message, param=field)


def _identity_of(kind: str, entry: dict) -> tuple | None:
    """The identity of a stored entry; None for one that no longer validates."""
    try:
        return IDENTITY[kind](KINDS[kind][1].model_validate(entry))
    except ValidationError:
        return None


def _label(kind: str, identity: tuple) -> str:
    scope, match = identity[0], identity[1]
    who = "global" if scope == "global" else f"{scope} '{match}'" if match else f"each {scope}"
    if kind == "budgets":
        return f"the {identity[2]} budget of {who}"
    return f"the rate limit of {who}"


class RuntimeLimits:
    """The budgets and rate limits set at run time, in the store at ``limits:runtime``; every
    change is made under the store lock of the same name."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def read(self) -> dict[str, list[dict]]:
        raw = await self.store.get(RUNTIME_LIMITS)
        found = orjson.loads(raw) if raw else {}
        if not isinstance(found, dict):
            found = {}
        return {kind: [e for e in found.get(kind) or [] if isinstance(e, dict)]
                for kind in ("budgets", "rate_limits")}

    async def put(self, kind: str, rule: BaseModel) -> dict:
        """Add ``rule``, replacing the runtime entry with the same identity; returns it as
        stored."""
        entry = rule.model_dump(mode="json", exclude_none=True)
        identity = IDENTITY[kind](rule)
        async with self.store.lock(RUNTIME_LIMITS, ttl_s=LIMITS_LOCK_TTL_S,
                                   wait_s=LIMITS_LOCK_WAIT_S):
            limits = await self.read()
            limits[kind] = [e for e in limits[kind] if _identity_of(kind, e) != identity]
            limits[kind].append(entry)
            await self.store.set(RUNTIME_LIMITS, orjson.dumps(limits))
        return entry

    async def remove(self, kind: str | None, identity: dict) -> tuple[str, dict] | None:
        """Remove the runtime entry with ``identity`` (scope, match, window); ``kind`` None
        means whichever matches. Returns (kind, entry removed), or None when none matched."""
        wanted = dict(_wanted(kind, identity))
        async with self.store.lock(RUNTIME_LIMITS, ttl_s=LIMITS_LOCK_TTL_S,
                                   wait_s=LIMITS_LOCK_WAIT_S):
            limits = await self.read()
            found = [(k, e) for k in wanted for e in limits[k]
                     if _identity_of(k, e) == wanted[k]]
            if not found:
                return None
            kinds = {k for k, _ in found}
            if len(kinds) > 1:
                raise BadRequest("Both a runtime budget and a runtime rate limit have that "
                                 "scope and match: say which with kind ('budget' or "
                                 "'rate_limit'), or give the budget's window.", param="kind")
            removed = found[0][0]
            limits[removed] = [e for e in limits[removed]
                               if _identity_of(removed, e) != wanted[removed]]
            await self.store.set(RUNTIME_LIMITS, orjson.dumps(limits))
        return removed, found[0][1]


def _wanted(kind: str | None, identity: dict) -> list[tuple[str, tuple]]:
    """The identities to remove: a budget's (scope, match, window), a rate limit's (scope,
    match); without ``kind``, a rate limit's only when no window was given."""
    scope, match, window = identity["scope"], identity.get("match"), identity.get("window")
    out = []
    if kind in (None, "budgets"):
        out.append(("budgets", (scope, match, window or "day")))
    if kind == "rate_limits" or (kind is None and window is None):
        out.append(("rate_limits", (scope, match)))
    return out


def parse_identity(body: Any) -> tuple[str | None, dict]:
    """The identity of a DELETE: (kind or None, {scope, match, window}); 400 naming the
    field."""
    if not isinstance(body, dict):
        raise BadRequest("Give the entry to remove as a JSON object: scope, match, and window "
                         "for a budget.")
    body = dict(body)
    said = body.pop("kind", None)
    kind: str | None = _kind(said, body)[0] if said is not None else None
    if said is None and any(f in body for f in ("limit_usd", "thresholds")):
        kind = "budgets"
    elif said is None and any(f in body for f in ("rpm", "tpm")):
        kind = "rate_limits"
    allowed = {"scope", "match", "window", "limit_usd", "rpm", "tpm", "thresholds"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"{clip(unknown[0])}: not part of an entry's identity; give scope, "
                         "match, window (budgets) and kind.", param=clip(unknown[0]))
    if not body.get("scope"):
        raise BadRequest("scope: required: the scope of the entry to remove.", param="scope")
    probe = {"scope": body["scope"], "match": body.get("match"), "limit_usd": 0}
    if body.get("window") is not None:
        probe["window"] = body["window"]
    try:  # the same checks a stored entry passes: a known scope and window, no match on global
        rule = Budget.model_validate(probe)
    except ValidationError as exc:
        raise _invalid(exc, Budget, "budgets") from None
    if kind == "rate_limits" and body.get("window") is not None:
        raise BadRequest("window: a rate limit has no window (it is per minute).",
                         param="window")
    return kind, {"scope": rule.scope, "match": rule.match, "window": body.get("window")}


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the plugin: the HTTP API ----------------------------------------------------------------


class Admin:
    """The ``admin`` plugin: the ``/admin/`` HTTP API, and the CLI commands that call it."""

    name = "admin"

    def __init__(self) -> None:
        self.kernel: Any = None
        self._digest: bytes | None = None

    @hookimpl
    def startup(self, kernel: Any) -> None:
        """Keep the kernel; take the admin key's digest (and mask the key from now on). An
        admin key that is also a gateway key stops startup."""
        self.kernel = kernel
        server = kernel.config.server
        if server.admin_key is None:
            return
        secret = server.admin_key.get_secret_value()
        register_secret(secret)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        for key in server.api_keys:
            if hmac.compare_digest(key.digest(), digest):
                raise ConfigError(f"server.admin_key is also the gateway key {key.name!r} in "
                                  "server.api_keys; give the admin API a key of its own")
        self._digest = bytes.fromhex(digest)

    @hookimpl
    def register_http_routes(self, register) -> None:
        """``/admin/keys``, ``/admin/keys/{name}`` and ``/admin/budgets``."""
        register(f"{PREFIX}/keys", self.keys, methods=("GET", "POST"))
        register(f"{PREFIX}/keys/{{name}}", self.key, methods=("DELETE",))
        register(f"{PREFIX}/budgets", self.budgets, methods=("GET", "PUT", "DELETE"))

    @hookimpl
    def register_commands(self, register) -> None:
        """``turnout keys`` and ``turnout budget``."""
        register("keys", run_keys, help="gateway keys: hash; create, list, revoke (running "
                 "gateway)", arguments=keys_arguments)
        register("budget", run_budget, help="budgets and rate limits: show, set (running "
                 "gateway)", arguments=budget_arguments)

    # --- endpoints ---------------------------------------------------------------------------

    async def keys(self, http: Any) -> Any:
        """``GET /admin/keys`` lists the keys; ``POST /admin/keys`` makes one."""
        async def handle() -> Any:
            keys = self._runtime_keys()
            if http.method == "GET":
                return 200, {"data": await keys.list()}
            body = await _body(http)
            if not isinstance(body, dict):
                raise BadRequest("The body must be a JSON object: {name, user, team}.")
            unknown = sorted(set(body) - {"name", "user", "team"})
            if unknown:
                raise BadRequest(f"{clip(unknown[0])}: not a field of a key; give name, user "
                                 "and team.", param=clip(unknown[0]))
            if body.get("name") is None:
                raise BadRequest("name: required: who holds the key.", param="name")
            made = await keys.create(body["name"], body.get("user"), body.get("team"))
            return 201, made
        return await self._serve(http, handle)

    async def key(self, http: Any) -> Any:
        """``DELETE /admin/keys/{name}`` revokes a runtime key."""
        async def handle() -> Any:
            return 200, await self._runtime_keys().revoke(http.path_params["name"])
        return await self._serve(http, handle)

    async def budgets(self, http: Any) -> Any:
        """``GET``, ``PUT`` and ``DELETE /admin/budgets``."""
        async def handle() -> Any:
            if http.method == "GET":
                return 200, await self.show()
            if http.method == "PUT":
                kind, rule = parse_entry(await _body(http))
                self._plugin_for(kind)
                entry = await RuntimeLimits(self.kernel.store).put(kind, rule)
                await self._reread()
                log.info("runtime_limit_set", kind=kind, **entry)
                return 200, {"kind": kind.rstrip("s"), **entry}
            body = await _body(http, optional=True)
            if body is None:
                body = dict(http.query_params)
            kind, identity = parse_identity(body)
            removed = await RuntimeLimits(self.kernel.store).remove(kind, identity)
            if removed is None:
                raise self._not_removed(kind, identity)
            await self._reread()
            log.info("runtime_limit_removed", kind=removed[0], **removed[1])
            return 200, {"kind": removed[0].rstrip("s"), "removed": True, **removed[1]}
        return await self._serve(http, handle)

    # --- helpers -----------------------------------------------------------------------------

    async def _serve(self, http: Any, handle: Any) -> Any:
        """Check the admin key, run ``handle``, answer JSON; every error in OpenAI's format."""
        from starlette.responses import JSONResponse

        from turnout.adapters.http.app import error_response, internal_error

        try:
            self._check(http)
            status, body = await handle()
        except TurnoutError as exc:
            return error_response(exc)
        except Exception as exc:  # noqa: BLE001 - the last guard: never a traceback to the client
            return internal_error(exc, None)
        return JSONResponse(body, status_code=status)

    def _check(self, http: Any) -> None:
        """Raise unless the admin API is on, the gateway started, and the admin key was sent."""
        if self._digest is None:
            if self.kernel is None:
                raise Starting("The gateway is starting; retry in a moment.")
            raise AdminDisabled("The admin API is off: set server.admin_key (admin_key = "
                                "\"${TURNOUT_ADMIN_KEY}\" under [server]) and restart the "
                                "gateway.")
        if self.kernel.store is None:
            raise Starting("The gateway is starting; retry in a moment.")
        authorization = http.headers.get("authorization") or ""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        reason = None
        if not authorization:
            reason = ("Missing admin key: send server.admin_key as 'Authorization: Bearer "
                      "ADMIN_KEY'.")
        elif scheme.lower() != "bearer" or not token:
            reason = "Malformed Authorization header: expected 'Bearer ADMIN_KEY'."
        elif not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._digest):
            reason = "Incorrect admin key provided."
        if reason is not None:
            self.kernel.counters["auth_failed"] += 1
            log.warning("admin_auth_failed", reason=reason, path=http.url.path,
                        peer=http.client.host if http.client else None)
            raise AuthenticationFailed(reason)

    def _runtime_keys(self) -> Any:
        from turnout.adapters.http.auth import RuntimeKeys

        return RuntimeKeys(self.kernel.store, list(self.kernel.config.server.api_keys))

    def _plugins(self) -> dict[str, Any]:
        """The loaded budgets and rate-limits plugins, by the runtime list they read."""
        found: dict[str, Any] = {}
        for _, plugin in self.kernel.plugins.items():
            if isinstance(plugin, Budgets):
                found["budgets"] = plugin
            elif isinstance(plugin, RateLimits):
                found["rate_limits"] = plugin
        return found

    def _plugin_for(self, kind: str) -> Any:
        plugin = self._plugins().get(kind)
        if plugin is None:
            raise Conflict(f"The {kind} plugin is not loaded (see plugins.disable), so this "
                           f"entry would not be enforced; enable it and restart the gateway.",
                           param="kind")
        return plugin

    async def _reread(self) -> None:
        """Make this replica's plugins read the runtime rules now, not within the second."""
        for plugin in self._plugins().values():
            await plugin.limits.refresh(self.kernel.store, force=True)

    def _not_removed(self, kind: str | None, identity: dict) -> TurnoutError:
        """Why nothing was removed: a config entry (409), or no entry at all (404)."""
        for k, wanted in _wanted(kind, identity):
            plugin = self._plugins().get(k)
            if plugin is not None and any(IDENTITY[k](r) == wanted
                                          for r in plugin.limits.config):
                return Conflict(f"{_label(k, wanted).capitalize()} is set in the config "
                                f"([[{k}]]): remove it there and restart the gateway, or "
                                "replace it at run time with another limit.", param="scope")
        what = " or ".join(_label(k, wanted) for k, wanted in _wanted(kind, identity))
        return NotFound(f"No runtime entry for {what}; 'turnout budget show' lists them.",
                        param="scope")

    async def show(self) -> dict[str, list[dict]]:
        """Every budget (config and runtime, marked) with its current window's spend and what
        is left, and every rate limit with what its window has counted."""
        store = self.kernel.store
        plugins = self._plugins()
        now = time.time()
        budgets: list[dict] = []
        if "budgets" in plugins:
            limits = plugins["budgets"].limits
            await limits.refresh(store, force=True)
            config = {budget_identity(r) for r in limits.config}
            for rule, source in limits.listing():
                entry = {**rule.model_dump(mode="json"), "source": source,
                         "replaces_config": source == "runtime"
                         and budget_identity(rule) in config,
                         "spent_usd": None, "left_usd": None}
                entry["resets_at"] = _iso(window_bounds(rule.window, now)[1])
                spent = await plugins["budgets"].spent(rule, now)
                if spent is not None:
                    entry["spent_usd"] = round(spent, 8)
                    entry["left_usd"] = round(max(rule.limit_usd - spent, 0.0), 8)
                budgets.append(entry)
        rate_limits: list[dict] = []
        if "rate_limits" in plugins:
            limits = plugins["rate_limits"].limits
            await limits.refresh(store, force=True)
            config = {rate_limit_identity(r) for r in limits.config}
            for rule, source in limits.listing():
                entry = {**rule.model_dump(mode="json"), "source": source,
                         "replaces_config": source == "runtime"
                         and rate_limit_identity(rule) in config,
                         "requests_last_minute": None, "tokens_last_minute": None}
                value = rule.single_value
                if value is not None:
                    for unit, field in (("rpm", "requests_last_minute"),
                                        ("tpm", "tokens_last_minute")):
                        if getattr(rule, unit) is not None:
                            entry[field] = await store.window_total(
                                window_key(unit, rule, value), window_s=WINDOW_S)
                rate_limits.append(entry)
        return {"budgets": budgets, "rate_limits": rate_limits}


async def _body(http: Any, *, optional: bool = False) -> Any:
    """The request's JSON body (None for an empty one when ``optional``); 400 when it is not
    JSON, 413 past :data:`MAX_BODY_BYTES`."""
    data = bytearray()
    async for part in http.stream():
        data += part
        if len(data) > MAX_BODY_BYTES:
            raise BodyTooLarge(f"The request body exceeds {MAX_BODY_BYTES} bytes.")
    if not data.strip():
        if optional:
            return None
        raise BadRequest("The request body is empty; send a JSON object.")
    try:
        return orjson.loads(bytes(data))
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.") from None


# --- the CLI ---------------------------------------------------------------------------------


class AdminClient:
    """Calls a running gateway's admin API for the CLI; every failure is a TurnoutError whose
    message says what to do (the CLI prints it as ``turnout: <message>``, exit status 2)."""

    def __init__(self, url: str | None, admin_key: str | None) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self.admin_key = admin_key or os.environ.get(ADMIN_KEY_ENV)
        if not self.admin_key:
            raise ConfigError(f"no admin key: set {ADMIN_KEY_ENV} to the gateway's "
                              "server.admin_key, or pass --admin-key")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        try:
            response = httpx.request(
                method, self.url + PREFIX + path, timeout=30,
                headers={"authorization": f"Bearer {self.admin_key}",
                         "content-type": "application/json"},
                content=orjson.dumps(body) if body is not None else None)
        except httpx.TransportError as exc:
            raise ConfigError(f"cannot reach a gateway at {self.url} "
                              f"({type(exc).__name__}: {exc or 'no answer'}); start one with "
                              f"`turnout serve`, or pass --url (or set {URL_ENV})") from None
        try:
            found = response.json()
        except ValueError:
            found = None
        if response.is_success and found is not None:
            return found
        error = found.get("error") if isinstance(found, dict) else None
        if isinstance(error, dict) and error.get("message"):
            raise TurnoutError(str(error["message"]))
        raise TurnoutError(f"the gateway at {self.url} answered {response.status_code} to "
                           f"{method} {PREFIX}{path}; is it a Turnout gateway with the admin "
                           "API?")


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help=f"the gateway (default: ${URL_ENV}, else {DEFAULT_URL})")
    parser.add_argument("--admin-key", help=f"its server.admin_key (default: ${ADMIN_KEY_ENV}; "
                        "prefer the variable: a command line is visible to other users)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def keys_arguments(parser: argparse.ArgumentParser) -> None:
    """The sub-commands of ``turnout keys``."""
    sub = parser.add_subparsers(dest="keys_command", metavar="SUBCOMMAND")
    hashed = sub.add_parser("hash", help="print the SHA-256 of a key for server.api_keys")
    hashed.add_argument("key")
    create = sub.add_parser("create", help="make a gateway key on a running gateway; prints it "
                            "once")
    create.add_argument("name", help="who holds the key (unique; shown in logs and records)")
    create.add_argument("--user", help="the user its requests count against")
    create.add_argument("--team", help="the team its requests count against")
    _client_options(create)
    listed = sub.add_parser("list", help="list the gateway's keys (config and runtime), never "
                            "a key")
    _client_options(listed)
    revoke = sub.add_parser("revoke", help="revoke a runtime key, on every replica at once")
    revoke.add_argument("name")
    _client_options(revoke)
    parser.set_defaults(keys_parser=parser)


def run_keys(args: argparse.Namespace) -> int:
    """``turnout keys``: hash a key locally, or create, list and revoke through the admin
    API."""
    command = args.keys_command
    if command == "hash":
        from turnout.adapters.http.auth import hash_key

        print(hash_key(args.key))
        return 0
    if command is None:
        args.keys_parser.print_help()
        return 2
    client = AdminClient(args.url, args.admin_key)
    if command == "create":
        made = client.call("POST", "/keys", {"name": args.name, "user": args.user,
                                             "team": args.team})
        if args.json:
            print(json.dumps(made, indent=2))
            return 0
        owner = ", ".join(f"{k} {made[k]}" for k in ("user", "team") if made.get(k))
        print(f"created key '{made['name']}'{f' ({owner})' if owner else ''}; it is shown only "
              "now, keep it safe:", file=sys.stderr)
        print(made["key"])
        return 0
    if command == "list":
        data = client.call("GET", "/keys")["data"]
        if args.json:
            print(json.dumps(data, indent=2))
            return 0
        print(_table(["NAME", "SOURCE", "USER", "TEAM", "CREATED", "SHA256"],
                     [[k["name"], k["source"], k.get("user") or "-", k.get("team") or "-",
                       k.get("created_at") or "-", k["sha256_prefix"] + "..."] for k in data])
              if data else "no keys")
        return 0
    done = client.call("DELETE", f"/keys/{_quote(args.name)}")
    print(json.dumps(done, indent=2) if args.json else f"revoked key '{done['name']}'")
    return 0


def budget_arguments(parser: argparse.ArgumentParser) -> None:
    """The sub-commands of ``turnout budget``."""
    sub = parser.add_subparsers(dest="budget_command", metavar="SUBCOMMAND")
    show = sub.add_parser("show", help="every budget with its spend and what is left, and every "
                          "rate limit")
    _client_options(show)
    put = sub.add_parser("set", help="add or replace a budget (--limit-usd) or a rate limit "
                         "(--rpm, --tpm) at run time; --remove deletes one")
    put.add_argument("--scope", required=True,
                     choices=["key", "user", "team", "model", "route", "global"])
    put.add_argument("--match", help="the key name, user, team, model or route (omit for "
                     "global; omitted otherwise: each one gets its own count)")
    put.add_argument("--limit-usd", type=float, help="a budget: most spent per window, USD")
    put.add_argument("--window", choices=["minute", "hour", "day", "month", "total"],
                     help="the budget's window (default day)")
    put.add_argument("--rpm", type=int, help="a rate limit: requests per minute")
    put.add_argument("--tpm", type=int, help="a rate limit: tokens per minute")
    put.add_argument("--remove", action="store_true", help="remove the runtime budget (scope, "
                     "match, window) or rate limit (scope, match) instead")
    _client_options(put)
    parser.set_defaults(budget_parser=parser)


def run_budget(args: argparse.Namespace) -> int:
    """``turnout budget show`` and ``turnout budget set``, through the admin API."""
    if args.budget_command is None:
        args.budget_parser.print_help()
        return 2
    client = AdminClient(args.url, args.admin_key)
    if args.budget_command == "show":
        shown = client.call("GET", "/budgets")
        print(json.dumps(shown, indent=2) if args.json else render_limits(shown))
        return 0
    entry: dict[str, Any] = {"scope": args.scope}
    if args.match is not None:
        entry["match"] = args.match
    budget = args.limit_usd is not None or args.window is not None
    rate = args.rpm is not None or args.tpm is not None
    if budget and rate:
        raise BadRequest("set a budget (--limit-usd, --window) or a rate limit (--rpm, --tpm), "
                         "not both at once")
    if args.remove:
        if budget:
            entry.update(kind="budget", **({"window": args.window} if args.window else {}))
        elif rate:
            entry["kind"] = "rate_limit"
        done = client.call("DELETE", "/budgets", entry)
    else:
        if budget:
            if args.limit_usd is None:
                raise BadRequest("a budget needs --limit-usd")
            entry.update(limit_usd=args.limit_usd,
                         **({"window": args.window} if args.window else {}))
        elif rate:
            entry.update({k: v for k, v in (("rpm", args.rpm), ("tpm", args.tpm))
                          if v is not None})
        else:
            raise BadRequest("give --limit-usd (a budget), --rpm and/or --tpm (a rate limit), "
                             "or --remove")
        done = client.call("PUT", "/budgets", entry)
    if args.json:
        print(json.dumps(done, indent=2))
        return 0
    verb = "removed" if args.remove else "set"
    print(f"{verb} runtime {done['kind'].replace('_', ' ')}: {_describe(done)}")
    return 0


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def _who(entry: dict) -> str:
    scope, match = entry["scope"], entry.get("match")
    return "global" if scope == "global" else f"{scope} '{match}'" if match else f"each {scope}"


def _describe(entry: dict) -> str:
    if "limit_usd" in entry or entry.get("kind") == "budget":
        limit = entry.get("limit_usd")
        per = entry.get("window", "day")
        text = f"{_who(entry)}, {per}"
        return text + (f", ${limit:g}" if isinstance(limit, (int, float)) else "")
    limits = ", ".join(f"{entry[u]} {u}" for u in ("rpm", "tpm") if entry.get(u) is not None)
    return f"{_who(entry)}{', ' + limits if limits else ''}"


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}".rstrip("0").rstrip(".")


def rate_limit_usage(entry: dict) -> list[str]:
    """A rate limit of :meth:`Admin.show` in words, per unit: ``60 rpm (12 in the last
    minute)``."""
    parts = []
    for unit, used in (("rpm", "requests_last_minute"), ("tpm", "tokens_last_minute")):
        if entry.get(unit) is not None:
            count = entry.get(used)
            parts.append(f"{entry[unit]:,} {unit}" + (f" ({count:,.0f} in the last minute)"
                                                       if count is not None else ""))
    return parts


def render_limits(shown: dict) -> str:
    """``turnout budget show`` for people: one line per budget and per rate limit."""
    lines = ["budgets:"]
    for b in shown.get("budgets", []):
        source = b["source"] + (", replaces config" if b.get("replaces_config") else "")
        if b.get("spent_usd") is None:
            figures = "per value, no single figure"
        else:
            figures = (f"spent {_money(b['spent_usd'])}, left {_money(b['left_usd'])}, resets "
                       f"{b.get('resets_at') or 'never'}")
        lines.append(f"  {_who(b)}: ${b['limit_usd']:g} per {b['window']}; {figures} "
                     f"[{source}]")
    if len(lines) == 1:
        lines.append("  (none)")
    lines.append("rate limits:")
    count = len(lines)
    for r in shown.get("rate_limits", []):
        source = r["source"] + (", replaces config" if r.get("replaces_config") else "")
        lines.append(f"  {_who(r)}: {', '.join(rate_limit_usage(r))} [{source}]")
    if len(lines) == count:
        lines.append("  (none)")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [header, *rows])
