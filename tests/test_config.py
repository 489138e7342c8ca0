"""Config loading: TOML and YAML alike, ${ENV} interpolation, clear errors, documented keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.adapters.cli import main
from turnout.kernel import config
from turnout.kernel.config_docs import reference
from turnout.kernel.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

TOML = """
[server]
port = 4100
api_keys = [{ name = "team", key = "${TEAM_KEY}" }]

[providers.up]
kind = "openai-compatible"
base_url = "${UP_URL:-http://127.0.0.1:9999/v1}"
api_key = "${UP_KEY}"

[models.m]
provider = "up"
input_price = 1.5

[routes.r]
models = ["m"]
"""

YAML = """
server:
  port: 4100
  api_keys:
    - name: team
      key: ${TEAM_KEY}
providers:
  up:
    kind: openai-compatible
    base_url: ${UP_URL:-http://127.0.0.1:9999/v1}
    api_key: ${UP_KEY}
models:
  m:
    provider: up
    input_price: 1.5
routes:
  r:
    models: [m]
"""

ENV = {"TEAM_KEY": "team-secret", "UP_KEY": "sk-upstream-secret"}


def test_toml_and_yaml_give_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(TOML)
    (tmp_path / "a.yaml").write_text(YAML)
    a = config.load(tmp_path / "a.toml", environ=ENV)
    b = config.load(tmp_path / "a.yaml", environ=ENV)
    assert a.model_dump(mode="json") == b.model_dump(mode="json")
    assert a.providers["up"].base_url == "http://127.0.0.1:9999/v1"
    assert a.providers["up"].api_key == "sk-upstream-secret"
    assert "sk-upstream-secret" not in repr(a), "a provider's table is not shown in a repr"


def test_missing_env_var_names_key_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(TOML)
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "a.toml", environ={"TEAM_KEY": "x"})
    message = str(info.value)
    assert "a.toml:9" in message and "providers.up.api_key" in message and "UP_KEY" in message


@pytest.mark.parametrize("text, where, expected", [
    ("[server]\nport = 99999\n", "t.toml:2", "server.port"),
    ("[server]\nprot = 1\n", "t.toml:2", "unknown key"),
    ("[providers.p]\nkind = 'openai'\n\n[models.m]\nprovider = 'q'\n", "t.toml", "no provider 'q'"),
    ("[server]\nhost = '0.0.0.0'\n", "t.toml", "not loopback"),
    ("[server\n", "t.toml", "not valid TOML"),
])
def test_errors_say_what_is_expected(text: str, where: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse_text(text, source="t.toml", environ={})
    assert where in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize("text, where", [
    ("[routes.r]\nmodels = []\n", "t.toml:2"),
    ("[routes.r]\nstrategy = 'race'\n", "t.toml:1"),
])
def test_a_route_without_models_is_an_error_unless_its_strategy_needs_none(text: str,
                                                                          where: str) -> None:
    from turnout.kernel.kernel import Kernel

    parsed = config.parse_text(text, source="t.toml", environ={})  # the schema allows it
    assert parsed.routes["r"].models == []
    with pytest.raises(ConfigError) as info:
        Kernel(parsed).load_plugins()  # the strategy decides
    assert f"{where}: routes.r.models: strategy " in str(info.value)
    assert "needs models: list them" in str(info.value)


def test_yaml_errors_carry_lines() -> None:
    with pytest.raises(ConfigError, match=r"t.yaml:3: models.m.context_window"):
        config.parse_text("models:\n  m:\n    context_window: huge\n    provider: p\n"
                          "providers:\n  p: {kind: openai}\n", source="t.yaml", environ={})


def test_embedded_default_is_valid_and_adds_real_providers_for_keys() -> None:
    plain = config.load(environ={})
    assert set(plain.providers) == {"fleet"}
    with_keys = config.load(environ={"OPENAI_API_KEY": "sk-real", "GEMINI_API_KEY": "g"})
    assert {"openai", "gemini"} <= set(with_keys.providers)
    assert with_keys.routes["cheap"].models[0] in with_keys.models


def test_every_key_is_documented_the_plugins_keys_included() -> None:
    from turnout.kernel.config_docs import builtin_kernel, sections, undocumented

    kernel = builtin_kernel()
    titles = [title for title, _ in sections(kernel)]
    for owned in ("[record]", "[telemetry]", "[simulation]", "[simulation.models.NAME]",
                  "[providers.NAME.timeout]",
                  "[routes.NAME.fallback]", '[state] backend = "memory"'):
        assert owned in titles
    kinds = next(title for title in titles if title.startswith("[providers.NAME] kind"))
    assert all(f'"{kind}"' in kinds for kind in ("openai", "openai-compatible", "anthropic",
                                                   "gemini", "simulated"))
    assert undocumented(kernel) == []


def test_docs_configuration_md_carries_the_current_reference() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    embedded = text.split("<!-- reference:start -->\n", 1)[1].split("<!-- reference:end -->", 1)[0]
    assert embedded.strip() == reference().strip(), "regenerate with: turnout config docs"


def test_cli_config_check(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.yaml"
    good.write_text("[server]\nport = 4001\n")
    bad.write_text("server:\n  port: -1\n")
    assert main(["config", "check", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:2" in err and "server.port" in err and "Traceback" not in err


PROBLEMS = """
[providers.fleet]
kind = "simulated"

[providers.local]
kind = "openai-compatible"

[providers.odd]
kind = "carrier-pigeon"

[models.m]
provider = "fleet"

[models.lost]
provider = "nowhere"

[routes.r]
models = ["m"]
strategy = "shuffle"

[routes.r.fallback]
retry_after_cap_s = -1

[routes.r.cascade]
tiers = 2

[recrod]
path = "x.db"

[plugins]
load = ["no_such_module.plugin:Thing"]
"""


def test_config_check_lists_every_problem_at_once_with_lines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(PROBLEMS)
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    expected = [
        "gateway.toml:15: models.lost.provider: no provider 'nowhere'",
        "gateway.toml:31: plugins.load[0]: plugin 'no_such_module.plugin:Thing': module "
        "'no_such_module' not found",
        "gateway.toml:27: recrod: unknown key",
        "gateway.toml:9: providers.odd.kind: unknown provider kind 'carrier-pigeon'",
        "gateway.toml:5: providers.local: kind 'openai-compatible' needs base_url",
        "gateway.toml:19: routes.r.strategy: unknown strategy 'shuffle'; registered: cascade, "
        "chain, critic, ensemble, fallback, race",
        "gateway.toml:22: routes.r.fallback.retry_after_cap_s:",
        "gateway.toml:25: routes.r.cascade.tiers: unknown key",
    ]
    for line in expected:
        assert line in err, f"missing: {line}\n{err}"
    assert "Traceback" not in err


def test_serve_refuses_the_same_problems_before_binding(tmp_path: Path) -> None:
    from turnout.kernel.kernel import Kernel

    path = tmp_path / "gateway.toml"
    path.write_text(PROBLEMS)
    with pytest.raises(ConfigError, match="no provider 'nowhere'"):
        config.load(path)  # references first, as serve loads it
    kernel = Kernel(config.load(path, references=False))
    with pytest.raises(ConfigError) as info:
        kernel.load_plugins()
    assert "unknown provider kind 'carrier-pigeon'" in str(info.value)


def test_stats_reads_record_path_without_provider_secrets(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[providers.p]\nkind = "openai"\napi_key = "${UNSET_PROVIDER_KEY}"\n\n'
                    f'[record]\npath = "{tmp_path / "none.db"}"\n')
    assert main(["stats", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "UNSET_PROVIDER_KEY" not in err
    assert "no requests have been recorded at" in err and "none.db" in err


def test_a_rule_on_a_renamed_task_says_what_to_write_instead() -> None:
    text = """\
[providers.p]
kind = "simulated"

[models.m]
provider = "p"

[routes.r]
models = ["m"]

[[routing.rules]]
when = { task = "translate" }
route = "r"
"""
    with pytest.raises(ConfigError) as caught:
        config.parse_text(text, source="gateway.toml")
    assert "gateway.toml:" in str(caught.value) and "routing.rules[0].when" in str(caught.value)
    assert "task 'translate' is no longer a task type: write 'translation'" in str(caught.value)
    with pytest.raises(ConfigError, match="needs_tools"):
        config.parse_text(text.replace('"translate"', '["tools", "code"]'), source="gateway.toml")
