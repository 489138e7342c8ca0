"""``GET /openapi.json``: the document is valid OpenAPI 3.1, served without a key, lists every
route the app serves, and each request schema accepts the request its endpoint answers and
refuses a malformed one."""

from __future__ import annotations

import copy

import httpx
import jsonschema
import pytest
import schemathesis

from turnout.adapters.http.messages import Conversation, MessagesRequest
from turnout.adapters.http.openapi import EXAMPLES, build
from turnout.adapters.http.responses import ResponsesRequest
from turnout.kernel.embeddings import EmbeddingRequest
from turnout.kernel.request import ChatRequest

from .gateway import running_gateway

KEY = "sk-openapi"
CONFIG = {
    "server": {"api_keys": [{"name": "reader", "key": KEY}]},
    "providers": {"sim": {"kind": "simulated"}},
    "simulation": {"models": {"sim-chat": {"latency_ms": 0, "jitter": 0}}},
    "models": {"sim-chat": {"provider": "sim"}},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    with running_gateway(CONFIG, tmp_path_factory.mktemp("openapi")) as gw:
        yield gw


@pytest.fixture(scope="module")
def served(gateway) -> dict:
    response = httpx.get(gateway.url + "/openapi.json")  # no key: the document is public
    assert response.status_code == 200, response.text
    return response.json()


def test_the_document_is_valid_openapi_3_1(served) -> None:
    assert served["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(served).validate()  # against the OpenAPI 3.1 meta-schema
    for schema in served["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_a_broken_document_is_refused_by_the_validation() -> None:
    broken = build()
    broken["paths"]["/healthz"]["get"]["responses"] = "none"
    with pytest.raises(Exception, match="responses"):
        schemathesis.openapi.from_dict(broken).validate()


def test_every_route_the_app_serves_is_documented(gateway, served) -> None:
    from turnout.adapters.http import create_app

    app = create_app(gateway.kernel, manage_kernel=False)
    routes = {(route.path.replace(":path}", "}"), method.lower())
              for route in app.routes for method in route.methods if method != "HEAD"}
    documented = {(path, method) for path, item in served["paths"].items() for method in item}
    assert routes == documented
    plugin = {path for path, _ in gateway.kernel.http_routes.items()}
    assert plugin and all("plugin" in served["paths"][p][m]["tags"]
                          for p in plugin for m in served["paths"][p])


def test_auth_schemes_are_bearer_and_x_api_key_for_messages(served) -> None:
    schemes = served["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
    assert schemes["x-api-key"] == {"type": "apiKey", "in": "header", "name": "x-api-key"}
    assert {"x-api-key": []} in served["paths"]["/v1/messages"]["post"]["security"]
    assert served["paths"]["/v1/chat/completions"]["post"]["security"] == [{"bearer": []}]
    assert served["paths"]["/healthz"]["get"]["security"] == []


def request_validator(served: dict, path: str) -> jsonschema.Draft202012Validator:
    """A validator of ``path``'s request body, its references resolved within the document."""
    schema = served["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": served["components"]})


PARSERS = {
    "/v1/chat/completions": ChatRequest.model_validate,
    "/v1/responses": ResponsesRequest.model_validate,
    "/v1/messages": MessagesRequest.model_validate,
    "/v1/messages/count_tokens": Conversation.model_validate,
    "/v1/embeddings": EmbeddingRequest.parse,
    "/v1/feedback": lambda body: body,
}
BAD = {
    "/v1/chat/completions": [{"model": "auto"}, {"model": "auto", "messages": []},
                             {"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                              "temperature": 3}],
    "/v1/responses": [{"input": "hi"}, {"model": "", "input": "hi"},
                      {"model": "auto", "input": "hi", "max_output_tokens": 0}],
    "/v1/messages": [{"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
                     {"model": "auto", "max_tokens": 5, "messages": [], "extra": 1}],
    "/v1/messages/count_tokens": [{"model": "auto"},
                                  {"model": "auto", "messages": [{"role": "robot",
                                                                  "content": "hi"}]}],
    "/v1/embeddings": [{"model": "auto"}, {"model": "auto", "input": []},
                       {"model": "auto", "input": "hi", "dimensions": 0},
                       {"model": "auto", "input": "hi", "encoding_format": "hex"}],
    "/v1/feedback": [{"score": 1}, {"request_id": "req_1", "score": 2},
                     {"request_id": "req_1", "score": 1, "stars": 5}],
}


@pytest.mark.parametrize("path", sorted(PARSERS))
def test_each_request_schema_accepts_a_real_request_and_refuses_bad_ones(served, path) -> None:
    validator = request_validator(served, path)
    example = served["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"]
    PARSERS[path](copy.deepcopy(example))  # the endpoint's own parser takes the example
    assert list(validator.iter_errors(example)) == []
    for bad in BAD[path]:
        assert list(validator.iter_errors(bad)), f"{path} accepted {bad}"


def test_every_request_body_has_an_example() -> None:
    posts = [item["post"]["operationId"] for item in build()["paths"].values() if "post" in item]
    assert {op.removesuffix("Unversioned") for op in posts} == set(EXAMPLES)
