"""Budgets and rate limits on the embedded default (the memory store, one process): exact under
concurrency, reserve then settle, release on failure, thresholds, routers seeing what is left,
and the 429s a client gets over HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import openai
import pytest

from turnout.kernel import errors, hookimpl
from turnout.kernel.config import parse
from turnout.kernel.kernel import Kernel
from turnout.kernel.types import Caller, Completion, Usage
from turnout.plugins.budgets import window_bounds

from .gateway import running_gateway
from .support import ROUTING, Recorder, Scripted, ask, user

pytestmark = pytest.mark.anyio

LIMITS = {**ROUTING, "budgets": "turnout.plugins.budgets:Budgets",
          "rate_limits": "turnout.plugins.rate_limits:RateLimits"}

PRICE = 2.0
"""Output price of the cheap model, $ per million tokens; its input is free, so an answer of
``OUT`` tokens costs exactly what a request with ``max_tokens=OUT`` reserves."""
OUT = 5
COST = OUT * PRICE / 1e6


def limited(budgets=(), rate_limits=(), script=None, routing=None, slow_s: float = 0.0):
    """A kernel with the budget and rate-limit plugins over two scripted models: ``cheap``
    (input free, output $2/M) and ``dear`` (100 times that), on the route ``chain``."""
    config = parse({
        "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"cheap": {"provider": "p", "input_price": 0, "output_price": PRICE},
                   "dear": {"provider": "p", "input_price": 0, "output_price": PRICE * 100}},
        "routes": {"chain": {"models": ["cheap", "dear"]},
                   "premium": {"models": ["dear", "cheap"]}},
        "routing": routing or {"default": "chain"},
        "budgets": list(budgets), "rate_limits": list(rate_limits),
    }, source="test")
    kernel = Kernel(config, builtins=LIMITS)
    provider = Slow(script or {}, slow_s)
    kernel.plugins.register(provider, name="scripted")
    recorder = Recorder()
    kernel.plugins.register(recorder, name="recorder")
    return kernel, provider, recorder


class Slow(Scripted):
    """Answers ``OUT`` tokens (free prompt) after ``delay`` seconds; a model with no script
    left answers ``ok``."""

    def __init__(self, script, delay: float) -> None:
        super().__init__(script)
        self.delay = delay

    @hookimpl
    async def call(self, ctx, step):
        if self.delay:
            await anyio.sleep(self.delay)
        if not self.script.get(step.model.name):
            self.script[step.model.name] = ["ok"]
        result = await super().call(ctx, step)
        if isinstance(result, Completion):
            result.usage = Usage(0, OUT)
        return result


def request(**kw):
    return ask(max_tokens=OUT, **kw)


async def test_a_key_budget_admits_exactly_what_it_can_pay_for_under_concurrency() -> None:
    n = 7
    kernel, provider, recorder = limited(
        [{"scope": "key", "match": "ci", "limit_usd": n * COST, "window": "day"}], slow_s=0.01)
    outcomes: list = []

    async def one() -> None:
        try:
            answer = await kernel.ask(request(model="cheap"), caller=Caller(key="ci"))
            outcomes.append(answer.cost_usd)
        except errors.BudgetExceeded as exc:
            outcomes.append(exc)

    async with kernel:
        async with anyio.create_task_group() as tg:
            for _ in range(10 * n):
                tg.start_soon(one)
        day, _ = window_bounds("day", time.time())
        spent = await kernel.store.ledger_total(f"budget:key:ci:{day}")
        other = await kernel.ask(request(model="cheap"), caller=Caller(key="other"))
    admitted = [o for o in outcomes if isinstance(o, float)]
    refused = [o for o in outcomes if isinstance(o, errors.BudgetExceeded)]
    assert len(admitted) == n and len(refused) == 9 * n
    assert spent == pytest.approx(n * COST) and sum(admitted) == pytest.approx(n * COST)
    assert len(provider.calls) == n + 1, "a refused request never reaches the provider"
    assert other.content == "ok", "another key is not limited by ci's budget"
    message = str(refused[0])
    assert "day budget of key 'ci' is $7e-05" in message and "resets at" in message
    assert refused[0].status == 429 and refused[0].to_openai()["error"]["type"] == \
        "budget_exceeded"
    statuses = [status for _, status, _ in recorder.records]
    assert statuses.count("error") == 9 * n and statuses.count("ok") == n + 1  # all recorded


async def test_a_reservation_is_settled_to_the_real_cost_and_released_on_failure() -> None:
    kernel, provider, _ = limited(
        [{"scope": "global", "limit_usd": 1.0, "window": "month"}],
        script={"cheap": [errors.ProviderUnavailable("down"), errors.ProviderUnavailable("down"),
                          errors.ProviderUnavailable("down")], "dear": ["fine"]})
    async with kernel:
        answer = await kernel.ask(ask(model="chain", max_tokens=1000))
        await kernel.idle()  # the answer is settled after it has left
        month, _ = window_bounds("month", time.time())
        spent = await kernel.store.ledger_total(f"budget:global:*:{month}")
    assert answer.content == "fine" and answer.attempts == 3  # cheap twice, then dear
    assert spent == pytest.approx(answer.cost_usd) == pytest.approx(OUT * PRICE * 100 / 1e6)


async def test_thresholds_alert_once_each_and_a_refusal_alerts_the_full_budget() -> None:
    kernel, _, recorder = limited([{"scope": "team", "match": "a", "limit_usd": 4 * COST,
                                    "window": "hour"}])
    async with kernel:
        for _ in range(4):
            await kernel.ask(request(model="cheap"), caller=Caller(team="a"))
        with pytest.raises(errors.BudgetExceeded):
            await kernel.ask(request(model="cheap"), caller=Caller(team="a"))
    fired = [(a.name, a.labels["threshold"], a.severity) for a in recorder.alerts]
    assert fired == [("budget_threshold", "0.5", "warning"), ("budget_threshold", "0.8", "warning"),
                     ("budget_threshold", "1", "critical")]
    assert "of the hour budget of team 'a' is spent" in recorder.alerts[0].summary


async def test_routers_see_the_budget_left_and_downgrade_to_cheaper_models() -> None:
    rules = {"default": "premium",
             "rules": [{"when": {"budget_left": "< 0.5"}, "route": "chain"}]}
    dear = OUT * PRICE * 100 / 1e6
    kernel, provider, _ = limited([{"scope": "user", "limit_usd": 3 * dear}], routing=rules)
    async with kernel:
        first = await kernel.ask(request(), caller=Caller(user="ann"))
        second = await kernel.ask(request(), caller=Caller(user="ann"))
        third = await kernel.ask(request(), caller=Caller(user="ann"))
        fresh = await kernel.ask(request(), caller=Caller(user="bob"))
    assert (first.model, first.route) == ("dear", "premium")
    assert (second.model, second.route) == ("dear", "premium")  # 2/3 left
    assert third.route == "chain" and third.model == "cheap"  # 1/3 left: the cheap route
    assert fresh.model == "dear", "each user has a budget of their own"
    assert provider.calls == ["dear", "dear", "cheap", "dear"]


async def test_a_model_that_no_longer_fits_the_budget_is_dropped_while_another_fits() -> None:
    dear = OUT * PRICE * 100 / 1e6
    kernel, provider, _ = limited([{"scope": "key", "match": "k", "limit_usd": dear + COST}])
    async with kernel:
        await kernel.ask(request(model="premium"), caller=Caller(key="k"))
        answer = await kernel.ask(request(model="premium"), caller=Caller(key="k"))
        with pytest.raises(errors.BudgetExceeded):
            await kernel.ask(request(model="premium"), caller=Caller(key="k"))
    assert provider.calls == ["dear", "cheap"]
    assert answer.decision["dropped"][0]["model"] == "dear"
    assert "budget left" in answer.decision["dropped"][0]["reason"]


async def test_every_attempt_of_a_fallback_reserves_and_a_model_budget_counts_calls() -> None:
    kernel, provider, _ = limited([{"scope": "model", "match": "cheap", "limit_usd": 2 * COST}])
    async with kernel:
        for _ in range(2):
            assert (await kernel.ask(request(model="chain"))).model == "cheap"
        third = await kernel.ask(request(model="chain"))
    assert third.model == "dear" and third.decision["dropped"] == [
        {"model": "cheap", "reason": "budget of model 'cheap' spent"}]


async def test_an_rpm_limit_admits_exactly_its_requests_per_minute() -> None:
    rpm = 6
    kernel, provider, _ = limited(rate_limits=[{"scope": "key", "rpm": rpm}], slow_s=0.01)
    outcomes: list = []

    async def one(key: str) -> None:
        try:
            answer = await kernel.ask(request(model="cheap"), caller=Caller(key=key))
            outcomes.append((key, answer.headers))
        except errors.RateLimited as exc:
            outcomes.append((key, exc))

    async with kernel:
        async with anyio.create_task_group() as tg:
            for i in range(10 * rpm):
                tg.start_soon(one, "a" if i % 2 else "b")
    for key in "ab":
        mine = [o for k, o in outcomes if k == key]
        admitted = [o for o in mine if isinstance(o, dict)]
        refused = [o for o in mine if isinstance(o, errors.RateLimited)]
        assert len(admitted) == rpm and len(refused) == 4 * rpm
        assert 55 < refused[0].retry_after <= 60
        assert "Rate limit reached for key" in str(refused[0])
        assert sorted(h["x-ratelimit-remaining-requests"] for h in admitted) == \
            [str(i) for i in range(rpm)]
    assert len(provider.calls) == 2 * rpm


async def test_a_tpm_limit_counts_prompt_and_answer_tokens_and_a_retry_is_one_request() -> None:
    kernel, provider, _ = limited(
        rate_limits=[{"scope": "user", "match": "ann", "rpm": 1, "tpm": 10_000},
                     {"scope": "model", "match": "cheap", "rpm": 100}],
        script={"cheap": [errors.ProviderUnavailable("down"), "ok"]})
    async with kernel:
        answer = await kernel.ask(request(model="cheap"), caller=Caller(user="ann"))
        await kernel.idle()
        used = await kernel.store.window_total("ratelimit:tpm:user:ann", window_s=60)
        calls = await kernel.store.window_total("ratelimit:rpm:model:cheap", window_s=60)
        with pytest.raises(errors.RateLimited) as refused:
            await kernel.ask(request(model="cheap"), caller=Caller(user="ann"))
    assert answer.attempts == 2 and calls == 2, "each call counts on the model's limit"
    prompt = answer.input_tokens  # the failed call reported none
    assert prompt > 0 and used == prompt * 2 + OUT, "both calls' prompts, the answer once"
    assert refused.value.retry_after is not None
    assert answer.headers["x-ratelimit-limit-requests"] == "1"
    assert answer.headers["x-ratelimit-remaining-requests"] == "0"


async def test_a_prompt_bigger_than_the_token_limit_is_refused_without_a_retry_after() -> None:
    kernel, provider, _ = limited(rate_limits=[{"scope": "global", "tpm": 20}])
    async with kernel:
        with pytest.raises(errors.RateLimited) as refused:
            await kernel.ask(request(text="word " * 100, model="cheap"))
    assert refused.value.retry_after is None and "exceed the 20 tokens" in str(refused.value)
    assert provider.calls == []


def test_budget_and_rate_limit_tables_are_validated() -> None:
    config = parse({"budgets": [{"scope": "global", "match": "x", "limit_usd": 1},
                                {"scope": "planet", "limit_usd": -1, "window": "week"}],
                    "rate_limits": [{"scope": "key"}]}, source="test")
    kernel = Kernel(config, builtins=LIMITS)
    with pytest.raises(errors.ConfigError) as info:
        kernel.load_plugins()
    text = str(info.value)
    assert "budgets[0]: a global rule applies to everything: remove 'match'" in text
    assert "budgets[1].scope" in text and "budgets[1].limit_usd" in text
    assert "budgets[1].window: Input should be 'minute', 'hour', 'day', 'month' or 'total' " \
           "(got 'week')" in text
    assert "rate_limits[0]: give 'rpm', 'tpm' or both" in text


def test_over_http_a_429_says_which_limit_and_carries_the_headers(tmp_path: Path) -> None:
    fleet = {"providers": {"fleet": {"kind": "simulated"}},
             "models": {"m": {"provider": "fleet", "input_price": 1, "output_price": 1}},
             "simulation": {"models": {"m": {"latency_ms": 1, "jitter": 0}}},
             "server": {"api_keys": [{"name": "ci", "key": "sk-ci-test-key", "team": "qa"}]},
             "rate_limits": [{"scope": "team", "match": "qa", "rpm": 2}],
             "budgets": [{"scope": "user", "match": "eve", "limit_usd": 1e-12}]}
    with running_gateway(fleet, tmp_path) as gw:
        client = gw.client("sk-ci-test-key")
        ok = client.chat.completions.with_raw_response.create(model="m",
                                                              messages=[user("hi")])
        with pytest.raises(openai.RateLimitError) as budget:
            client.chat.completions.create(model="m", messages=[user("hi")], user="eve")
        with pytest.raises(openai.RateLimitError) as limited_:
            client.chat.completions.create(model="m", messages=[user("hi")])
        headers = limited_.value.response.headers
        via_header = httpx.post(gw.url + "/v1/chat/completions", headers={
            "authorization": "Bearer sk-ci-test-key", "x-turnout-user": "eve"},
            json={"model": "m", "messages": [user("hi")]})
    assert ok.headers["x-ratelimit-limit-requests"] == "2"
    assert ok.headers["x-ratelimit-remaining-requests"] == "1"
    assert budget.value.body["type"] == "budget_exceeded"
    assert budget.value.body["code"] == "budget_exceeded"
    assert "budget of user 'eve'" in budget.value.body["message"]
    assert budget.value.response.headers["x-turnout-attempts"] == "0", "no call was made"
    assert limited_.value.body["code"] == "rate_limited"
    assert "team 'qa'" in limited_.value.body["message"]
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert via_header.status_code == 429  # the rate limit (both are spent by now)


def test_the_worst_case_of_n_choices_is_n_answers() -> None:
    from turnout.kernel.request import ChatRequest
    from turnout.kernel.types import Context, ModelProfile
    from turnout.plugins.budgets import worst_case_cost

    model = ModelProfile("m", "p", "m", input_price=1.0, output_price=2.0)
    one = Context(request=ChatRequest(model="m", max_tokens=100,
                                      messages=[{"role": "user", "content": "hi"}]))
    three = Context(request=one.request.model_copy(update={"n": 3}))
    assert worst_case_cost(three, model) == pytest.approx(3 * worst_case_cost(one, model))
