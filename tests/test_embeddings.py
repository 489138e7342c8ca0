"""``POST /v1/embeddings``: the official openai SDK's ``embeddings.create`` through the gateway to
the OpenAI, OpenAI-compatible and Gemini fakes and the simulated fleet, with budgets, rate
limits, the cache, records, fallback, and bad input answered in OpenAI's error shape."""

from __future__ import annotations

import base64
import json
import math
import struct

import openai
import pytest

from turnout.adapters.simulated.server import EMBEDDING_DIMENSIONS, embedding
from turnout.kernel import tokens
from turnout.kernel.embeddings import EmbeddingRequest, cache_key
from turnout.kernel.errors import BadRequest

from .fakes import Script, Status, gemini_app, openai_app, serve
from .fakes.openai_server import FAKE_DIMENSIONS, fake_vector
from .gateway import running_gateway

KEY = "sk-test"
GEMINI_KEY = "AIza-test-key"
PRICE = 0.02  # USD per million input tokens


def upstream_answer(model: str, prompt: str):
    """The fakes' answers: the upstream ``broken`` always fails with a 500."""
    return Status(500) if model == "broken" else None


@pytest.fixture(scope="module")
def fakes():
    scripts = {name: Script(answer=upstream_answer) for name in ("openai", "compat", "gemini")}
    with serve(openai_app(scripts["openai"], api_key=KEY)) as oa, \
            serve(openai_app(scripts["compat"], api_key=None)) as compat, \
            serve(gemini_app(scripts["gemini"], api_key=GEMINI_KEY)) as gem:
        yield scripts, {"openai": oa + "/v1", "compat": compat + "/v1", "gemini": gem + "/v1beta"}


@pytest.fixture(scope="module")
def gateway(fakes, tmp_path_factory: pytest.TempPathFactory):
    _, urls = fakes
    embeds = ["embeddings"]
    config = {
        "providers": {
            "oa": {"kind": "openai", "base_url": urls["openai"], "api_key": KEY},
            "compat": {"kind": "openai-compatible", "base_url": urls["compat"]},
            "gem": {"kind": "gemini", "base_url": urls["gemini"], "api_key": GEMINI_KEY},
            "sim": {"kind": "simulated"},
            "anth": {"kind": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "sk-ant"},
        },
        "simulation": {"models": {"sim-embed": {}}},
        "models": {
            "text-embedding-3-small": {"provider": "oa", "input_price": PRICE,
                                       "capabilities": embeds},
            "local-embed": {"provider": "compat", "upstream": "nomic-embed",
                            "capabilities": embeds},
            "gemini-embed": {"provider": "gem", "upstream": "text-embedding-004",
                             "capabilities": embeds},
            "sim-embed": {"provider": "sim", "capabilities": embeds},
            "pricey-embed": {"provider": "oa", "input_price": 1000.0, "capabilities": embeds},
            "broken-embed": {"provider": "oa", "upstream": "broken", "capabilities": embeds},
            "chat-model": {"provider": "oa"},
            "claude-embed": {"provider": "anth", "capabilities": embeds},
        },
        "routes": {
            "embed-fallback": {"models": ["broken-embed", "text-embedding-3-small"]},
            "uncached": {"models": ["text-embedding-3-small"], "cache": "off"},
        },
        "budgets": [{"scope": "model", "match": "pricey-embed", "limit_usd": 0.000001}],
        "rate_limits": [{"scope": "user", "match": "limited", "rpm": 1}],
    }
    with running_gateway(config, tmp_path_factory.mktemp("embeddings")) as gw:
        yield gw


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return gateway.client()


def embeds_of(script: Script, text: str) -> list:
    """The embedding requests a fake received that carried ``text``."""
    return [r for r in script.requests if "Embed" in r.path or r.path.endswith("/embeddings")
            if text in json.dumps(r.body)]


# --- each provider wire format ---------------------------------------------------------------


def test_openai_sdk_embeds_through_the_openai_fake(client, fakes) -> None:
    scripts, _ = fakes
    result = client.embeddings.create(model="text-embedding-3-small",
                                      input=["openai one", "openai two"], encoding_format="float")
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[0].embedding == pytest.approx(fake_vector("openai one"))
    assert result.data[1].embedding == pytest.approx(fake_vector("openai two"))
    assert result.model == "text-embedding-3-small"
    assert result.usage.prompt_tokens == result.usage.total_tokens == 4  # the fake counts words
    (sent,) = embeds_of(scripts["openai"], "openai one")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["input"] == ["openai one", "openai two"]


def test_the_sdks_default_base64_decodes_to_the_same_floats(client) -> None:
    # The SDK asks for base64 when the caller names no format, and decodes it itself.
    default = client.embeddings.create(model="text-embedding-3-small", input="base64 please")
    assert default.data[0].embedding == pytest.approx(fake_vector("base64 please"), abs=1e-6)
    raw = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="base64 please", encoding_format="base64")
    encoded = json.loads(raw.text)["data"][0]["embedding"]
    packed = base64.b64decode(encoded)
    floats = list(struct.unpack(f"<{len(packed) // 4}f", packed))
    assert floats == pytest.approx(fake_vector("base64 please"), abs=1e-6)


def test_openai_compatible_without_a_key_gets_no_authorization(client, fakes) -> None:
    scripts, _ = fakes
    result = client.embeddings.create(model="local-embed", input="compat text",
                                      dimensions=5, encoding_format="float")
    assert result.data[0].embedding == pytest.approx(fake_vector("compat text", 5))
    (sent,) = embeds_of(scripts["compat"], "compat text")
    assert "authorization" not in sent.headers
    assert sent.body["model"] == "nomic-embed" and sent.body["dimensions"] == 5


def test_gemini_embeds_with_batch_embed_contents(client, fakes, gateway) -> None:
    scripts, _ = fakes
    raw = client.embeddings.with_raw_response.create(
        model="gemini-embed", input=["gemini alpha", "gemini beta"], dimensions=7,
        encoding_format="float")
    result = raw.parse()
    assert [d.embedding for d in result.data] == [
        pytest.approx(fake_vector("gemini alpha", 7)), pytest.approx(fake_vector("gemini beta", 7))]
    (sent,) = embeds_of(scripts["gemini"], "gemini alpha")
    assert sent.path.endswith("/models/text-embedding-004:batchEmbedContents")
    assert sent.headers["x-goog-api-key"] == GEMINI_KEY
    assert [r["outputDimensionality"] for r in sent.body["requests"]] == [7, 7]
    # Gemini reports no usage: the gateway counts the input itself.
    assert result.usage.prompt_tokens == tokens.count("gemini alpha") + tokens.count("gemini beta")
    assert raw.headers["x-turnout-provider"] == "gem"


def test_the_simulated_fleet_embeds_deterministically(client) -> None:
    first = client.embeddings.create(model="sim-embed", input=["same text", "other text"],
                                     encoding_format="float")
    again = client.embeddings.create(model="sim-embed", input="same text",
                                     encoding_format="float", extra_headers={
                                         "cache-control": "no-store"})
    same, other = first.data[0].embedding, first.data[1].embedding
    assert len(same) == EMBEDDING_DIMENSIONS
    assert again.data[0].embedding == pytest.approx(same)
    assert same != pytest.approx(other)
    assert math.sqrt(sum(v * v for v in same)) == pytest.approx(1.0)
    short = client.embeddings.create(model="sim-embed", input="same text", dimensions=32,
                                     encoding_format="float")
    assert len(short.data[0].embedding) == 32
    assert short.data[0].embedding == pytest.approx(embedding("same text", 32))
    encoded = client.embeddings.create(model="sim-embed", input="same text")  # base64
    assert encoded.data[0].embedding == pytest.approx(same, abs=1e-6)


# --- budgets, rate limits, cache, records, fallback --------------------------------------------


def test_a_budget_refuses_an_embedding_with_429_budget_exceeded(client) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model="pricey-embed", input="a fairly long text to price here")
    assert caught.value.status_code == 429
    assert caught.value.body["code"] == "budget_exceeded"
    assert "pricey-embed" in caught.value.body["message"]


def test_a_rate_limit_refuses_the_second_request_in_a_minute(client) -> None:
    client.embeddings.create(model="text-embedding-3-small", input="limited one", user="limited")
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="limited two",
                                 user="limited")
    assert caught.value.status_code == 429
    assert caught.value.response.headers.get("retry-after")
    assert "Rate limit" in caught.value.body["message"]


def test_identical_requests_reach_the_upstream_once(client, fakes) -> None:
    scripts, _ = fakes
    first = client.embeddings.with_raw_response.create(model="text-embedding-3-small",
                                                       input="cache me", encoding_format="float")
    second = client.embeddings.with_raw_response.create(model="text-embedding-3-small",
                                                        input="cache me", encoding_format="float")
    assert len(embeds_of(scripts["openai"], "cache me")) == 1
    assert first.headers["x-turnout-cache"] == "miss"
    assert second.headers["x-turnout-cache"] == "hit"
    assert float(second.headers["x-turnout-cost-usd"]) == 0
    assert second.parse().data[0].embedding == first.parse().data[0].embedding
    # Other dimensions are another entry; a route with cache = "off" always goes upstream.
    client.embeddings.create(model="text-embedding-3-small", input="cache me", dimensions=3)
    client.embeddings.create(model="uncached", input="cache me")
    client.embeddings.create(model="uncached", input="cache me")
    assert len(embeds_of(scripts["openai"], "cache me")) == 4


def test_the_cache_key_holds_model_input_and_dimensions() -> None:
    base = EmbeddingRequest(model="m", texts=("a",))
    assert cache_key(base) == cache_key(EmbeddingRequest(model="m", texts=("a",), user="u",
                                                         encoding_format="base64"))
    others = {cache_key(EmbeddingRequest(model="n", texts=("a",))),
              cache_key(EmbeddingRequest(model="m", texts=("b",))),
              cache_key(EmbeddingRequest(model="m", texts=("a",), dimensions=4)),
              cache_key(EmbeddingRequest(model="m", texts=("a", "b")))}
    assert cache_key(base) not in others and len(others) == 4


def test_an_embedding_is_recorded_with_its_tokens_and_cost(client, gateway) -> None:
    raw = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="record these five words", encoding_format="float")
    request_id = raw.headers["x-request-id"]
    (row,) = [r for r in gateway.rows() if r["request_id"] == request_id]
    assert (row["status"], row["model"], row["provider"]) == ("ok", "text-embedding-3-small", "oa")
    assert row["requested"] == "text-embedding-3-small"
    assert (row["input_tokens"], row["output_tokens"], row["attempts"]) == (4, 0, 1)
    assert row["cost_usd"] == pytest.approx(4 * PRICE / 1e6)
    assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(4 * PRICE / 1e6)
    assert json.loads(row["decision"])["kind"] == "embeddings"


def test_a_failing_first_model_falls_back_to_the_second(client, gateway) -> None:
    raw = client.embeddings.with_raw_response.create(model="embed-fallback", input="fall back",
                                                     encoding_format="float")
    assert raw.parse().data[0].embedding == pytest.approx(fake_vector("fall back"))
    assert raw.headers["x-turnout-model"] == "text-embedding-3-small"
    assert raw.headers["x-turnout-attempts"] == "2"
    attempts = gateway.attempts(raw.headers["x-request-id"])
    assert [(a["model"], a["status"]) for a in attempts] == [
        ("broken-embed", "error"), ("text-embedding-3-small", "ok")]
    assert attempts[0]["error"] == "upstream_unavailable"


def test_when_every_model_fails_the_client_gets_the_upstream_error(client) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model="broken-embed", input="nothing works")
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "upstream_unavailable"


def test_a_provider_kind_that_cannot_embed_fails_with_a_clear_error(client) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="claude-embed", input="anthropic has no embeddings")
    assert caught.value.body["code"] == "upstream_bad_request"
    assert "does not embed" in caught.value.body["message"]


# --- bad input: OpenAI's error shape, a 4xx, never a 500 -------------------------------------


@pytest.mark.parametrize("body, param", [
    ({"model": "text-embedding-3-small", "input": ""}, "input"),
    ({"model": "text-embedding-3-small", "input": []}, "input"),
    ({"model": "text-embedding-3-small", "input": ["ok", ""]}, "input[1]"),
    ({"model": "text-embedding-3-small", "input": 42}, "input"),
    ({"model": "text-embedding-3-small", "input": [1, 2, 3]}, "input[0]"),
    ({"model": "text-embedding-3-small", "input": [[1, 2]]}, "input[0]"),
    ({"model": "text-embedding-3-small", "input": ["ok", {"text": "no"}]}, "input[1]"),
    ({"model": "text-embedding-3-small"}, "input"),
    ({"input": "no model"}, "model"),
    ({"model": 7, "input": "x"}, "model"),
    ({"model": "text-embedding-3-small", "input": "x", "encoding_format": "int8"},
     "encoding_format"),
    ({"model": "text-embedding-3-small", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "text-embedding-3-small", "input": "x", "dimensions": True}, "dimensions"),
    ({"model": "text-embedding-3-small", "input": "x", "user": 5}, "user"),
    ({"model": "text-embedding-3-small", "input": "x", "temperature": 0}, "temperature"),
])
def test_bad_input_is_a_400_naming_the_field(client, body: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/embeddings", body=body, cast_to=object)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param
    assert caught.value.body["type"] == "invalid_request_error"


def test_a_body_that_is_not_json_is_a_400(gateway) -> None:
    import httpx

    answer = httpx.post(gateway.url + "/v1/embeddings", content=b"{nope",
                        headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert "not valid JSON" in answer.json()["error"]["message"]


def test_a_chat_only_model_is_a_400_naming_the_embedding_models(client) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="chat-model", input="hello")
    message = caught.value.body["message"]
    assert caught.value.body["param"] == "model"
    assert "'chat-model'" in message and "embeddings" in message
    assert "text-embedding-3-small" in message and "gemini-embed" in message
    assert "chat-model, " not in message.split("embedding model:")[1]


def test_an_embedding_model_asked_to_chat_is_a_400_before_any_upstream_call(client,
                                                                          fakes) -> None:
    scripts, _ = fakes
    before = len(scripts["openai"].requests)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="text-embedding-3-small",
                                       messages=[{"role": "user", "content": "hello"}])
    assert "does not answer chat requests" in caught.value.body["message"]
    assert len(scripts["openai"].requests) == before


def test_an_unknown_model_is_a_404(client) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="no-such-embedder", input="hello")
    assert caught.value.body["code"] == "model_not_found"


def test_auto_uses_the_embedding_models_in_config_order(client) -> None:
    raw = client.embeddings.with_raw_response.create(model="auto", input="auto picks",
                                                     encoding_format="float")
    assert raw.headers["x-turnout-model"] == "text-embedding-3-small"
    assert raw.headers["x-turnout-route"] == "auto"


def test_the_request_parser_refuses_token_ids_with_a_clear_message() -> None:
    with pytest.raises(BadRequest) as caught:
        EmbeddingRequest.parse({"model": "m", "input": [[1, 2], [3]]})
    assert "token ids" in str(caught.value) and "strings" in str(caught.value)
    parsed = EmbeddingRequest.parse({"model": "m", "input": "one", "encoding_format": None})
    assert parsed.texts == ("one",) and parsed.single and parsed.encoding_format == "float"
    assert FAKE_DIMENSIONS == len(fake_vector("x"))
