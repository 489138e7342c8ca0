"""``docs/api.md`` keeps up with the code: every chat request and message field has its row in the
per-provider tables, every route the app serves is in the endpoint table, and every
``x-turnout-*`` header the source names is documented (and none the source no longer has)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import turnout.adapters
from turnout.adapters.http import create_app
from turnout.kernel.config import parse
from turnout.kernel.kernel import Kernel
from turnout.kernel.request import Message
from turnout.kernel.types import ChatRequest

PACKAGE = Path(turnout.adapters.__file__).resolve().parent.parent
DOC = PACKAGE / "docs" / "api.md"
PROVIDERS = ("OpenAI", "OpenAI-compatible", "Anthropic", "Gemini", "simulated")
VERDICTS = ("passed through", "translated", "dropped", "refused", "as OpenAI")
"""How every provider cell must start: what happens to the field."""
HEADER = re.compile(r"x-turnout-[a-z0-9]+(?:-[a-z0-9]+)*")
SOURCES = ("adapters", "plugins", "kernel", "bots")


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def section(doc: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of any level."""
    start = doc.index(heading + "\n") + len(heading) + 1
    end = re.search(r"^#{1,6} ", doc[start:], re.M)
    return doc[start:start + end.start()] if end else doc[start:]


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """The first Markdown table in ``text``: its header cells and its rows' cells."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, "no table found"
    cells = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]
    return cells[0], cells[2:]


def provider_rows(doc: str, heading: str) -> dict[str, list[str]]:
    """The rows of a per-provider table, by the backticked name of their first cell (rows
    without one, like the unknown-field row, are keyed by their text)."""
    head, rows = table(section(doc, heading))
    assert tuple(head[1:]) == PROVIDERS, f"{heading}: columns {head[1:]}"
    out: dict[str, list[str]] = {}
    for row in rows:
        assert len(row) == len(head), f"{heading}: row {row[0]!r} has {len(row)} cells"
        name = re.fullmatch(r"`([^`]+)`", row[0])
        out[name.group(1) if name else row[0]] = row[1:]
    return out


def check_verdicts(rows: dict[str, list[str]], where: str) -> None:
    for name, cells in rows.items():
        for provider, cell in zip(PROVIDERS, cells):
            assert cell.startswith(VERDICTS), \
                f"{where}: {name} / {provider} says {cell[:40]!r}, not one of {VERDICTS}"


def test_every_chat_request_field_has_a_row_with_a_verdict_per_provider(doc: str) -> None:
    rows = provider_rows(doc, "### Chat request fields per provider")
    fields = {info.alias or name for name, info in ChatRequest.model_fields.items()}
    named = {name for name in rows if re.fullmatch(r"[a-z_]+", name)}
    assert fields - named == set(), "chat fields missing from docs/api.md"
    assert named - fields == set(), "docs/api.md documents chat fields the request has not"
    assert any("passthrough_params" in " ".join(cells) for cells in rows.values()), \
        "the row for fields OpenAI does not define (passthrough_params) is missing"
    check_verdicts(rows, "chat table")


def test_every_message_field_has_a_row_with_a_verdict_per_provider(doc: str) -> None:
    rows = provider_rows(doc, "### Message fields per provider")
    fields = {f"messages[].{info.alias or name}" for name, info in Message.model_fields.items()}
    assert fields - set(rows) == set(), "message fields missing from docs/api.md"
    assert set(rows) - fields == set(), "docs/api.md documents message fields Message has not"
    check_verdicts(rows, "message table")


def test_every_embeddings_field_has_a_row(doc: str) -> None:
    from turnout.kernel.embeddings import FIELDS

    rows = provider_rows(doc, "## `POST /v1/embeddings`")
    assert set(rows) == set(FIELDS), "docs/api.md's embeddings table is not one row per field"
    check_verdicts(rows, "embeddings table")


def served_paths() -> set[str]:
    """The paths of every route the app serves with the built-in plugins, converters dropped
    (``{model_id:path}`` is ``{model_id}``)."""
    config = parse({"providers": {"p": {"kind": "openai-compatible",
                                        "base_url": "http://127.0.0.1:9/v1"}},
                    "models": {"m": {"provider": "p"}}}, source="test")
    app = create_app(Kernel(config))
    return {re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path) for route in app.routes}


def test_every_served_route_is_in_the_endpoint_table(doc: str) -> None:
    head, rows = table(section(doc, "## Endpoints"))
    documented = {path for row in rows for path in re.findall(r"(/[\w{}/.-]+)", row[0])}
    served = served_paths()
    assert {"/v1/responses", "/v1/messages", "/metrics", "/admin/keys"} <= served
    assert served - documented == set(), "routes missing from docs/api.md's endpoint table"
    assert documented - served == set(), "docs/api.md lists routes the app does not serve"


def source_headers() -> set[str]:
    found: set[str] = set()
    for folder in SOURCES:
        for path in (PACKAGE / folder).rglob("*.py"):
            found |= set(HEADER.findall(path.read_text(encoding="utf-8")))
    return found


def test_every_turnout_header_in_the_source_is_documented(doc: str) -> None:
    named = source_headers()
    assert {"x-turnout-model", "x-turnout-cache", "x-turnout-user"} <= named
    documented = {h for h in re.findall(r"`(x-turnout-[a-z0-9-]+)`", doc)}
    assert named - documented == set(), "x-turnout-* headers missing from docs/api.md"
    assert documented - named == set(), "docs/api.md names x-turnout-* headers no code has"
