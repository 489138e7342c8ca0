"""Config loading: TOML and YAML alike, ${ENV} interpolation, clear errors, documented keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

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
    assert a.providers["up"].api_key.get_secret_value() == "sk-upstream-secret"
    assert "sk-upstream-secret" not in repr(a)


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
    ("[routes.r]\nmodels = []\n", "t.toml:2", "routes.r.models"),
    ("[server]\nhost = '0.0.0.0'\n", "t.toml", "not loopback"),
    ("[providers.p]\nkind = 'openai-compatible'\n", "t.toml", "needs base_url"),
    ("[server\n", "t.toml", "not valid TOML"),
])
def test_errors_say_what_is_expected(text: str, where: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse_text(text, source="t.toml", environ={})
    assert where in str(info.value) and expected in str(info.value)


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


def test_every_key_is_documented() -> None:
    def walk(model: type[BaseModel], path: str) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            if not field.description:
                missing.append(f"{path}{name}")
        return missing

    from turnout.kernel.config_docs import SECTIONS, _section_model
    missing = walk(config.Config, "")
    for path, _ in SECTIONS:
        missing += walk(_section_model(path), path + ".")
    assert missing == []


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
