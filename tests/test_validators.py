"""The built-in validators, their route tables, and their place in the pipeline."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from turnout.kernel import errors
from turnout.kernel.config import parse_text
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.kernel import Kernel
from turnout.kernel.types import Completion, Context, Usage, Verdict
from turnout.plugins import sandbox
from turnout.plugins import validators as v
from turnout.plugins.json_validator import check as json_check

from .support import ROUTING, ask, kernel_for

BUILTINS = {**ROUTING, "validators": "turnout.plugins.validators:Validators"}


def ctx(**kw) -> Context:
    return Context(request=ask("the question", model="chain", **kw))


def answer(text: str | None, **kw) -> Completion:
    return Completion(content=text, **kw)


# --- each kind ---------------------------------------------------------------------------------


def test_json_parses_and_conforms_to_the_requests_schema() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}
    c = ctx(response_format=schema)
    assert json_check(c, answer('{"n": 3}')).ok
    bad = json_check(c, answer('{"n": "three"}'))
    assert not bad.ok and "schema" in bad.reason
    broken = json_check(c, answer("{nope"))
    assert not broken.ok and "not valid JSON" in broken.reason
    assert json_check(ctx(), answer("plain text")) is None  # the request asked for no JSON


def test_regex_must_match_and_must_not() -> None:
    s = v.RegexSettings(pattern=r"^\d+$")
    assert v.regex(ctx(), answer("42"), s).ok
    failed = v.regex(ctx(), answer("forty-two"), s)
    assert not failed.ok and "does not match" in failed.reason
    banned = v.RegexSettings(pattern="as an ai", flags="i", must_match=False)
    assert v.regex(ctx(), answer("Sure: 4."), banned).ok
    failed = v.regex(ctx(), answer("As an AI, I think 4."), banned)
    assert not failed.ok and "must not" in failed.reason


def test_regex_settings_reject_a_bad_pattern_and_flags() -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        v.RegexSettings(pattern="(unclosed")
    with pytest.raises(ValueError, match="unknown flags"):
        v.RegexSettings(pattern="x", flags="q")


def test_length_in_characters_and_tokens() -> None:
    s = v.LengthSettings(min_chars=2, max_chars=10)
    assert v.length(ctx(), answer("hello"), s).ok
    short = v.length(ctx(), answer("h"), s)
    assert not short.ok and "1 characters; at least 2" in short.reason
    assert not v.length(ctx(), answer("x" * 11), s).ok
    t = v.LengthSettings(max_tokens=3)
    assert v.length(ctx(), answer("one two"), t).ok
    long = v.length(ctx(), answer("one two three four five six"), t)
    assert not long.ok and "tokens; at most 3" in long.reason
    assert not v.length(ctx(), answer("hi"), v.LengthSettings(min_tokens=5)).ok
    with pytest.raises(ValueError, match="min_chars"):
        v.LengthSettings(min_chars=5, max_chars=2)


def test_labels_trimmed_case_insensitive_and_punctuation() -> None:
    s = v.LabelsSettings(labels=["yes", "no"])
    assert v.labels(ctx(), answer("  YES \n"), s).ok
    failed = v.labels(ctx(), answer("Yes."), s)
    assert not failed.ok and "not one of yes, no" in failed.reason
    assert v.labels(ctx(), answer("Yes."), v.LabelsSettings(labels=["yes", "no"],
                                                            strip_punctuation=True)).ok
    assert not v.labels(ctx(), answer("maybe"), s).ok


def test_logprobs_mean_bound_and_missing_logprobs() -> None:
    s = v.LogprobsSettings(min_mean=-0.5)
    sure = {"content": [{"token": "a", "logprob": -0.1}, {"token": "b", "logprob": -0.3}]}
    passed = v.logprobs(ctx(), answer("ab", logprobs=sure), s)
    assert passed.ok and passed.score == pytest.approx(math.exp(-0.2))
    unsure = {"content": [{"token": "a", "logprob": -2.0}, {"token": "b", "logprob": -0.4}]}
    failed = v.logprobs(ctx(), answer("ab", logprobs=unsure), s)
    assert not failed.ok and "-1.200 is below -0.5" in failed.reason
    assert v.logprobs(ctx(), answer("ab"), s) is None  # does not apply
    required = v.logprobs(ctx(), answer("ab"), v.LogprobsSettings(require=True))
    assert not required.ok and "no logprobs" in required.reason


CODE = "Here:\n\n```python\ndef add(a, b):\n    return a + b\n```\nDone."


@pytest.mark.anyio
async def test_code_passes_and_fails_its_tests() -> None:
    passing = v.CodeSettings(tests="assert add(2, 3) == 5")
    assert (await v.code(ctx(), answer(CODE), passing)).ok
    failing = v.CodeSettings(tests="assert add(2, 3) == 6, 'add is wrong'")
    verdict = await v.code(ctx(), answer(CODE), failing)
    assert not verdict.ok and "AssertionError: add is wrong" in verdict.reason
    none = await v.code(ctx(), answer("def add(a, b): return a + b"), passing)
    assert not none.ok and "no ```python block" in none.reason


@pytest.mark.anyio
async def test_code_with_a_syntax_error_fails_with_its_line() -> None:
    broken = "```python\nx = 1\ndef f(:\n    pass\n```"
    verdict = await v.code(ctx(), answer(broken), v.CodeSettings())
    assert not verdict.ok and "does not parse" in verdict.reason and "line 2" in verdict.reason


@pytest.mark.anyio
async def test_code_that_runs_too_long_is_killed() -> None:
    slow = "```python\nimport time\ntime.sleep(30)\n```"
    verdict = await v.code(ctx(), answer(slow), v.CodeSettings(timeout_s=0.5))
    assert not verdict.ok and "did not finish within 0.5s" in verdict.reason


@pytest.mark.anyio
async def test_code_runs_isolated_in_a_temporary_directory_with_a_memory_limit() -> None:
    probe = ("```python\nimport os\nassert os.listdir('.') == ['answer.py', 'tests.py'] or "
             "sorted(os.listdir('.')) == ['answer.py', 'tests.py']\n"
             "assert 'HTTP_PROXY' not in os.environ and 'OPENAI_API_KEY' not in os.environ\n```")
    assert (await v.code(ctx(), answer(probe), v.CodeSettings())).ok
    hog = "```python\nx = bytearray(400 << 20)\n```"
    verdict = await v.code(ctx(), answer(hog), v.CodeSettings(memory_mb=128))
    assert not verdict.ok and "MemoryError" in verdict.reason


# --- the code validator's sandbox --------------------------------------------------------------

_MISSING = sandbox.support().missing()
isolation = pytest.mark.skipif(
    bool(_MISSING) and os.environ.get("CI") != "true",
    reason=f"this machine cannot sandbox code (missing: {', '.join(_MISSING)}); under CI=true "
    "these tests run and fail instead")


def py(code: str) -> Completion:
    return answer(f"```python\n{code}\n```")


@isolation
@pytest.mark.anyio
async def test_code_cannot_write_create_or_remove_outside_its_directory(tmp_path) -> None:
    kept = tmp_path / "kept.txt"
    kept.write_text("mine")
    for attempt in (f"open({str(tmp_path / 'escaped.txt')!r}, 'w').write('x')",
                    f"import os; os.mkdir({str(tmp_path / 'made')!r})",
                    f"import os; os.remove({str(kept)!r})",
                    f"open({str(kept)!r}, 'a').write('more')",
                    f"import os; os.truncate({str(kept)!r}, 0)"):
        verdict = await v.code(ctx(), py(attempt), v.CodeSettings())
        assert not verdict.ok and "PermissionError" in verdict.reason, (attempt, verdict)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]
    assert kept.read_text() == "mine"


@isolation
@pytest.mark.anyio
async def test_code_writes_freely_inside_its_own_directory() -> None:
    inside = ("import os\nos.mkdir('d')\nopen('d/a.txt', 'w').write('x' * 10)\n"
              "os.rename('d/a.txt', 'b.txt')\nos.truncate('b.txt', 3)\n"
              "assert open('b.txt').read() == 'xxx'\nos.remove('b.txt')\nos.rmdir('d')\n"
              "import tempfile\nwith tempfile.TemporaryFile() as f:\n    f.write(b'ok')\n"
              "open('/dev/null', 'w').write('discarded')")
    verdict = await v.code(ctx(), py(inside), v.CodeSettings())
    assert verdict.ok, verdict.reason


@isolation
@pytest.mark.anyio
async def test_code_may_read_files_outside_its_directory(tmp_path) -> None:
    """Reading is not isolated (documented in turnout.plugins.sandbox): the interpreter needs
    its standard library, so a file the gateway's user can read, the code can read."""
    readable = tmp_path / "readable.txt"
    readable.write_text("visible")
    reads = f"assert open({str(readable)!r}).read() == 'visible'"
    assert (await v.code(ctx(), py(reads), v.CodeSettings())).ok


@isolation
@pytest.mark.anyio
async def test_code_cannot_reach_a_listening_socket_of_this_machine(tmp_path) -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "daemon.sock"))
    unix.listen()
    port = tcp.getsockname()[1]
    try:
        for attempt in (f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)",
                        f"import socket; socket.create_connection(('localhost', {port}), 2)",
                        f"import socket; s = socket.socket(socket.AF_UNIX); "
                        f"s.connect({str(tmp_path / 'daemon.sock')!r})",
                        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                        "s.sendto(b'x', ('127.0.0.1', 53))"):
            verdict = await v.code(ctx(), py(attempt), v.CodeSettings())
            assert not verdict.ok and ("PermissionError" in verdict.reason
                                       or "Network is unreachable" in verdict.reason
                                       or "gaierror" in verdict.reason), (attempt, verdict)
        for listener in (tcp, unix):
            listener.settimeout(0.2)
            with pytest.raises(TimeoutError):
                listener.accept()  # nobody connected
    finally:
        tcp.close()
        unix.close()


@isolation
@pytest.mark.anyio
async def test_code_cannot_signal_the_gateway_and_its_processes_die_with_its_timeout() -> None:
    signals = f"import os; os.kill({os.getpid()}, 0)"
    verdict = await v.code(ctx(), py(signals), v.CodeSettings())
    assert not verdict.ok and ("ProcessLookupError" in verdict.reason
                               or "PermissionError" in verdict.reason), verdict.reason
    marker = f"{os.getpid()}.{uuid.uuid4().int % 10**6}"
    spawns = (f"import subprocess, time\nsubprocess.Popen(['sleep', '{marker}'])\n"
              "time.sleep(60)")
    verdict = await v.code(ctx(), py(spawns), v.CodeSettings(timeout_s=1.0))
    assert not verdict.ok and "did not finish" in verdict.reason
    await anyio.sleep(0.3)
    assert not _running("sleep", marker), "a process the code started outlived its timeout"


def _running(*argv: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if [part.decode(errors="replace") for part in cmdline if part] == list(argv):
            found.append(entry.name)
    return found


@pytest.mark.anyio
async def test_code_fails_closed_where_the_sandbox_cannot_be_set_up(tmp_path, monkeypatch) -> None:
    # This machine's capabilities are the edge being simulated: no Landlock, no namespaces.
    monkeypatch.setattr(sandbox, "support", lambda: sandbox.Support(
        landlock_abi=0, namespaces=False, seccomp=True))
    marker = tmp_path / "ran.txt"
    writes = py(f"open({str(marker)!r}, 'w').write('ran')")
    verdict = await v.code(ctx(), writes, v.CodeSettings())
    assert not verdict.ok and verdict.reason.startswith("the code was not run")
    assert "network" in verdict.reason and "user namespaces" in verdict.reason
    assert "writes" in verdict.reason and "Landlock" in verdict.reason
    assert 'sandbox = "best_effort"' in verdict.reason
    assert not marker.exists()
    best_effort = await v.code(ctx(), writes, v.CodeSettings(sandbox="best_effort"))
    assert best_effort.ok and "without these protections: network, writes" in best_effort.reason
    assert marker.read_text() == "ran"


def test_the_child_fails_closed_when_a_protection_fails_as_it_sets_up(tmp_path) -> None:
    """Where the gateway believed a protection available but the child cannot set it up (here:
    Landlock on a directory that is gone), the child reports it and exits before the code."""
    child = ("import importlib.util, sys\n"
             f"spec = importlib.util.spec_from_file_location('sb', {sandbox.__file__!r})\n"
             "m = sys.modules['sb'] = importlib.util.module_from_spec(spec)\n"
             "spec.loader.exec_module(m)\n"
             f"m.enter({str(tmp_path / 'gone')!r}, ['writes'], True, int(sys.argv[1]))\n"
             "print('the code ran')\n")
    read_end, write_end = os.pipe()
    try:
        done = subprocess.run([sys.executable, "-I", "-c", child, str(write_end)],
                              capture_output=True, pass_fds=(write_end,), timeout=30)
        os.close(write_end)
        report = json.loads(os.read(read_end, 65536))
    finally:
        os.close(read_end)
    assert done.returncode == sandbox.EXIT_NOT_SANDBOXED and b"the code ran" not in done.stdout
    assert list(report) == ["writes"] and "No such file" in report["writes"]


@isolation
@pytest.mark.anyio
async def test_a_sandbox_the_child_could_not_set_up_fails_the_answer(monkeypatch) -> None:
    """The gateway side of the check above: a report of a failed protection fails the answer
    under "required" and is named in the reason under "best_effort"."""
    monkeypatch.setattr(v, "_PRELUDE", v._PRELUDE.replace(
        "_sandbox.enter({root!r}", "_sandbox.enter({root!r} + '/gone'"))
    verdict = await v.code(ctx(), py("x = 1"), v.CodeSettings())
    assert not verdict.ok and verdict.reason.startswith("the code was not run")
    assert "writes: " in verdict.reason and "No such file" in verdict.reason
    ran = await v.code(ctx(), py("x = 1"), v.CodeSettings(sandbox="best_effort"))
    assert ran.ok and "without these protections: writes" in ran.reason


def test_parse_judgement_is_lenient() -> None:
    assert v.parse_judgement('{"score": 8, "reason": "good"}') == (8.0, "good")
    assert v.parse_judgement('Sure!\n```json\n{"score": "6"}\n```') == (6.0, "")
    assert v.parse_judgement("Score: 9/10") == (9.0, "")
    assert v.parse_judgement("no idea") is None


# --- the config surface ------------------------------------------------------------------------

TOML = """\
[providers.p]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"

[models.small]
provider = "p"

[models.big]
provider = "p"

[routes.json-cascade]
models = ["small", "big"]
validators = {validators}
"""


def with_validators(validators: str) -> str:
    return TOML.format(validators=validators)


def load(text: str) -> Kernel:
    kernel = Kernel(parse_text(text, source="gateway.toml"), builtins=BUILTINS)
    kernel.load_plugins()
    return kernel


def test_a_route_lists_names_and_tables() -> None:
    kernel = load(with_validators('["json", { kind = "length", min_chars = 2 }]'))
    configured = kernel.wiring.validators["json-cascade"]
    assert [kind for kind, _ in configured] == ["json", "length"]
    assert configured[0][1] is None and configured[1][1].min_chars == 2
    assert [name for name, _ in kernel._route_validators["json-cascade"]] == ["json", "length"]
    # a route without validators runs those that take no settings
    assert [name for name, _ in kernel._default_validators] == ["json"]


def test_a_bad_key_of_a_validator_table_names_file_and_line() -> None:
    with pytest.raises(errors.ConfigError) as caught:
        load(with_validators('["json", { kind = "length", min_chars = -1 }]'))
    assert "gateway.toml:13: routes.json-cascade.validators[1].min_chars" in str(caught.value)
    with pytest.raises(errors.ConfigError, match=r"validators\[1\].min_char: unknown key"):
        load(with_validators('["json", { kind = "length", min_char = 2 }]'))


def test_an_unknown_validator_kind_lists_the_registered_ones() -> None:
    text = with_validators('["json", { kind = "lenght" }]')
    with pytest.raises(errors.ConfigError) as caught:
        load(text)
    message = str(caught.value)
    assert "gateway.toml:13: routes.json-cascade.validators[1].kind: unknown validator " \
           "'lenght'; registered: code, json, judge, labels, length, logprobs, regex" in message
    with pytest.raises(errors.ConfigError, match=r"validators\[0\]: unknown validator 'nope'"):
        load(with_validators('["nope"]'))
    with pytest.raises(errors.ConfigError, match=r"validators\[0\].kind: a validator table needs"):
        load(with_validators('[{ min_chars = 1 }]'))
    with pytest.raises(errors.ConfigError, match=r"validators\[0\].pattern: required key"):
        load(with_validators('["regex"]'))


class Picky:
    """A third-party validator with settings and a two-argument one, side by side."""

    class Settings(v._Settings):
        """Settings of ``picky``."""

        word: str = "please"

    @hookimpl
    def register_validators(self, register):
        register("picky", lambda ctx, completion, settings: Verdict(
            settings.word in (completion.content or ""), "picky", f"no {settings.word!r}"),
            settings=self.Settings)
        register("plain", lambda ctx, completion: Verdict(True, "plain"))


@pytest.mark.anyio
async def test_a_plugins_validator_gets_its_settings_and_two_argument_checks_still_work() -> None:
    kernel, provider, _ = kernel_for(
        {"small": ["no", "no"], "big": ["thanks"]},
        route={"validators": ["plain", {"kind": "picky", "word": "thanks"}]},
        plugins={"picky": Picky()})
    async with kernel:
        got = await kernel.ask(ask(model="chain"))
    assert got.content == "thanks" and provider.calls == ["small", "big"]


# --- through the pipeline ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_fallback_moves_on_when_a_table_validator_fails() -> None:
    kernel, provider, _ = kernel_for(
        {"small": ["x", "y"], "big": ["a longer answer"]},
        route={"validators": ["json", {"kind": "length", "min_chars": 5}]},
        plugins={"validators": v.Validators()})
    async with kernel:
        got = await kernel.ask(ask(model="chain"))
    assert got.content == "a longer answer"
    assert provider.calls == ["small", "big"]  # a failed verdict moves to the next model


@pytest.mark.anyio
async def test_a_route_without_validators_does_not_run_those_with_settings() -> None:
    kernel, provider, _ = kernel_for({"small": ["x"]}, plugins={"validators": v.Validators()})
    async with kernel:
        got = await kernel.ask(ask(model="chain"))
    assert got.content == "x" and provider.calls == ["small"]


@pytest.mark.anyio
async def test_judge_fails_an_answer_and_fallback_moves_on_its_cost_in_the_parents() -> None:
    judge = {"kind": "judge", "model": "big", "rubric": "A greeting.", "min_score": 7}
    kernel, provider, recorder = kernel_for(
        {"small": ["meh"],
         "big": ['{"score": 3, "reason": "not a greeting"}', "hello there", 'Sure: {"score": 9}']},
        route={"validators": [judge]}, plugins={"validators": v.Validators()})
    async with kernel:
        got = await kernel.ask(ask(model="chain"))
    assert got.content == "hello there"
    assert provider.calls == ["small", "big", "big", "big"]  # answer, judge, answer, judge
    small, big = (kernel.models.get(m).cost(Usage(10, 5)) for m in ("small", "big"))
    assert got.cost_usd == pytest.approx(small + 3 * big)
    assert len(recorder.records) == 3  # the request and its two judge sub-requests


@pytest.mark.anyio
async def test_judge_verdicts_carry_the_score() -> None:
    judge = {"kind": "judge", "model": "big", "min_score": 7}
    plugin = v.Validators()
    kernel, provider, _ = kernel_for({"small": ["hello"], "big": ['{"score": 9, "reason": "ok"}']},
                                     route={"validators": [judge]},
                                     plugins={"validators": plugin})
    async with kernel:
        parent = kernel.context(ask(model="chain"))
        settings = kernel.wiring.validators["chain"][0][1]
        verdict = await plugin.judge(parent, answer("hello"), settings)
        low = v.JudgeSettings(model="big", min_score=10)
        provider.script["big"].append('{"score": 4, "reason": "weak"}')
        failed = await plugin.judge(parent, answer("hello"), low)
    assert verdict.ok and verdict.score == 0.9 and "scored 9/10: ok" in verdict.reason
    assert not failed.ok and failed.score == 0.4 and "below 10" in failed.reason
    assert provider.calls == ["big", "big"]
    assert len(parent.children) == 2 and parent.spend_usd > 0
