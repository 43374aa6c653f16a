"""Configuration: TOML + environment + overrides, and one clear line per mistake."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harvester.config import Config, load_config, require_credentials
from harvester.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_loads_and_equals_defaults() -> None:
    """config.example.toml documents exactly the built-in defaults."""
    example = Path(__file__).resolve().parent.parent / "config.example.toml"
    config = load_config(example, env={})
    # Its relative root resolves against the file's folder, as any config file's does.
    defaults = Config()
    root = str(example.parent / "peloton-lake")
    assert config == replace(defaults, output=replace(defaults.output, root=root))


def test_empty_client_id_means_the_methods_own_client() -> None:
    """client_id = "": login and token use the web app's client, password the older one."""
    clients = {m: load_config(None, env={}, overrides={"auth.method": m}, search_default=False)
               .auth.oauth_client_id for m in ("login", "token", "password")}
    assert clients == {"login": "WVoJxVDdPoFx4RNewvvg6ch2mZ7bwnsM",
                       "token": "WVoJxVDdPoFx4RNewvvg6ch2mZ7bwnsM",
                       "password": "mgsmWCD0A8Qn6uz6mmqI6qeBNHH9IPwS"}
    explicit = load_config(None, env={}, overrides={"auth.client_id": "abc"}, search_default=False)
    assert explicit.auth.oauth_client_id == "abc"


def test_env_supplies_secrets_and_overrides_win(tmp_path: Path) -> None:
    """Secrets come from PELOTON_* and command-line overrides beat the file."""
    path = write(tmp_path, "[harvest]\nconcurrency = 4\nrequests_per_second = 2\n")
    config = load_config(path, env={"PELOTON_USERNAME": "u", "PELOTON_PASSWORD": "p"},
                         overrides={"harvest.concurrency": 9})
    assert config.harvest.concurrency == 9
    assert config.harvest.requests_per_second == 2.0
    assert config.credentials.username == "u"
    assert "p" not in repr(config.credentials)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[harvest]\nconcurency = 3\n", "unknown config key harvest.concurency; did you mean 'concurrency'?"),
        ("[harvset]\n", "unknown config section [harvset]; did you mean 'harvest'?"),
        ("[harvest]\nconcurrency = 'x'\n", "harvest.concurrency must be an integer"),
        ("[harvest]\nconcurrency = 0\n", "harvest.concurrency must be between 1 and 256"),
        ("[harvest]\nrequests_per_second = -1\n", "harvest.requests_per_second must be greater than 0"),
        ("[harvest]\ndatasets = ['workouts', 'ridez']\n", "unknown dataset 'ridez'; did you mean 'rides'?"),
        ("[auth]\nmethod = 'oauth'\n", "auth.method must be one of login, token, password, session"),
        ("[output]\ncompression = 'zstd'\n", "output.compression must be 'none' or 'gzip'"),
        ("[api]\nbase_url = 'http://api.example.com'\n", "plain http:// is refused"),
        ("[api]\nmax_attempts = true\n", "api.max_attempts must be an integer"),
        ("harvest = 3\n", "config key 'harvest' must be a table"),
    ],
)
def test_bad_config_names_key_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    """Each mistake gives a one-line ConfigError naming the key."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_toml_syntax_error_gives_line(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the line."""
    with pytest.raises(ConfigError, match=r"TOML syntax error: .*line 2"):
        load_config(write(tmp_path, "[harvest]\nconcurrency = = 3\n"), env={})


def test_missing_config_file_is_config_error(tmp_path: Path) -> None:
    """An explicit --config that does not exist is an error, not silently ignored."""
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_loopback_http_is_allowed(tmp_path: Path) -> None:
    """http:// is fine for loopback hosts (the emulator)."""
    path = write(tmp_path, "[api]\nbase_url = 'http://127.0.0.1:8080'\nauth_url = 'http://localhost:1'\n")
    assert load_config(path, env={}).api.base_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("method", "env", "missing"),
    [
        ("password", {"PELOTON_USERNAME": "u"}, "PELOTON_PASSWORD"),
        ("session", {}, "PELOTON_USERNAME"),
        ("token", {"PELOTON_USERNAME": "u", "PELOTON_PASSWORD": "p"}, "PELOTON_ACCESS_TOKEN"),
    ],
)
def test_missing_credentials_name_the_variable(
    tmp_path: Path, method: str, env: dict[str, str], missing: str
) -> None:
    """Missing secrets for the chosen method name the environment variable to set."""
    config = load_config(write(tmp_path, f"[auth]\nmethod = '{method}'\n"), env=env)
    with pytest.raises(ConfigError, match=missing):
        require_credentials(config)
