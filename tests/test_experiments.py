"""Experiments: the stable-hash assignment (here, in another process, after a restart), config
errors with their lines, routing through the HTTP API against the fake OpenAI upstream (the
arm's model is what the upstream sees; the header and the decision record say which arm), and
``turnout experiments report`` on records filled by real requests, SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from turnout.adapters.cli import main as cli
from turnout.kernel import errors
from turnout.kernel.config import parse, parse_text
from turnout.kernel.kernel import BUILTINS, Kernel
from turnout.kernel.types import Caller, ChatRequest, Context
from turnout.plugins.experiments import Arm, bucket, key_value, pick
from turnout.plugins.experiments.figures import ArmData, collect, verdict
from turnout.plugins.experiments.stats import (
    Sample,
    n_for_proportions,
    two_proportion_p,
    welch_p,
    wilson,
)

from .fakes import Script, Status, openai_app, serve
from .gateway import running_gateway
from .test_record_postgres import postgres_dsn, schema  # noqa: F401 - fixtures

KEY = "sk-upstream-experiments"


def expected_bucket(salt: str, value: str) -> float:
    """The documented assignment, computed here from its definition."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{value}".encode()).digest()[:8], "big") / 2**64


def arm_for(salt: str, value: str, weights: list[tuple[str, float]]) -> str:
    """The arm whose span of [0, 1) holds the value's bucket, spans in order, by weight."""
    point, edge, total = expected_bucket(salt, value), 0.0, sum(w for _, w in weights)
    for name, weight in weights:
        edge += weight / total
        if point < edge:
            return name
    return weights[-1][0]


def users_in(salt: str, arm: str, weights: list[tuple[str, float]], count: int) -> list[str]:
    """The first ``count`` users ``user-N`` whose hash lands in ``arm``."""
    found = (f"user-{i}" for i in itertools.count())
    return list(itertools.islice((u for u in found if arm_for(salt, u, weights) == arm), count))


AB = [("control", 1.0), ("candidate", 1.0)]


# --- the assignment ----------------------------------------------------------------------------


@pytest.mark.parametrize("salt, value", [("ab", "alice"), ("ab", "bob"), ("other", "alice"),
                                         ("ab", "conv-7f3a"), ("ab", "ünïcode")])
def test_the_bucket_is_sha256_of_salt_and_value(salt: str, value: str) -> None:
    assert bucket(salt, value) == expected_bucket(salt, value)
    assert 0 <= bucket(salt, value) < 1


def test_fixed_keys_get_fixed_arms() -> None:
    arms = [Arm(name="control", route="r", weight=1), Arm(name="candidate", route="r", weight=1)]
    users = [f"user-{i}" for i in range(40)]
    got = [pick(arms, bucket("ab", u)).name for u in users]
    assert got == [arm_for("ab", u, AB) for u in users]
    assert {"control", "candidate"} <= set(got)  # both arms reached by these keys


def test_another_process_with_another_hash_seed_assigns_the_same() -> None:
    values = ["alice", "bob", "carol", "user-17"]
    code = ("import json; from turnout.plugins.experiments import bucket; "
            f"print(json.dumps([bucket('ab', v) for v in {values!r}]))")
    for seed in ("1", "2"):  # Python's own hash() would differ between these
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True, timeout=120).stdout
        assert json.loads(out) == [expected_bucket("ab", v) for v in values]


def test_weights_are_respected_over_ten_thousand_keys() -> None:
    weights = {"a": 3.0, "b": 1.0, "c": 1.0}
    arms = [Arm(name=n, model="m", weight=w) for n, w in weights.items()]
    n = 10_000
    counts = {name: 0 for name in weights}
    for i in range(n):
        counts[pick(arms, bucket("weights", f"key-{i}")).name] += 1
    for name, weight in weights.items():
        p = weight / sum(weights.values())
        sd = math.sqrt(n * p * (1 - p))  # binomial
        assert abs(counts[name] - n * p) < 4 * sd, (name, counts)


def test_a_point_at_the_top_of_the_range_lands_in_the_last_arm() -> None:
    arms = [Arm(name="a", model="m", weight=1), Arm(name="b", model="m", weight=2)]
    assert pick(arms, 0.0).name == "a"
    assert pick(arms, 1 / 3 - 1e-12).name == "a" and pick(arms, 1 / 3 + 1e-12).name == "b"
    assert pick(arms, math.nextafter(1.0, 0.0)).name == "b"


def context(**kw) -> Context:
    request = kw.pop("request", None) or ChatRequest(
        model="auto", messages=[{"role": "user", "content": "hi"}])
    return Context(request=request, **kw)


def test_key_values_come_from_the_caller_the_header_or_the_metadata() -> None:
    who = Caller(key="ci", user="alice", team="t")
    assert key_value(context(caller=who), "user") == "alice"
    assert key_value(context(caller=who), "key") == "ci"
    assert key_value(context(), "user") is None and key_value(context(), "key") is None
    header = context(headers={"x-turnout-conversation": "thread-1"})
    assert key_value(header, "conversation") == "thread-1"
    meta = ChatRequest(model="auto", messages=[{"role": "user", "content": "hi"}],
                       metadata={"conversation_id": "thread-2"})
    assert key_value(context(request=meta), "conversation") == "thread-2"
    both = context(request=meta, headers={"x-turnout-conversation": "thread-1"})
    assert key_value(both, "conversation") == "thread-1"  # the header first
    assert key_value(context(), "conversation") is None


# --- config errors, each with its line ---------------------------------------------------------

CONFIG = """\
[providers.p]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"

[models.small]
provider = "p"

[models.large]
provider = "p"

[routes.cheap]
models = ["small"]

[routes.strong]
models = ["large"]

[[experiments]]
name = "ab"
match = ["auto", "strong"]

[[experiments.arms]]
name = "control"
route = "strong"

[[experiments.arms]]
name = "candidate"
route = "cheap"
weight = 1

[[experiments]]
name = "by-model"
key = "conversation"
arms = [{ name = "a", model = "large" }, { name = "b", model = "small" }]
"""
"""Line 27 is the candidate's route, 28 its weight, 31 the second experiment's name, 33 its
arms."""


def load(text: str) -> Kernel:
    kernel = Kernel(parse_text(text, source="gateway.toml"), builtins=BUILTINS)
    kernel.load_plugins()
    return kernel


def problems(text: str) -> str:
    with pytest.raises(errors.ConfigError) as caught:
        load(text)
    return str(caught.value)


def test_the_example_loads() -> None:
    experiments = load(CONFIG).plugin_settings("experiments").root
    assert [(e.name, e.key, e.match, e.seed) for e in experiments] == [
        ("ab", "user", ["auto", "strong"], "ab"), ("by-model", "conversation", ["auto"],
                                                   "by-model")]
    assert [(a.name, a.target, a.weight) for a in experiments[0].arms] == [
        ("control", "strong", 1.0), ("candidate", "cheap", 1.0)]


@pytest.mark.parametrize("old, new, expected", [
    ('route = "cheap"', 'route = "chepa"',
     "gateway.toml:27: experiments[0].arms[1].route: no route 'chepa'; routes: cheap, strong"),
    ('route = "cheap"', 'route = "small"',
     "gateway.toml:27: experiments[0].arms[1].route: no route 'small' (for a model, write "
     "model = ...)"),
    ("weight = 1", "weight = 0",
     "gateway.toml:28: experiments[0].arms[1].weight: Input should be greater than 0"),
    ("weight = 1", "weight = -2",
     "gateway.toml:28: experiments[0].arms[1].weight: Input should be greater than 0"),
    ('name = "by-model"', 'name = "ab"',
     "gateway.toml:31: experiments[1].name: an experiment before this one is named 'ab' too"),
    ('{ name = "b", model = "small" }', '{ name = "a", model = "small" }',
     "gateway.toml:33: experiments[1].arms: two arms are named 'a'"),
    ('model = "small"', 'model = "tiny"',
     "gateway.toml:33: experiments[1].arms[1].model: no model 'tiny'; models: large, small"),
    ('{ name = "b", model = "small" }', '{ name = "b" }',
     "gateway.toml:33: experiments[1].arms[1]: an arm names where its requests go"),
    ('match = ["auto", "strong"]', 'match = ["auto", "strongest"]',
     "gateway.toml:19: experiments[0].match: 'strongest' is no route or model"),
    ('key = "conversation"', 'key = "session"',
     "gateway.toml:32: experiments[1].key: Input should be 'user', 'key' or 'conversation'"),
    (', { name = "b", model = "small" }', '',
     "gateway.toml:33: experiments[1].arms: List should have at least 2 items"),
])
def test_a_bad_experiment_is_a_config_error_with_its_line(old: str, new: str,
                                                          expected: str) -> None:
    assert old in CONFIG
    assert expected in problems(CONFIG.replace(old, new, 1))


# --- through the HTTP API ----------------------------------------------------------------------

FAILING = {"every": 0}


def fleet_answer(model: str, prompt: str):
    """The fleet: ``small`` fails every call whose count among small's calls is 0, 3 or 6 mod
    10 (30%) once ``flaky`` is in the prompt; otherwise each model says who it is."""
    if model == "small" and "flaky" in prompt:
        with LOCK:
            n = FAILING["every"]
            FAILING["every"] += 1
        if n % 10 in (0, 3, 6):
            return Status(500)
    return f"{model} answers"


LOCK = threading.Lock()


@pytest.fixture(scope="module")
def fake():
    script = Script(answer=fleet_answer)
    with serve(openai_app(script, api_key=KEY)) as url:
        yield script, url + "/v1"


@pytest.fixture
def script(fake) -> Script:
    fake[0].reset()
    FAILING["every"] = 0
    return fake[0]


def gateway_config(url: str, **extra) -> dict:
    no_retry = {"retries_per_model": 0}
    length = [{"kind": "length", "max_chars": 200}]
    return {
        "providers": {"up": {"kind": "openai", "base_url": url, "api_key": KEY}},
        "models": {"small": {"provider": "up", "input_price": 1.0, "output_price": 2.0},
                   "large": {"provider": "up", "input_price": 30.0, "output_price": 60.0}},
        "routes": {"strong": {"models": ["large"], "fallback": no_retry, "validators": length},
                   "cheap": {"models": ["small"], "fallback": no_retry, "validators": length}},
        "routing": {"default": "strong"},
        "experiments": [
            {"name": "ab", "key": "user", "match": ["auto", "strong"],
             "arms": [{"name": "control", "route": "strong"},
                      {"name": "candidate", "route": "cheap"}]},
            {"name": "convo", "key": "conversation", "match": "small",
             "arms": [{"name": "large", "model": "large", "weight": 1},
                      {"name": "small", "model": "small", "weight": 1}]},
        ],
        **extra,
    }


def ask(gw, model: str, text: str = "Say hello", **kw):
    return gw.client(timeout=10).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **kw)


def decision_of(gw, request_id: str) -> dict:
    row = next(r for r in gw.rows() if r["request_id"] == request_id)
    return json.loads(row["decision"])


def test_http_each_user_gets_the_arm_the_hash_says_and_keeps_it_after_a_restart(
        fake, script, tmp_path: Path) -> None:
    control, candidate = users_in("ab", "control", AB, 1)[0], users_in("ab", "candidate", AB, 1)[0]
    expected = {control: ("control", "strong", "large"), candidate: ("candidate", "cheap", "small")}
    config = gateway_config(fake[1])
    with running_gateway(config, tmp_path) as gw:
        for user, (arm, route, model) in expected.items():
            raw = ask(gw, "auto", user=user)
            assert raw.parse().choices[0].message.content == f"{model} answers"
            assert script.spans[-1].model == model  # what the upstream was asked for
            assert raw.headers["x-turnout-experiment"] == f"ab={arm}"
            assert (raw.headers["x-turnout-route"], raw.headers["x-turnout-model"]) == (route,
                                                                                        model)
            decision = decision_of(gw, raw.headers["x-request-id"])
            assert decision["experiment"] == {
                "name": "ab", "arm": arm, "key": "user", "target": route,
                "bucket": round(expected_bucket("ab", user), 6)}
            assert decision["rule"] == f"experiment ab: arm {arm}"
            assert decision["route"] == route and decision["plan"] == [model]
        # a request naming a route the experiment matches is moved to the user's arm too
        raw = ask(gw, "strong", user=candidate)
        assert script.spans[-1].model == "small" and raw.headers["x-turnout-route"] == "cheap"
        assert decision_of(gw, raw.headers["x-request-id"])["experiment"]["arm"] == "candidate"
        before = len(gw.rows())
    with running_gateway(config, tmp_path) as again:  # a restart, over the same record
        for user, (arm, _, model) in expected.items():
            raw = ask(again, "auto", user=user)
            assert raw.headers["x-turnout-experiment"] == f"ab={arm}"
            assert script.spans[-1].model == model
        assert len(again.rows()) == before + 2  # one record, both runs


def test_http_the_user_header_and_the_conversation_key(fake, script, tmp_path: Path) -> None:
    candidate = users_in("ab", "candidate", AB, 1)[0]
    convo = [("large", 1.0), ("small", 1.0)]
    with running_gateway(gateway_config(fake[1]), tmp_path) as gw:
        client = gw.client(timeout=10)
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-turnout-user": candidate})
        assert raw.headers["x-turnout-experiment"] == "ab=candidate"
        with client.chat.completions.with_streaming_response.create(
                model="auto", messages=[{"role": "user", "content": "hi"}], stream=True,
                user=candidate) as streamed:
            assert streamed.headers["x-turnout-experiment"] == "ab=candidate"
            assert streamed.headers["x-turnout-model"] == "small"
            assert "[DONE]" in "".join(streamed.iter_lines())
        assert script.spans[-1].model == "small"
        for thread in ("thread-a", "thread-b", "thread-c", "thread-d"):
            arm = arm_for("convo", thread, convo)
            by_header = client.chat.completions.with_raw_response.create(
                model="small", messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-turnout-conversation": thread})
            assert by_header.headers["x-turnout-experiment"] == f"convo={arm}"
            assert script.spans[-1].model == arm
            by_metadata = ask(gw, "small", metadata={"conversation_id": thread})
            assert by_metadata.headers["x-turnout-experiment"] == f"convo={arm}"
            assert script.spans[-1].model == arm


def test_http_a_request_without_the_key_goes_to_the_control_marked_unassigned(
        fake, script, tmp_path: Path) -> None:
    with running_gateway(gateway_config(fake[1]), tmp_path) as gw:
        raw = ask(gw, "auto")  # no user anywhere: the gateway has no keys
        assert raw.headers["x-turnout-experiment"] == "ab=control"
        assert script.spans[-1].model == "large"
        experiment = decision_of(gw, raw.headers["x-request-id"])["experiment"]
        assert experiment["unassigned"] is True and experiment["bucket"] is None
        untouched = ask(gw, "cheap", user="alice")  # no experiment matches 'cheap'
        assert "x-turnout-experiment" not in untouched.headers
        assert "experiment" not in decision_of(gw, untouched.headers["x-request-id"])


def test_http_a_disabled_experiment_routes_nothing(fake, script, tmp_path: Path) -> None:
    candidate = users_in("ab", "candidate", AB, 1)[0]
    config = gateway_config(fake[1])
    config["experiments"][0]["enabled"] = False
    with running_gateway(config, tmp_path) as gw:
        raw = ask(gw, "auto", user=candidate)
        assert "x-turnout-experiment" not in raw.headers
        assert script.spans[-1].model == "large"  # routing.default


def report(capsys, *argv: str) -> dict:
    """``turnout experiments report ARGV --json``, decoded (the gateway's log lines, which go to
    the same stdout, left out)."""
    capsys.readouterr()
    assert cli(["experiments", "report", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index('{\n  "path"'):])


def test_report_names_the_winner_only_when_the_data_supports_it(
        fake, script, tmp_path: Path, capsys) -> None:
    users = [f"user-{i}" for i in range(120)]
    with running_gateway(gateway_config(fake[1]), tmp_path) as gw:
        answered: dict[str, str] = {}

        def send(batch: list[str]) -> None:
            for user in batch:
                try:
                    raw = ask(gw, "auto", "a flaky question", user=user)
                    answered[user] = raw.headers["x-request-id"]
                except Exception as exc:  # noqa: BLE001 - the candidate's upstream fails 30%
                    assert getattr(exc, "status_code", None) == 503, exc  # upstream_unavailable

        send(users[:12])
        gw.kernel.plugins.get("record").flush()
        early = report(capsys, "--db", str(gw.db))["experiments"]
        assert [e["experiment"] for e in early] == ["ab"]
        assert early[0]["verdict"]["winner"] is None
        assert early[0]["verdict"]["reason"].startswith("no winner yet")
        assert early[0]["verdict"]["more_per_arm"] > 0

        send(users[12:])
        for user, request_id in list(answered.items())[:20]:  # feedback on some answers
            score = 1 if arm_for("ab", user, AB) == "control" else -1
            reply = httpx.post(gw.url + "/v1/feedback",
                               json={"request_id": request_id, "score": score}, timeout=10)
            assert reply.status_code == 200, reply.text
        gw.kernel.plugins.get("record").flush()
        found = report(capsys, "--db", str(gw.db))["experiments"][0]

    per_arm = {a: [u for u in users if arm_for("ab", u, AB) == a] for a, _ in AB}
    arms = {a["arm"]: a for a in found["arms"]}
    assert list(arms) == ["control", "candidate"]  # the control first, as configured
    assert found["unassigned"] == 0
    for name, members in per_arm.items():
        assert arms[name]["n"] == len(members)
    failed = sum(1 for u in per_arm["candidate"] if u not in answered)
    assert failed == len([n for n in range(len(per_arm["candidate"])) if n % 10 in (0, 3, 6)])
    assert arms["control"]["success"]["ok"] == len(per_arm["control"])
    assert arms["candidate"]["success"]["ok"] == len(per_arm["candidate"]) - failed
    low, high = arms["candidate"]["success"]["ci95"]
    assert low < arms["candidate"]["success"]["rate"] < high < 1
    assert arms["control"]["cost_usd"]["mean"] > arms["candidate"]["cost_usd"]["mean"] > 0
    assert arms["control"]["validation"] == {"judged": len(per_arm["control"]),
                                             "passed": len(per_arm["control"]), "rate": 1.0,
                                             "ci95": arms["control"]["validation"]["ci95"]}
    given = [u for u in list(answered)[:20]]
    assert arms["control"]["feedback"]["n"] == sum(arm_for("ab", u, AB) == "control"
                                                   for u in given)
    assert arms["control"]["feedback"]["mean"] == 1.0
    assert arms["candidate"]["feedback"]["mean"] == -1.0
    assert found["verdict"]["winner"] == "control", found["verdict"]
    assert found["verdict"]["reason"].startswith("winner: control")
    recent = report(capsys, "--db", str(gw.db), "--since", "1h")["experiments"][0]
    assert [a["n"] for a in recent["arms"]] == [a["n"] for a in found["arms"]]
    cheaper = report(capsys, "--db", str(gw.db), "--metric", "cost")["experiments"][0]
    assert cheaper["verdict"]["winner"] == "candidate"
    capsys.readouterr()
    assert cli(["experiments", "report", "--db", str(gw.db)]) == 0
    printed = capsys.readouterr().out
    assert "ab (by user; 120 requests)" in printed and "winner: control" in printed
    config = tmp_path / "report.toml"  # the record found through the config, arms in its order
    config.write_text(f'[record]\npath = "{gw.db}"\n\n[[experiments]]\nname = "ab"\narms = ['
                      '{ name = "candidate", route = "cheap" }, '
                      '{ name = "control", route = "strong" }]\n')
    configured = report(capsys, "--config", str(config), "--name", "ab")["experiments"]
    assert [a["arm"] for a in configured[0]["arms"]] == ["candidate", "control"]
    assert report(capsys, "--config", str(config), "--name", "nope")["experiments"] == []


def test_the_command_and_its_help(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        cli(["experiments", "report", "--help"])
    assert done.value.code == 0 and "--metric" in capsys.readouterr().out
    assert cli(["experiments"]) == 2  # no sub-command: the help, and a usage error
    assert "report" in capsys.readouterr().out
    assert cli(["experiments", "report", "--db", "x.db", "--min-n", "0"]) == 2


def test_report_without_experiment_requests_says_so(fake, script, tmp_path: Path,
                                                    capsys) -> None:
    config = gateway_config(fake[1])
    config.pop("experiments")
    with running_gateway(config, tmp_path) as gw:
        ask(gw, "auto", user="alice")
        gw.kernel.plugins.get("record").flush()
        assert cli(["experiments", "report", "--db", str(gw.db)]) == 0
    assert "No experiment requests recorded" in capsys.readouterr().out


@pytest.mark.anyio
async def test_report_reads_postgres_the_same_as_sqlite(fake, script, tmp_path: Path,
                                                        postgres_dsn, schema,  # noqa: F811
                                                        capsys) -> None:
    users = [f"user-{i}" for i in range(30)]
    found = {}
    for backend in ("sqlite", "postgres"):
        record = {"path": str(tmp_path / "record.db")} if backend == "sqlite" else {
            "backend": "postgres", "dsn": postgres_dsn, "schema": schema,
            "journal": str(tmp_path / "pg.journal")}
        config = gateway_config(fake[1], record=record, logging={"level": "warning"})
        FAILING["every"] = 0
        async with Kernel(parse(config, source="test")) as kernel:
            for user in users:
                request = ChatRequest(model="auto", user=user,
                                      messages=[{"role": "user", "content": "flaky"}])
                try:
                    await kernel.ask(request, caller=Caller(user=user))
                except errors.TurnoutError:
                    pass
        where = ["--db", str(tmp_path / "record.db")] if backend == "sqlite" else \
            ["--dsn", postgres_dsn, "--schema", schema]
        found[backend] = report(capsys, *where)["experiments"]
    for runs in found.values():  # the same requests, answered the same; only timings differ
        for arm in runs[0]["arms"]:
            assert arm.pop("latency_ms")["p50"] > 0
    assert found["sqlite"] == found["postgres"]
    assert sum(a["n"] for a in found["postgres"][0]["arms"]) == len(users)


# --- the statistics ----------------------------------------------------------------------------


def test_wilson_interval_of_8_out_of_10() -> None:
    low, high = wilson(8, 10)
    # (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.959964, by hand
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson(0, 10)[0] == pytest.approx(0, abs=1e-12) and wilson(0, 0) is None
    assert wilson(10, 10)[1] == pytest.approx(1, abs=1e-12)
    assert wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)  # z²/(n + z²)


def test_two_proportion_z_test() -> None:
    # 45/50 against 35/50: pooled 0.8, se sqrt(0.8·0.2·(2/50)) = 0.08, z = 2.5, p = 0.01242
    assert two_proportion_p(45, 50, 35, 50) == pytest.approx(0.012419, abs=1e-6)
    assert two_proportion_p(10, 20, 10, 20) == 1.0
    assert two_proportion_p(5, 5, 5, 5) == 1.0  # nothing varies


def test_means_and_sample_size() -> None:
    a, b = Sample.of([1.0, 2.0, 3.0, 4.0]), Sample.of([2.0, 3.0, 4.0, 5.0])
    assert (a.mean, a.variance) == (2.5, pytest.approx(5 / 3))
    low, high = a.interval()
    assert (low, high) == (pytest.approx(2.5 - 1.959964 * math.sqrt(5 / 3 / 4), abs=1e-6),
                           pytest.approx(2.5 + 1.959964 * math.sqrt(5 / 3 / 4), abs=1e-6))
    # |2.5 - 3.5| / sqrt(5/12 + 5/12) = 1.0954, p = 0.2733
    assert welch_p(a, b) == pytest.approx(0.27332, abs=1e-4)
    # (1.959964·sqrt(2·0.8·0.2) + 0.841621·sqrt(0.09 + 0.21))² / 0.2² = 61.5 -> 62
    assert n_for_proportions(0.9, 0.7) == 62
    assert n_for_proportions(0.5, 0.5) is None


def arm(name: str, ok: int, failed: int) -> ArmData:
    return ArmData(name, statuses=["ok"] * ok + ["error"] * failed, costs=[0.0] * (ok + failed))


def test_verdict_needs_significance_and_enough_requests_per_arm() -> None:
    clear = verdict([arm("a", 40, 0), arm("b", 28, 12)])
    assert clear["winner"] == "a" and clear["p_values"]["b"] < 0.05
    small = verdict([arm("a", 10, 0), arm("b", 7, 3)])
    assert small["winner"] is None and small["more_per_arm"] >= 20  # below min_n = 30
    same = verdict([arm("a", 40, 10), arm("b", 40, 10)])
    assert same["winner"] is None and "do not differ" in same["reason"]
    three = verdict([arm("a", 40, 0), arm("b", 38, 2), arm("c", 20, 20)])
    assert three["winner"] is None  # a vs b is not significant at 0.05 / 2
    assert three["best"] == "a" and three["alpha_per_comparison"] == 0.025


def test_collect_leaves_unassigned_out_and_reads_validation_from_the_attempts() -> None:
    experiment = {"name": "x", "arm": "a", "key": "user", "bucket": 0.1, "target": "r"}
    rejected = [{"status": "rejected", "verdicts": ["length:too long"]},
                {"status": "ok", "verdicts": ["length:ok"]}]
    rows = [
        ("r1", "ok", 0.1, 10.0, json.dumps(experiment), json.dumps([{"status": "ok",
                                                                     "verdicts": ["j:ok"]}])),
        ("r2", "ok", 0.2, 20.0, json.dumps(experiment), json.dumps(rejected)),
        ("r3", "ok", 0.3, 30.0, json.dumps(experiment), json.dumps([{"status": "ok",
                                                                     "verdicts": []}])),
        ("r4", "ok", 0.4, 40.0, json.dumps({**experiment, "unassigned": True}), "[]"),
        ("r5", "ok", 0.5, 50.0, json.dumps({**experiment, "name": "y"}), "[]"),
    ]
    found = collect(rows, [("r1", 1.0), ("r4", -1.0)], name="x")
    assert [e.name for e in found] == ["x"] and found[0].unassigned == 1
    summary = found[0].arms["a"].summary()
    assert summary["n"] == 3
    assert (summary["validation"]["judged"], summary["validation"]["passed"]) == (2, 1)
    assert summary["feedback"]["n"] == 1 and summary["latency_ms"]["p50"] == 20.0
