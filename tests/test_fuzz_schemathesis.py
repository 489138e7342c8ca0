"""schemathesis against every operation of ``GET /openapi.json``: a running gateway in front of
the simulated fleet (a chat model and an embedding model) is sent generated requests, valid and
invalid, for each endpoint; no answer may be a server error, and every answer must carry a
documented status and content type and conform to its documented schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from turnout.adapters.http.openapi import build

from .gateway import running_gateway

KEY = "sk-fuzz"
CONFIG = {
    "server": {"api_keys": [{"name": "fuzzer", "key": KEY}]},
    "providers": {"sim": {"kind": "simulated"}},
    "simulation": {"models": {
        "sim-chat": {"latency_ms": 0, "jitter": 0, "quality": 1.0, "tokens_per_s": 100000},
        "sim-embed": {"latency_ms": 0, "jitter": 0}}},
    "models": {"sim-chat": {"provider": "sim"},
               "sim-embed": {"provider": "sim", "capabilities": ["embeddings"]}},
}
EXAMPLES = 30
"""Examples per operation and mode: the whole file stays well under two minutes."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    with running_gateway(CONFIG, tmp_path_factory.mktemp("fuzz")) as gw:
        yield gw


@pytest.fixture(scope="module")
def api(gateway):
    """The gateway's own document, as it serves it."""
    return schemathesis.openapi.from_url(gateway.url + "/openapi.json")


PATHS = build()["paths"]
"""The document without a kernel: every operation but the routes plugins register (which carry
no schema)."""
CASES = [(path, method.upper(), mode) for path, item in PATHS.items() for method, op in item.items()
         for mode in GenerationMode
         if mode is GenerationMode.POSITIVE or "requestBody" in op or "parameters" in op]
"""Every operation with valid input, and with invalid input where it takes any."""


@pytest.mark.parametrize(("path", "method", "mode"), CASES,
                         ids=[f"{m} {p} {g.value}" for p, m, g in CASES])
def test_no_server_error_and_every_answer_conforms(api, gateway, path: str, method: str,
                                                     mode: GenerationMode) -> None:
    operation = api[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        case.call_and_validate(base_url=gateway.url, checks=CHECKS,
                               headers={"authorization": f"Bearer {KEY}"})

    run()


EXAMPLE_CASES = [(path, stream) for path, item in PATHS.items()
                 if "example" in item.get("post", {}).get("requestBody", {}).get(
                     "content", {}).get("application/json", {})
                 for stream in (False, True)
                 if not stream or "text/event-stream" in item["post"]["responses"]["200"]["content"]]
"""Every documented example, and its streamed form where the answer can be an event stream."""


@pytest.mark.parametrize(("path", "stream"), EXAMPLE_CASES,
                         ids=[f"{p}{' stream' if s else ''}" for p, s in EXAMPLE_CASES])
def test_each_documented_example_is_answered_as_documented(api, gateway, path: str,
                                                           stream: bool) -> None:
    operation = api[path]["POST"]
    body = dict(PATHS[path]["post"]["requestBody"]["content"]["application/json"]["example"])
    if stream:
        body["stream"] = True
    case = operation.Case(body=body, media_type="application/json")
    response = case.call_and_validate(base_url=gateway.url, checks=CHECKS,
                                      headers={"authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text
    media = response.headers["content-type"][0].split(";")[0]
    assert media == ("text/event-stream" if stream else "application/json")
