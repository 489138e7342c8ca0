"""The ``health`` plugin: the circuit breaker's state machine in a store with a fake clock, the
balancer's order, the config of deployments, and through the HTTP API, two fake OpenAI upstreams
serving one model as two deployments: a failing one's circuit opens and traffic moves, a probe
closes it again, a slow one gets less traffic, and two replicas sharing Redis agree on a
circuit."""

from __future__ import annotations

import json
import random
import time

import pytest

from turnout.adapters.stores.memory import MemoryStore
from turnout.kernel.config import parse_text
from turnout.kernel.errors import ConfigError
from turnout.kernel.kernel import BUILTINS, Kernel
from turnout.kernel.types import Attempt
from turnout.plugins.health import Health
from turnout.plugins.health.balance import Balancer
from turnout.plugins.health.circuit import CLOSED, HALF_OPEN, OPEN, OPEN_JITTER, Breakers
from turnout.plugins.health.settings import HealthSettings

from .fakes import Delay, Script, Status, openai_app, serve
from .gateway import running_gateway
from .redis_support import prefix_fixture, redis_url_fixture  # noqa: F401 - the fixtures
from .store_contract import FakeClock

KEY = "sk-health"

# --- the breaker, in a memory store with a fake clock -----------------------------------------


def breakers(**settings) -> tuple[Breakers, FakeClock]:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    return Breakers(store, HealthSettings(**settings), random.Random(1), clock=clock), clock


@pytest.mark.anyio
async def test_faults_open_the_circuit_and_a_probe_closes_it() -> None:
    b, clock = breakers(failure_threshold=3, window_s=60, open_s=10, max_open_s=100)
    dep = "gpt@east"
    for _ in range(2):
        seen = await b.read(dep)
        assert await b.record(dep, seen, "fault", "upstream_unavailable") is None
    seen = await b.read(dep)
    assert seen.state == CLOSED
    assert await b.record(dep, seen, "fault", "upstream_unavailable") == "opened"
    opened = await b.read(dep)
    assert opened.state == OPEN and "3 upstream faults in 60 s" in opened.reason
    assert 10 <= opened.open_s <= 10 * (1 + OPEN_JITTER)
    # a late fault of a call admitted before it opened changes nothing
    assert await b.record(dep, seen, "fault", "upstream_unavailable") is None
    clock.advance(opened.open_s - 0.01)
    assert (await b.read(dep)).state == OPEN
    clock.advance(0.02)
    half = await b.read(dep)
    assert half.state == HALF_OPEN
    assert await b.try_probe(dep, "probe-1", 30) is True
    assert await b.try_probe(dep, "probe-2", 30) is False  # one probe at a time
    # the probe fails: open again, for twice as long
    assert await b.record(dep, half, "fault", "upstream_timeout", probe="probe-1") == "reopened"
    again = await b.read(dep)
    assert again.state == OPEN and again.trips == 1 and again.reason.startswith("the probe failed")
    assert 20 <= again.open_s <= 20 * (1 + OPEN_JITTER)
    clock.advance(again.open_s + 0.01)
    half = await b.read(dep)
    assert half.state == HALF_OPEN
    assert await b.try_probe(dep, "probe-3", 30) is True  # the failed probe's lock was released
    assert await b.record(dep, half, "ok", "", probe="probe-3") == "closed"
    closed = await b.read(dep)
    assert (closed.state, closed.gen, closed.trips) == (CLOSED, 1, 0)
    # the faults that opened it do not count again: it takes three new ones
    for _ in range(2):
        assert await b.record(dep, await b.read(dep), "fault", "upstream_unavailable") is None
    assert await b.record(dep, await b.read(dep), "fault", "upstream_unavailable") == "opened"


@pytest.mark.anyio
async def test_error_rate_opens_only_after_min_requests_and_open_time_is_capped() -> None:
    b, clock = breakers(failure_threshold=100, error_rate=0.5, min_requests=4, open_s=50,
                        max_open_s=60)
    dep = "gpt@west"
    assert await b.record(dep, await b.read(dep), "fault", "rate_limited") is None  # 1 of 1
    assert await b.record(dep, await b.read(dep), "ok", "") is None
    assert await b.record(dep, await b.read(dep), "fault", "rate_limited") is None  # 2 of 3
    assert await b.record(dep, await b.read(dep), "fault", "rate_limited") == "opened"  # 3 of 4
    opened = await b.read(dep)
    assert "75% of 4 calls" in opened.reason and opened.open_s <= 60
    assert b.open_interval(5) == 60  # 50 x 32, capped
    clock.advance(60.01)
    assert (await b.read(dep)).state == HALF_OPEN


@pytest.mark.anyio
async def test_outcomes_client_errors_are_answers_and_cancellations_say_nothing() -> None:
    health = Health()

    def attempt(status: str, error: str | None = None) -> Attempt:
        return Attempt(model="gpt", provider="east", started=0.0, status=status, error=error)

    assert health.outcome(attempt("ok")) == ("ok", "")
    assert health.outcome(attempt("rejected")) == ("ok", "")
    assert health.outcome(attempt("error", "upstream_unavailable: 500"))[0] == "fault"
    assert health.outcome(attempt("error", "upstream_timeout: slow"))[0] == "fault"
    assert health.outcome(attempt("error", "rate_limited: 429"))[0] == "fault"
    assert health.outcome(attempt("error", "upstream_bad_request: 400"))[0] == "ok"
    assert health.outcome(attempt("error", "context_length_exceeded: long"))[0] == "ok"
    assert health.outcome(attempt("cancelled"))[0] is None
    health.settings = HealthSettings(count_rate_limited=False)
    assert health.outcome(attempt("error", "rate_limited: 429"))[0] == "ok"


# --- the balancer -----------------------------------------------------------------------------


def test_shares_follow_latency_in_flight_weight_and_faults() -> None:
    balancer = Balancer(alpha=0.5, rng=random.Random(7))
    for _ in range(5):
        balancer.observe("a", fault=False, latency_s=0.010)
        balancer.observe("b", fault=False, latency_s=0.040)
    order, shares = balancer.order([("a", 1.0), ("b", 1.0)])
    assert shares["a"] == pytest.approx(0.8, abs=0.01)  # 4x faster: 4x the share
    firsts = [balancer.order([("a", 1.0), ("b", 1.0)])[0][0] for _ in range(400)]
    assert 0.7 < firsts.count("a") / 400 < 0.9  # drawn by share; b is still tried
    balancer.of("a").in_flight = 5  # a is busy: (1 + 5) x 10 ms against 40 ms
    _, shares = balancer.order([("a", 1.0), ("b", 1.0)])
    assert shares["b"] > shares["a"]
    balancer.of("a").in_flight = 0
    _, shares = balancer.order([("a", 1.0), ("b", 4.0)])  # weight 4 evens out 4x the latency
    assert shares["a"] == pytest.approx(0.5, abs=0.01)
    for _ in range(5):
        balancer.observe("a", fault=True, latency_s=None)
    order, shares = balancer.order([("a", 1.0), ("b", 1.0)])
    assert shares["b"] > 0.5 and balancer.of("a").ewma_ms == pytest.approx(10, abs=0.01)
    _, shares = balancer.order([("a", 1.0), ("new", 1.0)])  # unmeasured: taken as average
    assert shares["new"] > shares["a"]


# --- config -----------------------------------------------------------------------------------

DEPLOYED = """\
[providers.east]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"

[providers.west]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"

[models.gpt]
deployments = [{ provider = "east", upstream = "gpt-east" }, { provider = "west", weight = 2 }]
"""


def test_deployments_load_and_their_providers_are_checked_with_lines() -> None:
    config = parse_text(DEPLOYED, source="gateway.toml")
    model = config.models["gpt"]
    assert model.provider == "east"  # the first deployment's, when the model names none
    kernel = Kernel(config, builtins=BUILTINS)
    kernel.load_plugins()
    health = kernel.plugins.get("health")
    health.kernel = kernel
    found = health.deployments(kernel.models.get("gpt"))
    assert [(d.id, d.provider, d.upstream, d.weight) for d in found] == [
        ("gpt@east", "east", "gpt-east", 1.0), ("gpt@west", "west", "gpt", 2.0)]
    with pytest.raises(ConfigError) as caught:
        parse_text(DEPLOYED.replace('provider = "west"', 'provider = "north"'),
                   source="gateway.toml")
    assert "gateway.toml:10: models.gpt.deployments[1].provider: no provider 'north'" \
        in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_text(DEPLOYED.replace('provider = "west"', 'provider = "east"'),
                   source="gateway.toml")
    assert "provider 'east' is listed twice" in str(caught.value)


# --- through the HTTP API: two fake upstreams, one model ----------------------------------------


@pytest.fixture
def upstreams():
    east, west = Script(), Script()
    with serve(openai_app(east, api_key=KEY)) as a, serve(openai_app(west, api_key=KEY)) as b:
        yield (east, a + "/v1"), (west, b + "/v1")


def gateway_config(upstreams, east_weight: float = 1, **health) -> dict:
    (_, east), (_, west) = upstreams
    return {
        "providers": {"east": {"kind": "openai", "base_url": east, "api_key": KEY},
                      "west": {"kind": "openai", "base_url": west, "api_key": KEY}},
        "models": {"gpt": {"deployments": [{"provider": "east", "weight": east_weight},
                                           {"provider": "west"}]}},
        "health": {"failure_threshold": 3, "window_s": 60, "open_s": 1, "max_open_s": 5,
                   "state_refresh_s": 0, **health},
    }


def ask(gw, text: str = "hello") -> tuple[dict, object]:
    raw = gw.client(timeout=10).chat.completions.with_raw_response.create(
        model="gpt", messages=[{"role": "user", "content": text}])
    rows = {r["request_id"]: r for r in gw.rows()}
    return json.loads(rows[raw.headers["x-request-id"]]["decision"]), raw


def states(decision: dict) -> dict[str, str]:
    return {e["deployment"]: e["state"] for e in decision["health"]["deployments"]}


def open_east(gw, east: Script) -> list[dict]:
    """Requests until east's circuit opens (east answers 500 to everything); their decisions.
    The gateway must weigh east far above west (``east_weight``), so the balancer keeps
    sending east its first try while its faults add up, whatever the machine's timings."""
    east.answer = lambda model, prompt: Status(500)
    decisions = []
    for _ in range(12):
        decision, raw = ask(gw)
        decisions.append(decision)
        assert raw.parse().choices[0].message.content  # west answered every one
        if gw.kernel.plugins.get("health").view("gpt@east").state == OPEN:
            return decisions
    raise AssertionError("east's circuit never opened")


def wait_settled(gw) -> None:
    """Wait until the gateway's deferred work (holds of answered attempts) is done."""
    for _ in range(200):
        if not gw.kernel._deferred:
            return
        time.sleep(0.01)


def test_http_a_failing_deployment_opens_then_a_probe_closes_it(upstreams, tmp_path) -> None:
    (east, _), (west, _) = upstreams
    with running_gateway(gateway_config(upstreams, east_weight=1000), tmp_path) as gw:
        decisions = open_east(gw, east)
        assert len(east.requests) == 3  # the threshold: three 500s, then no more calls
        attempts = [a for d in decisions for a in d.get("escalations", [])]
        assert attempts  # east failed and the request fell back to west
        called = len(west.requests)
        for _ in range(4):
            decision, raw = ask(gw)
            assert states(decision)["gpt@east"] == OPEN
            assert decision["health"]["order"] == ["gpt@west"]
            entry = next(e for e in decision["health"]["deployments"]
                         if e["deployment"] == "gpt@east")
            assert "3 upstream faults in 60 s" in entry["why"]
        assert len(east.requests) == 3 and len(west.requests) == called + 4
        east.answer = None  # east recovers
        time.sleep(gw.kernel.plugins.get("health").view("gpt@east").open_s + 0.05)
        decision, raw = ask(gw)
        assert states(decision)["gpt@east"] == HALF_OPEN
        assert decision["health"]["order"][0] == "gpt@east"  # the probe goes first
        assert len(east.requests) == 4 and raw.parse().choices[0].message.content
        wait_settled(gw)
        decision, _ = ask(gw)
        assert states(decision)["gpt@east"] == CLOSED


def test_http_a_slow_deployment_gets_less_traffic(upstreams, tmp_path) -> None:
    (east, _), (west, _) = upstreams
    east.answer = lambda model, prompt: Delay(0.15)
    with running_gateway(gateway_config(upstreams), tmp_path) as gw:
        gw.kernel.plugins.get("health").random.seed(3)
        shares = []
        for _ in range(24):
            decision, _ = ask(gw)
            wait_settled(gw)
            shares.append({e["deployment"]: e.get("share") for e in
                           decision["health"]["deployments"]})
        assert len(east.requests) + len(west.requests) == 24
        assert len(east.requests) < len(west.requests) / 2
        assert shares[-1]["gpt@east"] < 0.2 < 0.8 < shares[-1]["gpt@west"]


def test_http_a_circuit_opened_by_one_replica_is_seen_by_another(upstreams, tmp_path,
                                                                  redis_url, prefix) -> None:
    (east, _), (west, _) = upstreams
    config = {**gateway_config(upstreams, east_weight=1000, open_s=30, max_open_s=60),
              "state": {"backend": "redis", "url": redis_url, "key_prefix": prefix}}
    with running_gateway(config, tmp_path / "one") as one, \
            running_gateway(config, tmp_path / "two") as two:
        open_east(one, east)
        called = len(east.requests)
        for _ in range(5):
            decision, raw = ask(two)
            assert raw.parse().choices[0].message.content
            assert states(decision)["gpt@east"] == OPEN
            assert decision["health"]["order"] == ["gpt@west"]
        assert len(east.requests) == called  # replica two never called the failing upstream
        assert two.kernel.plugins.get("health").view("gpt@east").reason.startswith("3 upstream")


def test_http_tier_timeouts_and_every_model_breakered_with_apply_to_all(upstreams,
                                                                        tmp_path) -> None:
    (east, _), (west, _) = upstreams
    config = gateway_config(upstreams, apply_to="all", tier_timeouts_s={2: 0.2})
    config["models"] = {"big": {"provider": "east", "tier": 2}, "small": {"provider": "west"}}
    config["routes"] = {"main": {"models": ["big", "small"]}}
    east.answer = lambda model, prompt: Delay(2.0)  # never within tier 2's 0.2 s
    with running_gateway(config, tmp_path) as gw:
        for _ in range(3):
            raw = gw.client(timeout=10).chat.completions.with_raw_response.create(
                model="main", messages=[{"role": "user", "content": "hi"}])
            assert raw.headers["x-turnout-model"] == "small"
        rows = gw.rows()
        errors = [a["error"] for r in rows for a in gw.attempts(r["request_id"])
                  if a["status"] == "error"]
        decision = json.loads(rows[-1]["decision"])
    # big timed out at its tier's 0.2 s (without it, it would have answered after 2 s): twice
    # in the first request (a retry), once in the second, which opened its circuit; the
    # second's retry was refused without a call, and the third request skipped big
    assert errors == ["upstream_timeout"] * 3 + ["upstream_unavailable"]
    assert len(east.requests) == 3
    assert decision["dropped"] == [{"model": "big", "reason": "every deployment's circuit is open"}]
    assert decision["health"]["deployments"][0]["state"] == OPEN


def test_race_hedges_after_a_percentile_of_the_first_models_latency() -> None:
    from turnout.kernel.types import ModelProfile, Step
    from turnout.plugins.race import RaceSettings, RaceStrategy

    race = RaceStrategy()
    step = Step(ModelProfile("gpt", "east", "gpt"))
    settings = RaceSettings(hedge_after="p90")
    assert race.hedge_delay(settings, step) is None  # too few latencies: a plain race
    for ms in range(1, 101):
        race.observe(step, ms / 1000)
    assert race.hedge_delay(settings, step) == pytest.approx(0.0901)
    assert race.hedge_delay(RaceSettings(hedge_after=0.25), step) == 0.25
    with pytest.raises(ValueError):
        RaceSettings(hedge_after="fast")


def test_http_hedged_race_asks_the_second_model_only_when_the_first_is_slow(upstreams,
                                                                           tmp_path) -> None:
    (east, _), (west, _) = upstreams
    config = gateway_config(upstreams)
    config["models"] = {"first": {"provider": "east"}, "second": {"provider": "west"}}
    config["routes"] = {"hedged": {"models": ["first", "second"], "strategy": "race",
                                   "race": {"hedge_after": 0.3}}}

    def hedged(text: str):
        raw = gw.client(timeout=10).chat.completions.with_raw_response.create(
            model="hedged", messages=[{"role": "user", "content": text}])
        row = next(r for r in gw.rows() if r["request_id"] == raw.headers["x-request-id"])
        return raw, json.loads(row["decision"])["race"]

    east.answer = lambda model, prompt: Delay(2.0) if "slow" in prompt else None
    with running_gateway(config, tmp_path) as gw:
        raw, race = hedged("quick one")
        assert raw.headers["x-turnout-model"] == "first" and race["started"] == ["first"]
        assert race["hedge_after_s"] == 0.3 and not west.requests  # one call only
        raw, race = hedged("slow one")
        assert raw.headers["x-turnout-model"] == "second"
        assert race["started"] == ["first", "second"] and len(west.requests) == 1
