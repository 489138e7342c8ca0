"""The configuration reference, generated from the schemas so the docs cannot drift from them.

The kernel's sections come from :mod:`turnout.kernel.config`; every other table from the models
the loaded plugins declare: plugin sections (``[record]``), provider kinds
(``[providers.NAME]``), strategy sub-tables (``[routes.NAME.fallback]``), validator tables
(``[routes.NAME] validators = { kind = "length" }``) and store backends
(``[state] backend = "memory"``). ``turnout config docs`` prints it; ``docs/configuration.md`` embeds it,
and a test checks the two agree.
"""

from __future__ import annotations

import re
import typing
from typing import TYPE_CHECKING

from pydantic import BaseModel, RootModel
from pydantic_core import PydanticUndefined

from .config import Config, Logging, Model, Plugins, Route, Routing, Server, StateSection
from .strategy import NoSettings

if TYPE_CHECKING:
    from .kernel import Kernel

KERNEL: list[tuple[str, type[BaseModel]]] = [
    ("[server]", Server),
    ("[models.NAME]", Model),
    ("[routes.NAME]", Route),
    ("[routing]", Routing),
    ("[plugins]", Plugins),
    ("[state]", StateSection),
    ("[logging]", Logging),
]
"""The kernel's own tables, in reading order."""


def sections(kernel: Kernel) -> list[tuple[str, type[BaseModel]]]:
    """Every table and its model: the kernel's, then what the kernel's plugins declare."""
    out = list(KERNEL)
    kinds: dict[type[BaseModel], list[str]] = {}
    for kind, entry in kernel.provider_kinds.items():
        kinds.setdefault(entry.settings, []).append(f'"{kind}"')
    for model, names in kinds.items():
        out.append((f"[providers.NAME] kind = {' or '.join(names)}", model))
    for name, strategy in kernel.strategies.items():
        model = getattr(strategy, "Settings", None)
        if model is not None and model is not NoSettings:  # no table to write
            out.append((f"[routes.NAME.{name}]", model))
    for name, validator in kernel.validators.items():
        if validator.settings is not None:
            out.append((f'[routes.NAME] validators = {{ kind = "{name}" }}', validator.settings))
    for name, router in kernel.routers.items():
        if router.settings is not None:
            out.append((f'[routes.NAME] router = {{ kind = "{name}" }}', router.settings))
    for backend, factory in kernel.store_backends.items():
        model = getattr(factory, "Settings", None)
        if model is not None:
            out.append((f'[state] backend = "{backend}"', model))
    for name, plugin in kernel.plugins.items():
        model = getattr(plugin, "Settings", None)
        if isinstance(model, type) and issubclass(model, RootModel):
            item = _inner_model(model.model_fields["root"].annotation)
            if item is not None:  # a list of tables: [[budgets]]
                out.append((f"[[{name}]]", item))
        elif isinstance(model, type) and issubclass(model, BaseModel):
            out.append((f"[{name}]", model))
        model = getattr(plugin, "RouteSettings", None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            out.append((f"[routes.NAME] keys of the {name} plugin", model))
    expanded: list[tuple[str, type[BaseModel]]] = []
    for title, model in out:
        for section in [(title, model), *_nested(title, model)]:
            if section not in expanded:
                expanded.append(section)
    return expanded


def _nested(title: str, model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """Sub-tables of ``model`` (a field holding a model, or a dict of models), as sections."""
    found = []
    base = re.match(r"\[*([^\] ]+)", title).group(1)  # "[routes.NAME] keys of..." -> routes.NAME
    for name, field in model.model_fields.items():
        inner = _inner_model(field.annotation)
        if inner is None:
            continue
        origin = typing.get_origin(field.annotation)
        sub = f"[{base}.{name}.NAME]" if origin is dict else (
            f"[[{base}.{name}]]" if origin is list else f"[{base}.{name}]")
        found.append((sub, inner))
        found += _nested(sub, inner)
    return found


def builtin_kernel() -> Kernel:
    """A kernel with the built-in plugins loaded (and nothing started), to read their models."""
    from . import config as config_module
    from .kernel import Kernel

    kernel = Kernel(config_module.parse({}, source="(reference)"))
    kernel.load_plugins()
    return kernel


def _inner_model(annotation: typing.Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _type_name(annotation: typing.Any) -> str:
    text = str(annotation).replace("typing.", "").replace("pydantic.types.", "")
    text = text.replace("<class '", "").replace("'>", "")
    text = re.sub(r"\bturnout(?:\.\w+)*\.(?=[A-Z])", "", text)  # module paths of our models
    return text.replace(" | ", " \\| ")


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory else field.default
    if isinstance(value, BaseModel):
        return "(table)"
    return f"`{value!r}`"


def reference(kernel: Kernel | None = None) -> str:
    """Markdown: one table per section, one row per key."""
    kernel = kernel or builtin_kernel()
    out = [_table("(top level)", Config)]
    for title, model in sections(kernel):
        out.append(_table(title, model))
    return "\n".join(out)


def _table(title: str, model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip().splitlines()[0]
    rows = [f"### `{title}`\n\n{doc}\n\n| key | type | default | meaning |\n|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        meaning = (field.description or "").replace("|", "\\|")
        if _inner_model(field.annotation) is not None:
            meaning = meaning or "See its own section."
        rows.append(f"| `{name}` | `{_type_name(field.annotation)}` | {_default(field)} "
                    f"| {meaning} |")
    return "\n".join(rows) + "\n"


def undocumented(kernel: Kernel | None = None) -> list[str]:
    """Keys without a description, as ``section.key``: each key is documented where declared."""
    kernel = kernel or builtin_kernel()
    missing = []
    for title, model in [("(top level)", Config), *sections(kernel)]:
        missing += [f"{title} {name}" for name, field in model.model_fields.items()
                    if not field.exclude and not field.description]
    return missing
