"""``turnout report spend``: real traffic through a gateway (learned-router routes, a fallback
past a failing weak model, a validator rejecting the weak answer, a route without a router)
against a fake OpenAI upstream, then the report checked against sums over the record's rows."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest

from turnout.adapters import cli as cli_module
from turnout.kernel.config import parse
from turnout.kernel.kernel import Kernel
from turnout.kernel.types import ChatRequest
from turnout.plugins.learned import store
from turnout.plugins.spend_report import Prices, judge
from turnout.plugins.sqlite_recorder import SCHEMA

from .fakes import Script, Status, openai_app, serve
from .gateway import running_gateway
from .test_learned_router import EASY, HARD
from .test_record_postgres import postgres_dsn, schema  # noqa: F401 - fixtures

KEY = "sk-fake-upstream"
PRICES = {"weak": (0.6, 0.6), "shaky": (0.5, 0.5), "strong": (10.0, 30.0)}
ROUTES = {
    "ask": {"models": ["weak", "strong"], "router": {"kind": "learned"}},
    "flaky": {"models": ["shaky", "strong"], "router": {"kind": "learned"}},
    "checked": {"models": ["weak", "strong"], "router": {"kind": "learned"},
                "validators": [{"kind": "regex", "pattern": "by strong"}]},
    "plain": {"models": ["strong", "weak"]},
}
TRAFFIC = [("ask", EASY), ("ask", HARD), ("ask", EASY), ("flaky", EASY), ("flaky", EASY),
           ("flaky", HARD), ("checked", EASY), ("plain", EASY), ("plain", HARD),
           ("ask", "Write a Python function that reverses a linked list.")]


def answer(model: str, prompt: str):
    if model == "shaky":
        return Status(503)
    return f"answered by {model}"


@pytest.fixture
def cli():
    """``turnout`` in this process (the plugin is built in)."""
    return cli_module.main


def config_file(tmp_path: Path, db: Path) -> Path:
    """The gateway's models (with prices) and routes as a TOML file, for ``--config``."""
    lines = ['[providers.up]', 'kind = "openai"', 'base_url = "http://127.0.0.1:9/v1"',
             'api_key = "${SPEND_TEST_UNSET_KEY}"', "", "[record]", f'path = "{db}"', ""]
    for name, (i, o) in PRICES.items():
        lines += [f"[models.{name}]", 'provider = "up"', f"input_price = {i}",
                  f"output_price = {o}", ""]
    for name, route in ROUTES.items():
        lines += [f"[routes.{name}]", f"models = {json.dumps(route['models'])}", ""]
    path = tmp_path / "spend.toml"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A record holding the traffic, and the gateway's config as a file."""
    tmp = tmp_path_factory.mktemp("spend")
    with serve(openai_app(Script(answer=answer), api_key=KEY)) as url:
        config = {"providers": {"up": {"kind": "openai", "base_url": url + "/v1", "api_key": KEY}},
                  "models": {name: {"provider": "up", "input_price": i, "output_price": o}
                             for name, (i, o) in PRICES.items()},
                  "routes": ROUTES}
        with running_gateway(config, tmp) as gw:
            client = gw.client(timeout=20)
            for route, prompt in TRAFFIC:
                client.chat.completions.create(model=route,
                                               messages=[{"role": "user", "content": prompt}])
            gw.kernel.plugins.get("record").flush()
            yield gw.db, config_file(tmp, gw.db)


def rows(db: Path, since: float | None = None) -> tuple[list[dict], dict[str, list[dict]]]:
    """The top-level requests, and the attempts of every request by its top-level request."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        every = [dict(r) for r in conn.execute("SELECT * FROM requests")]
        attempts = [dict(r) for r in conn.execute("SELECT * FROM attempts")]
    every = [r for r in every if since is None or r["created_at"] >= since]
    parent = {r["request_id"]: r["parent_id"] for r in every}
    by_top: dict[str, list[dict]] = defaultdict(list)
    for a in attempts:
        top = a["request_id"]
        while parent.get(top):
            top = parent[top]
        by_top[top].append(a)
    return [r for r in every if r["parent_id"] is None], by_top


def expected_saving(row: dict) -> float | None:
    """What the record says could have been saved on one request, worked out here: ok, a
    recorded prediction below its threshold, answered by another model than the weak one, the
    weak answer not rejected; the cost less the request's tokens at the weak model's prices."""
    decision = json.loads(row["decision"])
    router = decision.get("router") or {}
    if row["status"] != "ok" or "prediction" not in router:
        return None
    weak = router["weak"]
    if router["prediction"] >= router["threshold"] or row["model"] == weak:
        return None
    if any(a["model"] == weak and a["status"] == "rejected" for a in decision["attempts"]):
        return None
    i, o = PRICES[weak]
    return row["cost_usd"] - (row["input_tokens"] * i + row["output_tokens"] * o) / 1e6


def report(cli, capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert cli(["report", "spend", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def check_against(found: dict, top: list[dict], attempts: dict[str, list[dict]]) -> None:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in top:
        groups[(r["route"], json.loads(r["decision"])["labels"].get("task"))].append(r)
    assert {(g["route"], g["task"]) for g in found["groups"]} == set(groups)
    for g in found["groups"]:
        mine = groups[(g["route"], g["task"])]
        spend = sum(r["cost_usd"] for r in mine)
        assert g["requests"] == len(mine)
        assert g["spend_usd"] == pytest.approx(spend, abs=1e-9)
        assert g["mean_cost_usd"] == pytest.approx(spend / len(mine), abs=1e-9)
        by_model: dict[str, float] = defaultdict(float)
        for r in mine:
            for a in attempts[r["request_id"]]:
                by_model[a["model"]] += a["cost_usd"]
        assert {m["model"]: m["spend_usd"] for m in g["models"]} == pytest.approx(by_model)
        assert sum(m["share"] for m in g["models"]) == pytest.approx(1.0)
        savings = [s for r in mine if (s := expected_saving(r)) is not None and s > 0]
        assert g["cheaper"]["requests"] == len(savings)
        assert g["cheaper"]["saving_usd"] == pytest.approx(sum(savings), abs=1e-9)
        unpredicted = sum(1 for r in mine
                          if "prediction" not in (json.loads(r["decision"]).get("router") or {}))
        assert g["verdicts"]["no_prediction"] == unpredicted
        assert sum(g["verdicts"].values()) == len(mine)
    assert found["totals"]["requests"] == len(top)
    assert found["totals"]["spend_usd"] == pytest.approx(sum(r["cost_usd"] for r in top), abs=1e-9)


def test_the_report_matches_the_record(recorded, cli, capsys) -> None:
    db, config = recorded
    top, attempts = rows(db)
    assert len(top) == len(TRAFFIC)
    found = report(cli, capsys, "--config", str(config))
    assert found["path"] == str(db)
    check_against(found, top, attempts)
    verdicts = found["totals"]["verdicts"]
    # the record holds every kind the traffic was built to make
    assert verdicts["cheaper"] >= 1 and verdicts["weak_answered"] >= 1
    assert verdicts["strong_predicted"] >= 1 and verdicts["weak_rejected"] == 1
    assert verdicts["no_prediction"] == sum(1 for r, _ in TRAFFIC if r == "plain")
    assert found["totals"]["saving_usd"] > 0
    flaky = [g for g in found["groups"] if g["route"] == "flaky"]
    assert sum(g["cheaper"]["requests"] for g in flaky) == verdicts["cheaper"]
    assert {w for g in flaky for w in g["cheaper"]["weak_models"]} == {"shaky"}

    only = report(cli, capsys, "--config", str(config), "--route", "plain")
    assert {g["route"] for g in only["groups"]} == {"plain"}
    check_against(only, [r for r in top if r["route"] == "plain"], attempts)

    assert cli(["report", "spend", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert f"Total: {len(top)} requests" in printed and "no prediction" in printed
    for g in found["groups"]:
        assert g["route"] in printed


def test_since_keeps_only_the_newer_requests(recorded, cli, capsys, tmp_path: Path) -> None:
    db, config = recorded
    copy = tmp_path / "older.db"
    with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    with sqlite3.connect(copy) as conn:  # the first half of the traffic, two days back
        ids = [r for (r,) in conn.execute("SELECT request_id FROM requests WHERE parent_id IS NULL "
                                          "ORDER BY created_at LIMIT ?", (len(TRAFFIC) // 2,))]
        marks = ",".join("?" * len(ids))
        conn.execute(f"UPDATE attempts SET created_at = created_at - 172800 WHERE request_id IN "
                     f"({marks}) OR request_id IN (SELECT request_id FROM requests WHERE "
                     f"parent_id IN ({marks}))", ids + ids)
        conn.execute(f"UPDATE requests SET created_at = created_at - 172800 WHERE request_id IN "
                     f"({marks}) OR parent_id IN ({marks})", ids + ids)
    everything = report(cli, capsys, "--config", str(config), "--db", str(copy))
    assert everything["totals"]["requests"] == len(TRAFFIC)
    recent = report(cli, capsys, "--config", str(config), "--db", str(copy), "--since", "1d")
    assert recent["since"] is not None
    top, attempts = rows(copy, since=recent["since"])
    assert len(top) == len(TRAFFIC) - len(ids)
    check_against(recent, top, attempts)


def test_an_empty_record_says_so(cli, capsys, tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA)
    assert cli(["report", "spend", "--db", str(db)]) == 0
    assert capsys.readouterr().out.strip() == f"No requests recorded in {db}."
    assert report(cli, capsys, "--db", str(db))["groups"] == []
    assert cli(["report", "spend", "--db", str(db), "--route", "ask"]) == 0
    assert "No requests for route ask recorded" in capsys.readouterr().out
    assert cli(["report", "spend", "--db", str(tmp_path / "missing.db")]) == 2
    assert "no requests have been recorded" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["report", "spend", "--since", "7x"],
                                  ["report", "spend", "--since", "-3d"],
                                  ["report", "spend", "--bogus"],
                                  ["report", "nothing"]])
def test_bad_options_are_usage_errors(cli, capsys, argv) -> None:
    with pytest.raises(SystemExit) as done:
        cli(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


def test_the_command_and_its_help(cli, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        cli(["report", "spend", "--help"])
    assert done.value.code == 0 and "--since" in capsys.readouterr().out
    assert cli(["report"]) == 2  # no sub-command: the help, and a usage error
    assert "spend" in capsys.readouterr().out


def test_a_vector_without_a_prediction_is_scored_by_the_shipped_model(recorded) -> None:
    """A decision with the feature vector but no prediction gets the shipped model's; one with
    neither says so."""
    db, _ = recorded
    top, _ = rows(db)
    prices = Prices({name: price for name, price in PRICES.items()},
                    {name: r["models"] for name, r in ROUTES.items()})
    model = store.load()
    for r in top:
        router = json.loads(r["decision"]).get("router")
        fields = (r["request_id"], r["route"], r["model"], r["status"], r["cost_usd"],
                  r["input_tokens"], r["output_tokens"], None)
        if router is None:
            assert judge((*fields, None, None), prices).verdict == "no_prediction"
            continue
        stripped = {k: v for k, v in router.items() if k not in ("prediction", "threshold")}
        judged = judge((*fields, json.dumps(stripped), None), prices)
        assert judged.source == "shipped model"
        assert judged.prediction == pytest.approx(model.predict_vector(router["vector"]))
        assert (judged.verdict == "strong_predicted") == (judged.prediction >= model.threshold)
        assert judge((*fields, json.dumps({"kind": "learned"}), None), prices).verdict == \
            "no_prediction"


@pytest.mark.anyio
async def test_a_postgres_record_reports_what_a_sqlite_one_does(recorded, cli, capsys,
                                                                postgres_dsn, schema,  # noqa: F811
                                                                tmp_path: Path) -> None:
    db, config = recorded
    with serve(openai_app(Script(answer=answer), api_key=KEY)) as url:
        tree = {"providers": {"up": {"kind": "openai", "base_url": url + "/v1", "api_key": KEY}},
                "models": {name: {"provider": "up", "input_price": i, "output_price": o}
                           for name, (i, o) in PRICES.items()},
                "routes": ROUTES, "logging": {"level": "warning"},
                "record": {"backend": "postgres", "dsn": postgres_dsn, "schema": schema,
                           "journal": str(tmp_path / "pg.journal")}}
        async with Kernel(parse(tree, source="test")) as kernel:
            for route, prompt in TRAFFIC:
                await kernel.ask(ChatRequest(model=route,
                                             messages=[{"role": "user", "content": prompt}]))
    from_sqlite = report(cli, capsys, "--config", str(config), "--db", str(db))
    from_postgres = report(cli, capsys, "--config", str(config), "--dsn", postgres_dsn,
                           "--schema", schema)
    assert from_postgres["path"].endswith(f"(schema {schema})")
    assert from_postgres["totals"]["requests"] == len(TRAFFIC)
    assert from_postgres["groups"] == from_sqlite["groups"]
    assert from_postgres["totals"] == from_sqlite["totals"]
