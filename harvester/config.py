"""Configuration: frozen value objects built from TOML, the environment and the command line.

Precedence, lowest first: built-in defaults, the TOML file, command-line overrides.
Secrets come only from the environment (``PELOTON_*``), never from a file or argv.
Every problem is a :class:`ConfigError` whose one-line message names the key.

Relative paths (``output.root``, ``auth.token_cache``) in a config file, or left
at their defaults when a config file is read, resolve against the file's folder,
so a cron job finds the same lake whatever its working directory; ``~`` expands.
Paths given on the command line (``--out``) stay relative to the working directory.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harvester.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("peloton-harvester.toml")
DEFAULT_ACCOUNT = "default"  # the one account's name when the config has no [[accounts]]
DEFAULT_TOKEN_DIR = "~/.cache/peloton-harvester"
# Peloton's members web app (Universal Login, pasted tokens) and the older client
# whose password grant some still report working (PELOTON_API.md 1a, 1d).
WEB_CLIENT_ID = "WVoJxVDdPoFx4RNewvvg6ch2mZ7bwnsM"
LEGACY_CLIENT_ID = "mgsmWCD0A8Qn6uz6mmqI6qeBNHH9IPwS"
ALL_DATASETS = ("workouts", "performance_graphs", "rides", "instructors", "profiles")
AUTH_METHODS = ("login", "token", "password", "session")
COMPRESSIONS = ("none", "gzip")
DEFAULT_KEEP_RUNS = 200
PATH_KEYS = (("output", "root"), ("auth", "token_cache"))  # resolved against the config's folder
# Keys people try for secrets, and the variable that holds each instead.
SECRET_KEYS = {
    "username": "PELOTON_USERNAME",
    "user": "PELOTON_USERNAME",
    "email": "PELOTON_USERNAME",
    "password": "PELOTON_PASSWORD",
    "access_token": "PELOTON_ACCESS_TOKEN",
    "token": "PELOTON_ACCESS_TOKEN",
    "refresh_token": "PELOTON_REFRESH_TOKEN",
}
TOKEN_VARIABLES = {"access_token": "PELOTON_ACCESS_TOKEN", "refresh_token": "PELOTON_REFRESH_TOKEN"}
# RFC 6750's b64token: every character a bearer token may hold, and all a header can carry safely.
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")


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
    keep_runs: int = DEFAULT_KEEP_RUNS

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser()


@dataclass(frozen=True, slots=True)
class SecretNames:
    """Which environment variables hold an account's secrets."""

    username_env: str = "PELOTON_USERNAME"
    password_env: str = "PELOTON_PASSWORD"
    access_token_env: str = "PELOTON_ACCESS_TOKEN"
    refresh_token_env: str = "PELOTON_REFRESH_TOKEN"


@dataclass(frozen=True, slots=True)
class Credentials:
    """Secrets from the environment. ``repr`` never shows them."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str], names: SecretNames = SecretNames()) -> Credentials:
        def get(name: str) -> str | None:
            return env.get(name) or None

        return cls(
            username=get(names.username_env),
            password=get(names.password_env),
            access_token=get(names.access_token_env),
            refresh_token=get(names.refresh_token_env),
        )

    def secrets(self) -> list[str]:
        """The secret values present, for redaction."""
        return [s for s in (self.password, self.access_token, self.refresh_token) if s]


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """One ``[[accounts]]`` entry; its secrets are read from the variables it names."""

    name: str
    method: str = ""  # empty: [auth].method
    username_env: str = "PELOTON_USERNAME"
    password_env: str = "PELOTON_PASSWORD"
    access_token_env: str = "PELOTON_ACCESS_TOKEN"
    refresh_token_env: str = "PELOTON_REFRESH_TOKEN"
    token_cache: str = ""  # empty: ~/.cache/peloton-harvester/<name>.json
    credentials: Credentials = field(default=Credentials(), compare=False)

    @property
    def secret_names(self) -> SecretNames:
        return SecretNames(self.username_env, self.password_env, self.access_token_env,
                           self.refresh_token_env)

    @property
    def token_cache_path(self) -> Path:
        return Path(self.token_cache or f"{DEFAULT_TOKEN_DIR}/{self.name}.json").expanduser()


@dataclass(frozen=True, slots=True)
class Config:
    api: ApiConfig = ApiConfig()
    auth: AuthConfig = AuthConfig()
    harvest: HarvestConfig = HarvestConfig()
    output: OutputConfig = OutputConfig()
    credentials: Credentials = Credentials()
    accounts: tuple[AccountConfig, ...] = ()  # [[accounts]]; empty: one account, DEFAULT_ACCOUNT

    def for_account(self, account: AccountConfig) -> Config:
        """This config as one account's run sees it: its method, token cache and secrets."""
        auth = replace(self.auth, method=account.method or self.auth.method,
                       token_cache=str(account.token_cache_path))
        return replace(self, auth=auth, credentials=account.credentials, accounts=(account,))

    def select(self, names: Sequence[str] | None) -> tuple[AccountConfig, ...]:
        """The accounts ``--account`` names (all when none), in config order; ConfigError for a stranger."""
        if not names:
            return self.accounts
        if not self.accounts:
            raise ConfigError("--account needs [[accounts]] entries in the config; "
                              "without them the one account comes from [auth] and PELOTON_*")
        known = [a.name for a in self.accounts]
        for name in names:
            if name not in known:
                hint = _suggest(name, known) or f" (known: {', '.join(known)})"
                raise ConfigError(f"--account {name!r:.70} is not in [[accounts]]{hint}")
        return tuple(a for a in self.accounts if a.name in set(names))


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
    if path is None and search_default and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        raw = _read_toml(path)
        _check_no_secrets(raw, path)
        _resolve_paths(raw, path.expanduser().absolute().parent)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})[key] = value
    config = _build(raw, env)
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


def _check_no_secrets(raw: dict[str, Any], path: Path) -> None:
    """A secret in the file is refused with the variable to set; its value is never shown."""
    for section, values in raw.items():
        tables = values if isinstance(values, list) else [values]  # [[accounts]] too
        for table in tables:
            if not isinstance(table, dict):
                continue
            for key in table:
                variable = SECRET_KEYS.get(str(key).lower())
                if variable is not None:
                    raise ConfigError(
                        f"config key {section}.{key} in {path}: secrets come from the "
                        f"environment: set {variable} (and remove the key from the file)"
                    )


def _resolve_paths(raw: dict[str, Any], folder: Path) -> None:
    """Make the relative path keys absolute against ``folder``, defaults included."""
    defaults = Config()
    for section, key in PATH_KEYS:
        values = raw.get(section)
        if values is not None and not isinstance(values, dict):
            continue  # _build names the mistake
        value = (values or {}).get(key, getattr(getattr(defaults, section), key))
        if isinstance(value, str) and value:
            raw.setdefault(section, {})[key] = resolve_path(value, folder)
    entries = raw.get("accounts")
    for entry in entries if isinstance(entries, list) else []:
        cache = entry.get("token_cache") if isinstance(entry, dict) else None
        if isinstance(cache, str) and cache:
            entry["token_cache"] = resolve_path(cache, folder)


def resolve_path(value: str, folder: Path) -> str:
    """``value`` anchored at ``folder`` when relative; ``~`` paths (expanded at use),
    absolute paths and URLs unchanged."""
    if "://" in value or value.startswith("~") or Path(value).is_absolute():
        return value
    return os.path.normpath(folder / value)


def _with_line(message: str, text: str) -> str:
    """tomllib says "at end of document" for an unclosed value: name the last line instead."""
    if "(at end of document)" in message:
        last = len(text.rstrip("\n").splitlines()) or 1
        return message.replace("(at end of document)", f"(at end of document, line {last})")
    return message


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _build(raw: dict[str, Any], env: Mapping[str, str]) -> Config:
    built: dict[str, Any] = {}
    for section, value in raw.items():
        if section == "accounts":
            built["accounts"] = _build_accounts(value, env)
            continue
        if section not in SECTIONS:
            hint = _suggest(section, list(SECTIONS))
            raise ConfigError(f"unknown config section [{section}]{hint}")
        if not isinstance(value, dict):
            raise ConfigError(f"config key {section!r} must be a table ([{section}])")
        built[section] = _build_section(section, SECTIONS[section], value)
    return replace(Config(), credentials=Credentials.from_env(env), **built)


_ACCOUNT_KEYS = [f.name for f in fields(AccountConfig) if f.name != "credentials"]
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # safe in a file name


def _build_accounts(raw: object, env: Mapping[str, str]) -> tuple[AccountConfig, ...]:
    """``[[accounts]]``, each entry checked and given its secrets; ConfigError naming entry and key."""
    if not isinstance(raw, list) or not all(isinstance(entry, dict) for entry in raw):
        raise ConfigError("config key 'accounts' must be an array of tables ([[accounts]])")
    accounts = []
    for index, entry in enumerate(raw):
        where = f"accounts[{index}]"
        for key, value in entry.items():
            if key not in _ACCOUNT_KEYS:
                raise ConfigError(f"unknown config key {where}.{key}{_suggest(key, _ACCOUNT_KEYS)}")
            if not isinstance(value, str):
                raise ConfigError(f"config key {where}.{key} must be a string, got {value!r:.60}")
            if key.endswith("_env") and not _ENV_NAME.fullmatch(value):
                raise ConfigError(f"{where}.{key} must name an environment variable, got {value!r:.60}")
        name = entry.get("name")
        if name is None or not ACCOUNT_NAME.fullmatch(name):
            raise ConfigError(f"{where}.name must be 1-64 letters, digits, '_', '.' or '-' "
                              f"(got {name!r:.70})")
        account = AccountConfig(**entry)
        accounts.append(replace(account, credentials=Credentials.from_env(env, account.secret_names)))
    return tuple(accounts)


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
    _require(not urlsplit(api.base_url).path.rstrip("/").endswith("/api"),
             f"api.base_url must not end in /api (got {api.base_url!r}): the harvester adds "
             "/api/... itself; use the host alone, e.g. https://api.onepeloton.com")
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
    _require(1 <= output.keep_runs <= 1_000_000, "output.keep_runs must be between 1 and 1000000")
    _validate_accounts(config)


def _validate_accounts(config: Config) -> None:
    """Methods known; names and token caches distinct (a shared cache would mix two accounts' tokens)."""
    names: set[str] = set()
    caches: dict[Path, str] = {}
    for account in config.accounts:
        _require(not account.method or account.method in AUTH_METHODS,
                 f"accounts {account.name!r}: method must be one of {', '.join(AUTH_METHODS)}, "
                 f"got {account.method!r}")
        _require(account.name not in names, f"[[accounts]] name {account.name!r} appears twice")
        names.add(account.name)
        other = caches.setdefault(account.token_cache_path, account.name)
        _require(other == account.name, f"accounts {other!r} and {account.name!r} share the token "
                 f"cache {account.token_cache_path}; give each its own token_cache")


def require_credentials(config: Config, account: AccountConfig | None = None) -> None:
    """Fail early, with the variable to set, when the chosen auth method lacks its secrets."""
    creds, method = config.credentials, config.auth.method
    names = account.secret_names if account is not None else SecretNames()
    whose = f"account {account.name!r}: " if account is not None else ""
    # "login" needs nothing here: a stored sign-in (`peloton-harvester login`) may do.
    if method in ("password", "session") and not (creds.username and creds.password):
        raise ConfigError(
            f"{whose}auth.method = {method!r} needs {names.username_env} and {names.password_env} "
            "in the environment"
        )
    if method == "token" and not (creds.access_token or creds.refresh_token):
        raise ConfigError(
            f"{whose}auth.method = 'token' needs {names.access_token_env} or "
            f"{names.refresh_token_env} in the environment"
        )
    if method == "token":
        for name, variable in TOKEN_VARIABLES.items():
            require_token_text(getattr(creds, name), variable)


def is_token_text(value: str) -> bool:
    """Whether ``value`` can be a token: RFC 6750 b64token characters only, so header-safe."""
    return _TOKEN_CHARS.fullmatch(value) is not None


def require_token_text(value: str | None, source: str) -> None:
    """ConfigError naming ``source`` (a variable, a file) if ``value`` cannot be a token.

    A control character or line break in a token would otherwise reach an HTTP
    header (aiohttp refuses it with a ValueError). The message never shows the value.
    """
    if value is not None and not is_token_text(value):
        raise ConfigError(
            f"{source} holds a character no token has (a control character, space or line "
            "break, often from copy and paste); set it again")


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
