"""examples/strategies.toml, the config docs/strategies.md points people at, loads and serves every
route it defines over the simulated fleet, asked with the openai SDK as a user would."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from .gateway import running_gateway

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "strategies.toml"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    config = tomllib.loads(EXAMPLE.read_text())
    for model in config["simulation"]["models"].values():
        model["latency_ms"] = 5  # the example's latencies are realistic; the test need not wait
    with running_gateway(config, tmp_path_factory.mktemp("examples")) as gw:
        yield gw


ROUTES = {"default": "fallback", "json-cascade": "cascade", "vote": "ensemble",
          "merged": "ensemble", "reviewed": "critic", "review-pipeline": "chain",
          "fastest": "race", "long-chat": "fallback"}


def test_the_example_defines_the_routes_the_docs_name() -> None:
    assert set(tomllib.loads(EXAMPLE.read_text())["routes"]) == set(ROUTES)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_every_route_answers(gateway, route: str, stream: bool) -> None:
    extra = {"response_format": {"type": "json_object"}} if route == "json-cascade" else {}
    raw = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model=route, messages=[{"role": "user", "content": "This change drops a table."}],
        stream=stream, **extra)
    assert raw.headers["x-turnout-strategy"] == ROUTES[route]
    parsed = raw.parse()
    text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices) if stream \
        else parsed.choices[0].message.content
    assert text
    row = next(r for r in gateway.rows() if r["request_id"] == raw.headers["x-request-id"])
    assert row["status"] == "ok" and row["cost_usd"] > 0


def test_a_long_conversation_is_summarised_for_the_small_model(gateway) -> None:
    turns = [{"role": role, "content": "word " * 600} for role in ("user", "assistant") * 8]
    raw = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model="long-chat", messages=[{"role": "system", "content": "Be brief."}, *turns,
                                     {"role": "user", "content": "And now?"}])
    assert raw.parse().choices[0].message.content
    row = next(r for r in gateway.rows() if r["request_id"] == raw.headers["x-request-id"])
    history = json.loads(row["decision"])["history"]
    assert history["mode"] == "summarize" and history["dropped_tokens"] > 0
