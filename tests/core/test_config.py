"""Strict configuration: unknown keys name the file, line and nearest valid key."""

from __future__ import annotations

from pathlib import Path

import pytest

from argosy.core.config import load_settings, parse_config
from argosy.core.errors import ConfigError


def test_unknown_key_names_file_line_and_nearest_key() -> None:
    text = "server:\n  host: 0.0.0.0\n  prot: 9000\n"
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "argosy.yaml", {})
    msg = str(exc.value)
    assert "argosy.yaml, line 3" in msg
    assert "unknown key 'server.prot'" in msg
    assert "did you mean 'server.port'" in msg


def test_nested_unknown_key_and_bad_type() -> None:
    text = "providers:\n  local:\n    price_per_hr: 1\nserver:\n  port: not-a-port\n"
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "x.yaml", {})
    msg = str(exc.value)
    assert "line 3" in msg and "providers.local.price_per_hour" in msg
    assert "line 5" in msg and "'server.port'" in msg


def test_env_overrides_file_and_defaults(tmp_path: Path) -> None:
    s = parse_config(
        "server:\n  port: 9000\n", env={"ARGOSY_SERVER_PORT": "9100", "ARGOSY_HOME": str(tmp_path)}
    )
    assert s.server.port == 9100
    assert s.home == tmp_path.resolve()
    assert s.db_url == f"sqlite:///{tmp_path.resolve() / 'argosy.db'}"


def test_invalid_yaml_and_non_mapping() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("server: [", "a.yaml", {})
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config("- 1\n- 2\n", "a.yaml", {})


def test_config_file_found_in_home(tmp_path: Path) -> None:
    (tmp_path / "argosy.yaml").write_text("log_level: DEBUG\n")
    s = load_settings({"ARGOSY_HOME": str(tmp_path)})
    assert s.log_level == "DEBUG"
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"ARGOSY_CONFIG": str(tmp_path / "missing.yaml")})
