"""The third-party plugin package in examples/ installs, loads through its entry points, adds a
provider kind that the gateway's config file names, and routes a request through its own router
to that provider over the HTTP API."""

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

CONFIG = """
[providers.echo]
kind = "echo"             # registered by the example package
prefix = ">> "

[providers.fleet]
kind = "simulated"

[models.example-echo]
provider = "echo"
context_window = 8192
input_price = 0.01
output_price = 0.02

[models.sim-small]
provider = "fleet"

[routes.general]
models = ["sim-small"]

[example_router]
prefix = "/echo"
model = "example-echo"

[simulation.models.sim-small]
latency_ms = 5
error_rate = 0
rate_limit_rate = 0

[record]
path = "record.db"
"""


def test_installed_example_plugin_routes_and_answers(tmp_path: Path) -> None:
    site, source = tmp_path / "site", tmp_path / "turnout-example"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(source)], check=True)
    assert list(site.glob("turnout_example-*.dist-info/entry_points.txt"))

    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    env["PYTHONPATH"] = str(site)
    env["TURNOUT_PLUGINS"] = "example_provider,example_router"
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "turnout.adapters.cli", "serve", "--port",
                               str(port), "--config", str(config)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server, base)
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "/echo down the line"}],
            extra_headers={"x-turnout-explain": "1"})
        assert raw.parse().choices[0].message.content == ">> line the down /echo"
        assert raw.headers["x-turnout-provider"] == "echo"
        assert raw.headers["x-turnout-model"] == "example-echo"
        assert raw.headers["x-turnout-route"] == "example:command"
        assert "example_router" in raw.headers["x-turnout-decision"]

        stream = client.chat.completions.create(
            model="example-echo", stream=True,
            messages=[{"role": "user", "content": "one two three"}])
        assert "".join(c.choices[0].delta.content or "" for c in stream).strip() == \
            ">> three two one"

        other = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hello"}])
        assert other.headers["x-turnout-provider"] == "fleet"  # the rest still goes the usual way
        models = [m.id for m in client.models.list()]
        assert "example-echo" in models
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=30)
    assert "Traceback" not in stderr
