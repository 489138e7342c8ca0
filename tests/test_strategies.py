"""Strategies on the seam: one defined in the test runs through the HTTP API, and its
sub-requests add their cost, tokens and attempts to the request that made them."""

from __future__ import annotations

import anyio
import pytest

from turnout.kernel import hookimpl
from turnout.kernel.strategy import Run, Strategy
from turnout.kernel.types import Completion

from .gateway import running_gateway


class FirstAnswer(Strategy):
    """Ask the first two models of the plan at once; return the first answer, cancel the other."""

    async def run(self, run: Run) -> Completion:
        winner: list[Completion] = []
        async with anyio.create_task_group() as tg:
            async def ask(model: str) -> None:
                answer = await run.subrequest(model=model)
                if not winner:
                    winner.append(answer)
                    tg.cancel_scope.cancel()
            for step in run.plan.steps[:2]:
                tg.start_soon(ask, step.model.name)
        return winner[0]


class StreamFromTheFirst(Strategy):
    """Stream the first model's answer through a streaming sub-request."""

    async def run(self, run: Run):
        return await run.subrequest(model=run.plan.steps[0].model.name, stream=True)


class Strategies:
    @hookimpl
    def register_strategies(self, register) -> None:
        register("first-answer", FirstAnswer())
        register("stream-first", StreamFromTheFirst())


FLEET = {
    "providers": {"fleet": {"kind": "simulated"}},
    "models": {
        "quick": {"provider": "fleet", "input_price": 1.0, "output_price": 2.0},
        "sluggish": {"provider": "fleet", "input_price": 30.0, "output_price": 60.0},
    },
    "routes": {
        "race": {"models": ["quick", "sluggish"], "strategy": "first-answer"},
        "relay": {"models": ["quick"], "strategy": "stream-first"},
    },
    "simulation": {"models": {
        "quick": {"latency_ms": 5, "jitter": 0, "quality": 1.0, "tokens_per_s": 5000},
        "sluggish": {"latency_ms": 3000, "jitter": 0, "quality": 1.0},
    }},
}

PROMPT = [{"role": "user", "content": "Name three rivers of Europe."}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    with running_gateway(FLEET, tmp_path_factory.mktemp("strategies"),
                         plugins={"test_strategies": Strategies()}) as gw:
        yield gw


def test_a_race_strategy_returns_the_first_answer_and_pays_for_both(gateway) -> None:
    # The client gives up well before the sluggish model could answer.
    raw = gateway.client(timeout=2.5).chat.completions.with_raw_response.create(
        model="race", messages=PROMPT)
    answer = raw.parse()
    assert answer.choices[0].message.content
    assert raw.headers["x-turnout-strategy"] == "first-answer"
    assert raw.headers["x-turnout-model"] == "quick"
    assert raw.headers["x-turnout-attempts"] == "2"

    rows = {r["request_id"]: r for r in gateway.rows()}
    parent = rows[raw.headers["x-request-id"]]
    children = [r for r in rows.values() if r["parent_id"] == parent["request_id"]]
    by_model = {c["model"]: c for c in children}
    assert set(by_model) == {"quick", "sluggish"}
    assert by_model["quick"]["status"] == "ok"
    assert by_model["sluggish"]["status"] == "cancelled"
    assert by_model["sluggish"]["error_kind"] == "cancelled"
    # The cancelled call was sent: its prompt is counted (estimated) and paid for.
    assert by_model["sluggish"]["input_tokens"] > 0 and by_model["sluggish"]["cost_usd"] > 0
    both = by_model["quick"]["cost_usd"] + by_model["sluggish"]["cost_usd"]
    assert parent["cost_usd"] == pytest.approx(both)
    assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(both, abs=1e-8)
    assert parent["attempts"] == 2
    assert parent["input_tokens"] == by_model["quick"]["input_tokens"] \
        + by_model["sluggish"]["input_tokens"]

    attempts = gateway.attempts(by_model["sluggish"]["request_id"])
    assert [a["status"] for a in attempts] == ["cancelled"]


def test_a_strategy_can_stream_a_sub_request(gateway) -> None:
    stream = gateway.client().chat.completions.create(
        model="relay", messages=PROMPT, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens > 0
    rows = gateway.rows()
    parent = next(r for r in rows if r["requested"] == "relay" and r["parent_id"] is None)
    child = next(r for r in rows if r["parent_id"] == parent["request_id"])
    assert (parent["status"], child["status"]) == ("ok", "ok")
    assert parent["model"] == child["model"] == "quick"
    assert parent["cost_usd"] == pytest.approx(child["cost_usd"]) and child["cost_usd"] > 0
