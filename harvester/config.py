"""Configuration: frozen value objects built from TOML, the environment and the command line.

Precedence, lowest first: built-in defaults, the TOML file, command-line overrides.
Secrets come only from the environment (``PELOTON_*``), never from a file or argv.
Every problem is a :class:`ConfigError` whose one-line message names the key.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harvester.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("peloton-harvester.toml")
# Peloton's members web app (Universal Login, pasted tokens) and the older client
# whose password grant some still report working (PELOTON_API.md 1a, 1d).
WEB_CLIENT_ID = "WVoJxVDdPoFx4RNewvvg6ch2mZ7bwnsM"
LEGACY_CLIENT_ID = "mgsmWCD0A8Qn6uz6mmqI6qeBNHH9IPwS"
ALL_DATASETS = ("workouts", "performance_graphs", "rides", "instructors", "profiles",
                "metadata_mappings")
AUTH_METHODS = ("login", "token", "password", "session")
COMPRESSIONS = ("none", "gzip")


@dataclass(frozen=True, slots=True)
class ApiConfig:
    base_url: str = "https://api.onepeloton.com"
    auth_url: str = "https://auth.onepeloton.com"
    timeout_s: float = 30.0
    max_attempts: int = 6


@dataclass(frozen=True, slots=True)
class AuthConfig:
    method: str = "login"
    client_id: str = ""  # empty: the right client for the method (see `oauth_client_id`)
    token_cache: str = "~/.cache/peloton-harvester/tokens.json"

    @property
    def token_cache_path(self) -> Path:
        return Path(self.token_cache).expanduser()

    @property
    def oauth_client_id(self) -> str:
        """The configured client id, else the one the method needs (password: the older one)."""
        if self.client_id:
            return self.client_id
        return LEGACY_CLIENT_ID if self.method == "password" else WEB_CLIENT_ID


@dataclass(frozen=True, slots=True)
class HarvestConfig:
    concurrency: int = 8
    requests_per_second: float = 5.0
    page_size: int = 100
    every_n: int = 5
    lookback_days: float = 2
    datasets: tuple[str, ...] = ALL_DATASETS


@dataclass(frozen=True, slots=True)
class OutputConfig:
    root: str = "./peloton-lake"
    compression: str = "none"
    tables: bool = False  # rebuild the typed Parquet tables after each harvest

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser()


@dataclass(frozen=True, slots=True)
class Credentials:
    """Secrets from the environment. ``repr`` never shows them."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Credentials:
        def get(name: str) -> str | None:
            return env.get(name) or None

        return cls(
            username=get("PELOTON_USERNAME"),
            password=get("PELOTON_PASSWORD"),
            access_token=get("PELOTON_ACCESS_TOKEN"),
            refresh_token=get("PELOTON_REFRESH_TOKEN"),
        )

    def secrets(self) -> list[str]:
        """The secret values present, for redaction."""
        return [s for s in (self.password, self.access_token, self.refresh_token) if s]


@dataclass(frozen=True, slots=True)
class Config:
    api: ApiConfig = ApiConfig()
    auth: AuthConfig = AuthConfig()
    harvest: HarvestConfig = HarvestConfig()
    output: OutputConfig = OutputConfig()
    credentials: Credentials = Credentials()


SECTIONS: dict[str, type[Any]] = {
    "api": ApiConfig,
    "auth": AuthConfig,
    "harvest": HarvestConfig,
    "output": OutputConfig,
}


def load_config(
    path: Path | None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    *,
    search_default: bool = True,
) -> Config:
    """Build the run's Config.

    ``path=None`` reads ``./peloton-harvester.toml`` when present, else defaults.
    ``overrides`` maps dotted keys (``"harvest.concurrency"``) to values.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(path)
    elif search_default and DEFAULT_CONFIG_PATH.is_file():
        raw = _read_toml(DEFAULT_CONFIG_PATH)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})[key] = value
    config = _build(raw, Credentials.from_env(env))
    validate(config)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; copy config.example.toml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {_with_line(str(exc), text)}") from None


def _with_line(message: str, text: str) -> str:
    """tomllib says "at end of document" for an unclosed value: name the last line instead."""
    if "(at end of document)" in message:
        last = len(text.rstrip("\n").splitlines()) or 1
        return message.replace("(at end of document)", f"(at end of document, line {last})")
    return message


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _build(raw: dict[str, Any], credentials: Credentials) -> Config:
    built: dict[str, Any] = {}
    for section, value in raw.items():
        if section not in SECTIONS:
            hint = _suggest(section, list(SECTIONS))
            raise ConfigError(f"unknown config section [{section}]{hint}")
        if not isinstance(value, dict):
            raise ConfigError(f"config key {section!r} must be a table ([{section}])")
        built[section] = _build_section(section, SECTIONS[section], value)
    return replace(Config(), credentials=credentials, **built)


def _build_section(section: str, cls: type[Any], values: dict[str, Any]) -> Any:
    defaults = cls()
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            hint = _suggest(key, list(known))
            raise ConfigError(f"unknown config key {section}.{key}{hint}")
        kwargs[key] = _coerce(f"{section}.{key}", value, getattr(defaults, key))
    return cls(**kwargs)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check ``value`` has the type of the key's default; ints are accepted for floats."""
    if isinstance(default, bool) or isinstance(value, bool):
        if type(value) is not type(default):
            raise ConfigError(f"config key {key} must be {_type_name(default)}, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int | float):
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key {key} must be a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, type(default)):
        raise ConfigError(f"config key {key} must be {_type_name(default)}, got {value!r}")
    return value


def _type_name(default: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        type(default), type(default).__name__
    )


def validate(config: Config) -> None:
    """Range and consistency checks that types alone cannot express."""
    api, auth, harvest, output = config.api, config.auth, config.harvest, config.output
    _check_url("api.base_url", api.base_url)
    _check_url("api.auth_url", api.auth_url)
    _require(api.timeout_s > 0, "api.timeout_s must be greater than 0")
    _require(1 <= api.max_attempts <= 50, "api.max_attempts must be between 1 and 50")
    _require(auth.method in AUTH_METHODS,
             f"auth.method must be one of {', '.join(AUTH_METHODS)}, got {auth.method!r}")
    _require(bool(auth.token_cache), "auth.token_cache must not be empty")
    _require(1 <= harvest.concurrency <= 256, "harvest.concurrency must be between 1 and 256")
    _require(0 < harvest.requests_per_second <= 10_000,
             "harvest.requests_per_second must be greater than 0 and at most 10000")
    _require(1 <= harvest.page_size <= 100, "harvest.page_size must be between 1 and 100")
    _require(1 <= harvest.every_n <= 300, "harvest.every_n must be between 1 and 300")
    _require(0 <= harvest.lookback_days <= 3650, "harvest.lookback_days must be 0 or more")
    for name in harvest.datasets:
        if name not in ALL_DATASETS:
            hint = _suggest(name, list(ALL_DATASETS))
            raise ConfigError(f"harvest.datasets: unknown dataset {name!r}{hint}")
    _require("workouts" in harvest.datasets, "harvest.datasets must include 'workouts'")
    _require(output.compression in COMPRESSIONS,
             f"output.compression must be 'none' or 'gzip', got {output.compression!r}")
    _require(bool(output.root), "output.root must not be empty")


def require_credentials(config: Config) -> None:
    """Fail early, with the variable to set, when the chosen auth method lacks its secrets."""
    creds, method = config.credentials, config.auth.method
    # "login" needs nothing here: a stored sign-in (`peloton-harvester login`) may do.
    if method in ("password", "session") and not (creds.username and creds.password):
        raise ConfigError(
            f"auth.method = {method!r} needs PELOTON_USERNAME and PELOTON_PASSWORD in the environment"
        )
    if method == "token" and not (creds.access_token or creds.refresh_token):
        raise ConfigError(
            "auth.method = 'token' needs PELOTON_ACCESS_TOKEN or PELOTON_REFRESH_TOKEN in the environment"
        )


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_url(key: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key} must be an http(s) URL, got {url!r}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError(f"{key}: plain http:// is refused except for loopback hosts; use https://")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
