"""A running gateway for end-to-end tests: a real kernel and the real HTTP API on a local port."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import openai

from turnout.adapters.http import create_app
from turnout.kernel.config import parse
from turnout.kernel.kernel import Kernel

from .fakes.server import serve


class Gateway:
    """What a test gets: the base URL, the kernel, SDK clients, and the record's path."""

    def __init__(self, url: str, kernel: Kernel, db: Path) -> None:
        self.url = url
        self.kernel = kernel
        self.db = db

    def client(self, key: str = "unused", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)

    def async_client(self, key: str = "unused", **kw) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)

    def rows(self) -> list[dict]:
        """The request log, read after the recorder has flushed."""
        import sqlite3

        recorder = self.kernel.plugins.get("record")
        recorder.flush()
        with sqlite3.connect(self.db) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY created_at")]

    def attempts(self, request_id: str) -> list[dict]:
        """The attempt rows of one request, in order."""
        import sqlite3

        self.kernel.plugins.get("record").flush()
        with sqlite3.connect(self.db) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(
                "SELECT * FROM attempts WHERE request_id = ? ORDER BY n", (request_id,))]


@contextmanager
def running_gateway(config: dict, tmp_path: Path,
                    plugins: dict[str, object] | None = None) -> Iterator[Gateway]:
    """Serve a gateway for ``config`` (a config tree) with its record in ``tmp_path``;
    ``plugins`` (defined in the test, by name) load beside the built-ins."""
    db = tmp_path / "record.db"
    config = {**config, "record": {"path": str(db)}, "logging": {"level": "warning"}}
    kernel = Kernel(parse(config, source="test"))
    for name, plugin in (plugins or {}).items():
        kernel.plugins.register(plugin, name=name)
    kernel.load_plugins()
    with serve(create_app(kernel)) as url:
        yield Gateway(url, kernel, db)
