"""Rejects answers that are not the JSON the request asked for.

Applies when ``response_format`` is ``json_object`` (the answer must be a JSON object) or
``json_schema`` (it must also satisfy ``response_format.json_schema.schema``, checked with the
``jsonschema`` library). Tool-call answers are not judged.
"""

from __future__ import annotations

from functools import lru_cache

import jsonschema
import orjson

from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Completion, Context, Verdict

NAME = "json"


@hookimpl
def register_validators(register) -> None:
    """Register ``json``: routes judge answers with it unless their ``validators`` leave it out."""
    register(NAME, check)


def check(ctx: Context, completion: Completion) -> Verdict | None:
    """Check JSON-mode answers parse (and match the schema, when one was given)."""
    request = ctx.request
    if not request.wants_json or completion.tool_calls:
        return None
    try:
        value = orjson.loads(completion.content or "")
    except orjson.JSONDecodeError as exc:
        return Verdict(False, NAME, f"the answer is not valid JSON ({exc.msg} at {exc.pos})")
    spec = request.response_format or {}
    if spec.get("type") == "json_object":
        if not isinstance(value, dict):
            return Verdict(False, NAME, "the answer is JSON but not an object")
        return Verdict(True, NAME)
    schema = (spec.get("json_schema") or {}).get("schema")
    if schema:
        error = jsonschema.exceptions.best_match(_validator(orjson.dumps(schema)).iter_errors(value))
        if error is not None:
            return Verdict(False, NAME, f"the answer does not match the schema: {error.message}")
    return Verdict(True, NAME)


@lru_cache(maxsize=256)
def _validator(schema_json: bytes) -> jsonschema.protocols.Validator:
    schema = orjson.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)
