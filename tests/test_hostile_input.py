"""Hostile and malformed input: every case is a 4xx in OpenAI's error format, nothing reaches the
upstream, nothing is coerced, and the gateway is still up afterwards.

The gateway runs for real in front of a fake OpenAI upstream that logs every request it gets;
hypothesis generates request bodies against the request model on top of the hand-written cases.
"""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .fakes import Script, openai_app, serve
from .gateway import running_gateway

KEY = "sk-hostile-upstream-0001"
USER = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def upstream():
    script = Script()
    with serve(openai_app(script, api_key=KEY)) as url:
        yield script, url + "/v1"


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory: pytest.TempPathFactory):
    _, url = upstream
    config = {
        "providers": {
            "up": {"kind": "openai", "base_url": url, "api_key": KEY},
            "vllm": {"kind": "openai-compatible", "base_url": url, "api_key": KEY,
                     "passthrough_params": ["top_k"]},
        },
        "models": {
            "small": {"provider": "up", "context_window": 4000, "max_output_tokens": 1000,
                      "capabilities": ["json", "streaming"]},
            "large": {"provider": "up", "context_window": 16000, "max_output_tokens": 4000,
                      "capabilities": ["json", "streaming"]},
            "open": {"provider": "vllm", "context_window": 8000},
        },
        "routes": {"text-only": {"models": ["small", "large"]}},
    }
    with running_gateway(config, tmp_path_factory.mktemp("hostile")) as gw:
        yield gw


@pytest.fixture(autouse=True)
def fresh(upstream):
    upstream[0].reset()


def post(gateway, body: object, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return httpx.post(gateway.url + "/v1/chat/completions", content=content, headers=headers,
                      timeout=10, **kw)


def assert_refused(gateway, upstream, response: httpx.Response, status: int = 400,
                   needle: str = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert needle in error["message"]
    assert len(response.content) < 4000, "the client's values are not echoed back in full"
    assert upstream[0].requests == [], "nothing reaches the upstream"
    assert httpx.get(gateway.url + "/healthz").status_code == 200
    return error


def deep(levels: int) -> bytes:
    return (b'{"model":"small","messages":[{"role":"user","content":"hi"}],"x":'
            + b'{"a":' * levels + b"1" + b"}" * levels + b"}")


CASES = [
    ("content part text is a number",
     {"model": "small", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "content[0].text"),
    ("content part text is null",
     {"model": "small", "messages": [{"role": "user",
                                      "content": [{"type": "text", "text": None}]}]},
     "content[0].text"),
    ("unknown content part", {"model": "small", "messages": [{"role": "user", "content": [
        {"type": "video", "video": "x"}]}]}, "content[0].type"),
    ("image in a system message", {"model": "small", "messages": [{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}, *USER]},
     "content[0].type"),
    ("invalid response_format schema",
     {"model": "small", "messages": USER, "response_format": {
         "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}},
     "not a valid JSON Schema"),
    ("json_schema that is not an object",
     {"model": "small", "messages": USER,
      "response_format": {"type": "json_schema", "json_schema": "zz"}}, "json_schema"),
    ("tools that are not objects", {"model": "small", "messages": USER, "tools": [1, "two"]},
     "tools[0]"),
    ("tool parameters that are not a schema",
     {"model": "small", "messages": USER,
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
     "parameters"),
    ("stream as a string", {"model": "small", "messages": USER, "stream": "yes"}, "'stream'"),
    ("max_tokens as a boolean", {"model": "small", "messages": USER, "max_tokens": True},
     "'max_tokens'"),
    ("temperature as a string", {"model": "small", "messages": USER, "temperature": "0.5"},
     "'temperature'"),
    ("unknown top-level field", {"model": "small", "messages": USER, "api_key": "sk-mine"},
     "Unrecognized request argument supplied: api_key"),
    ("unknown base_url override",
     {"model": "small", "messages": USER, "base_url": "http://evil"}, "base_url"),
    ("unknown field in a message",
     {"model": "small", "messages": [{"role": "user", "content": "hi", "api_key": "x"}]},
     "messages[0].api_key"),
    ("tool message without its call id",
     {"model": "small", "messages": [*USER, {"role": "tool", "content": "42"}]}, "tool_call_id"),
    ("a megabyte model name", {"model": "m" * 1_000_000, "messages": USER}, "does not exist"),
]


@pytest.mark.parametrize("name, body, needle", CASES, ids=[c[0] for c in CASES])
def test_each_hostile_case_is_a_clean_400(gateway, upstream, name, body, needle) -> None:
    response = post(gateway, body)
    status = 404 if "does not exist" in needle else 400
    assert_refused(gateway, upstream, response, status, needle)


def test_numbers_beyond_64_bits_are_refused(gateway, upstream) -> None:
    body = b'{"model":"small","messages":[{"role":"user","content":"hi"}],"max_tokens":' \
        + b"9" * 40 + b"}"
    assert_refused(gateway, upstream, post(gateway, body), 400)


def test_deep_nesting_is_refused_before_any_serializer_sees_it(gateway, upstream) -> None:
    error = assert_refused(gateway, upstream, post(gateway, deep(1000)), 400, "levels deep")
    assert error["param"].startswith("x.a.a")
    assert post(gateway, deep(10)).status_code == 400  # shallow, but 'x' is still unknown


def test_max_tokens_beyond_every_candidate_is_context_length_exceeded(gateway, upstream) -> None:
    error = assert_refused(gateway, upstream, post(gateway, {
        "model": "text-only", "messages": USER, "max_tokens": 10 ** 12}))
    assert error["code"] == "context_length_exceeded"
    assert "small" in error["message"] and "large" in error["message"]


def test_a_capability_no_candidate_has_is_the_clients_error(gateway, upstream) -> None:
    image = {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {
        "type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}
    error = assert_refused(gateway, upstream, post(gateway, {"model": "text-only",
                                                            "messages": [image]}))
    assert error["code"] == "unsupported_capability"
    assert "vision" in error["message"] and "small" in error["message"]
    tools = {"model": "text-only", "messages": USER, "tools": [
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]}
    error = assert_refused(gateway, upstream, post(gateway, tools))
    assert "tools" in error["message"]


def test_null_is_accepted_where_openai_allows_it(gateway, upstream) -> None:
    body = {"model": "small", "messages": USER, "stream": None, "temperature": None,
            "max_tokens": None, "stop": None, "n": None, "seed": None, "response_format": None,
            "tools": None, "tool_choice": None, "user": None, "top_p": None}
    response = post(gateway, body)
    assert response.status_code == 200, response.text
    assert len(upstream[0].requests) == 1


def test_pass_through_fields_reach_only_the_provider_that_lists_them(gateway, upstream) -> None:
    response = post(gateway, {"model": "open", "messages": USER, "top_k": 40})
    assert response.status_code == 200, response.text
    (sent,) = upstream[0].requests
    assert sent.body["top_k"] == 40
    upstream[0].reset()
    response = post(gateway, {"model": "small", "messages": USER, "top_k": 40})
    assert response.status_code == 200, "top_k is known: a configured provider passes it on"
    (sent,) = upstream[0].requests
    assert "top_k" not in sent.body, "a provider that does not list it never receives it"


def test_answers_keep_the_fields_the_upstream_sent(gateway) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(model="small",
                                                                     messages=USER)
    body = orjson.loads(raw.content)
    message = body["choices"][0]["message"]
    assert "refusal" in message and message["refusal"] is None
    assert body["system_fingerprint"] == "fp_fake"
    assert raw.parse().choices[0].message.content


def test_failed_authentication_is_logged_without_the_key_and_counted(
        tmp_path_factory: pytest.TempPathFactory, upstream) -> None:
    import hashlib

    from structlog.testing import capture_logs

    _, url = upstream
    config = {"server": {"api_keys": [{"name": "team", "sha256": hashlib.sha256(
        b"tk-right-key-0001").hexdigest()}]},
        "providers": {"up": {"kind": "openai", "base_url": url, "api_key": KEY}},
        "models": {"small": {"provider": "up"}}}
    with running_gateway(config, tmp_path_factory.mktemp("auth")) as gw:
        with capture_logs() as logs:
            with pytest.raises(openai.AuthenticationError):
                gw.client("tk-wrong-key-9999").chat.completions.create(model="small",
                                                                       messages=USER)
        failures = [e for e in logs if e["event"] == "auth_failed"]
        assert len(failures) == 1 and "tk-wrong-key-9999" not in repr(failures)
        assert failures[0]["reason"] == "Incorrect API key provided."
        assert gw.kernel.counters["auth_failed"] == 1


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=20))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=12)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool",
                                                          "wizard", 7]),
                                 "content": st.one_of(JSON, st.just([{"type": "text"}]))})
BODY = st.fixed_dictionaries(
    {"model": st.sampled_from(["small", "text-only", "auto"]),
     "messages": st.one_of(st.lists(MESSAGE, max_size=3), JSON)},
    optional={"stream": JSON, "max_tokens": JSON, "temperature": JSON, "tools": JSON,
              "tool_choice": JSON, "response_format": JSON, "stop": JSON, "n": JSON,
              "top_k": JSON, "metadata": JSON})


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY)
def test_generated_bodies_are_answered_or_refused_cleanly(gateway, upstream, body) -> None:
    upstream[0].reset()
    response = post(gateway, body)
    if response.status_code == 200:
        assert len(upstream[0].requests) == 1
        return
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert upstream[0].requests == []
