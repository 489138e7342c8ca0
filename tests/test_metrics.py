"""The metrics plugin: a real gateway answers, falls back, fails, streams, hits a cache and refuses;
GET /metrics is parsed with prometheus_client's own parser and every count checked."""

from __future__ import annotations

import hashlib

import httpx
import openai
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from turnout.adapters.http import create_app
from turnout.kernel.config import parse
from turnout.kernel.errors import (
    BudgetExceeded,
    ConfigError,
    ProviderBadRequest,
    ProviderUnavailable,
    RateLimited,
)
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.kernel import BUILTINS, Kernel
from turnout.kernel.strategy import Run, Strategy
from turnout.kernel.types import Chunk, Completion, Usage
from turnout.plugins.metrics import OVERHEAD_BUCKETS, Metrics

from .gateway import running_gateway
from .support import ask, kernel_for

KEY = "tk-metrics-0123456789"

CONFIG = {
    "server": {"api_keys": [{"name": "team-a", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]},
    "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
    "models": {
        "small": {"provider": "p", "input_price": 1, "output_price": 2},
        "big": {"provider": "p", "input_price": 10, "output_price": 20},
    },
    "routes": {"chain": {"models": ["small", "big"]}},
    "routing": {"default": "chain"},
}
"""Two models on one route; the provider is never reached: the Upstream plugin answers."""


def bad(model: str) -> ProviderBadRequest:
    """An upstream error the fallback chain moves on from at once."""
    return ProviderBadRequest("refused by the test", provider="p", model=model)


class Upstream:
    """Answers each model from its script: text (usage 10 in, 5 out), a list of stream parts
    (usage 10 in, one token a part), or an error. The prompt "again" is a cache hit."""

    def __init__(self, script: dict[str, list]) -> None:
        self.script = script

    @hookimpl
    def call(self, ctx, step):
        if ctx.request.prompt_text() == "again":
            return Completion(content="from the cache", usage=Usage(10, 5), cached=True)
        outcome = self.script[step.model.name].pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        if isinstance(outcome, list):
            return _stream(outcome)
        return Completion(content=outcome, usage=Usage(10, 5))


async def _stream(parts: list[str]):
    for part in parts:
        yield Chunk(content=part)
    yield Chunk(finish_reason="stop", usage=Usage(10, len(parts)))


class Limits:
    """Refuses the prompt "flood" as rate limited and "spendy" as over budget."""

    @hookimpl
    def filter_candidates(self, ctx):
        prompt = ctx.request.prompt_text()
        if prompt == "flood":
            raise RateLimited("too many requests", retry_after=1)
        if prompt == "spendy":
            raise BudgetExceeded("the day's budget is spent")


class FakeBudgets:
    """Stands in for the budgets plugin: two budgets, one partly spent."""

    async def remaining(self) -> list[dict]:
        return [
            {"scope": "key", "match": "team-a", "window": "day", "limit_usd": 10.0,
             "spent_usd": 2.5},
            {"scope": "global", "match": None, "window": "month", "limit_usd": 100.0,
             "spent_usd": 0.0},
        ]


def scrape(url: str, **kw) -> dict[str, list]:
    """GET /metrics parsed: sample name -> [(labels, value)]."""
    response = httpx.get(url + "/metrics", **kw)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """The one sample of ``name`` with exactly ``labels`` (KeyError if there is none)."""
    found = [v for got, v in samples.get(name, []) if got == labels]
    if not found:
        raise KeyError(f"{name} {labels}: not among {samples.get(name)}")
    return found[0]


def series(samples: dict, name: str, *keys: str) -> dict[tuple, float]:
    """Every sample of ``name``, keyed by the given label values."""
    return {tuple(labels[k] for k in keys): v for labels, v in samples.get(name, [])}


def total(samples: dict, name: str) -> float:
    return sum(v for _, v in samples.get(name, []))


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A gateway that served one request of each kind, and its /metrics."""
    upstream = Upstream({
        # "fail" meets a 5xx on small twice (retried once, then moved on), then big refuses.
        "small": ["fine", bad("small"), ProviderUnavailable("down", provider="p", model="small"),
                  ProviderUnavailable("down", provider="p", model="small"), bad("small")],
        "big": ["rescued", bad("big"), ["Hel", "lo"]],
    })
    plugins = {"upstream": upstream, "limits": Limits(), "budgets": FakeBudgets()}
    # The fake takes the name "budgets"; a built-in of that name, if there is one, stays out.
    config = {**CONFIG, "plugins": {"disable": ["budgets"]}} if "budgets" in BUILTINS else CONFIG
    with running_gateway(config, tmp_path_factory.mktemp("metrics"), plugins=plugins) as gw:
        client = gw.client(KEY)

        def chat(text: str, **kw):
            return client.chat.completions.create(
                model="chain", messages=[{"role": "user", "content": text}], **kw)

        assert chat("answer").choices[0].message.content == "fine"
        assert chat("fall back").choices[0].message.content == "rescued"
        with pytest.raises(openai.APIStatusError):
            chat("fail")
        parts = [c.choices[0].delta.content or "" for c in chat("stream", stream=True)
                 if c.choices]
        assert "".join(parts) == "Hello"
        assert chat("again").choices[0].message.content == "from the cache"
        with pytest.raises(openai.RateLimitError):
            chat("flood")
        with pytest.raises(openai.RateLimitError):
            chat("spendy")
        with pytest.raises(openai.AuthenticationError):
            gw.client("tk-wrong").chat.completions.create(
                model="chain", messages=[{"role": "user", "content": "who am I"}])
        assert upstream.script == {"small": [], "big": []}, "every scripted outcome was used"
        open_metrics = httpx.get(gw.url + "/metrics",
                                 headers={"accept": "application/openmetrics-text"})
        yield {"samples": scrape(gw.url), "open_metrics": open_metrics,
               "plugin": gw.kernel.plugins.get("metrics")}


def test_requests_by_route_model_provider_status_and_error(scraped) -> None:
    got = series(scraped["samples"], "turnout_requests_total",
                 "route", "model", "provider", "status", "error_kind")
    assert got == {
        ("chain", "small", "p", "ok", ""): 2,  # answered, and the cache hit
        ("chain", "big", "p", "ok", ""): 2,  # the fallback and the stream that fell back
        ("chain", "big", "p", "error", "upstream_bad_request"): 1,
        ("chain", "", "", "error", "rate_limited"): 1,
        ("chain", "", "", "error", "budget_exceeded"): 1,
    }


def test_attempts_tokens_cost_and_fallbacks(scraped) -> None:
    samples = scraped["samples"]
    assert series(samples, "turnout_attempts_total", "model", "provider", "status") == {
        ("small", "p", "ok"): 2, ("small", "p", "error"): 4,
        ("big", "p", "ok"): 2, ("big", "p", "error"): 1,
    }
    assert series(samples, "turnout_tokens_total", "model", "provider", "direction") == {
        ("small", "p", "input"): 20, ("small", "p", "output"): 10,  # the cache hit's included
        ("big", "p", "input"): 20, ("big", "p", "output"): 5 + 2,
    }
    cost = series(samples, "turnout_cost_usd_total", "model", "provider", "route")
    assert cost.keys() == {("small", "p", "chain"), ("big", "p", "chain")}
    assert cost[("small", "p", "chain")] == pytest.approx((10 * 1 + 5 * 2) / 1e6)  # the hit is free
    assert cost[("big", "p", "chain")] == pytest.approx(
        (10 * 10 + 5 * 20 + 10 * 10 + 2 * 20) / 1e6)
    # attempts beyond each request's first: 1 (fall back) + 2 (fail) + 1 (stream)
    assert series(samples, "turnout_fallbacks_total", "route") == {("chain",): 4}


def test_cache_hits_refusals_and_auth_failures(scraped) -> None:
    samples = scraped["samples"]
    assert series(samples, "turnout_cache_hits_total", "route", "model") == {("chain", "small"): 1}
    assert series(samples, "turnout_rate_limit_refusals_total", "route") == {("chain",): 1}
    assert series(samples, "turnout_budget_refusals_total", "route") == {("chain",): 1}
    assert value(samples, "turnout_auth_failures_total") == 1


def test_latency_first_token_and_overhead_histograms(scraped) -> None:
    samples = scraped["samples"]
    assert total(samples, "turnout_request_duration_seconds_count") == 7
    durations = total(samples, "turnout_request_duration_seconds_sum")
    assert 0 < durations < 10
    assert value(samples, "turnout_request_duration_seconds_count",
                 route="chain", model="big", provider="p", status="ok") == 2
    assert series(samples, "turnout_time_to_first_token_seconds_count",
                  "route", "model", "provider") == {("chain", "big", "p"): 1}
    first = value(samples, "turnout_time_to_first_token_seconds_sum",
                  route="chain", model="big", provider="p")
    assert 0 < first < durations
    assert total(samples, "turnout_gateway_overhead_seconds_count") == 7
    bounds = {labels["le"] for labels, _ in samples["turnout_gateway_overhead_seconds_bucket"]}
    assert bounds == {str(b) for b in OVERHEAD_BUCKETS} | {"+Inf"}
    assert 0 < total(samples, "turnout_gateway_overhead_seconds_sum") <= durations


def test_budget_remaining_is_read_from_the_budgets_plugin(scraped) -> None:
    assert series(scraped["samples"], "turnout_budget_remaining_usd",
                  "scope", "match", "window") == {("key", "team-a", "day"): 7.5,
                                                  ("global", "", "month"): 100.0}


def test_openmetrics_when_asked_and_an_own_registry(scraped) -> None:
    response = scraped["open_metrics"]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    assert scraped["plugin"].registry is not REGISTRY
    assert REGISTRY.get_sample_value("turnout_requests_total") is None


class ViaSubrequest(Strategy):
    """Answers through one sub-request to the plan's last model."""

    async def run(self, run: Run) -> Completion:
        return await run.subrequest(model=run.plan.steps[-1].model.name)


class SubrequestStrategy:
    @hookimpl
    def register_strategies(self, register) -> None:
        register("via-sub", ViaSubrequest())


@pytest.mark.anyio
async def test_subrequests_count_their_calls_not_as_client_requests() -> None:
    metrics = Metrics()
    kernel, _, _ = kernel_for({"big": ["from the sub-request"]}, route={"strategy": "via-sub"},
                              plugins={"metrics": metrics, "sub": SubrequestStrategy()})
    app = create_app(kernel, manage_kernel=False)
    async with kernel:
        answer = await kernel.ask(ask(model="chain"))
        assert answer.content == "from the sub-request"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gateway") as client:
            text = (await client.get("/metrics")).text
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    assert series(samples, "turnout_requests_total",
                  "route", "model", "provider", "status", "error_kind") == {
        ("chain", "big", "p", "ok", ""): 1}, "the sub-request is no client request"
    assert total(samples, "turnout_request_duration_seconds_count") == 1
    assert series(samples, "turnout_attempts_total", "model", "provider", "status") == {
        ("big", "p", "ok"): 1}
    assert series(samples, "turnout_tokens_total", "model", "provider", "direction") == {
        ("big", "p", "input"): 10, ("big", "p", "output"): 5}
    assert series(samples, "turnout_cost_usd_total", "model", "provider", "route") == {
        ("big", "p", "big"): pytest.approx((10 * 10 + 5 * 20) / 1e6)}
    assert "turnout_budget_remaining_usd" not in samples, "no budgets plugin, no budget gauge"
    assert value(samples, "turnout_auth_failures_total") == 0


@pytest.mark.anyio
async def test_buckets_setting_and_disabled_metrics() -> None:
    kernel = Kernel(parse({**CONFIG, "metrics": {"enabled": False, "buckets": [0.5, 1, 5]}},
                          source="test"))
    kernel.load_plugins()
    metrics = kernel.plugins.get("metrics")
    metrics.startup(kernel)
    assert metrics.instruments.buckets == (0.5, 1, 5)
    app = create_app(kernel, manage_kernel=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gateway") as client:
        assert (await client.get("/metrics")).status_code == 404


def test_buckets_must_increase() -> None:
    kernel = Kernel(parse({**CONFIG, "metrics": {"buckets": [1, 0.5]}}, source="test"))
    with pytest.raises(ConfigError, match="metrics.buckets"):
        kernel.load_plugins()
