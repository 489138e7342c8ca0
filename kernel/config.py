"""The configuration schema, and loading it from TOML or YAML with validation.

One file (``--config`` or ``TURNOUT_CONFIG``), TOML or YAML with the same schema. Strings may use
``${VAR}`` or ``${VAR:-default}`` to take values (secrets above all) from the environment. Every key
is declared and documented here; ``docs/configuration.md`` is the reader's version of this module.
Validation errors name the key, the file and line where it can be found, and what is expected.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

CONFIG_ENV = "TURNOUT_CONFIG"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, so typos are caught at startup,
    and so are infinite or not-a-number floats (``1e400`` reads as infinity)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- server ------------------------------------------------------------------------------------


class ApiKey(Section):
    """A gateway API key. Only its SHA-256 is kept; ``turnout keys hash`` prints it for a key."""

    name: str = Field(description="Who holds the key; shown in logs and records, never the key.")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                               description="Hex SHA-256 of the key.")
    key: SecretStr | None = Field(
        default=None,
        description="The key itself, usually as ${ENV}; only its digest is compared.")
    user: str | None = Field(default=None, description="The user this key's requests count "
                             "against (user budgets and rate limits) when the request names "
                             "none in its 'user' field or the x-turnout-user header.")
    team: str | None = Field(default=None, description="The team this key's requests count "
                             "against (team budgets and rate limits).")

    @model_validator(mode="after")
    def _one_of(self) -> "ApiKey":
        if (self.sha256 is None) == (self.key is None):
            raise ValueError("give exactly one of 'sha256' or 'key'")
        return self

    def digest(self) -> str:
        if self.sha256:
            return self.sha256
        return hashlib.sha256(self.key.get_secret_value().encode()).hexdigest()  # type: ignore[union-attr]


ADMIN_KEY_MIN_LENGTH = 16
"""Shortest ``server.admin_key`` accepted."""


class Server(Section):
    """The HTTP API."""

    host: str = Field(default="127.0.0.1", description="Address to bind. Without api_keys the "
                      "gateway refuses any address but loopback.")
    port: int = Field(default=4000, ge=0, le=65535, description="Port to bind; 0 picks a free one.")
    api_keys: list[ApiKey] = Field(default_factory=list, description="Keys clients must send as "
                                   "'Authorization: Bearer KEY'. Empty, and no admin_key: no key "
                                   "needed, loopback only.")
    admin_key: SecretStr | None = Field(
        default=None,
        description="The admin API's key, usually as ${TURNOUT_ADMIN_KEY}: clients of /admin/ "
        "(and 'turnout keys' and 'turnout budget') send it as 'Authorization: Bearer KEY' to "
        "create and revoke gateway keys and set budgets and rate limits at run time. At least 16 "
        "characters; it is not a gateway key (it cannot make chat requests). Unset (or empty): "
        "the admin API is off. Set, the gateway always asks for a key, even with no api_keys.")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024,
                                description="Largest request body accepted; larger gets 413.")
    request_timeout_s: float = Field(default=600, gt=0,
                                     description="Deadline for a whole request, all attempts.")
    max_attempts_per_request: int = Field(default=32, ge=1, description="Calls one request may "
                                          "make in all, its sub-requests' included: the cap on "
                                          "what a multi-call strategy can spend.")
    header_timeout_s: float = Field(default=10, gt=0, description="Time a client has to send a "
                                    "request's complete headers, counted from the connection's "
                                    "opening (first request) or from the request's first byte "
                                    "(later requests on a kept-alive connection). Past it the "
                                    "connection is closed, with a 408 if part of a request "
                                    "arrived.")
    body_timeout_s: float = Field(default=60, gt=0, description="Time to receive a request's "
                                  "whole body once its headers are in; past it the request gets "
                                  "408 and the connection closes.")
    keep_alive_timeout_s: float = Field(default=15, gt=0, description="How long a connection may "
                                        "stay idle between requests before the gateway closes "
                                        "it. Behind a load balancer, set it above the balancer's "
                                        "idle timeout.")
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, description="Largest request line "
                                  "plus headers; beyond it the request gets 431 and the "
                                  "connection closes.")
    max_headers: int = Field(default=100, ge=8, description="Most headers a request may carry; "
                             "beyond it the request gets 431 and the connection closes.")
    max_connections: int = Field(default=1000, ge=1, description="Most client connections open "
                                 "at once. A connection beyond it gets an immediate 503 and is "
                                 "closed; open ones are unaffected. At start the open-files "
                                 "limit is raised to fit (two per connection plus 64) where the "
                                 "hard limit allows, else this cap is lowered to fit, with a "
                                 "warning.")
    shutdown_timeout_s: float = Field(default=20, ge=0, description="On SIGTERM or SIGINT the "
                                      "gateway stops accepting and closes idle connections at "
                                      "once; requests in flight get this long to finish. Then "
                                      "their connections are closed and the requests cancelled "
                                      "(recorded as 'cancelled').")

    @field_validator("admin_key", mode="before")
    @classmethod
    def _empty_admin_key_is_none(cls, value: Any) -> Any:
        # ${TURNOUT_ADMIN_KEY:-} with the variable unset: the admin API is off, not an error.
        return None if value == "" else value

    @field_validator("admin_key")
    @classmethod
    def _long_admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < ADMIN_KEY_MIN_LENGTH:
            raise ValueError(f"must be at least {ADMIN_KEY_MIN_LENGTH} characters; make one "
                             "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return value

    @property
    def open(self) -> bool:
        """True when requests need no key: no ``api_keys`` and no ``admin_key`` (loopback only)."""
        return not self.api_keys and self.admin_key is None


# --- providers and models ----------------------------------------------------------------------


class ProviderEntry(Section):
    """An upstream that serves models. Its name (the table key) is what models refer to.

    ``kind`` names a provider kind that a plugin registered; the rest of the table is that kind's
    settings, validated by its own model once plugins are loaded (see "Provider kinds" below).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str = Field(description="Provider kind, registered by a plugin. Built in: 'openai' "
                      "(api.openai.com), 'openai-compatible' (vLLM, Ollama, llama.cpp, "
                      "OpenRouter... by base_url), 'anthropic', 'gemini', and 'simulated' (the "
                      "built-in local fleet).")

    def __repr_args__(self):
        # The rest of the table may hold credentials (api_key, headers): name the keys only.
        yield "kind", self.kind
        for key in self.model_extra or {}:
            yield key, "..."


CAPABILITIES = {"tools", "json", "streaming", "vision", "embeddings"}


class Deployment(Section):
    """One deployment of a model: a provider (a region, another vendor) serving it under an
    upstream id. Its id is ``<model>@<provider>``."""

    provider: str = Field(description="Name of the provider (a key of [providers]) of this "
                          "deployment; one deployment per provider within a model.")
    upstream: str | None = Field(default=None, description="Model id sent to this provider; "
                                 "default: the model's upstream (else its name).")
    weight: float = Field(default=1.0, gt=0, description="Relative share of traffic this "
                          "deployment gets when its siblings are equally healthy and fast.")


class Model(Section):
    """A model clients may ask for by its name (the table key)."""

    provider: str = Field(description="Name of the provider (a key of [providers]) that serves "
                          "it; with deployments, default: the first deployment's.")
    upstream: str | None = Field(default=None, description="Model id sent upstream; default: the "
                                 "name.")
    context_window: int = Field(default=128_000, ge=256, description="Tokens of prompt + answer.")
    max_output_tokens: int | None = Field(default=None, ge=1, description="Upper bound of answer "
                                          "tokens; Anthropic needs one (default 4096).")
    input_price: float = Field(default=0.0, ge=0, description="USD per million input tokens.")
    output_price: float = Field(default=0.0, ge=0, description="USD per million output tokens.")
    cached_input_price: float | None = Field(
        default=None, ge=0, description="USD per million input tokens the provider read from "
        "its prompt cache (reported as cached tokens); default: input_price.")
    capabilities: list[str] = Field(default_factory=lambda: ["tools", "json", "streaming"],
                                    description=f"Any of {sorted(CAPABILITIES)}.")
    tier: int = Field(default=1, ge=0, description="Strength, 0 = cheapest; routers may use it.")
    description: str = Field(default="", description="Free text, shown in listings.")
    quality: float | dict[str, float] | None = Field(
        default=None, description="How good its answers are, 0 (useless) to 1 (always right), "
        "for the routers that weigh quality ('score', 'cost_tiers'): one number for every task, "
        "or a table by task type (the 'task' label) with an optional 'default' for the rest, "
        "e.g. { code = 0.9, chat = 0.7, default = 0.6 }. Unset: unknown (a router ranks it below "
        "models whose quality it knows).")

    @field_validator("quality")
    @classmethod
    def _fraction(cls, v: float | dict[str, float] | None) -> float | dict[str, float] | None:
        for task, value in ({"": v} if isinstance(v, (int, float)) else v or {}).items():
            if not 0 <= value <= 1:
                where = f" for {task!r}" if task else ""
                raise ValueError(f"quality{where} must be from 0 to 1, not {value}")
        return v

    def qualities(self) -> dict[str, float]:
        """``quality`` as a table by task type (one number becomes ``default``)."""
        if self.quality is None:
            return {}
        if isinstance(self.quality, dict):
            return dict(self.quality)
        return {"default": float(self.quality)}

    deployments: list[Deployment] | None = Field(
        default=None, description="Several deployments of this model (two regions, two "
        "providers), as { provider = \"...\", upstream = \"...\", weight = 1 }: the health "
        "plugin balances them by circuit state, latency and calls in flight, and fails over from "
        "one to the next. Unset: the model is one deployment, its own provider and upstream.")

    @model_validator(mode="before")
    @classmethod
    def _provider_from_deployments(cls, data: Any) -> Any:
        deployments = data.get("deployments") if isinstance(data, dict) else None
        if isinstance(deployments, list) and deployments and "provider" not in data:
            first = deployments[0]
            if isinstance(first, dict) and "provider" in first:
                data = {**data, "provider": first["provider"]}
        return data

    @field_validator("deployments")
    @classmethod
    def _one_per_provider(cls, v: list[Deployment] | None) -> list[Deployment] | None:
        if v is not None:
            if not v:
                raise ValueError("list at least one deployment, or leave the key out")
            providers = [d.provider for d in v]
            twice = sorted({p for p in providers if providers.count(p) > 1})
            if twice:
                raise ValueError(f"provider {twice[0]!r} is listed twice; a deployment's id is "
                                 "<model>@<provider>, so give each provider one deployment")
        return v

    @field_validator("capabilities")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = set(v) - CAPABILITIES
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
        return v


# --- routing -----------------------------------------------------------------------------------


class Route(Section):
    """A named route: candidate models, a router that may order them for each request, and the
    strategy that turns them into answers.

    The filters (context fit, capabilities, budget, health) drop candidates first; the route's
    ``router``, when set, then orders what is left for the request at hand (by quality, price,
    latency or a learned prediction) and says why in the decision record; the strategy gets the
    models in that order. The strategy's own settings live in the route's sub-table named after
    it, validated by the strategy's model: ``[routes.NAME.fallback]`` for the built-in fallback
    chain.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    models: list[str] = Field(default_factory=list, description="Model names in preference "
                              "order. Every strategy needs at least one, except 'chain', whose "
                              "stages name their own models.")
    strategy: str = Field(default="fallback", description="Registered strategy that runs the "
                          "route; built in: 'fallback' (try each model in order until one "
                          "answers), 'cascade' (cheapest first, the first answer the validators "
                          "pass), 'race' (the first n models at once, the first good answer "
                          "wins), 'ensemble' (several models answer, their answers are combined), "
                          "'critic' (the first model drafts, a critic scores it, the draft is "
                          "revised) and 'chain' (named stages, each a prompt to a model or route, "
                          "fed by the earlier ones' answers).")
    validators: list[str | dict[str, Any]] | None = Field(
        default=None, description="Validators that judge every answer on this route: registered "
        "names, or tables { kind = \"<name>\", ...its settings } (see \"Validators\"); unset: "
        "every registered validator that takes no settings (built in: 'json').")
    max_attempts: int = Field(default=4, ge=1, description="Calls one request may make on this "
                              "route, retries included; the kernel stops it there whatever the "
                              "strategy or escalate plugins say.")
    attempt_timeout_s: float | None = Field(default=None, gt=0, description="Deadline of one "
                                            "attempt (non-streaming: the whole answer; streaming: "
                                            "the first chunk).")
    router: str | dict[str, Any] | None = Field(
        default=None, description="Registered router that orders this route's models for each "
        "request, after the filters and before the strategy: a name, or a table { kind = "
        "\"<name>\", ...its settings } validated by the router's own settings. Built in: "
        "'score' (a weighted score of quality for the task, price and observed latency; "
        "settings quality, price, latency) and 'cost_tiers' (cheapest first among the models "
        "whose quality for the task reaches min_quality, the others after, best first); "
        "plugins add more ('learned'). Unset: the models in the order listed. The decision "
        "record's 'router' says which ran, why, and each model's score.")


class Rule(Section):
    """A rule of the rules router: when every condition holds, ``auto`` goes to ``route``."""

    name: str = Field(default="", description="Shown in decision records; default 'rule N'.")
    when: dict[str, Any] = Field(description="label -> value, list of values, or comparison "
                                 "string ('> 0.6', '<= 2000', '!= chat').")
    route: str = Field(description="Route to take (a key of [routes]).")

    @field_validator("when")
    @classmethod
    def _current_task_names(cls, when: dict[str, Any]) -> dict[str, Any]:
        task = when.get("task")
        for value in task if isinstance(task, list) else [task]:
            if isinstance(value, str) and value in RENAMED_TASKS:
                raise ValueError(f"task {value!r} is no longer a task type: "
                                 f"{RENAMED_TASKS[value]}")
        return when


RENAMED_TASKS = {
    "translate": "write 'translation'",
    "tools": "match needs_tools = true instead",
}
"""Task values the classifier no longer gives, and what a rule writes instead."""


class Threshold(Section):
    """A step of ``[routing] difficulty``: requests whose difficulty is below ``below`` take
    ``route``."""

    below: float | None = Field(default=None, description="Upper bound (exclusive) of the "
                                "difficulty label (0..1) for this route; unset on the last "
                                "entry: every difficulty left.")
    route: str = Field(description="Route to take (a key of [routes]).")


class Routing(Section):
    """How ``model: auto`` is resolved: the first of ``rules`` that matches, else the route
    ``tasks`` maps the request's task to, else the first ``difficulty`` step it falls under, else
    ``default``. The decision record's ``rule`` says which applied (``task code -> strong``,
    ``difficulty 0.42 < 0.7 -> balanced``)."""

    default: str | None = Field(default=None, description="Route for auto when nothing else "
                                "applies; default: the first route.")
    rules: list[Rule] = Field(default_factory=list, description="Checked in order; first match "
                              "wins.")
    tasks: dict[str, str] = Field(default_factory=dict, description="Task type (the 'task' "
                                  "label) -> route, e.g. { code = \"strong\", chat = "
                                  "\"cheap\" }; applies when no rule matched.")
    difficulty: list[Threshold] = Field(
        default_factory=list, description="Routes by the request's difficulty (the "
        "'difficulty' label, 0..1; the 'complexity' label where the classifier gives no "
        "difficulty), when no rule matched and the task map has no entry: the first entry whose "
        "'below' the difficulty is under, e.g. [{ below = 0.3, route = \"cheap\" }, { below = "
        "0.7, route = \"balanced\" }, { route = \"strong\" }].")

    @field_validator("difficulty")
    @classmethod
    def _ascending(cls, v: list[Threshold]) -> list[Threshold]:
        bounds = [t.below for t in v]
        if None in bounds[:-1]:
            raise ValueError("only the last difficulty entry may leave out 'below' (it takes "
                             "every difficulty left)")
        given = [b for b in bounds if b is not None]
        if given != sorted(given):
            raise ValueError(f"the 'below' bounds must ascend, not {given}")
        return v

    @field_validator("tasks")
    @classmethod
    def _current_tasks(cls, v: dict[str, str]) -> dict[str, str]:
        for task in v:
            if task in RENAMED_TASKS:
                raise ValueError(f"task {task!r} is no longer a task type: {RENAMED_TASKS[task]}")
        return v


# --- the rest ----------------------------------------------------------------------------------


class Plugins(Section):
    """Which plugins load, beyond the built-ins and installed entry points.

    A plugin's own settings are the top-level table named after the plugin (``[record]``,
    ``[telemetry]``, ``[simulation]``, ``[my_plugin]``), validated by the plugin's ``Settings``.
    """

    load: list[str] = Field(default_factory=list, description="Import paths ('pkg.mod' or "
                            "'pkg.mod:Class') of extra plugins.")
    disable: list[str] = Field(default_factory=list, description="Names of plugins not to load.")


class StateSection(Section):
    """Shared state (rate limits, budgets, caches, health): one store per gateway.

    ``backend`` names a registered store backend; the rest of the table is that backend's
    settings (``url``, ``key_prefix`` for Redis), validated by its own model.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    backend: str = Field(default="memory", description="Registered store backend; built in: "
                         "'memory' (this process only) and 'redis' (shared by every replica).")


class Logging(Section):
    """Structured logs on standard error."""

    level: Literal["debug", "info", "warning", "error"] = Field(default="info",
                                                                description="Lowest level logged.")
    format: Literal["json", "console"] = Field(default="json", description="'console' for humans.")


KERNEL_SECTIONS = ("server", "providers", "models", "routes", "routing", "plugins", "state",
                   "logging")
"""Top-level keys the kernel owns; every other top-level table belongs to a plugin."""


class Config(Section):
    """The whole configuration: the kernel's sections, plus one table per plugin with settings."""

    model_config = ConfigDict(extra="allow", frozen=True)

    server: Server = Field(default_factory=Server, description="The HTTP API.")
    providers: dict[str, ProviderEntry] = Field(default_factory=dict,
                                                description="Upstreams by name.")
    models: dict[str, Model] = Field(default_factory=dict, description="Models by the name "
                                     "clients use.")
    routes: dict[str, Route] = Field(default_factory=dict, description="Named routes.")
    routing: Routing = Field(default_factory=Routing, description="How 'auto' is resolved.")
    plugins: Plugins = Field(default_factory=Plugins, description="Extra and disabled plugins.")
    state: StateSection = Field(default_factory=StateSection, description="Shared state.")
    logging: Logging = Field(default_factory=Logging, description="Log level and format.")
    source: str | None = Field(default=None, exclude=True, description="(set by the loader)")
    text: str | None = Field(default=None, exclude=True, repr=False,
                             description="(set by the loader: the file's text, for line numbers)")

    def section(self, name: str) -> Any:
        """A plugin's top-level table as written (None when absent)."""
        return (self.model_extra or {}).get(name)

    def problems(self) -> list[Problem]:
        """Every reference that points nowhere (models, routes, rules, the bind address)."""
        found: list[Problem] = []
        for name, model in self.models.items():
            if model.provider not in self.providers:
                found.append((("models", name, "provider"), f"no provider {model.provider!r}; "
                              f"providers: {sorted(self.providers)}"))
            for i, deployment in enumerate(model.deployments or ()):
                if deployment.provider not in self.providers:
                    found.append((("models", name, "deployments", i, "provider"),
                                  f"no provider {deployment.provider!r}; "
                                  f"providers: {sorted(self.providers)}"))
        for name, route in self.routes.items():
            if name in self.models:
                found.append((("routes", name), "a model has the same name; rename one"))
            for m in route.models:
                if m not in self.models:
                    found.append((("routes", name, "models"), f"no model {m!r}; "
                                  f"models: {sorted(self.models)}"))
        for i, rule in enumerate(self.routing.rules):
            if rule.route not in self.routes:
                found.append((("routing", "rules", i, "route"), f"no route {rule.route!r}; "
                              f"routes: {sorted(self.routes)}"))
        for task, route in self.routing.tasks.items():
            if route not in self.routes:
                found.append((("routing", "tasks", task), f"no route {route!r}; "
                              f"routes: {sorted(self.routes)}"))
        for i, step in enumerate(self.routing.difficulty):
            if step.route not in self.routes:
                found.append((("routing", "difficulty", i), f"no route {step.route!r}; "
                              f"routes: {sorted(self.routes)}"))
        if self.routing.default is not None and self.routing.default not in self.routes:
            found.append((("routing", "default"), f"no route {self.routing.default!r}; "
                          f"routes: {sorted(self.routes)}"))
        if self.server.open and self.server.host not in LOOPBACK:
            found.append((("server", "host"), f"{self.server.host!r} is not loopback and no "
                          "server.api_keys (nor server.admin_key) are set; add a key or bind "
                          "127.0.0.1"))
        return found

    def fail(self, problems: list[Problem]) -> None:
        """Raise one ConfigError listing every problem, each with its file and line."""
        if problems:
            raise ConfigError(format_problems(problems, self.source or "config", self.text))


Problem = tuple[tuple, str]
"""A config problem: the key's path (as pydantic gives it) and what is wrong."""


LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# --- loading -----------------------------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load(path: str | os.PathLike | None = None, *, environ: Mapping[str, str] | None = None,
         lenient_env: bool = False, references: bool = True) -> Config:
    """Load and validate the config at ``path`` (or ``$TURNOUT_CONFIG``); the embedded default
    when neither is given.

    With ``lenient_env`` an unset ``${VAR}`` stays as written instead of failing: for commands
    that read the file but call no provider (``turnout stats``). Without ``references`` the
    references are left for the caller to check with the plugins' problems
    (``turnout config check``).
    """
    environ = os.environ if environ is None else environ
    if lenient_env:
        environ = _Lenient(environ)
    path = path or environ.get(CONFIG_ENV)
    if not path:
        from .defaults import embedded

        return parse(embedded(environ), source="<embedded default>", environ=environ,
                     references=references)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")  # a leading BOM is not part of the text
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(file)!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config {str(file)!r}: not UTF-8 text (byte "
                          f"{exc.start}); save it as UTF-8") from None
    return parse_text(text, source=str(file), environ=environ, references=references)


def overlay(path: str | os.PathLike, base: Config, *, environ: Mapping[str, str] | None = None,
            lenient_env: bool = False, references: bool = True) -> Config:
    """The config file at ``path`` laid over ``base``: every top-level table the file has
    replaces ``base``'s whole (a policy's ``routes`` are all its routes), and the rest
    (``providers``, ``models``, ...) comes from ``base``, so a file can hold only what differs:
    a routing policy for ``turnout estimate``. Validated as one config; options as :func:`load`."""
    environ = os.environ if environ is None else environ
    if lenient_env:
        environ = _Lenient(environ)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")  # a leading BOM is not part of the text
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {str(file)!r}: "
                          f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
    given = _decode(text, str(file))
    if not isinstance(given, dict):
        raise ConfigError(f"{file}: the config must be a table/mapping at the top level")
    if base.text is not None:
        under = _decode(base.text, base.source)
    else:
        from .defaults import embedded

        under = embedded(environ)
    return parse({**under, **given}, source=f"{file} over {base.source}", environ=environ,
                 references=references)


def parse_text(text: str, *, source: str, environ: Mapping[str, str] | None = None,
               references: bool = True) -> Config:
    """Parse TOML or YAML text (by file suffix; TOML tried first when unknown)."""
    raw = _decode(text, source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a table/mapping at the top level")
    return parse(raw, source=source, text=text,
                 environ=os.environ if environ is None else environ, references=references)


def parse(raw: dict[str, Any], *, source: str, text: str | None = None,
          environ: Mapping[str, str] | None = None, references: bool = True) -> Config:
    """Validate an already-decoded config tree: its schema, then every reference in it; each
    step reports all of its problems at once."""
    try:
        raw = _interpolate(raw, (), source, text, os.environ if environ is None else environ)
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_problems(validation_problems(exc), source, text)) from None
    except RecursionError:
        raise ConfigError(f"{source}: the config nests tables and lists too deeply (or a YAML "
                          "alias refers to itself); flatten it") from None
    config = config.model_copy(update={"source": source, "text": text})
    if references:
        config.fail(config.problems())
    return config


class _Lenient(dict):
    """An environment in which an unset variable reads as its own ``${NAME}`` reference."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(environ)

    def __contains__(self, name: object) -> bool:
        return True

    def __missing__(self, name: str) -> str:
        return "${%s}" % name


_UNREADABLE = (ValueError, KeyError, TypeError, RecursionError)
"""What the parsers raise besides their own errors: a YAML value its tag cannot construct
(``!!int abc``, a date like ``2020-13-45``), an integer too long to convert, nesting deeper than
the parser recurses."""


def _decode(text: str, source: str) -> Any:
    if source.endswith((".yaml", ".yml")):
        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{source}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        except _UNREADABLE as exc:
            raise ConfigError(f"{source}: not valid YAML: {_unreadable(exc)}") from None
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, *_UNREADABLE) as exc:
        problem = exc if isinstance(exc, tomllib.TOMLDecodeError) else _unreadable(exc)
        if source.endswith(".toml"):
            raise ConfigError(f"{source}: not valid TOML: {problem}") from None
        try:
            return yaml.safe_load(text) or {}
        except (yaml.YAMLError, *_UNREADABLE):
            raise ConfigError(f"{source}: neither valid TOML ({problem}) nor YAML") from None


def _unreadable(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "it nests too deeply"
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return "a number is too long (over 4300 digits)"
    return f"{type(exc).__name__}: {exc}"


def _interpolate(node: Any, loc: tuple, source: str, text: str | None,
                 environ: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, (*loc, k), source, text, environ) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, (*loc, i), source, text, environ) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{_where(loc, source, text)}: {_dotted(loc)} needs environment "
                              f"variable {name}, which is not set; set it or write "
                              f"${{{name}:-default}}")
        return _ENV_REF.sub(sub, node)
    return node


def validation_problems(exc: ValidationError, prefix: tuple = ()) -> list[Problem]:
    """A pydantic error as config problems; ``prefix`` is where the validated table sits."""
    found: list[Problem] = []
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key; see docs/configuration.md for the keys this section takes"
        elif err["type"] == "missing":
            msg = "required key is missing"
        got = err.get("input")
        shown = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(got, (dict, list)) \
            or "secret" in str(loc).lower() or "key" in str(loc[-1:]).lower() else f" (got {_shown(got)})"
        found.append((loc, msg + shown))
    return found


def _shown(value: Any) -> str:
    """``value`` as quoted in a problem; an integer too long to print is described instead."""
    try:
        return repr(value)
    except ValueError:  # past Python's limit on int-to-str conversion
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"


def format_problems(problems: list[Problem], source: str, text: str | None) -> str:
    """``invalid config FILE:`` and one ``FILE:LINE: key: problem`` line per problem."""
    lines = [f"invalid config {source}:"]
    for loc, msg in problems:
        lines.append(f"  {_where(loc, source, text)}: {_dotted(loc) or '(top level)'}: {msg}")
    return "\n".join(lines)


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _where(loc: tuple, source: str, text: str | None) -> str:
    line = _find_line(loc, text) if text else None
    return f"{source}:{line}" if line else source


def _find_line(loc: tuple, text: str) -> int | None:
    """Best-effort line of the last named key of ``loc`` in TOML or YAML text.

    Walks the path: each named part must appear (as a key or a table header) after the line where
    the previous part was found. An index after a part found as a TOML ``[[array.of.tables]]``
    header moves on to that element's header.
    """
    if all(isinstance(p, int) for p in loc):
        return None
    lines = text.splitlines()
    start, found, depth = 0, None, 0
    for part in loc:
        if isinstance(part, int):
            if found is not None:
                start = _nth_table(lines, start, part)
                found = start + 1
            continue
        name = str(part)
        key = re.compile(rf"""^\s*(-\s*)?["']?{re.escape(name)}["']?\s*[:=]""")
        header = re.compile(rf"""^\s*\[\[?([\w."'-]+\.)?["']?{re.escape(name)}["']?(\.[\w."'-]+)?\]\]?""")
        for i in range(start, len(lines)):
            if key.search(lines[i]) or header.search(lines[i]):
                start, found = i, i + 1
                break
        else:
            return found if depth else None
        depth += 1
    return found


def _nth_table(lines: list[str], at: int, index: int) -> int:
    """The line of element ``index`` of the array of tables whose first ``[[header]]`` is line
    ``at``; ``at`` itself when that line is no such header or the array is shorter."""
    header = lines[at].split("#", 1)[0].strip()
    if not header.startswith("[["):
        return at
    seen = 0
    for i in range(at + 1, len(lines)):
        if lines[i].split("#", 1)[0].strip() == header:
            seen += 1
            if seen == index:
                return i
    return at
