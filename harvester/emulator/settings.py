"""The emulator's knobs: one frozen value object, and its command-line form."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

DEFAULT_USERNAME = "demo@example.com"
DEFAULT_PASSWORD = "peloton-demo"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
MAX_PORT = 65535
# Peloton's members web app (Universal Login) and the older client pylotoncycle sends.
WEB_CLIENT_ID = "WVoJxVDdPoFx4RNewvvg6ch2mZ7bwnsM"
LEGACY_CLIENT_ID = "mgsmWCD0A8Qn6uz6mmqI6qeBNHH9IPwS"
CLIENT_ID = LEGACY_CLIENT_ID  # the client of the password grant, as before
CLIENTS = (WEB_CLIENT_ID, LEGACY_CLIENT_ID)
DEFAULT_ORCA_HOST = "localhost"  # the second listener's name: a different host than 127.0.0.1

FAULT_PROFILES = ("none", "flaky", "hostile")
RATE_LIMIT_STYLES = ("cloudflare", "retry-after", "http-date")
LEGACY_LOGIN_MODES = ("ok", "gone")
QUIRKS = frozenset({"bad_id", "missing_created_at", "null_numbers", "unknown_enum"})
# Answers built to hang or exhaust a client (hostile.py describes each).
HOSTILE_MODES = ("none", "repeat_page", "ignore_page", "lying_total", "lying_page_count",
                 "endless_body", "drip", "gzip_bomb", "duplicate_keys")
ROUTES = frozenset({"me", "user", "overview", "workouts", "workout", "performance_graph",
                    "metadata_mappings", "ride", "ride_details", "instructors", "instructor"})

# Knobs that only change how requests are answered; the rest shape the synthetic
# account and need a new emulator.
RUNTIME_KNOBS = frozenset(
    {
        "latency_ms",
        "jitter_ms",
        "rate_limit",
        "rate_burst",
        "rate_limit_style",
        "faults",
        "slow_s",
        "token_ttl",
        "legacy_login",
        "arrive_every",
        "extra_field",
        "hostile",
        "hostile_routes",
        "drip_s",
        "verification",
        "anomalies",
        "missing_csrf",
        "password_clients",
        "lockout_after",
        "code_ttl",
        "refresh_stall_s",
    }
)


MAX_ACCOUNTS = 1000


class SettingsError(ValueError):
    """A knob was given a value the emulator cannot honour; ``knob`` names it when one did."""

    def __init__(self, message: str, knob: str | None = None) -> None:
        super().__init__(message)
        self.knob = knob


@dataclass(frozen=True, slots=True)
class EmulatorSettings:
    """Everything that decides what the emulator serves and how."""

    workouts: int = 500
    history_days: int | None = None  # days the history spans; None: 1.2 a workout, 60 to 1,825
    seed: int = 1
    username: str = DEFAULT_USERNAME
    password: str = DEFAULT_PASSWORD
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_limit: float | None = None
    rate_burst: float | None = None
    rate_limit_style: str = "cloudflare"
    faults: str = "none"
    slow_s: float = 15.0
    token_ttl: float = 172800.0
    legacy_login: str = "ok"
    in_progress: bool = False
    arrive_every: int | None = None
    extra_field: bool = False
    quirks: frozenset[str] = field(default_factory=frozenset)
    hostile: str = "none"
    hostile_routes: frozenset[str] = field(default_factory=frozenset)  # empty: every /api route
    drip_s: float = 1.0
    accounts: int = 1  # members served; see logins()
    # Universal Login (PELOTON_API.md 1a)
    verification: bool = False  # the account must verify (MFA): no headless sign-in
    anomalies: int = 0  # the next N credential posts answer 403 AnomalyDetected
    missing_csrf: int = 0  # the next N /authorize answers set no _csrf cookie
    password_clients: tuple[str, ...] = (LEGACY_CLIENT_ID,)  # who may use the password grant
    lockout_after: int = 10  # wrong passwords in a row before 429 too_many_attempts
    code_ttl: float = 60.0  # authorization codes live this long, and are single-use
    refresh_stall_s: float = 0.0  # a refresh grant rotates, then waits this long to answer
    orca_host: str = DEFAULT_ORCA_HOST  # the second listener (auth-orca) as redirects name it

    def __post_init__(self) -> None:
        _check(self.workouts >= 0, "workouts", "must be 0 or more")
        _check(self.history_days is None or self.history_days >= 1, "history_days",
               "must be 1 or more")
        _check(1 <= self.accounts <= MAX_ACCOUNTS, "accounts", f"must be between 1 and {MAX_ACCOUNTS}")
        _check(self.faults in FAULT_PROFILES, "faults", f"must be one of {FAULT_PROFILES}")
        _check(self.rate_limit_style in RATE_LIMIT_STYLES, "rate_limit_style",
               f"must be one of {RATE_LIMIT_STYLES}")
        _check(self.legacy_login in LEGACY_LOGIN_MODES, "legacy_login", "must be ok or gone")
        _check(self.rate_limit is None or _finite(self.rate_limit) > 0, "rate_limit",
               "must be a number of requests per second greater than 0")
        _check(self.rate_burst is None or _finite(self.rate_burst) >= 1, "rate_burst",
               "must be 1 or more")
        _check(self.arrive_every is None or self.arrive_every >= 1, "arrive_every",
               "must be 1 or more")
        _check(_finite(self.latency_ms) >= 0, "latency_ms", "must be 0 or more")
        _check(_finite(self.jitter_ms) >= 0, "jitter_ms", "must be 0 or more")
        _check(_finite(self.slow_s) >= 0, "slow_s", "must be 0 or more")
        _check(_finite(self.token_ttl) > 0, "token_ttl", "must be greater than 0")
        _check(self.anomalies >= 0, "anomalies", "must be 0 or more")
        _check(self.missing_csrf >= 0, "missing_csrf", "must be 0 or more")
        _check(self.lockout_after >= 1, "lockout_after", "must be 1 or more")
        _check(_finite(self.code_ttl) > 0, "code_ttl", "must be greater than 0")
        _check(_finite(self.refresh_stall_s) >= 0, "refresh_stall_s", "must be 0 or more")
        unknown_clients = set(self.password_clients) - set(CLIENTS)
        _check(not unknown_clients, "password_clients", f"must be among {CLIENTS}")
        unknown = set(self.quirks) - QUIRKS
        _check(not unknown, "quirks", f"has unknown {sorted(unknown)}; known: {sorted(QUIRKS)}")
        _check(self.hostile in HOSTILE_MODES, "hostile", f"must be one of {HOSTILE_MODES}")
        routes = set(self.hostile_routes) - ROUTES
        _check(not routes, "hostile_routes",
               f"has unknown {sorted(routes)}; known: {sorted(ROUTES)}")
        _check(_finite(self.drip_s) > 0, "drip_s", "must be greater than 0")

    def logins(self) -> list[tuple[str, str]]:
        """(username, password) of each account: the first is --username/--password,
        account k (2, 3, ...) is ``user<k>@example.com`` / ``pass<k>``."""
        return [(self.username, self.password)] + [
            (f"user{k}@example.com", f"pass{k}") for k in range(2, self.accounts + 1)
        ]

    @property
    def burst(self) -> float:
        """Token-bucket size: one second's worth unless set."""
        if self.rate_burst is not None:
            return self.rate_burst
        return max(1.0, self.rate_limit or 1.0)

    def updated(self, changes: dict[str, Any]) -> EmulatorSettings:
        """A copy with runtime knobs changed; account-shaping knobs are refused."""
        refused = set(changes) - RUNTIME_KNOBS
        if refused:
            raise SettingsError(f"cannot change {sorted(refused)} at runtime")
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as exc:
            raise SettingsError(str(exc)) from exc


def _check(ok: bool, knob: str, rule: str) -> None:
    if not ok:
        raise SettingsError(f"{knob} {rule}", knob)


def _finite(value: float) -> float:
    """``value``, or NaN (which fails every comparison) when it is infinite or NaN."""
    return value if math.isfinite(value) else math.nan


def parse_quirks(text: str) -> frozenset[str]:
    """'bad_id,null_numbers' -> frozenset; empty text -> no quirks."""
    return frozenset(q.strip() for q in text.split(",") if q.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options (with their defaults in the help) to a parser."""
    d = EmulatorSettings()
    add = parser.add_argument
    add("--host", default=DEFAULT_HOST, help=f"interface to bind (default {DEFAULT_HOST})")
    add(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port, 0 = any free (default {DEFAULT_PORT})",
    )
    add(
        "--workouts",
        type=int,
        default=d.workouts,
        help=f"workouts in the synthetic account (default {d.workouts})",
    )
    add("--history-days", type=int, default=None,
        help="days the history spans; more workouts a day make a "
        "denser account (default: 1.2 days a workout, at least 60, at most 1,825)")
    add("--seed", type=int, default=d.seed, help=f"seed; same seed, same data (default {d.seed})")
    add(
        "--username",
        default=d.username,
        help=f"login name of the synthetic account (default {d.username})",
    )
    add("--password", default=d.password, help=f"its password (default {d.password})")
    add(
        "--accounts",
        type=int,
        default=d.accounts,
        help="members served, sharing classes and instructors: the first logs in with "
        "--username/--password, account K (2, 3, ...) with userK@example.com / passK; "
        "each has --workouts workouts (default 1)",
    )
    add(
        "--latency-ms", type=float, default=d.latency_ms, help="fixed delay per request (default 0)"
    )
    add(
        "--jitter-ms",
        type=float,
        default=d.jitter_ms,
        help="extra uniform random delay, up to this (default 0)",
    )
    add(
        "--rate-limit",
        type=float,
        default=None,
        help="requests/s allowed before 429s (default: unlimited)",
    )
    add(
        "--rate-burst",
        type=float,
        default=None,
        help="token-bucket burst (default: one second's worth)",
    )
    add(
        "--rate-limit-style",
        choices=RATE_LIMIT_STYLES,
        default=d.rate_limit_style,
        help=(
            f"how a 429 looks (default {d.rate_limit_style}: "
            "text 'error code: 1015', no Retry-After)"
        ),
    )
    add(
        "--faults",
        choices=FAULT_PROFILES,
        default=d.faults,
        help="none; flaky (~5%% of /api requests fail); hostile (~20%%, some slow) (default none)",
    )
    add(
        "--slow-s",
        type=float,
        default=d.slow_s,
        help=f"stall of a 'slow' fault (default {d.slow_s})",
    )
    add(
        "--token-ttl",
        type=float,
        default=d.token_ttl,
        help=f"access-token lifetime, s (default {d.token_ttl:.0f})",
    )
    add(
        "--legacy-login",
        choices=LEGACY_LOGIN_MODES,
        default=d.legacy_login,
        help="ok: /auth/login works; gone: it answers 403 as since Nov 2025 (default ok)",
    )
    add("--in-progress", action="store_true", help="newest workout is IN_PROGRESS")
    add(
        "--arrive-every", type=int, default=None, help="a new workout arrives every K list requests"
    )
    add("--extra-field", action="store_true", help="add an undocumented key to every workout")
    add("--quirks", default="", help=f"comma list of {','.join(sorted(QUIRKS))} (default none)")
    add(
        "--hostile",
        choices=HOSTILE_MODES,
        default=d.hostile,
        help="answer like a hostile server: repeat_page, ignore_page, lying_total, "
        "lying_page_count (the workout list); endless_body, drip, gzip_bomb, duplicate_keys "
        "(bodies) (default none)",
    )
    add(
        "--hostile-routes",
        default="",
        help="comma list of routes the body modes hit, e.g. workouts,performance_graph "
        "(default: every /api route)",
    )
    add("--drip-s", type=float, default=d.drip_s,
        help=f"seconds between two bytes of a drip answer (default {d.drip_s:g})")
    add("--verification", action="store_true",
        help="Universal Login asks for a verification step (MFA): only a browser gets through")
    add("--anomalies", type=int, default=0,
        help="the first N credential posts answer 403 AnomalyDetected (default 0)")
    add("--missing-csrf", type=int, default=0,
        help="the first N /authorize answers set no _csrf cookie (default 0)")
    add("--password-clients", default=",".join(d.password_clients),
        help=f"client ids the password grant accepts (default {','.join(d.password_clients)}; "
        f"the web client {WEB_CLIENT_ID} is refused with unauthorized_client, as today)")
    add("--lockout-after", type=int, default=d.lockout_after,
        help=f"wrong passwords before 429 too_many_attempts (default {d.lockout_after})")
    add("--code-ttl", type=float, default=d.code_ttl,
        help=f"authorization code lifetime, s (default {d.code_ttl:.0f})")
    add("--orca-host", default=d.orca_host,
        help=f"the name redirects give the second loopback listener (default {d.orca_host})")


def settings_from_args(ns: argparse.Namespace) -> tuple[EmulatorSettings, str, int]:
    """Settings, host and port from parsed arguments; SettingsError naming the option."""
    if not 0 <= ns.port <= MAX_PORT:
        raise SettingsError(f"--port must be between 0 and {MAX_PORT} (0: any free port)")
    try:
        return _settings(ns), ns.host, ns.port
    except SettingsError as exc:
        if exc.knob is None:
            raise
        option = "--" + exc.knob.replace("_", "-")
        raise SettingsError(f"{option}{str(exc).removeprefix(exc.knob)}", exc.knob) from None


def _settings(ns: argparse.Namespace) -> EmulatorSettings:
    return EmulatorSettings(
        workouts=ns.workouts,
        history_days=ns.history_days,
        seed=ns.seed,
        username=ns.username,
        password=ns.password,
        latency_ms=ns.latency_ms,
        jitter_ms=ns.jitter_ms,
        rate_limit=ns.rate_limit,
        rate_burst=ns.rate_burst,
        rate_limit_style=ns.rate_limit_style,
        faults=ns.faults,
        slow_s=ns.slow_s,
        token_ttl=ns.token_ttl,
        legacy_login=ns.legacy_login,
        in_progress=ns.in_progress,
        arrive_every=ns.arrive_every,
        extra_field=ns.extra_field,
        quirks=parse_quirks(ns.quirks),
        hostile=ns.hostile,
        hostile_routes=parse_quirks(ns.hostile_routes),
        drip_s=ns.drip_s,
        accounts=ns.accounts,
        verification=ns.verification,
        anomalies=ns.anomalies,
        missing_csrf=ns.missing_csrf,
        password_clients=tuple(c.strip() for c in ns.password_clients.split(",") if c.strip()),
        lockout_after=ns.lockout_after,
        code_ttl=ns.code_ttl,
        orca_host=ns.orca_host,
    )
