"""Alert rules on a fake clock: sustained latency fires once and resolves once, a short spike
never fires, error and fallback rates, a provider's circuit, shift_traffic while an alert lasts,
acknowledge and mute, one delivery per transition across two replicas sharing Redis, and budget
thresholds once per window across two replicas."""

from __future__ import annotations

import time
import types

import anyio
import pytest
from pydantic import ValidationError

from turnout.kernel import errors, hookimpl
from turnout.kernel.config import parse
from turnout.kernel.errors import ConfigError
from turnout.kernel.kernel import BUILTINS, Kernel
from turnout.kernel.types import (
    Alert,
    Attempt,
    Caller,
    Completion,
    Context,
    Usage,
    alert_key,
)
from turnout.plugins import budgets as budgets_module
from turnout.plugins.alert_rules import PROBE_S, AlertRule, AlertRules, Series

from .redis_support import prefix_fixture, redis_url_fixture  # noqa: F401 - redis_url, prefix
from .store_contract import FakeClock
from .support import ROUTING, Recorder, ask

pytestmark = pytest.mark.anyio

T0 = 1_750_032_000.0
"""2025-06-16T00:00:00Z: a day's start, so minutes and hours line up with the budgets' windows."""

SLOW_MS = 2000.0
FAST_MS = 100.0
LATENCY = {"kind": "latency_p95", "match": "small", "above_ms": 1000, "for_minutes": 5,
           "min_requests": 10, "channel": "#llm-ops"}


class Upstream:
    """Answers every model ``ok`` (10 prompt and 5 answer tokens), after the model's
    ``delay`` in seconds; a model in ``fail`` raises a fresh error from its factory."""

    def __init__(self) -> None:
        self.delay: dict[str, float] = {}
        self.fail: dict[str, type[errors.ProviderError]] = {}
        self.calls: list[str] = []

    @hookimpl
    async def call(self, ctx, step):
        name = step.model.name
        self.calls.append(name)
        if name in self.fail:
            raise self.fail[name](f"{name} is down", provider=step.model.provider, model=name)
        if self.delay.get(name):
            await anyio.sleep(self.delay[name])
        return Completion(content="ok", usage=Usage(10, 5))


def gateway(rules, clock, *, state=None, tick_s=None, budgets=None, more_plugins=None):
    """A kernel over ``small`` (provider p) and ``big`` (provider q) on the route ``chain``,
    with the alert rules on ``clock``; the engine, the upstream and the alerts' recorder."""
    tree = {
        "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"},
                      "q": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"small": {"provider": "p", "output_price": 2},
                   "big": {"provider": "q", "output_price": 200}},
        "routes": {"chain": {"models": ["small", "big"], "fallback": {"retries_per_model": 0}},
                   "premium": {"models": ["big", "small"]}},
        "routing": {"default": "chain"},
        "alerts": list(rules),
    }
    if state is not None:
        tree["state"] = state
    if budgets is not None:
        tree["budgets"] = budgets
    builtins = dict(ROUTING)
    if budgets is not None:
        builtins["budgets"] = "turnout.plugins.budgets:Budgets"
    kernel = Kernel(parse(tree, source="test"), builtins=builtins)
    engine = AlertRules(clock=clock, tick_s=tick_s)
    kernel.plugins.register(engine, name="alerts")
    upstream, recorder = Upstream(), Recorder()
    kernel.plugins.register(upstream, name="upstream")
    kernel.plugins.register(recorder, name="recorder")
    return kernel, engine, upstream, recorder


def finished(model: str = "small", latency_ms: float = FAST_MS, *, route: str = "chain",
             status: str = "ok", error: Exception | None = None,
             attempts: list[tuple[str, str, str, str | None]] | None = None) -> Context:
    """A top-level request as the kernel leaves it when it has ended."""
    ctx = Context(request=ask(model=route), route=route)
    ctx.started, ctx.ended = 1000.0, 1000.0 + latency_ms / 1000
    provider = "p" if model == "small" else "q"
    for name, prov, outcome, why in attempts or [(model, provider, status, None)]:
        ctx.attempts.append(Attempt(model=name, provider=prov, started=1000.0, status=outcome,
                                    error=why))
    ctx.status, ctx.error = status, error
    if status == "ok":
        ctx.completion = Completion(content="ok", model=ctx.attempts[-1].model)
    return ctx


async def minutes(engine: AlertRules, clock: FakeClock, n: int, per_minute: int = 20,
                  **kw) -> None:
    """``n`` minutes of ``per_minute`` requests like ``finished(**kw)``, spread evenly, and a
    tick at the end of each minute."""
    for _ in range(n):
        for _ in range(per_minute):
            clock.advance(60 / per_minute)
            engine.record(finished(**kw))
        await engine.tick()


def named(recorder: Recorder, name: str) -> list[Alert]:
    return [a for a in recorder.alerts if a.name == name]


# --- latency ------------------------------------------------------------------------------------


async def test_sustained_latency_fires_once_and_resolves_once_end_to_end() -> None:
    """Real requests through a real kernel; the upstream really is slow (100 ms against a
    50 ms bound); only the clock the rules read is fake."""
    clock = FakeClock(T0)
    rule = {**LATENCY, "above_ms": 50, "min_requests": 5, "action": "shift_traffic"}
    kernel, engine, upstream, recorder = gateway([rule], clock)

    async def minute(n: int = 5) -> None:
        clock.advance(60)
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(kernel.ask, ask(model="small"))
        await engine.tick()

    async with kernel:
        upstream.delay["small"] = 0.1
        for _ in range(5):  # above at five ticks: 4 minutes so far, not yet 5
            await minute()
        assert recorder.alerts == []
        await minute()  # the sixth tick: above for 5 minutes
        assert len(recorder.alerts) == 1
        for _ in range(3):  # still slow: no second alert
            await minute()
        upstream.delay["small"] = 0.0
        await minute()
        for _ in range(3):
            await minute()
    fired, resolved = recorder.alerts
    assert (fired.name, fired.severity, fired.resolved, fired.channel, fired.action) == \
        ("latency_p95", "warning", False, "#llm-ops", "shift_traffic")
    assert fired.labels == {"model": "small", "above_ms": "50"}
    assert fired.key == alert_key("latency_p95", {"above_ms": "50", "model": "small"}) \
        == 'latency_p95{above_ms="50",model="small"}'
    assert fired.started_at == T0 + 6 * 60
    assert fired.details["p95_ms"] >= 100 and fired.details["requests"] >= 5
    assert "p95 latency of model 'small'" in fired.summary and "over 50 ms for 5 min" in \
        fired.summary and "action: shift_traffic" in fired.summary
    assert resolved.resolved and resolved.key == fired.key
    assert resolved.started_at == fired.started_at and resolved.details["p95_ms"] < 50
    assert "back under 50 ms" in resolved.summary and "shift_traffic undone" in resolved.summary


async def test_a_short_spike_or_too_few_requests_never_fire() -> None:
    clock = FakeClock(T0)
    kernel, engine, _, recorder = gateway([LATENCY], clock)
    async with kernel:
        await minutes(engine, clock, 3, latency_ms=FAST_MS)
        await minutes(engine, clock, 3, latency_ms=SLOW_MS)  # 3 minutes above, not 5
        await minutes(engine, clock, 1, latency_ms=FAST_MS)  # back under: the count restarts
        await minutes(engine, clock, 4, latency_ms=SLOW_MS)
        await minutes(engine, clock, 1, latency_ms=FAST_MS)
        await minutes(engine, clock, 10, per_minute=5, latency_ms=SLOW_MS)  # under min_requests
        assert recorder.alerts == []
        await minutes(engine, clock, 6, latency_ms=SLOW_MS)
        assert [a.resolved for a in recorder.alerts] == [False]


async def test_an_alert_with_nothing_left_to_judge_by_resolves_after_for_minutes() -> None:
    clock = FakeClock(T0)
    kernel, engine, _, recorder = gateway([LATENCY], clock)
    async with kernel:
        await minutes(engine, clock, 6, latency_ms=SLOW_MS)
        assert len(recorder.alerts) == 1
        for _ in range(5):  # no traffic at all: nothing to judge by
            clock.advance(60)
            await engine.tick()
        assert len(recorder.alerts) == 1
        clock.advance(60)
        await engine.tick()
    assert [a.resolved for a in recorder.alerts] == [False, True]
    assert "too few requests" in recorder.alerts[1].summary
    assert recorder.alerts[1].details["resolved_because"] == "quiet"


# --- error and fallback rates --------------------------------------------------------------------


async def test_error_rate_counts_server_errors_not_client_refusals() -> None:
    clock = FakeClock(T0)
    rule = {"kind": "error_rate", "match": "chain", "above": 0.2, "for_minutes": 2}
    kernel, engine, _, recorder = gateway([rule], clock)

    async def minute(failing: int, error: Exception) -> None:
        for i in range(20):
            clock.advance(3)
            if i < failing:
                engine.record(finished(status="error", error=error,
                                       attempts=[("small", "p", "error", f"{error.kind}: x")]))
            else:
                engine.record(finished())
        await engine.tick()

    async with kernel:
        for _ in range(4):  # half refused for the client's own reasons: not errors
            await minute(10, errors.BudgetExceeded("over budget"))
        assert recorder.alerts == []
        for _ in range(3):  # 30% upstream timeouts
            await minute(6, errors.ProviderTimeout("slow"))
        assert len(recorder.alerts) == 1
        await minute(2, errors.ProviderTimeout("slow"))  # 10%
    fired, resolved = recorder.alerts
    assert fired.labels == {"route": "chain", "above": "0.2"}
    assert fired.details["rate"] == pytest.approx(0.3, abs=0.06)
    assert fired.details["errors"] >= 6
    assert "errors of route 'chain' at" in fired.summary
    assert resolved.resolved and "back under 20.0%" in resolved.summary


async def test_fallback_rate_per_model_counts_against_the_model_tried_first() -> None:
    clock = FakeClock(T0)
    rule = {"kind": "fallback_rate", "above": 0.25, "for_minutes": 1, "min_requests": 5}
    kernel, engine, _, recorder = gateway([rule], clock)
    fell_back = [("small", "p", "error", "upstream_unavailable: down"), ("big", "q", "ok", None)]
    async with kernel:
        for _ in range(2):
            for i in range(20):
                clock.advance(3)
                engine.record(finished("big", attempts=fell_back if i % 2 else None))
            await engine.tick()
        fired = list(recorder.alerts)
        await minutes(engine, clock, 1, model="small")
    assert [(a.name, a.labels) for a in fired] == [
        ("fallback_rate", {"model": "small", "above": "0.25"})]
    assert fired[0].details["fallbacks"] >= 10 and fired[0].details["rate"] >= 0.5
    assert recorder.alerts[-1].resolved


# --- a provider's circuit --------------------------------------------------------------------------


async def test_provider_down_opens_after_failures_in_a_row_and_recovers() -> None:
    clock = FakeClock(T0)
    rule = {"kind": "provider_down", "after_failures": 3, "action": "shift_traffic"}
    kernel, engine, upstream, recorder = gateway([rule], clock)
    async with kernel:
        upstream.fail["small"] = errors.ProviderUnavailable
        for _ in range(2):
            assert (await kernel.ask(ask(model="chain"))).model == "big"  # fell back
        assert not engine.is_open("p")
        upstream.fail["small"] = errors.ProviderBadRequest  # it answered: not down, no reset
        await kernel.ask(ask(model="chain"))
        upstream.fail["small"] = errors.ProviderUnavailable
        await kernel.ask(ask(model="chain"))
        assert engine.is_open("p") and not engine.is_open("q")
        await engine.tick()
        assert [(a.name, a.severity, a.labels) for a in recorder.alerts] == \
            [("provider_down", "critical", {"provider": "p"})]
        assert "3 attempts in a row failed (upstream_unavailable)" in recorder.alerts[0].summary
        upstream.calls.clear()
        answer = await kernel.ask(ask(model="chain"))  # shifted: small is not even tried
        assert upstream.calls == ["big"] and answer.model == "big"
        assert {"model": "small", "reason": "shift_traffic while alert "
                'provider_down{provider="p"} lasts'} in answer.decision["dropped"]
        with pytest.raises(errors.ProviderUnavailable):  # asked for by name: still tried
            await kernel.ask(ask(model="small"))
        del upstream.fail["small"]
        clock.advance(PROBE_S)
        upstream.calls.clear()
        probe = await kernel.ask(ask(model="chain"))  # one request through: it answers
        assert upstream.calls == ["small"] and probe.model == "small"
        assert engine.circuits["p"].failures == 0 and engine.is_open("p"), \
            "the circuit closed here; the alert lasts until the next tick"
        await engine.tick()
        assert not engine.is_open("p")
        assert (await kernel.ask(ask(model="chain"))).model == "small"
    assert [a.resolved for a in recorder.alerts] == [False, True]
    assert "provider 'p' answers again" in recorder.alerts[1].summary


# --- shift_traffic --------------------------------------------------------------------------------


async def test_shift_traffic_drops_the_model_while_the_alert_lasts_and_restores_it() -> None:
    clock = FakeClock(T0)
    rule = {**LATENCY, "for_minutes": 1, "action": "shift_traffic"}
    kernel, engine, _, recorder = gateway([rule], clock)
    async with kernel:
        assert (await kernel.ask(ask(model="chain"))).model == "small"
        await minutes(engine, clock, 2, latency_ms=SLOW_MS)
        assert len(recorder.alerts) == 1
        shifted = await kernel.ask(ask(model="chain"))
        assert shifted.model == "big"
        assert shifted.decision["dropped"][0]["model"] == "small"
        assert "shift_traffic" in shifted.decision["dropped"][0]["reason"]
        assert (await kernel.ask(ask(model="small"))).model == "small", \
            "a request that leaves no other candidate keeps the model"
        await minutes(engine, clock, 1, latency_ms=FAST_MS)
        assert recorder.alerts[-1].resolved
        restored = await kernel.ask(ask(model="chain"))
    assert restored.model == "small" and "dropped" not in restored.decision


async def test_enable_cache_marks_the_routes_requests_while_it_lasts() -> None:
    clock = FakeClock(T0)
    rule = {"kind": "error_rate", "match": "chain", "above": 0.2, "for_minutes": 0,
            "action": "enable_cache"}
    kernel, engine, _, recorder = gateway([rule], clock)
    seen: list = []

    class Peek:
        @hookimpl(trylast=True)
        def filter_candidates(self, ctx):
            seen.append(ctx.state.get("alerts.cache"))

    kernel.plugins.register(Peek(), name="peek")
    async with kernel:
        await kernel.ask(ask(model="chain"))
        await minutes(engine, clock, 1, status="error", error=errors.ProviderTimeout("x"))
        await kernel.ask(ask(model="chain"))
        await minutes(engine, clock, 1)
        await kernel.ask(ask(model="chain"))
    assert seen == [None, "always", None]
    assert recorder.alerts[0].action == "enable_cache"


# --- acknowledge and mute -------------------------------------------------------------------------


async def test_repeats_stop_once_acknowledged_and_the_resolve_still_comes() -> None:
    clock = FakeClock(T0)
    kernel, engine, _, recorder = gateway([{**LATENCY, "for_minutes": 1,
                                            "repeat_minutes": 2}], clock)
    async with kernel:
        await minutes(engine, clock, 2, latency_ms=SLOW_MS)
        key = recorder.alerts[0].key
        await minutes(engine, clock, 2, latency_ms=SLOW_MS)
        assert [a.details.get("repeat", False) for a in recorder.alerts] == [False, True]
        assert await engine.acknowledge(key, "ann")
        await minutes(engine, clock, 6, latency_ms=SLOW_MS)
        assert len(recorder.alerts) == 2, "acknowledged: not posted again"
        state = await engine.state(key)
        assert state["acked_by"] == "ann" and state["open"]
        await minutes(engine, clock, 1, latency_ms=FAST_MS)
        assert recorder.alerts[-1].resolved
        assert not await engine.acknowledge(key, "bob"), "nothing open to acknowledge"
        state = await engine.state(key)
    assert state["open"] is False and state["resolved_at"] == clock.now


async def test_a_muted_alert_is_delivered_only_once_the_mute_ends() -> None:
    clock = FakeClock(T0)
    kernel, engine, _, recorder = gateway([{**LATENCY, "for_minutes": 1}], clock)
    key = 'latency_p95{above_ms="1000",model="small"}'
    async with kernel:
        await engine.mute(key, until=T0 + 600)
        await minutes(engine, clock, 2, latency_ms=SLOW_MS)
        state = await engine.state(key)
        assert state["open"] and not state["delivered"] and recorder.alerts == []
        assert engine.shift_models == {}  # no action configured; but the alert is open:
        assert key in engine.index
        await minutes(engine, clock, 1, latency_ms=FAST_MS)  # resolves unseen
        assert recorder.alerts == [] and key not in engine.index
        await minutes(engine, clock, 5, latency_ms=SLOW_MS)  # opens again, muted till T0 + 600
        assert recorder.alerts == []
        await minutes(engine, clock, 2, latency_ms=SLOW_MS)  # the mute has ended
        assert [a.resolved for a in recorder.alerts] == [False]
        await engine.remember(key, "slack", {"ts": "1750.01"})
        await minutes(engine, clock, 1, latency_ms=FAST_MS)
        assert (await engine.state(key))["refs"] == {"slack": {"ts": "1750.01"}}
    assert [a.resolved for a in recorder.alerts] == [False, True]


# --- two replicas ---------------------------------------------------------------------------------


def _redis(redis_url: str, prefix: str) -> dict:
    return {"backend": "redis", "url": redis_url, "key_prefix": prefix}


async def test_two_replicas_deliver_one_alert_per_transition(redis_url, prefix) -> None:
    clock = FakeClock(T0)
    rule = {**LATENCY, "action": "shift_traffic"}
    a, engine_a, _, seen_a = gateway([rule], clock, state=_redis(redis_url, prefix))
    b, engine_b, _, seen_b = gateway([rule], clock, state=_redis(redis_url, prefix))

    async def minute(latency_a: float, latency_b: float) -> None:
        for _ in range(20):
            clock.advance(3)
            engine_a.record(finished(latency_ms=latency_a))
            engine_b.record(finished(latency_ms=latency_b))
        async with anyio.create_task_group() as tg:  # both judge at once
            tg.start_soon(engine_a.tick)
            tg.start_soon(engine_b.tick)

    async with a, b:
        for _ in range(8):
            await minute(SLOW_MS, SLOW_MS)
        assert len(seen_a.alerts + seen_b.alerts) == 1
        assert engine_a.shift_models.keys() == engine_b.shift_models.keys() == {"small"}
        for _ in range(3):
            await minute(FAST_MS, FAST_MS)
        both = sorted(seen_a.alerts + seen_b.alerts, key=lambda x: x.resolved)
        assert [x.resolved for x in both] == [False, True]
        assert engine_a.shift_models == engine_b.shift_models == {}

        # One replica sees trouble, the other none: the one that opened it decides.
        seen_a.alerts.clear()
        seen_b.alerts.clear()
        for _ in range(7):
            await minute(SLOW_MS, FAST_MS)
        assert [(x.resolved, x.key) for x in seen_a.alerts + seen_b.alerts] == \
            [(False, both[0].key)]
        assert seen_a.alerts and not seen_b.alerts, "opened by the replica that saw it"
        assert engine_b.shift_models.keys() == {"small"}, "every replica acts on it"
        await minute(FAST_MS, FAST_MS)
        await minute(FAST_MS, FAST_MS)
    assert [x.resolved for x in seen_a.alerts + seen_b.alerts] == [False, True]


async def test_an_owner_gone_is_replaced_and_its_alert_still_resolves(redis_url, prefix) -> None:
    clock = FakeClock(T0)
    state = _redis(redis_url, prefix)
    a, engine_a, _, seen_a = gateway([{**LATENCY, "for_minutes": 1}], clock, state=state)
    b, engine_b, _, seen_b = gateway([{**LATENCY, "for_minutes": 1}], clock, state=state)
    engine_b.lease_s = 0.2
    async with b:
        async with a:
            engine_a.lease_s = 0.2
            await minutes(engine_a, clock, 2, latency_ms=SLOW_MS)
            assert len(seen_a.alerts) == 1
            await engine_b.tick()  # adopts it; a holds the owner lock
            assert engine_b.index and not engine_b.tracked[seen_a.alerts[0].key].owner
        # a stopped (its lock released at shutdown): b takes over and resolves on its data
        await minutes(engine_b, clock, 1, latency_ms=FAST_MS)
        await minutes(engine_b, clock, 1, latency_ms=FAST_MS)
    assert [x.resolved for x in seen_a.alerts + seen_b.alerts] == [False, True]


async def test_budget_thresholds_fire_once_per_window_across_two_replicas(
        redis_url, prefix, monkeypatch) -> None:
    clock = FakeClock(T0 + 60)
    monkeypatch.setattr(budgets_module, "time",
                        types.SimpleNamespace(time=clock, monotonic=time.monotonic))
    cost = 5 * 2 / 1e6  # five answer tokens of small
    budget = [{"scope": "team", "match": "a", "limit_usd": 4 * cost, "window": "hour"}]
    route = [{"kind": "budget", "match": "a", "channel": "#spend", "action": "downgrade"}]
    state = _redis(redis_url, prefix)
    a, _, up_a, seen_a = gateway(route, clock, state=state, budgets=budget)
    b, _, up_b, seen_b = gateway(route, clock, state=state, budgets=budget)
    team = Caller(team="a")

    async def spend(kernel: Kernel, n: int) -> None:
        for _ in range(n):
            try:
                await kernel.ask(ask(model="small", max_tokens=5), caller=team)
            except errors.BudgetExceeded:
                pass
            await kernel.idle()  # settled: the thresholds are judged in order

    async with a, b:
        for kernel in (a, b, a, b, a, b):
            await spend(kernel, 1)
        first = [(x.labels["threshold"], x.channel, x.action) for x in seen_a.alerts
                 + seen_b.alerts]
        clock.advance(3600)  # the next hour: a new window
        for kernel in (b, a, b, a, b):
            await spend(kernel, 1)
        second = [x.labels["threshold"] for x in seen_a.alerts + seen_b.alerts][len(first):]
    assert sorted(first) == [("0.5", "#spend", None), ("0.8", "#spend", "downgrade"),
                             ("1", "#spend", "downgrade")]
    assert sorted(second) == ["0.5", "0.8", "1"]
    fired = seen_a.alerts + seen_b.alerts
    assert all(x.name == "budget_threshold" for x in fired)
    assert len({x.key for x in fired}) == 3, "one key per threshold: the window is not a label"
    downgraded = next(x for x in fired if x.action)
    assert "action: downgrade" in downgraded.summary


async def test_downgrade_tries_the_cheapest_model_first_while_the_budget_is_spent(
        monkeypatch) -> None:
    clock = FakeClock(T0 + 60)
    monkeypatch.setattr(budgets_module, "time",
                        types.SimpleNamespace(time=clock, monotonic=time.monotonic))
    dear = 5 * 200 / 1e6
    budget = [{"scope": "team", "match": "a", "limit_usd": 10 * dear, "window": "hour"}]
    rule = [{"kind": "budget", "match": "a", "above": 0.1, "action": "downgrade"}]
    kernel, engine, _, _ = gateway(rule, clock, budgets=budget)
    team, other = Caller(team="a"), Caller(team="b")
    async with kernel:
        assert (await kernel.ask(ask(model="premium", max_tokens=5), caller=team)).model == "big"
        await kernel.idle()
        await engine.tick()  # 10% spent
        cheap = await kernel.ask(ask(model="premium", max_tokens=5), caller=team)
        untouched = await kernel.ask(ask(model="premium", max_tokens=5), caller=other)
        clock.advance(3600)
        await engine.tick()  # a new window: nothing spent
        again = await kernel.ask(ask(model="premium", max_tokens=5), caller=team)
    assert cheap.model == "small" and cheap.decision["alerts"][0]["action"] == "downgrade"
    assert untouched.model == "big" and again.model == "big"


# --- the digest -----------------------------------------------------------------------------------


async def test_the_digest_goes_out_once_a_day_at_its_time() -> None:
    clock = FakeClock(T0 + 8 * 3600)  # 08:00 UTC
    kernel, engine, _, recorder = gateway([{"kind": "digest", "at": "09:30",
                                            "channel": "#daily"}], clock)
    async with kernel:
        for i in range(10):
            engine.record(finished(latency_ms=FAST_MS * (i + 1), status="ok" if i else "error",
                                   error=None if i else errors.ProviderTimeout("x")))
        await engine.tick()
        assert recorder.alerts == []
        clock.advance(90 * 60)  # 09:30
        await engine.tick()
        clock.advance(60)
        await engine.tick()
        clock.advance(86400)  # the next day, 09:31
        await engine.tick()
    first, second = recorder.alerts
    assert (first.name, first.severity, first.channel, first.labels) == \
        ("digest", "info", "#daily", {"day": "2025-06-16"})
    assert first.details["requests"] == 10 and first.details["errors"] == 1
    assert first.details["p95_ms"] == pytest.approx(1000, rel=0.011)
    assert "10 requests, 1 server errors (10.0%)" in first.summary
    assert second.labels == {"day": "2025-06-17"} and second.key != first.key


# --- settings and wiring --------------------------------------------------------------------------


def test_rules_say_what_is_missing_or_does_not_apply() -> None:
    with pytest.raises(ValidationError, match="latency_p95 needs 'above_ms'"):
        AlertRule(kind="latency_p95")
    with pytest.raises(ValidationError, match="error_rate needs 'above'"):
        AlertRule(kind="error_rate")
    with pytest.raises(ValidationError, match="'above_ms' does not apply to kind 'error_rate'"):
        AlertRule(kind="error_rate", above=0.1, above_ms=10)
    with pytest.raises(ValidationError, match="action 'downgrade' does not apply"):
        AlertRule(kind="latency_p95", above_ms=10, action="downgrade")
    with pytest.raises(ValidationError, match="HH:MM|pattern"):
        AlertRule(kind="digest", at="9am")
    assert AlertRule(kind="provider_down").for_s == 0
    assert AlertRule(kind="latency_p95", above_ms=1).for_s == 300


async def test_actions_must_fit_what_the_rule_watches() -> None:
    clock = FakeClock(T0)
    kernel, *_ = gateway([{**LATENCY, "match": "chain", "action": "shift_traffic"}], clock)
    with pytest.raises(ConfigError, match="shift_traffic moves requests away from a model"):
        async with kernel:
            pass
    kernel, *_ = gateway([{**LATENCY, "action": "enable_cache"}], clock)
    with pytest.raises(ConfigError, match="enable_cache turns on caching for a route"):
        async with kernel:
            pass


async def test_the_timer_ticks_in_the_background_and_stops_at_shutdown() -> None:
    clock = FakeClock(T0)
    kernel, engine, _, recorder = gateway([{**LATENCY, "for_minutes": 0}], clock, tick_s=0.01)
    async with kernel:
        for _ in range(20):
            engine.record(finished(latency_ms=SLOW_MS))
        with anyio.fail_after(5):
            while not recorder.alerts:
                await anyio.sleep(0.01)
        task = engine._task
    assert task is not None and task.done() and engine._task is None
    assert len(recorder.alerts) == 1


def test_both_sinks_and_the_rules_are_built_in() -> None:
    assert BUILTINS["alerts"] == "turnout.plugins.alert_rules:AlertRules"
    assert BUILTINS["webhook_alerts"] == "turnout.plugins.webhook_alerts:WebhookAlerts"


def test_an_alert_keeps_its_positional_form_and_gets_a_stable_key() -> None:
    alert = Alert("budget_threshold", "warning", "half spent", {"scope": "team", "match": "a"})
    assert alert.key == 'budget_threshold{match="a",scope="team"}'
    assert alert.channel is None and alert.action is None and alert.details == {}
    assert Alert("x", "info", "", {"b": "1", "a": '"q"'}).key == 'x{a="\\"q\\"",b="1"}'
    assert Alert("x", "info", "", key="mine").key == "mine"


def test_a_series_keeps_only_what_the_rules_look_back_on() -> None:
    series = Series(keep_s=60)
    for i in range(10_000):
        series.add(T0 + i, latency_ms=float(i % 100 + 1))
    assert len(series.buckets) <= 60 / 5 + 2
    totals = series.totals(T0 + 9_999, 60)
    assert 60 <= totals.requests <= 65
    assert totals.p95_ms() == pytest.approx(96, rel=0.06)
