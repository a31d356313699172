"""Settings precedence: CLI > LLMLB_* environment > TOML file > defaults."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmlb.common.settings import (
    NodeSettings,
    RouterSettings,
    UnknownSetting,
    load_settings,
    parse_size,
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('log_level = "warning"\nparallel = 3\n[node]\nport = 40000\nctx-size = 2048\n')
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in ("LLMLB_PORT", "LLMLB_NODE_PORT", "LLMLB_ROUTER_PORT", "LLMLB_PARALLEL",
                "LLMLB_CONFIG", "LLMLB_CTX_SIZE"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LLMLB_HOME", str(tmp_path / "home"))


def test_defaults_apply_without_any_source(tmp_path: Path) -> None:
    settings = load_settings(NodeSettings, {}, tmp_path / "missing.toml")
    assert settings.port == 32769
    assert settings.parallel == 4
    assert settings.home == tmp_path / "home"


def test_toml_overrides_defaults_and_node_table_overrides_top_level(config: Path) -> None:
    settings = load_settings(NodeSettings, {}, config)
    assert settings.port == 40000
    assert settings.ctx_size == 2048  # dashes in TOML keys work too
    assert settings.parallel == 3
    assert settings.log_level == "warning"


def test_env_overrides_toml(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMLB_NODE_PORT", "41000")
    settings = load_settings(NodeSettings, {}, config)
    assert settings.port == 41000
    assert settings.ctx_size == 2048


def test_cli_overrides_env_and_none_means_not_given(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMLB_NODE_PORT", "41000")
    settings = load_settings(NodeSettings, {"port": 42000, "parallel": None}, config)
    assert settings.port == 42000
    assert settings.parallel == 3


def test_config_file_found_through_env(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMLB_CONFIG", str(config))
    assert load_settings(NodeSettings, {}).port == 40000


def test_allow_cpu_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMLB_ALLOW_CPU", "1")
    assert load_settings(NodeSettings, {}, tmp_path / "none.toml").allow_cpu is True


def test_sizes_accept_units(tmp_path: Path) -> None:
    settings = load_settings(NodeSettings, {"memory_budget": "1.5GiB"}, tmp_path / "x.toml")
    assert settings.memory_budget == int(1.5 * 2**30)
    assert parse_size("512MB") == 512_000_000
    assert parse_size(1024) == 1024


def test_bad_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a size"):
        load_settings(NodeSettings, {"memory_budget": "lots"}, tmp_path / "x.toml")
    with pytest.raises(ValidationError):
        load_settings(NodeSettings, {"parallel": 0}, tmp_path / "x.toml")


def test_one_port_variable_never_reaches_both_parts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Review finding: LLMLB_PORT gave the router and the node of `llmlb up` the same port."""
    none = tmp_path / "none.toml"
    monkeypatch.setenv("LLMLB_PORT", "41000")
    assert load_settings(NodeSettings, {}, none).port == 32769
    assert load_settings(RouterSettings, {}, none).port == 32768
    monkeypatch.setenv("LLMLB_ROUTER_PORT", "41001")
    monkeypatch.setenv("LLMLB_NODE_HOST", "0.0.0.0")
    assert load_settings(RouterSettings, {}, none).port == 41001
    assert load_settings(NodeSettings, {}, none).host == "0.0.0.0"
    assert load_settings(RouterSettings, {}, none).host == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("paralel = 3\n", "'paralel' at the top level"),
        ("[node]\nheartbeat_interval = 3\n", "'heartbeat_interval' at [node]"),
        ("[router]\nctx-size = 3\n", "'ctx-size' at [router]"),
        ("port = 1\n", "put it in [node] or [router]"),
        ("[nodes]\nport = 1\n", "unknown table [nodes]"),
    ],
)
def test_unknown_toml_keys_are_refused_by_name(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(UnknownSetting, match=re.escape(named)):
        load_settings(NodeSettings, {}, path)


def test_shared_keys_work_for_both_parts(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('log_level = "debug"\nparallel = 2\nqueue_size = 5\n')
    assert load_settings(NodeSettings, {}, path).parallel == 2
    assert load_settings(RouterSettings, {}, path).queue_size == 5
    assert load_settings(RouterSettings, {}, path).log_level == "debug"


def test_cloud_keys_come_from_the_providers_variables_or_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for provider in ("OPENAI", "ANTHROPIC", "GOOGLE"):
        for name in (f"{provider}_API_KEY", f"{provider}_BASE_URL"):
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(f"LLMLB_{name}", raising=False)
    config = tmp_path / "config.toml"
    config.write_text('[router]\ngoogle_api_key = "g-from-file"\n')
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/anthropic")
    settings = load_settings(RouterSettings, {}, config)
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-from-env"
    assert "sk-from-env" not in repr(settings)  # a key never shows in a log of the settings
    assert settings.google_api_key is not None
    assert settings.google_api_key.get_secret_value() == "g-from-file"
    assert settings.anthropic_base_url == "http://127.0.0.1:9/anthropic"
    assert settings.anthropic_api_key is None
