"""The third-party plugin package in examples/ installs, loads through its entry points, and
routes a request through its own router to its own provider."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import openai

from .test_serve import KEYS, free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "turnout-example"


def test_installed_example_plugin_routes_and_answers(tmp_path: Path) -> None:
    site, source = tmp_path / "site", tmp_path / "turnout-example"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(source)], check=True)
    assert list(site.glob("turnout_example-*.dist-info/entry_points.txt"))

    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    env["PYTHONPATH"] = str(site)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "turnout.adapters.cli", "serve", "--port",
                               str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server, base)
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "/echo down the line"}],
            extra_headers={"x-turnout-explain": "1"})
        assert raw.parse().choices[0].message.content == "line the down /echo"
        assert raw.headers["x-turnout-provider"] == "example"
        assert raw.headers["x-turnout-route"] == "example:command"
        assert "example_router" in raw.headers["x-turnout-decision"]

        stream = client.chat.completions.create(
            model="example-echo", stream=True,
            messages=[{"role": "user", "content": "one two three"}])
        assert "".join(c.choices[0].delta.content or "" for c in stream).strip() == \
            "three two one"

        other = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hello"}])
        assert other.headers["x-turnout-provider"] == "fleet"  # the rest still goes the usual way
        models = [m.id for m in client.models.list()]
        assert "example-echo" in models
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=30)
    assert "Traceback" not in stderr
