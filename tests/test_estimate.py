"""``turnout estimate``: real traffic through a gateway (a route answered by the strong model, a
learned-router route, a model asked for by name, a route the other policy lacks) against a fake
OpenAI upstream, then replayed under other policies; the figures checked against sums worked out
here from the record's rows and the fixture's prices."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from turnout.adapters import cli as cli_module
from turnout.kernel.config import parse
from turnout.kernel.kernel import Kernel
from turnout.kernel.types import ChatRequest
from turnout.plugins.estimate import weighted_percentile
from turnout.plugins.stats import timeline

from .fakes import Script, openai_app, serve
from .gateway import running_gateway
from .test_learned_router import EASY, HARD

KEY = "sk-fake-upstream"
PRICES = {"cheap": (0.2, 0.4), "strong": (5.0, 15.0)}
QUALITY = {"cheap": 0.6, "strong": 0.9}
CURRENT = {"ask": {"models": ["strong", "cheap"]},
           "smart": {"models": ["cheap", "strong"], "router": {"kind": "learned"}},
           "legacy": {"models": ["strong"]}}
ROUTING = {"tasks": {"code": "ask"}, "default": "smart"}
"""The current config's rules for ``auto``: by the task label."""
CHEAPER = {"ask": {"models": ["cheap", "strong"]}, "smart": {"models": ["cheap", "strong"]}}
"""Everything to the cheap model first; no ``legacy`` route, no rules for ``auto`` (which then
goes to the first route, ``ask``)."""
TRAFFIC = [("ask", "What is the capital of France?"), ("ask", "Name three primary colours."),
           ("smart", EASY), ("smart", HARD), ("cheap", "Say hello."),
           ("legacy", "What is two plus two?"), ("ask", "Translate 'good morning' into German."),
           ("auto", "Fix this bug: def f(x): return x +")]


@pytest.fixture
def cli():
    """``turnout`` in this process (the plugin is built in)."""
    return cli_module.main


def config_file(path: Path, routes: dict, record: dict | None = None,
                routing: dict | None = None) -> Path:
    """A gateway config with the fixture's models (prices, quality), ``routes`` and ``routing``,
    as TOML; its provider is never called."""
    lines = ['[providers.up]', 'kind = "openai"', 'base_url = "http://127.0.0.1:9/v1"',
             'api_key = "${ESTIMATE_TEST_UNSET_KEY}"', ""]
    if routing:
        lines += ["[routing]", f'default = "{routing["default"]}"', "[routing.tasks]",
                  *(f'{task} = "{route}"' for task, route in routing["tasks"].items()), ""]
    if record:
        lines += ["[record]", *(f"{k} = {json.dumps(v)}" for k, v in record.items()), ""]
    for name, (i, o) in PRICES.items():
        lines += [f"[models.{name}]", 'provider = "up"', f"input_price = {i}",
                  f"output_price = {o}", f"quality = {QUALITY[name]}", ""]
    for name, route in routes.items():
        lines += [f"[routes.{name}]", f"models = {json.dumps(route['models'])}"]
        if "router" in route:
            lines.append(f'router = {{ kind = "{route["router"]["kind"]}" }}')
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def gateway_config(url: str) -> dict:
    return {"providers": {"up": {"kind": "openai", "base_url": url + "/v1", "api_key": KEY}},
            "models": {name: {"provider": "up", "input_price": i, "output_price": o,
                              "quality": QUALITY[name]} for name, (i, o) in PRICES.items()},
            "routes": CURRENT, "routing": ROUTING}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A record of the traffic, the current config and the cheaper policy as files."""
    tmp = tmp_path_factory.mktemp("estimate")
    with serve(openai_app(Script(), api_key=KEY)) as url:
        with running_gateway(gateway_config(url), tmp) as gw:
            client = gw.client(timeout=20)
            for route, prompt in TRAFFIC:
                client.chat.completions.create(model=route,
                                               messages=[{"role": "user", "content": prompt}])
            gw.kernel.plugins.get("record").flush()
            yield (gw.db, config_file(tmp / "current.toml", CURRENT, {"path": str(gw.db)},
                                      ROUTING),
                   config_file(tmp / "cheaper.toml", CHEAPER))


def rows(db: Path) -> tuple[list[dict], dict[str, dict]]:
    """The top-level requests, oldest first, and each request's answering attempt."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        requests = [dict(r) for r in conn.execute(
            "SELECT * FROM requests WHERE parent_id IS NULL ORDER BY created_at")]
        attempts = [dict(r) for r in conn.execute("SELECT * FROM attempts WHERE status = 'ok'")]
    return requests, {a["request_id"]: a for a in attempts}


def at(model: str, attempt: dict) -> float:
    i, o = PRICES[model]
    return (attempt["input_tokens"] * i + attempt["output_tokens"] * o) / 1_000_000


def report(cli, capsys, *argv: str) -> dict:
    capsys.readouterr()  # what ran before (a kernel's log lines) is not the report
    assert cli(["estimate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_cheaper_policy_costs_what_its_prices_say(recorded, cli, capsys) -> None:
    db, current, cheaper = recorded
    requests, answered = rows(db)
    assert len(requests) == len(TRAFFIC) and all(r["status"] == "ok" for r in requests)
    by_route = {}
    for r in requests:
        by_route.setdefault(r["route"], []).append(r)
    easy, hard = sorted(by_route["smart"], key=lambda r: json.loads(r["decision"])["router"][
        "prediction"])
    p_easy, p_hard = (json.loads(r["decision"])["router"]["prediction"] for r in (easy, hard))
    assert (easy["model"], hard["model"]) == ("cheap", "strong"), "the learned router's choices"
    (auto,) = by_route.pop("ask") and [r for r in requests if r["requested"] == "auto"]
    by_route["ask"] = [r for r in requests if r["requested"] == "ask"]
    assert auto["route"] == "ask", "the rules chose by the task label (code)"

    found = report(cli, capsys, "--config", str(current), "--policy", str(cheaper))
    was, policy = found["columns"]

    # Recorded: the record's own figures.
    assert was["requests"] == len(TRAFFIC)
    assert was["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in requests))
    assert was["share"] == {"strong": pytest.approx(6 / 8), "cheap": pytest.approx(2 / 8)}
    # ask x3, auto, legacy: strong's configured 0.9; cheap by name: 0.6; smart: the learned
    # router's prediction (strong 1, the weak cheap 1 - P(strong needed)).
    assert was["quality"]["mean"] == pytest.approx(
        (5 * 0.9 + 0.6 + (1 - p_easy) + 1.0) / 8, abs=1e-6)
    assert was["quality"]["sources"] == {"configured": 6, "learned": 2}

    # The policy: ask and the hard smart request move to cheap, at cheap's prices for the tokens
    # strong answered with (auto too: without rules, the first route); the easy smart request
    # and cheap by name stand; legacy is gone.
    moved = by_route["ask"] + [hard, auto]
    expected = sum(at("cheap", answered[r["request_id"]]) for r in moved) \
        + easy["cost_usd"] + by_route["cheap"][0]["cost_usd"]
    assert policy["requests"] == 7
    assert policy["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert policy["cost_usd"] < was["cost_usd"]
    assert policy["unrouted"] == {"gone": 1, "no_route": 0, "refused": 0}
    assert policy["gone"] == {"legacy": 1}
    assert policy["unrouted_recorded_cost_usd"] == pytest.approx(by_route["legacy"][0]["cost_usd"])
    assert policy["share"] == {"cheap": pytest.approx(7 / 8), "(not routed)": pytest.approx(1 / 8)}
    assert policy["quality"]["mean"] == pytest.approx(
        (5 * 0.6 + (1 - p_easy) + (1 - p_hard)) / 7, abs=1e-6)

    # Latency: the moved requests take cheap's recorded calls (the easy smart request's and the
    # one by name); the two that stand keep their own end-to-end latency.
    cheap_calls = sorted(answered[r["request_id"]]["latency_ms"]
                         for r in (easy, by_route["cheap"][0]))
    mixture = sorted([(v, 0.5) for v in cheap_calls] * len(moved)
                     + [(easy["latency_ms"], 1.0), (by_route["cheap"][0]["latency_ms"], 1.0)])
    assert policy["latency_ms"]["p50"] == pytest.approx(weighted_percentile(mixture, 50))
    assert policy["latency_ms"]["p95"] == pytest.approx(weighted_percentile(mixture, 95))

    assert cli(["estimate", "--config", str(current), "--policy", str(cheaper)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith(f"What-if replay of 8 requests in {db}")
    assert "policy cheaper" in text and "Share of traffic by model" in text
    assert "Policy cheaper could not route 1 of 8 requests (1 asked for a route or model it " \
           "lacks: legacy (1))" in text


def test_the_current_policy_reproduces_the_record(recorded, cli, capsys) -> None:
    db, current, _ = recorded
    requests, _ = rows(db)
    found = report(cli, capsys, "--config", str(current), "--policy", str(current))
    was, same = found["columns"]
    assert same["requests"] == was["requests"] == len(requests)
    assert same["cost_usd"] == pytest.approx(was["cost_usd"], rel=1e-12)
    for key in ("quality", "latency_ms", "share"):
        assert same[key] == was[key], key
    assert same["unrouted"] == {"gone": 0, "no_route": 0, "refused": 0}
    assert same["learned_without_features"] == 0


def test_since_keeps_only_recent_requests(recorded, cli, capsys, tmp_path) -> None:
    db, current, cheaper = recorded
    copy = tmp_path / "older.db"
    with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    requests, _ = rows(copy)
    old = [r["request_id"] for r in requests[:3]]
    with sqlite3.connect(copy) as conn:  # the first three requests happened 2 days earlier
        for table in ("requests", "attempts"):
            conn.executemany(f"UPDATE {table} SET created_at = created_at - 172800 "
                             "WHERE request_id = ?", [(rid,) for rid in old])
    recent = [r for r in requests if r["request_id"] not in old]
    found = report(cli, capsys, "--config", str(current), "--db", str(copy), "--since", "1d",
                   "--policy", str(cheaper))
    was, policy = found["columns"]
    assert was["requests"] == len(recent) == 5
    assert was["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in recent))
    everything = report(cli, capsys, "--config", str(current), "--db", str(copy), "--policy",
                        str(cheaper))
    assert everything["columns"][0]["requests"] == 8


def test_a_policy_of_routes_only_takes_the_rest_from_the_current_config(recorded, cli, capsys,
                                                                       tmp_path) -> None:
    db, current, _ = recorded
    requests, answered = rows(db)
    policy = tmp_path / "only-routes.toml"
    policy.write_text("\n".join(f'[routes.{name}]\nmodels = ["cheap"]'
                                 for name in ("ask", "smart", "legacy")))
    found = report(cli, capsys, "--config", str(current), "--policy", str(policy))
    _, cheap_only = found["columns"]
    # Providers, models (their prices and quality) and the rules for auto are the current
    # config's: every request lands on cheap, priced at cheap's prices for its recorded tokens.
    assert cheap_only["requests"] == len(requests) and cheap_only["share"] == {
        "cheap": pytest.approx(1.0)}
    assert cheap_only["cost_usd"] == pytest.approx(sum(
        r["cost_usd"] if r["model"] == "cheap" else at("cheap", answered[r["request_id"]])
        for r in requests), rel=1e-9)


def test_png_is_cost_against_quality(recorded, cli, capsys, tmp_path) -> None:
    db, current, cheaper = recorded
    out = tmp_path / "estimate.png"
    assert cli(["estimate", "--config", str(current), "--policy", str(cheaper), "--policy",
                str(current), "--png", str(out)]) == 0
    assert f"chart written to {out}" in capsys.readouterr().err
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


def test_a_missing_policy_file_and_an_empty_record_are_said(recorded, cli, capsys,
                                                            tmp_path) -> None:
    db, current, cheaper = recorded
    assert cli(["estimate", "--config", str(current), "--policy",
                str(tmp_path / "none.toml")]) == 2
    assert "none.toml: no such file" in capsys.readouterr().err
    copy = tmp_path / "empty.db"
    with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    with sqlite3.connect(copy) as conn:
        conn.execute("DELETE FROM requests")
        conn.execute("DELETE FROM attempts")
    assert cli(["estimate", "--config", str(current), "--db", str(copy), "--policy",
                str(cheaper)]) == 0
    assert "nothing to replay" in capsys.readouterr().out


def test_a_postgresql_record_is_replayed(tmp_path, cli, capsys) -> None:
    import anyio

    from .test_record_postgres import fresh_schema, server_dsn

    dsn = server_dsn()
    with serve(openai_app(Script(), api_key=KEY)) as url, fresh_schema(dsn) as schema:
        record = {"backend": "postgres", "dsn": dsn, "schema": schema,
                  "journal": str(tmp_path / "record.journal")}

        async def ask() -> None:
            kernel = Kernel(parse({**gateway_config(url), "record": record}, source="test"))
            async with kernel:
                for route, prompt in TRAFFIC[:2]:
                    await kernel.ask(ChatRequest(model=route, messages=[{"role": "user",
                                                                         "content": prompt}]))

        anyio.run(ask)
        current = config_file(tmp_path / "current.toml", CURRENT, record)
        cheaper = config_file(tmp_path / "cheaper.toml", CHEAPER)
        from turnout.plugins.record_postgres import snapshot

        with snapshot(dsn, schema) as conn:
            tokens = conn.execute("SELECT input_tokens, output_tokens FROM attempts "
                                  "WHERE status = 'ok'").fetchall()
        found = report(cli, capsys, "--config", str(current), "--policy", str(cheaper))
        drawn = timeline(None, dsn=dsn, schema=schema)  # turnout stats --png reads it too
    was, policy = found["columns"]
    assert was["requests"] == policy["requests"] == 2
    assert sum(drawn["requests"]) == 2 and [m["model"] for m in drawn["by_model"]] == ["strong"]
    assert sum(drawn["by_model"][0]["spend_usd"]) == pytest.approx(was["cost_usd"])
    assert policy["cost_usd"] == pytest.approx(
        sum(at("cheap", {"input_tokens": i, "output_tokens": o}) for i, o in tokens))
    assert was["share"] == {"strong": 1.0} and policy["share"] == {"cheap": 1.0}


def test_weighted_percentiles() -> None:
    assert weighted_percentile([], 50) is None
    ordered = [(1.0, 0.5), (2.0, 0.5), (10.0, 1.0)]
    assert [weighted_percentile(ordered, p) for p in (25, 50, 51, 95)] == [1.0, 2.0, 10.0, 10.0]
