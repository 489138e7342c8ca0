"""The configuration reference, generated from the schema so the docs cannot drift from it.

``turnout config docs`` prints it; ``docs/configuration.md`` embeds it, and a test checks the two
agree.
"""

from __future__ import annotations

import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .config import Config

SECTIONS: list[tuple[str, str]] = [
    ("server", "[server]"),
    ("server.api_keys", "[[server.api_keys]]"),
    ("providers", "[providers.NAME]"),
    ("providers.timeout", "[providers.NAME.timeout]"),
    ("models", "[models.NAME]"),
    ("routes", "[routes.NAME]"),
    ("routing", "[routing]"),
    ("routing.rules", "[[routing.rules]]"),
    ("plugins", "[plugins]"),
    ("record", "[record]"),
    ("logging", "[logging]"),
    ("telemetry", "[telemetry]"),
    ("simulation", "[simulation]"),
    ("simulation.models", "[simulation.models.NAME]"),
]


def _section_model(path: str) -> type[BaseModel]:
    model: type[BaseModel] = Config
    for part in path.split("."):
        annotation = model.model_fields[part].annotation
        model = _inner_model(annotation)
    return model


def _inner_model(annotation: typing.Any) -> type[BaseModel]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        try:
            return _inner_model(arg)
        except TypeError:
            continue
    raise TypeError(f"no model in {annotation!r}")


def _type_name(annotation: typing.Any) -> str:
    text = str(annotation).replace("typing.", "").replace("pydantic.types.", "")
    text = text.replace("<class '", "").replace("'>", "")
    return text.replace("turnout.kernel.config.", "").replace(" | ", " \\| ")


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory else field.default
    if isinstance(value, BaseModel):
        return "(table)"
    return f"`{value!r}`"


def reference() -> str:
    """Markdown: one table per section, one row per key."""
    out = []
    for path, title in SECTIONS:
        model = _section_model(path)
        doc = (model.__doc__ or "").strip().splitlines()[0]
        out.append(f"### `{title}`\n\n{doc}\n\n| key | type | default | meaning |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            nested = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
            meaning = (field.description or "").replace("|", "\\|")
            if nested or _is_model_collection(field.annotation):
                meaning = meaning or "See its own section."
            out.append(f"| `{name}` | `{_type_name(field.annotation)}` | {_default(field)} "
                       f"| {meaning} |")
        out.append("")
    return "\n".join(out)


def _is_model_collection(annotation: typing.Any) -> bool:
    try:
        _inner_model(annotation)
        return True
    except TypeError:
        return False
