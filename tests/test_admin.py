"""The admin API and its CLI: gateway keys made and revoked at run time, budgets and rate limits
shown and set at run time, on one gateway, on two replicas sharing Redis, and through
``turnout keys`` and ``turnout budget`` against ``turnout serve``."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from structlog.testing import capture_logs

from .gateway import running_gateway
from .redis_support import prefix_fixture, redis_url_fixture  # noqa: F401 - the fixtures
from .support import user
from .test_serve import free_port, turnout, wait_ready

ADMIN = "admin-key-for-tests-0123456789"
CONFIG_KEY = "sk-ci-config-key-0001"
TOKEN = re.compile(r"^sk-turnout-[A-Za-z0-9_-]{32}$")
TINY = 1e-12
"""A limit no request fits: every request's worst case costs more."""

FLEET = {"providers": {"fleet": {"kind": "simulated"}},
         "models": {"m": {"provider": "fleet", "input_price": 1, "output_price": 1}},
         "simulation": {"models": {"m": {"latency_ms": 1, "jitter": 0}}}}


def config(admin: str | None = ADMIN, **extra: Any) -> dict:
    server: dict[str, Any] = {"api_keys": [{"name": "ci", "key": CONFIG_KEY, "team": "qa"}]}
    if admin is not None:
        server["admin_key"] = admin
    return {**FLEET, "server": server, **extra}


class Admin:
    """Calls one gateway's admin API with the admin key."""

    def __init__(self, url: str, key: str | None = ADMIN) -> None:
        self.url, self.key = url, key

    def __call__(self, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.key}"} if self.key else {}
        return httpx.request(method, self.url + "/admin" + path, json=body, headers=headers,
                             timeout=10, **kw)


def chat(url: str, key: str | None, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/chat/completions", headers=headers, timeout=10,
                      json={"model": "m", "messages": [user("hi")], **kw})


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def until(check, limit_s: float = 5.0) -> Any:
    """Poll ``check`` until it returns something true; fail after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {limit_s} s"
        time.sleep(0.05)


# --- the admin key ---------------------------------------------------------------------------


def test_without_an_admin_key_the_admin_api_is_off_and_the_gateway_stays_open(
        tmp_path: Path) -> None:
    with running_gateway({**FLEET}, tmp_path) as gw:
        admin = Admin(gw.url)
        answers = [admin("GET", "/keys"), admin("POST", "/keys", {"name": "x"}),
                   admin("DELETE", "/keys/x"), admin("GET", "/budgets"),
                   admin("PUT", "/budgets", {"scope": "global", "rpm": 1}),
                   Admin(gw.url, None)("DELETE", "/budgets", {"scope": "global"})]
        assert chat(gw.url, None).status_code == 200, "open: no key needed"
    for answer in answers:
        assert answer.status_code == 403
        assert "set server.admin_key" in error_of(answer)["message"]
        assert error_of(answer)["code"] == "admin_api_disabled"


def test_the_admin_key_is_required_and_is_not_a_gateway_key(tmp_path: Path) -> None:
    with running_gateway(config(), tmp_path) as gw, capture_logs() as logs:
        missing = Admin(gw.url, None)("GET", "/keys")
        wrong = Admin(gw.url, "not-the-admin-key-at-all")("GET", "/keys")
        gateway_key = Admin(gw.url, CONFIG_KEY)("GET", "/budgets")
        admin_as_chat = chat(gw.url, ADMIN)
        anonymous_chat = chat(gw.url, None)
        ok = Admin(gw.url)("GET", "/keys")
        failed = gw.kernel.counters["auth_failed"]
    for answer in (missing, wrong, gateway_key, admin_as_chat, anonymous_chat):
        assert answer.status_code == 401
        assert error_of(answer)["type"] == "authentication_error"
    assert "Missing admin key" in error_of(missing)["message"]
    assert "Incorrect admin key" in error_of(wrong)["message"]
    assert ok.status_code == 200
    assert failed == 5
    assert ADMIN not in repr(logs) and "not-the-admin-key-at-all" not in repr(logs)


def test_an_admin_key_alone_closes_the_gateway_until_a_key_is_made(tmp_path: Path) -> None:
    with running_gateway({**FLEET, "server": {"admin_key": ADMIN}}, tmp_path) as gw:
        refused = chat(gw.url, None)
        made = Admin(gw.url)("POST", "/keys", {"name": "first"}).json()
        answered = chat(gw.url, made["key"])
    assert refused.status_code == 401
    assert answered.status_code == 200


# --- keys ------------------------------------------------------------------------------------


def test_keys_are_made_listed_and_revoked_and_never_shown_again(tmp_path: Path) -> None:
    with running_gateway(config(), tmp_path) as gw, capture_logs() as logs:
        admin = Admin(gw.url)
        created = admin("POST", "/keys", {"name": "bot", "user": "ann", "team": "ml"})
        key = created.json()["key"]
        answer = gw.client(key).chat.completions.with_raw_response.create(
            model="m", messages=[user("hi")])
        duplicate = admin("POST", "/keys", {"name": "bot"})
        config_name = admin("POST", "/keys", {"name": "ci"})
        bad_name = admin("POST", "/keys", {"name": "has space"})
        unknown_field = admin("POST", "/keys", {"name": "x", "key": "mine"})
        listed = admin("GET", "/keys")
        config_revoke = admin("DELETE", "/keys/ci")
        revoked = admin("DELETE", "/keys/bot")
        after = chat(gw.url, key)
        again = admin("DELETE", "/keys/bot")
        relisted = admin("GET", "/keys").json()["data"]
        rows = gw.rows()
    assert created.status_code == 201
    made = created.json()
    assert TOKEN.match(key)
    assert {k: made[k] for k in ("name", "user", "team")} == {"name": "bot", "user": "ann",
                                                              "team": "ml"}
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", made["created_at"])
    assert answer.http_response.status_code == 200
    assert rows[-1]["client"] == "bot"

    assert duplicate.status_code == 409 and "exists already" in error_of(duplicate)["message"]
    assert config_name.status_code == 409 and "in the config" in error_of(config_name)["message"]
    assert bad_name.status_code == 400 and error_of(bad_name)["param"] == "name"
    assert unknown_field.status_code == 400 and error_of(unknown_field)["param"] == "key"

    assert listed.status_code == 200 and key not in listed.text
    data = {k["name"]: k for k in listed.json()["data"]}
    assert data["ci"] == {"name": "ci", "user": None, "team": "qa", "created_at": None,
                          "source": "config", "sha256_prefix": data["ci"]["sha256_prefix"]}
    assert data["bot"]["source"] == "runtime" and data["bot"]["team"] == "ml"
    assert re.match(r"^[0-9a-f]{8}$", data["bot"]["sha256_prefix"])
    assert set(data["bot"]) == {"name", "user", "team", "created_at", "source", "sha256_prefix"}

    assert config_revoke.status_code == 409
    assert "remove it from the config" in error_of(config_revoke)["message"]
    assert revoked.status_code == 200 and revoked.json() == {"name": "bot", "revoked": True}
    assert after.status_code == 401
    assert again.status_code == 404
    assert [k["name"] for k in relisted] == ["ci"]
    assert key not in repr(logs)
    assert any(e["event"] == "api_key_created" and e["name"] == "bot" for e in logs)


def test_a_made_key_carries_its_user_and_team_into_budgets(tmp_path: Path) -> None:
    team_budget = {"budgets": [{"scope": "team", "match": "ml", "limit_usd": TINY}]}
    with running_gateway(config(**team_budget), tmp_path) as gw:
        made = Admin(gw.url)("POST", "/keys", {"name": "trainer", "user": "ann",
                                               "team": "ml"}).json()
        client = gw.client(made["key"])
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="m", messages=[user("hi")])
        other_team = gw.client(CONFIG_KEY).chat.completions.create(model="m",
                                                                   messages=[user("hi")])
        rows = gw.rows()
    assert refused.value.body["code"] == "budget_exceeded"
    assert "budget of team 'ml'" in refused.value.body["message"]
    assert other_team.choices[0].message.content
    refused_row = [r for r in rows if r["client"] == "trainer"][-1]
    assert refused_row["status"] == "error"


# --- budgets and rate limits -----------------------------------------------------------------


def test_budgets_and_rate_limits_are_set_shown_and_removed_at_run_time(tmp_path: Path) -> None:
    limits = {"budgets": [{"scope": "user", "match": "eve", "limit_usd": TINY},
                          {"scope": "user", "limit_usd": 5, "window": "month"},
                          {"scope": "global", "limit_usd": 100}],
              "rate_limits": [{"scope": "team", "match": "qa", "rpm": 1000}]}
    with running_gateway(config(**limits), tmp_path) as gw:
        admin = Admin(gw.url)
        assert chat(gw.url, CONFIG_KEY, user="eve").status_code == 429
        replaced = admin("PUT", "/budgets", {"scope": "user", "match": "eve", "limit_usd": 10,
                                             "window": "day"})
        eve = chat(gw.url, CONFIG_KEY, user="eve")
        team = admin("PUT", "/budgets", {"scope": "team", "match": "qa", "limit_usd": TINY})
        refused = chat(gw.url, CONFIG_KEY)
        rate = admin("PUT", "/budgets", {"scope": "key", "match": "ci", "rpm": 1})
        shown = until(lambda: (s := admin("GET", "/budgets").json())
                      and _budget(s, "global", None)["spent_usd"] > 0 and s)
        removed = admin("DELETE", "/budgets", {"scope": "team", "match": "qa", "window": "day"})
        first = chat(gw.url, CONFIG_KEY)
        second = chat(gw.url, CONFIG_KEY)
        removed_rate = admin("DELETE", "/budgets", {"scope": "key", "match": "ci"})
        third = chat(gw.url, CONFIG_KEY)
        config_entry = admin("DELETE", "/budgets", {"scope": "global", "window": "day"})
        nothing = admin("DELETE", "/budgets", {"scope": "team", "match": "nobody"})
        by_query = admin("DELETE", "/budgets", params={"scope": "user", "match": "eve",
                                                       "window": "day"})
        back = chat(gw.url, CONFIG_KEY, user="eve")
        invalid = [admin("PUT", "/budgets", body) for body in (
            {"scope": "planet", "limit_usd": 1},
            {"scope": "team", "limit_usd": -1},
            {"scope": "global", "match": "x", "rpm": 1},
            {"scope": "team", "limit_usd": 1, "rpm": 1},
            {"scope": "team", "limit_usd": 1, "window": "week"},
            {"scope": "team", "rpm": 0},
            {"scope": "team"},
            {"scope": "team", "limit_usd": 1, "colour": "red"},
            ["not", "an", "object"])]
    assert replaced.status_code == 200
    assert replaced.json() == {"kind": "budget", "scope": "user", "match": "eve",
                               "limit_usd": 10.0, "window": "day",
                               "thresholds": [0.5, 0.8, 1.0]}
    assert eve.status_code == 200, "the runtime budget replaced the config one"
    assert team.status_code == 200 and team.json()["window"] == "day"
    assert refused.status_code == 429 and "team 'qa'" in error_of(refused)["message"]
    assert rate.status_code == 200 and rate.json() == {"kind": "rate_limit", "scope": "key",
                                                       "match": "ci", "rpm": 1}

    eve_budget = _budget(shown, "user", "eve")
    assert eve_budget["source"] == "runtime" and eve_budget["replaces_config"] is True
    assert eve_budget["limit_usd"] == 10 and eve_budget["spent_usd"] > 0
    assert eve_budget["left_usd"] == pytest.approx(10 - eve_budget["spent_usd"])
    assert re.match(r"^\d{4}-\d\d-\d\dT00:00:00Z$", eve_budget["resets_at"])
    per_user = _budget(shown, "user", None)
    assert per_user["source"] == "config" and per_user["spent_usd"] is None
    assert per_user["left_usd"] is None
    assert _budget(shown, "team", "qa")["source"] == "runtime"
    assert [b["source"] for b in shown["budgets"]].count("config") == 2, "eve's was replaced"
    rates = {(r["scope"], r["match"]): r for r in shown["rate_limits"]}
    assert rates[("team", "qa")]["source"] == "config"
    assert rates[("team", "qa")]["requests_last_minute"] >= 1
    assert rates[("key", "ci")] == {"scope": "key", "match": "ci", "rpm": 1, "tpm": None,
                                    "source": "runtime", "replaces_config": False,
                                    "requests_last_minute": 0, "tokens_last_minute": None}

    assert removed.status_code == 200 and removed.json()["kind"] == "budget"
    assert first.status_code == 200
    assert second.status_code == 429 and error_of(second)["code"] == "rate_limited"
    assert removed_rate.status_code == 200 and removed_rate.json()["kind"] == "rate_limit"
    assert third.status_code == 200
    assert config_entry.status_code == 409
    assert "remove it there" in error_of(config_entry)["message"]
    assert nothing.status_code == 404
    assert by_query.status_code == 200
    assert back.status_code == 429, "the config budget applies again"

    assert all(r.status_code == 400 for r in invalid), [r.text for r in invalid]
    params = [error_of(r)["param"] for r in invalid]
    assert params[:2] == ["scope", "limit_usd"]
    assert error_of(invalid[2])["message"] == \
        "match: a global rule applies to everything: remove 'match'."
    assert error_of(invalid[2])["param"] == "match"
    assert "not both" in error_of(invalid[3])["message"]
    assert params[4:8] == ["window", "rpm", "limit_usd", "colour"]


def _budget(shown: dict, scope: str, match: str | None) -> dict:
    (found,) = [b for b in shown["budgets"] if (b["scope"], b["match"]) == (scope, match)]
    return found


# --- two replicas sharing Redis --------------------------------------------------------------


def test_two_replicas_share_keys_and_runtime_limits_at_once(tmp_path: Path, redis_url: str,
                                                            prefix: str) -> None:
    shared = config(state={"backend": "redis", "url": redis_url, "key_prefix": prefix})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_gateway(shared, tmp_path / "a") as a, running_gateway(shared, tmp_path / "b") as b:
        made = Admin(a.url)("POST", "/keys", {"name": "shared", "team": "ops"})
        key = made.json()["key"]
        on_b = chat(b.url, key)
        listed_on_b = Admin(b.url)("GET", "/keys").json()["data"]
        duplicate_on_b = Admin(b.url)("POST", "/keys", {"name": "shared"})
        revoked = Admin(a.url)("DELETE", "/keys/shared")
        after_on_b = chat(b.url, key)

        assert chat(b.url, CONFIG_KEY).status_code == 200
        put = Admin(a.url)("PUT", "/budgets", {"scope": "team", "match": "qa",
                                               "limit_usd": TINY})
        started = time.monotonic()
        refused = until(lambda: (r := chat(b.url, CONFIG_KEY)).status_code == 429 and r)
        took = time.monotonic() - started
        shown_on_b = Admin(b.url)("GET", "/budgets").json()
    assert made.status_code == 201
    assert on_b.status_code == 200, "a key made on A works on B at once"
    assert [k["name"] for k in listed_on_b if k["source"] == "runtime"] == ["shared"]
    assert duplicate_on_b.status_code == 409
    assert revoked.status_code == 200
    assert after_on_b.status_code == 401, "a key revoked on A is refused on B at once"
    assert put.status_code == 200
    assert error_of(refused)["code"] == "budget_exceeded"
    assert took < 3.0
    assert _budget(shown_on_b, "team", "qa")["source"] == "runtime"


# --- the CLI, end to end ---------------------------------------------------------------------


CLI_CONFIG = """
[server]
admin_key = "${TURNOUT_ADMIN_KEY}"

[providers.fleet]
kind = "simulated"

[models.m]
provider = "fleet"
input_price = 1
output_price = 1

[simulation.models.m]
latency_ms = 1
jitter = 0

[record]
path = "record.db"
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``turnout ARGS`` as a subprocess."""
    proc = turnout(*args, cwd=cwd)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def in_process(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """``turnout ARGS`` run in this process (a subprocess costs a second and a half)."""
    from turnout.adapters.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_the_cli_makes_keys_and_sets_budgets_on_a_served_gateway(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "turnout.toml").write_text(CLI_CONFIG)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("TURNOUT_ADMIN_KEY", ADMIN)
    monkeypatch.setenv("TURNOUT_URL", base)
    server = turnout("serve", "--config", "turnout.toml", "--port", str(port), cwd=tmp_path)
    try:
        wait_ready(server, base)
        created = cli("keys", "create", "ci-bot", "--team", "qa", cwd=tmp_path)
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        assert TOKEN.match(key) and "shown only now" in created.stderr
        listed = cli("keys", "list", cwd=tmp_path)
        listed_json = in_process(capsys, "keys", "list", "--json")
        assert chat(base, key).status_code == 200

        put = cli("budget", "set", "--scope", "team", "--match", "qa", "--limit-usd", "1e-12",
                  cwd=tmp_path)
        rate = in_process(capsys, "budget", "set", "--scope", "global", "--rpm", "1000",
                          "--json")
        shown = cli("budget", "show", cwd=tmp_path)
        refused = chat(base, key)
        removed = in_process(capsys, "budget", "set", "--scope", "team", "--match", "qa",
                             "--window", "day", "--remove")
        allowed = chat(base, key)
        revoked = cli("keys", "revoke", "ci-bot", cwd=tmp_path)
        after = chat(base, key)
        again = in_process(capsys, "keys", "revoke", "ci-bot")
        duplicate = (in_process(capsys, "keys", "create", "x"),
                     in_process(capsys, "keys", "create", "x"))
        bad = in_process(capsys, "budget", "set", "--scope", "team", "--limit-usd", "-1")
        wrong_key = in_process(capsys, "keys", "list", "--admin-key", "wrong-admin-key-0000")
        hashed = in_process(capsys, "keys", "hash", "abc")
    finally:
        server.send_signal(signal.SIGINT)
        _, log = server.communicate(timeout=30)
    unreachable = in_process(capsys, "keys", "list", "--url", f"http://127.0.0.1:{free_port()}")

    assert listed.returncode == 0 and "ci-bot" in listed.stdout and "runtime" in listed.stdout
    assert key not in listed.stdout + listed_json.stdout
    assert '"source": "runtime"' in listed_json.stdout
    assert put.returncode == 0 and put.stdout.strip() == \
        "set runtime budget: team 'qa', day, $1e-12"
    assert rate.returncode == 0 and '"rpm": 1000' in rate.stdout
    assert shown.returncode == 0, shown.stderr
    assert "team 'qa': $1e-12 per day; spent $0, left $0" in shown.stdout
    assert "[runtime]" in shown.stdout and "global: 1,000 rpm" in shown.stdout
    assert refused.status_code == 429
    assert removed.returncode == 0 and removed.stdout.startswith("removed runtime budget")
    assert allowed.status_code == 200
    assert revoked.returncode == 0 and revoked.stdout.strip() == "revoked key 'ci-bot'"
    assert after.status_code == 401
    assert again.returncode == 2 and again.stderr.startswith("turnout: No key named 'ci-bot'")
    assert duplicate[0].returncode == 0
    assert duplicate[1].returncode == 2 and "exists already" in duplicate[1].stderr
    assert bad.returncode == 2 and bad.stderr.startswith("turnout: limit_usd:")
    assert wrong_key.returncode == 2
    assert wrong_key.stderr.strip() == "turnout: Incorrect admin key provided."
    assert hashed.stdout.strip() == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert unreachable.returncode == 2
    assert "cannot reach a gateway at http://127.0.0.1:" in unreachable.stderr
    assert "turnout serve" in unreachable.stderr and "--url" in unreachable.stderr
    assert "admin API on" in log
    assert key not in log and ADMIN not in log and "Traceback" not in log


def test_the_cli_says_how_to_give_the_admin_key(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("TURNOUT_ADMIN_KEY", raising=False)
    done = in_process(capsys, "budget", "show")
    assert done.returncode == 2
    assert done.stderr.strip() == ("turnout: no admin key: set TURNOUT_ADMIN_KEY to the "
                                   "gateway's server.admin_key, or pass --admin-key")
