"""End to end through the gateway: each provider's wire format, and every upstream fault.

The gateway runs for real (kernel, plugins, HTTP API); its upstreams are local servers speaking
the OpenAI, Anthropic and Gemini protocols, scripted to fail in the ways real providers do. The
client is the official openai SDK.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from structlog.testing import capture_logs

from .fakes import (
    CutStream,
    Delay,
    ErrorInStream,
    Refuse,
    Status,
)
from .fakes.fleet import each_test_scripted, every_provider
from .gateway import running_gateway

OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY = "sk-openai-upstream-1234", "sk-ant-upstream-5678", \
    "AIzaUpstreamGeminiKey0123456789"


@pytest.fixture(scope="module")
def fakes():
    with every_provider(OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY) as found:
        yield found


@pytest.fixture(scope="module")
def gateway(fakes, tmp_path_factory: pytest.TempPathFactory):
    _, urls = fakes
    timeout = {"connect": 1, "read": 1.0}
    config = {
        "providers": {
            "openai": {"kind": "openai", "base_url": urls["openai"], "api_key": OPENAI_KEY,
                       "timeout": timeout},
            "anthropic": {"kind": "anthropic", "base_url": urls["anthropic"],
                          "api_key": ANTHROPIC_KEY, "timeout": timeout},
            "gemini": {"kind": "gemini", "base_url": urls["gemini"], "api_key": GEMINI_KEY,
                       "timeout": timeout},
            "badkey": {"kind": "openai", "base_url": urls["openai"], "api_key": "sk-wrong-key-999",
                       "timeout": timeout},
        },
        "models": {
            "gpt": {"provider": "openai", "upstream": "gpt-4o-mini", "input_price": 0.15,
                    "output_price": 0.6},
            "claude": {"provider": "anthropic", "upstream": "claude-3-5-haiku-latest",
                       "input_price": 0.8, "output_price": 4},
            "gemini": {"provider": "gemini", "upstream": "gemini-2.0-flash", "input_price": 0.1,
                       "output_price": 0.4},
            "gpt-badkey": {"provider": "badkey", "upstream": "gpt-4o-mini"},
        },
        "routes": {
            "chain": {"models": ["gpt", "claude", "gemini"], "attempt_timeout_s": 0.8,
                      "fallback": {"retry_after_cap_s": 0.5}},
            "solo": {"models": ["gpt"], "fallback": {"retry_after_cap_s": 0.5}},
            "keyed": {"models": ["gpt-badkey", "claude"]},
        },
    }
    with running_gateway(config, tmp_path_factory.mktemp("faults")) as gw:
        yield gw


@pytest.fixture(autouse=True)
def clean(fakes):
    yield from each_test_scripted(fakes[0])


def ask(text: str = "Hello there") -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


def upstream_calls(fakes, name: str) -> int:
    return len(fakes[0][name].requests)


# --- each provider, both ways ------------------------------------------------------------------


@pytest.mark.parametrize("model, provider", [("gpt", "openai"), ("claude", "anthropic"),
                                             ("gemini", "gemini")])
def test_each_provider_answers_whole(gateway, fakes, model, provider) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(model=model,
                                                                     messages=ask("Hi"))
    completion = raw.parse()
    assert completion.choices[0].message.content == "Echo: Hi"
    assert completion.usage.prompt_tokens > 0
    assert raw.headers["x-turnout-provider"] == provider
    assert float(raw.headers["x-turnout-cost-usd"]) > 0
    assert upstream_calls(fakes, provider) == 1


@pytest.mark.parametrize("model", ["gpt", "claude", "gemini"])
@pytest.mark.anyio
async def test_each_provider_streams(gateway, model) -> None:
    async with gateway.async_client() as client:
        stream = await client.chat.completions.create(
            model=model, messages=ask("Tell me three things"), stream=True,
            stream_options={"include_usage": True})
        chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: Tell me three things"
    assert chunks[-1].usage.prompt_tokens > 0 and chunks[-1].usage.completion_tokens > 0


def test_anthropic_gets_system_prompt_and_tools_in_its_own_format(gateway, fakes) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    completion = gateway.client().chat.completions.create(
        model="claude", messages=ask("What is the weather in Paris?"), tools=tools)
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    sent = fakes[0]["anthropic"].last.body
    assert sent["system"] == "Be brief." and sent["tools"][0]["name"] == "get_weather"
    assert sent["model"] == "claude-3-5-haiku-latest"


# --- faults before the answer: fall back ---------------------------------------------------------


def test_429_with_retry_after_is_waited_out_on_the_same_model(gateway, fakes) -> None:
    fakes[0]["openai"].push(Status(429, retry_after=0.2))
    raw = gateway.client().chat.completions.with_raw_response.create(model="chain",
                                                                     messages=ask())
    assert raw.headers["x-turnout-provider"] == "openai"
    assert raw.headers["x-turnout-attempts"] == "2"
    assert upstream_calls(fakes, "openai") == 2 and upstream_calls(fakes, "anthropic") == 0


def test_429_over_the_cap_moves_on(gateway, fakes) -> None:
    fakes[0]["openai"].push(Status(429, retry_after=60))
    raw = gateway.client().chat.completions.with_raw_response.create(model="chain",
                                                                     messages=ask())
    assert raw.headers["x-turnout-provider"] == "anthropic"


def test_429_with_nowhere_to_go_reaches_the_client_with_retry_after(gateway, fakes) -> None:
    fakes[0]["openai"].push(Status(429, retry_after=60))
    with pytest.raises(openai.RateLimitError) as info:
        gateway.client().chat.completions.create(model="solo", messages=ask())
    assert info.value.response.headers["retry-after"] == "60"
    assert info.value.body["code"] == "rate_limited"


def test_5xx_is_retried_then_falls_back(gateway, fakes) -> None:
    fakes[0]["openai"].push(Status(500), Status(503))
    raw = gateway.client().chat.completions.with_raw_response.create(model="chain",
                                                                     messages=ask())
    assert raw.headers["x-turnout-provider"] == "anthropic"
    assert raw.parse().choices[0].message.content == "Echo: Hello there"
    assert upstream_calls(fakes, "openai") == 2


def test_timeout_falls_back(gateway, fakes) -> None:
    fakes[0]["openai"].push(Delay(3), Delay(3))
    raw = gateway.client().chat.completions.with_raw_response.create(model="chain",
                                                                     messages=ask())
    assert raw.headers["x-turnout-provider"] == "anthropic"


def test_timeouts_with_nowhere_to_go_are_a_504(gateway, fakes) -> None:
    fakes[0]["openai"].push(Delay(3), Delay(3))
    with pytest.raises(openai.APIStatusError) as info:
        gateway.client().chat.completions.create(model="solo", messages=ask())
    assert info.value.status_code == 504
    assert info.value.body["code"] == "upstream_timeout"


def test_every_provider_down_is_a_503_in_openai_format(gateway, fakes) -> None:
    fakes[0]["openai"].push(Status(502), Status(502))
    fakes[0]["anthropic"].push(Status(529), Status(500))
    with pytest.raises(openai.InternalServerError) as info:
        gateway.client().chat.completions.create(model="chain", messages=ask(),
                                                 extra_headers={"x-turnout-explain": "1"})
    assert info.value.status_code == 503
    assert info.value.body["code"] == "upstream_unavailable"
    assert upstream_calls(fakes, "gemini") == 0  # max_attempts (4) was spent first
    # An error carries the same account as an answer: route, strategy, attempts, decision.
    headers = info.value.response.headers
    assert (headers["x-turnout-route"], headers["x-turnout-strategy"],
            headers["x-turnout-attempts"]) == ("chain", "fallback", "4")
    assert headers["x-turnout-model"] == "claude" and headers["x-turnout-cost-usd"]
    decision = json.loads(headers["x-turnout-decision"])
    assert decision["escalations"][-1] == {"action": "stop",
                                           "reason": "4 attempts made (max_attempts)"}


def test_content_policy_refusal_is_not_re_asked_elsewhere(gateway, fakes) -> None:
    fakes[0]["openai"].push(Refuse())
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().chat.completions.create(model="chain", messages=ask())
    assert info.value.body["code"] == "content_policy_violation"
    assert upstream_calls(fakes, "anthropic") == 0 and upstream_calls(fakes, "gemini") == 0


def test_upstream_auth_failure_alerts_moves_on_and_never_leaks_the_key(gateway, fakes) -> None:
    with capture_logs() as logs:
        raw = gateway.client().chat.completions.with_raw_response.create(model="keyed",
                                                                         messages=ask())
    assert raw.headers["x-turnout-provider"] == "anthropic"
    alerts = [e for e in logs if e["event"] == "alert_fired"]
    assert alerts and alerts[0]["alert"] == "provider_auth_failed"
    (finished,) = [e for e in logs if e["event"] == "request_finished"]
    assert (finished["status"], finished["route"], finished["model"], finished["attempts"]) == \
        ("ok", "keyed", "claude", 2)
    assert "sk-wrong-key-999" not in str(logs)
    row = next(r for r in gateway.rows() if r["request_id"] == raw.headers["x-request-id"])
    assert "sk-wrong-key-999" not in str(row) and "upstream_auth_failed" in row["decision"]


# --- faults in streams ---------------------------------------------------------------------------


def test_stream_failing_before_its_first_byte_falls_back(gateway, fakes) -> None:
    fakes[0]["openai"].push(ErrorInStream(after_chunks=0), ErrorInStream(after_chunks=0))
    stream = gateway.client().chat.completions.with_raw_response.create(
        model="chain", messages=ask("Go"), stream=True)
    assert stream.headers["x-turnout-provider"] == "anthropic"
    text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    assert text == "Echo: Go"


@pytest.mark.parametrize("fault", [CutStream(after_chunks=2, abrupt=True),
                                   CutStream(after_chunks=2, abrupt=False),
                                   ErrorInStream(after_chunks=2)],
                         ids=["cut-connection", "missing-terminator", "error-event"])
def test_stream_failing_mid_answer_ends_with_an_error_never_quietly(gateway, fakes, fault) -> None:
    fakes[0]["openai"].push(fault)
    received = []
    stream = gateway.client().chat.completions.with_raw_response.create(
        model="chain", messages=ask("one two three four five"), stream=True)
    request_id = stream.headers["x-request-id"]
    with pytest.raises(openai.APIError) as info:
        for chunk in stream.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received, "the client saw the first chunks before the failure"
    assert "stream" in str(info.value.message).lower() or "overloaded" in str(info.value.message)
    assert upstream_calls(fakes, "anthropic") == 0  # no silent re-ask after the first byte
    row = next(r for r in gateway.rows() if r["request_id"] == request_id)
    assert row["status"] == "error" and row["error_kind"] == "stream_interrupted"


def test_raw_sse_error_event_has_openai_shape_and_no_done(gateway, fakes) -> None:
    fakes[0]["openai"].push(ErrorInStream(after_chunks=1))
    with httpx.stream("POST", gateway.url + "/v1/chat/completions",
                      json={"model": "chain", "stream": True, "messages": ask("a b c")}) as r:
        body = r.read().decode()
    assert r.status_code == 200
    assert '"error":' in body and "[DONE]" not in body
    assert body.rstrip().endswith("}")
