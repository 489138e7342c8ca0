"""`make run`'s command on a fresh machine: no config, no keys, answers `auto` within seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent

KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "TURNOUT_CONFIG",
        "TURNOUT_PLUGINS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def turnout(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    return subprocess.Popen([sys.executable, "-m", "turnout.adapters.cli", *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)


def wait_ready(server: subprocess.Popen, base: str, limit_s: float = 30) -> None:
    """Poll /readyz until the gateway answers 200; fail if it exits or takes over ``limit_s``."""
    started = time.monotonic()
    while True:
        assert server.poll() is None, server.stderr.read()
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() - started < limit_s, f"not ready within {limit_s} s"
        time.sleep(0.1)


def test_serve_with_embedded_defaults_answers_auto_and_records_it(tmp_path: Path) -> None:
    port = free_port()
    server = turnout("serve", "--port", str(port), cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        wait_ready(server, base)
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Say hello in one line."}])
        answer = raw.parse()
        assert raw.headers["x-turnout-model"].startswith("sim-")
        assert raw.headers["x-turnout-route"] in {"cheap", "balanced", "strong"}
        assert answer.choices[0].message.content.startswith("[sim-")
        assert float(raw.headers["x-turnout-cost-usd"]) > 0
        assert time.monotonic() - started < 30
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=30)
    assert "no API keys configured" in stderr and "127.0.0.1" in stderr
    assert "Traceback" not in stderr

    stats = subprocess.run([sys.executable, "-m", "turnout.adapters.cli", "stats", "--db",
                            str(tmp_path / "turnout.db")], capture_output=True, text=True)
    assert stats.returncode == 0, stats.stderr
    assert raw.headers["x-turnout-model"] in stats.stdout


def test_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    """The README's Python quick start, run against `turnout serve` on the embedded defaults
    (the fleet seeded, so the run repeats exactly)."""
    import re

    import yaml

    from turnout.kernel.defaults import embedded

    readme = (ROOT / "README.md").read_text()
    first, other_apis = re.findall(r"```python\n(.*?)```", readme, re.S)
    snippet = first + other_apis  # the second continues the first (it reuses its client)
    config = embedded({})
    config["simulation"]["seed"] = 7
    (tmp_path / "seeded.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    server = turnout("serve", "--config", "seeded.yaml", "--port", str(port), cwd=tmp_path)
    try:
        wait_ready(server, f"http://127.0.0.1:{port}")
        script = tmp_path / "quickstart.py"
        script.write_text(snippet.replace("127.0.0.1:4000", f"127.0.0.1:{port}"))
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        assert lines[0].split()[0] in {"cheap", "balanced", "strong"}
        assert lines[1].startswith("[sim-")
        json_line = next(i for i, line in enumerate(lines) if line.strip().startswith("{"))
        assert '"' in lines[json_line]
        # The Messages and Responses APIs answered, then the embedding has the fleet's 256.
        assert lines[json_line + 1].startswith("[sim-") and lines[json_line + 2].startswith("[sim-")
        assert lines[-1] == "256"
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)


def test_route_explain_prints_the_decision(tmp_path: Path) -> None:
    prompt = "Prove step by step that there are infinitely many primes, and analyze why."
    proc = turnout("route", "--explain", prompt, "--json", cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert '"route": "strong"' in out and '"rule": "hard prompts go strong"' in out
    assert '"estimated_cost_usd"' in out and '"complexity"' in out
    proc = turnout("route", "--explain", prompt, cwd=tmp_path)  # for people: text
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "strong" in out and "hard prompts go strong" in out and "{" not in out.splitlines()[0]
    assert list(tmp_path.iterdir()) == [], "explaining records nothing: no request log is made"


def test_cli_errors_are_readable(tmp_path: Path) -> None:
    proc = turnout("serve", "--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "cannot read config" in err and "Traceback" not in err
    proc = turnout("serve", "--host", "0.0.0.0", cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "not loopback" in err
