"""Property-based tests of the config loader (``kernel/config.py``) and ``turnout config check``.

Generated valid configs (providers, models with deployments, routes with strategies, validators
and routers, routing, state, server keys) parse the same from TOML, from YAML and as a decoded
tree, pass ``turnout config check``, and survive a dump back to TOML or YAML unchanged. Mutated
configs (wrong types, unknown keys, dangling references, huge numbers, deep nesting) and random
text fail, if they fail, only with the project's ConfigError naming the file: never a traceback,
never a pydantic ValidationError.

Examples are derandomized (the same ones on every run, so CI cannot turn red by chance); the
``@example`` cases are inputs that once leaked a raw exception.
"""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from turnout.adapters.cli import main
from turnout.kernel import config, observability
from turnout.kernel.errors import ConfigError


@pytest.fixture(autouse=True)
def _forget_generated_credentials():
    """``config check`` registers every provider key it loads with the log redactor, for the rest
    of the process; the keys generated here are arbitrary text (``fallback``, eight spaces), and
    left registered they would mask those words in every later test's logs and records."""
    saved = (observability._known, observability._pattern, observability._state)
    yield
    observability._known, observability._pattern, observability._state = saved

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None)

ENV = {"UP_KEY": "sk-upstream-secret", "TEAM_KEY": "team-secret", "ADMIN": "a" * 24}
"""The environment every generated config is parsed with (its ``${VAR}`` references)."""

# --- dumping a tree as TOML or YAML (the config module only reads) -----------------------------


def toml_text(tree: dict[str, Any], *, headers: bool) -> str:
    """``tree`` as a TOML document: nested tables as ``[a.b]`` headers and lists of tables as
    ``[[a.b]]`` arrays when ``headers``, else everything inline under its top-level key."""
    lines: list[str] = []
    _toml_table(lines, (), tree, headers)
    return "\n".join(lines) + "\n"


def _toml_table(lines: list[str], path: tuple, table: dict, headers: bool) -> None:
    def table_like(v: Any) -> bool:
        return isinstance(v, dict) and bool(v) and (headers or not path)

    def tables_like(v: Any) -> bool:
        return headers and isinstance(v, list) and bool(v) and all(
            isinstance(i, dict) and i for i in v)

    for key, value in table.items():
        if value is not None and not table_like(value) and not tables_like(value):
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in table.items():
        if table_like(value):
            lines.append(f"[{'.'.join(_toml_key(p) for p in (*path, key))}]")
            _toml_table(lines, (*path, key), value, headers)
    for key, value in table.items():
        if tables_like(value):
            for item in value:
                lines.append(f"[[{'.'.join(_toml_key(p) for p in (*path, key))}]]")
                _toml_table(lines, (*path, key), item, headers)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # JSON's escapes are TOML's; TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()
                                if v is not None) + " }"
    raise TypeError(f"no TOML for {type(value).__name__}")


def yaml_text(tree: dict[str, Any], *, flow: bool) -> str:
    # PyYAML's emitter turns a NEL (U+0085) in a single-quoted scalar into a space: escape
    # non-ASCII then (it is the emitter's slip, not the config loader's).
    raw = "\x85" not in json.dumps(tree, ensure_ascii=False)
    return yaml.safe_dump(tree, allow_unicode=raw, sort_keys=False, default_flow_style=flow)


def dumped(cfg: config.Config) -> dict[str, Any]:
    """A parsed config as a plain tree again, secrets written out, unset keys left out."""
    def plain(node: Any) -> Any:
        if isinstance(node, SecretStr):
            return node.get_secret_value()
        if isinstance(node, dict):
            return {k: plain(v) for k, v in node.items() if v is not None}
        if isinstance(node, list):
            return [plain(v) for v in node]
        return node
    return plain(cfg.model_dump())


def same(a: config.Config, b: config.Config) -> bool:
    """Equal configs, whatever file (and text) each came from."""
    blank = {"source": None, "text": None}
    return a.model_copy(update=blank) == b.model_copy(update=blank)


# --- valid configs -----------------------------------------------------------------------------

NAME = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9]{0,4}[.:/@][a-z0-9.]{1,6}", fullmatch=True),  # gpt-4.1, org/model
    st.text(st.characters(min_codepoint=0xA1, max_codepoint=0x2FFF, categories=("L",)),
            min_size=1, max_size=5),
).filter(lambda s: s != "auto")

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=24).filter(
    lambda s: "${" not in s)
"""Free text: any character (newlines, quotes, control characters, non-BMP), no ``${``."""

PRICE = st.floats(0, 1000, allow_nan=False, allow_infinity=False)
FRACTION = st.floats(0, 1, allow_nan=False)
TASKS = st.sampled_from(["code", "chat", "math", "translation", "summarize", "default"])


def secret() -> st.SearchStrategy[str]:
    """A credential as written in a config: a reference to the environment, or the value."""
    return st.one_of(st.sampled_from(["${UP_KEY}", "${MISSING_KEY:-fallback}", "x-${UP_KEY}-y"]),
                     TEXT.filter(bool))


@st.composite
def provider(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["openai", "openai-compatible", "anthropic", "gemini",
                                 "simulated"]))
    entry: dict[str, Any] = {"kind": kind}
    if kind == "simulated":
        return entry
    if kind == "openai-compatible" or draw(st.booleans()):
        entry["base_url"] = "http://127.0.0.1:%d/v1" % draw(st.integers(1, 65535))
    if draw(st.booleans()):
        entry["api_key"] = draw(secret())
    if draw(st.booleans()):
        entry["headers"] = draw(st.dictionaries(st.from_regex(r"x-[a-z]{1,8}", fullmatch=True),
                                                TEXT, max_size=2))
    if draw(st.booleans()):
        entry["timeout"] = {"read": draw(st.floats(0.1, 600)), "connect": draw(st.integers(1, 30))}
    if draw(st.booleans()):
        entry["passthrough_params"] = draw(st.lists(st.sampled_from(["top_k", "min_p"]),
                                                    unique=True))
    return entry


@st.composite
def model(draw: st.DrawFn, providers: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if len(providers) > 1 and draw(st.booleans()):
        chosen = draw(st.lists(st.sampled_from(providers), min_size=1, unique=True))
        entry["deployments"] = [
            {"provider": p, **draw(st.fixed_dictionaries({}, optional={
                "upstream": TEXT, "weight": st.floats(0.01, 100)}))} for p in chosen]
        if draw(st.booleans()):
            entry["provider"] = chosen[0]
    else:
        entry["provider"] = draw(st.sampled_from(providers))
    entry.update(draw(st.fixed_dictionaries({}, optional={
        "upstream": TEXT,
        "context_window": st.integers(256, 2_000_000),
        "max_output_tokens": st.integers(1, 200_000),
        "input_price": PRICE, "output_price": PRICE, "cached_input_price": PRICE,
        "capabilities": st.lists(st.sampled_from(sorted(config.CAPABILITIES)), unique=True),
        "tier": st.integers(0, 9),
        "description": TEXT,
        "quality": st.one_of(FRACTION, st.dictionaries(TASKS, FRACTION, max_size=3)),
    })))
    return entry


VALIDATOR = st.one_of(
    st.just("json"),
    st.builds(lambda n: {"kind": "length", "max_chars": n}, st.integers(0, 10_000)),
    st.builds(lambda t, f: {"kind": "regex", "pattern": re.escape(t), "flags": f},
              TEXT, st.sampled_from(["", "i", "ms"])),
)
ROUTER = st.sampled_from(["score", {"kind": "score"}, {"kind": "cost_tiers"}])


@st.composite
def route(draw: st.DrawFn, models: list[str]) -> dict[str, Any]:
    chosen = draw(st.lists(st.sampled_from(models), min_size=1, max_size=4, unique=True))
    entry: dict[str, Any] = {"models": chosen}
    strategy = draw(st.sampled_from(["fallback", "cascade", "race", "ensemble", "critic", None]))
    if strategy is not None:
        entry["strategy"] = strategy
    if strategy == "critic":
        entry["critic"] = {"model": draw(st.sampled_from(models))}
    entry.update(draw(st.fixed_dictionaries({}, optional={
        "validators": st.lists(VALIDATOR, max_size=3),
        "max_attempts": st.integers(1, 50),
        "attempt_timeout_s": st.floats(0.01, 3600),
        "router": ROUTER,
    })))
    return entry


@st.composite
def routing(draw: st.DrawFn, routes: list[str]) -> dict[str, Any]:
    target = st.sampled_from(routes)
    when = st.fixed_dictionaries({}, optional={
        "task": st.one_of(TASKS, st.lists(TASKS, min_size=1, max_size=3)),
        "difficulty": st.sampled_from(["> 0.6", "<= 0.2", "!= 0"]),
        "needs_tools": st.booleans(),
    })
    bounds = sorted(draw(st.lists(FRACTION, max_size=3, unique=True)))
    steps = [{"below": b, "route": draw(target)} for b in bounds]
    if draw(st.booleans()):
        steps.append({"route": draw(target)})
    return draw(st.fixed_dictionaries({}, optional={
        "default": target,
        "rules": st.lists(st.fixed_dictionaries({"when": when, "route": target},
                                                optional={"name": TEXT}), max_size=3),
        "tasks": st.dictionaries(TASKS, target, max_size=3),
        "difficulty": st.just(steps),
    }))


@st.composite
def server(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = draw(st.fixed_dictionaries({}, optional={
        "port": st.integers(0, 65535),
        "max_body_bytes": st.integers(1024, 2**40),
        "request_timeout_s": st.floats(0.001, 1e6),
        "max_connections": st.integers(1, 100_000),
        "shutdown_timeout_s": st.floats(0, 600),
    }))
    key = st.one_of(
        st.builds(lambda n, k: {"name": n, "key": k}, TEXT, secret()),
        st.builds(lambda n, h: {"name": n, "sha256": h}, TEXT,
                  st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
    )
    keys = draw(st.lists(key, max_size=3))
    if keys:
        entry["api_keys"] = keys
    if draw(st.booleans()):
        entry["admin_key"] = draw(st.sampled_from(["${ADMIN}", "${NO_ADMIN:-}"]))
    closed = bool(keys) or entry.get("admin_key") == "${ADMIN}"
    entry["host"] = draw(st.sampled_from(["127.0.0.1", "::1", "localhost"]) if not closed
                         else st.sampled_from(["0.0.0.0", "10.1.2.3", "127.0.0.1"]))
    return entry


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """A config tree every reference of which holds."""
    names = draw(st.lists(NAME, min_size=3, max_size=9, unique=True))
    cut1 = draw(st.integers(1, len(names) - 2))
    cut2 = draw(st.integers(cut1 + 1, len(names) - 1))
    providers, models, routes = names[:cut1], names[cut1:cut2], names[cut2:]
    tree: dict[str, Any] = {
        "server": draw(server()),
        "providers": {p: draw(provider()) for p in providers},
        "models": {m: draw(model(providers)) for m in models},
        "routes": {r: draw(route(models)) for r in routes},
    }
    tree["routing"] = draw(routing(routes))
    tree["state"] = draw(st.one_of(
        st.just({"backend": "memory"}),
        st.builds(lambda n: {"backend": "redis", "url": f"redis://127.0.0.1:6379/{n}",
                             "key_prefix": "t:"}, st.integers(0, 15))))
    tree["logging"] = draw(st.fixed_dictionaries({}, optional={
        "level": st.sampled_from(["debug", "info", "warning", "error"]),
        "format": st.sampled_from(["json", "console"])}))
    return {k: v for k, v in tree.items()
            if k in ("providers", "models", "routes") or draw(st.booleans())}


def check(path: Path) -> tuple[int, str]:
    """``turnout config check PATH``: its exit status and everything it printed."""
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        status = main(["config", "check", str(path)])
    return status, out.getvalue()


@FUZZ
@given(tree=configs(), headers=st.booleans(), flow=st.booleans())
def test_valid_configs_parse_alike_from_toml_yaml_and_a_tree(tree: dict[str, Any], headers: bool,
                                                             flow: bool) -> None:
    direct = config.parse(tree, source="tree", environ=ENV)
    from_toml = config.parse_text(toml_text(tree, headers=headers), source="c.toml", environ=ENV)
    from_yaml = config.parse_text(yaml_text(tree, flow=flow), source="c.yaml", environ=ENV)
    assert same(direct, from_toml) and same(direct, from_yaml)
    assert sorted(direct.providers) == sorted(tree["providers"])
    assert sorted(direct.models) == sorted(tree["models"])
    for name, raw in tree["models"].items():
        parsed = direct.models[name]
        want = raw.get("provider") or raw["deployments"][0]["provider"]
        assert parsed.provider == want
        assert parsed.upstream == raw.get("upstream")
        assert [d.provider for d in parsed.deployments or ()] == \
            [d["provider"] for d in raw.get("deployments") or ()]
    if "${UP_KEY}" in json.dumps(tree):
        assert ENV["UP_KEY"] in json.dumps(dumped(direct))  # interpolated, not left as written


@FUZZ
@given(tree=configs(), as_toml=st.booleans(), headers=st.booleans())
def test_a_parsed_config_dumped_again_parses_to_an_equal_config(tree: dict[str, Any],
                                                                as_toml: bool,
                                                                headers: bool) -> None:
    first = config.parse(tree, source="tree", environ=ENV)
    again = dumped(first)
    text = toml_text(again, headers=headers) if as_toml else yaml_text(again, flow=not headers)
    second = config.parse_text(text, source="c.toml" if as_toml else "c.yaml", environ=ENV)
    assert same(first, second)
    assert dumped(second) == again


@settings(FUZZ, max_examples=25)
@given(tree=configs())
def test_config_check_passes_every_valid_config(tree: dict[str, Any]) -> None:
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "turnout.yaml"
        # ${VAR} references resolve from the process environment here: write them resolved.
        path.write_text(yaml_text(dumped(config.parse(tree, source="tree", environ=ENV)),
                                  flow=False))
        status, printed = check(path)
    assert status == 0, printed
    assert printed.startswith(f"{path}: ok ({len(tree['providers'])} providers, "
                              f"{len(tree['models'])} models")


# --- broken configs ----------------------------------------------------------------------------

JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(10**40), 10**40),
              st.floats(), TEXT, st.sampled_from(["${NOT_SET}", "${UP_KEY", "$", "auto", ""])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(TEXT, NAME), inner, max_size=3)),
    max_leaves=8,
)
"""Any value a YAML or TOML document could hold (nulls only in YAML)."""


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A valid config with a few places broken: a value replaced by junk of any type, a key
    added where none is known, a key removed, a reference pointed nowhere."""
    tree = draw(configs())
    for _ in range(draw(st.integers(1, 3))):
        path: list[Any] = []
        node: Any = tree
        while isinstance(node, (dict, list)) and node and draw(st.integers(0, 3)):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict)
                                       else list(range(len(node)))))
            path.append(key)
            node = node[key]
        holder: Any = tree
        for key in path[:-1]:
            holder = holder[key]
        action = draw(st.sampled_from(["replace", "add", "drop", "dangle"]))
        if action == "replace" and path:
            holder[path[-1]] = draw(JUNK)
        elif action == "add" and isinstance(node, dict):
            node[draw(st.one_of(NAME, st.sampled_from(["kind", "provider", "strategy",
                                                       "models", "route"])))] = draw(JUNK)
        elif action == "drop" and isinstance(node, dict) and node:
            node.pop(draw(st.sampled_from(sorted(node))))
        elif action == "dangle" and path and isinstance(holder, (dict, list)):
            holder[path[-1]] = "nowhere-" + draw(NAME)
    return tree


def assert_clean_failure(exc: ConfigError, source: str) -> None:
    """A ConfigError that says which file (and where in it) and has no traceback."""
    message = str(exc)
    assert source in message
    assert "Traceback" not in message and "pydantic" not in message.lower()
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


@FUZZ
@given(tree=mutated(), as_toml=st.booleans())
def test_broken_configs_fail_only_with_a_config_error(tree: dict[str, Any], as_toml: bool) -> None:
    outcomes = []
    for source, parse in (("tree", lambda: config.parse(tree, source="tree", environ=ENV)),
                          ("c.yaml", lambda: config.parse_text(yaml_text(tree, flow=False),
                                                               source="c.yaml", environ=ENV))):
        try:
            parse()
            outcomes.append("ok")
        except ConfigError as exc:
            assert_clean_failure(exc, source)
            outcomes.append("error")
    # A YAML file holds the same tree, so it passes or fails alike.
    assert outcomes[0] == outcomes[1]


@settings(FUZZ, max_examples=30)
@given(tree=mutated())
def test_config_check_of_a_broken_config_prints_the_problem_and_exits_2(
        tree: dict[str, Any]) -> None:
    if isinstance(tree.get("plugins"), dict):
        tree["plugins"].pop("load", None)  # no importing whatever module a mutation named
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "turnout.yaml"
        path.write_text(yaml_text(tree, flow=False))
        try:
            config.parse(tree, source="tree", environ=ENV)
            schema_ok = True
        except ConfigError:
            schema_ok = False
        status, printed = check(path)
    assert status in (0, 2), printed
    if not schema_ok:
        assert status == 2
    if status == 2:
        assert printed.startswith("turnout: ") and str(path) in printed
        assert "Traceback" not in printed


@FUZZ
@given(text=st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(["[server]", "[[routes.r]]", "port = 1", "a: b", "- x", "{", "}",
                              "[", "]", "&a", "*a", "!!int", "!!binary", "? ", ": ", "'", '"',
                              '"""', "\t", "\n", "\r\n", "#", "=", "${X}", "9" * 30, "1e999",
                              "2020-13-45", "nan", "~", "<<: *a"]), max_size=30).map("".join),
), suffix=st.sampled_from([".toml", ".yaml", ".yml", ".conf"]))
@example(text="server:\n  port: " + "9" * 5000 + "\n", suffix=".yaml")  # int() refused the digits
@example(text="[server]\nport = " + "9" * 5000 + "\n", suffix=".toml")
@example(text="a: " + "[" * 5000 + "]" * 5000 + "\n", suffix=".yaml")    # RecursionError
@example(text="a = " + "[" * 5000 + "]" * 5000 + "\n", suffix=".toml")
@example(text="a = " + "{b = " * 400 + "1" + "}" * 400 + "\n", suffix=".conf")
@example(text="a: &x [*x]\n", suffix=".yaml")                              # an alias in itself
@example(text="a: !!int abc\n", suffix=".yaml")                            # ValueError
@example(text="a: 2020-13-45\n", suffix=".yml")
@example(text="a: !!int abc\n", suffix=".conf")                            # TOML, then YAML
@example(text="models:\n  m:\n    deployments: {a: 1}\n", suffix=".yaml")  # KeyError
@example(text="models:\n  m:\n    deployments: 5\n", suffix=".yaml")       # TypeError
def test_any_text_parses_or_fails_with_a_config_error(text: str, suffix: str) -> None:
    source = "turnout" + suffix
    try:
        parsed = config.parse_text(text, source=source, environ=ENV)
    except ConfigError as exc:
        assert_clean_failure(exc, source)
    else:
        assert isinstance(parsed, config.Config)


@settings(FUZZ, max_examples=40)
@given(data=st.binary(max_size=200))
@example(data=b"[server]\nhost = \"\xff\xfe\"\n")  # not UTF-8: UnicodeDecodeError leaked
def test_any_file_loads_or_fails_with_a_config_error(data: bytes) -> None:
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "turnout.toml"
        path.write_bytes(data)
        try:
            config.load(path, environ=ENV)
        except ConfigError as exc:
            assert_clean_failure(exc, str(path))


@pytest.mark.parametrize("value", [10**5000, -(10**5000)], ids=["huge", "-huge"])
def test_an_integer_too_long_to_print_is_described_not_shown(value: int) -> None:
    with pytest.raises(ConfigError) as raised:
        config.parse({"server": {"port": value}}, source="tree")
    assert "server.port" in str(raised.value) and "digits" in str(raised.value)
