"""Command line: parse, configure logging, run a command, map errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import NoReturn

import anyio
import orjson

from harvester import __version__
from harvester.accounts import check_credentials, check_lake_root, exit_code, failure_line, harvest_accounts
from harvester.client import RequestStats
from harvester.config import Config, load_config, require_credentials
from harvester.errors import ApiError, ConfigError, HarvesterError
from harvester.pipeline import ProgressHook
from harvester.run import plan_harvest, read_status, run_harvest, run_login
from harvester.storage import is_object_url, parse_object_url

log = logging.getLogger("harvester")

PROG = "peloton-harvester"
DEMO_WORKOUTS = 500
DEMO_RPS = 200.0
DEMO_CONCURRENCY = 16
DEMO_LATENCY_MS = 15.0
EXIT_USAGE = 2


def entry() -> NoReturn:
    """What the console script and ``python -m harvester`` run: ``main``, then a quick exit.

    When ``main`` returns, the run has committed, synced and closed everything it
    wrote; what is left of the process is the interpreter unloading aiohttp and the
    rest, about 40 ms here, longer than a refresh with nothing new spends on the
    network. So flush what is buffered (logging, stdout, stderr) and leave at once,
    as mypy does. A SystemExit (``--help``, a usage error) takes the ordinary way.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to save
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    verbose: int = getattr(args, "verbose", 0)
    secrets: list[str] = []
    try:
        if args.command == "emulator":
            return _run_emulator(args)
        config = _config(args)
        secrets = [*config.credentials.secrets(),
                   *(s for account in config.accounts for s in account.credentials.secrets())]
        configure_logging(verbose, getattr(args, "log_format", "text"), secrets)
        return anyio.run(_dispatch, args, config)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:
        return _report_error(exc, verbose, secrets)


def _report_error(exc: BaseException, verbose: int, secrets: list[str]) -> int:
    """One line on stderr, a traceback only with -v; the exit code the SPEC gives."""
    if isinstance(exc, SystemExit):
        raise exc
    error = _first_harvester_error(exc)
    if error is not None:
        message, code = str(error), error.exit_code
        if isinstance(error, ApiError):
            message = f"the Peloton API request failed: {message}"
    else:
        message = f"internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)"
        code = 1
    for secret in secrets:
        message = message.replace(secret, "[redacted]")
    if verbose:
        log.error("traceback follows", exc_info=exc)
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _first_harvester_error(exc: BaseException) -> HarvesterError | None:
    """Task groups wrap errors in groups; the user wants the one that stopped the run."""
    if isinstance(exc, HarvesterError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_harvester_error(inner)
            if found is not None:
                return found
    return None


# -- parser -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Copy a Peloton workout history into a date-partitioned JSONL lake.",
        epilog="Secrets come from PELOTON_USERNAME, PELOTON_PASSWORD, PELOTON_ACCESS_TOKEN "
        "and PELOTON_REFRESH_TOKEN (or the variables an [[accounts]] entry names). Exit codes: "
        "0 ok, 1 internal error, 2 usage/config, 3 some items or accounts failed, "
        "4 authentication failed (run `login`), 75 try again later (another run holds the "
        "account, or Peloton is throttling or down), "
        "130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = _common_options()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_login(sub, common)
    for name, text in (
        ("backfill", "make the lake complete and equal to the source (resumes)"),
        ("refresh", "harvest what is new, plus a look-back window; reconcile at most daily"),
    ):
        harvest = sub.add_parser(name, parents=[common], help=text)
        harvest.add_argument(
            "--allow-mass-delete", action="store_true",
            help="apply deletions even when the listing would remove more than 10%% of an "
            "account's workouts (and more than 5)")
    verify = sub.add_parser(
        "verify", parents=[common],
        help="check every lake invariant; exit 0 clean, 3 problems found")
    verify.add_argument("--repair", action="store_true",
                        help="fix what is wrong: quarantine damaged files, fetch what is missing")
    sub.add_parser("plan", parents=[common],
                   help="list only: count workouts, estimate requests and time")
    sub.add_parser("status", parents=[common],
                   help="per account: watermark, last run, rows per dataset")
    demo = sub.add_parser(
        "demo", parents=[common],
        help="backfill a synthetic account from the bundled emulator (no account, no network)",
    )
    demo.add_argument("--workouts", type=int, default=DEMO_WORKOUTS,
                      help=f"workouts in the synthetic account (default {DEMO_WORKOUTS})")
    demo.add_argument("--seed", type=int, default=1, help="synthetic account seed (default 1)")
    from harvester.emulator import add_arguments

    emulator = sub.add_parser("emulator", help="run the bundled Peloton API emulator")
    add_arguments(emulator)
    return parser


def _add_login(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
    login = sub.add_parser(
        "login", parents=[common],
        help="sign in once and store the tokens, so later runs need no password",
        description="Sign in and store the tokens at auth.token_cache. Headless with "
        "PELOTON_USERNAME/PELOTON_PASSWORD (asked for on a terminal when not set), or "
        "--browser: open the printed URL, sign in, paste the address the browser lands on.",
    )
    login.add_argument("--browser", action="store_true",
                       help="sign in with a browser and paste the callback URL back")


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="PATH",
                        help="TOML config (default ./peloton-harvester.toml when present)")
    common.add_argument("--out", metavar="DIR|URL",
                        help="lake root: a folder or s3://bucket/prefix (overrides output.root)")
    common.add_argument("--account", action="append", metavar="NAME",
                        help="harvest only this [[accounts]] entry (repeatable; default all)")
    common.add_argument("--concurrency", type=int, metavar="N",
                        help="workers (overrides harvest.concurrency)")
    common.add_argument("--rps", type=float, metavar="X",
                        help="requests per second (overrides harvest.requests_per_second)")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log line format on stderr (default text)")
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-vv for debug); tracebacks on errors")
    return common


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, object] = {}
    if args.out is not None:
        overrides["output.root"] = args.out
    if args.concurrency is not None:
        overrides["harvest.concurrency"] = args.concurrency
    if args.rps is not None:
        overrides["harvest.requests_per_second"] = args.rps
    if args.command == "demo":
        overrides.setdefault("output.root", "./demo-lake")
        overrides.setdefault("harvest.requests_per_second", DEMO_RPS)
        overrides.setdefault("harvest.concurrency", DEMO_CONCURRENCY)
        demo = load_config(args.config, overrides=overrides, search_default=False)
        check_lake_root(demo)
        return demo
    config = load_config(args.config, overrides=overrides)
    if args.command == "login":
        config = _login_account(config, args.account)
        return config if args.browser else _with_prompted_credentials(config)
    if is_object_url(config.output.root):
        parse_object_url(config.output.root)  # a malformed URL is named before anything runs
    if args.command in ("backfill", "refresh", "plan"):
        check_credentials(config, args.account)
    elif args.command == "verify" and args.repair:
        require_credentials(config)
    return config


def _login_account(config: Config, names: list[str] | None) -> Config:
    """`login` signs in one account: the one --account names when there are [[accounts]]."""
    if not config.accounts:
        config.select(names)  # --account without [[accounts]]: the usage error it always is
        return config
    chosen = config.select(names)
    if len(chosen) != 1:
        known = ", ".join(a.name for a in config.accounts)
        raise ConfigError(f"login signs in one account at a time: add --account NAME (one of {known})")
    return config.for_account(chosen[0])


def _with_prompted_credentials(config: Config) -> Config:
    """`login` on a terminal asks for what the environment lacks; elsewhere it must be set."""
    from dataclasses import replace

    creds = config.credentials
    if config.auth.method != "login" or (creds.username and creds.password):
        return config
    if not sys.stdin.isatty():
        raise ConfigError("login needs PELOTON_USERNAME and PELOTON_PASSWORD in the environment "
                          "(or a terminal to type them, or --browser)")
    import getpass

    username = creds.username or input("Peloton email: ").strip()
    password = creds.password or getpass.getpass("Peloton password: ")
    return replace(config, credentials=replace(creds, username=username, password=password))


# -- commands -----------------------------------------------------------------


async def _dispatch(args: argparse.Namespace, config: Config) -> int:
    command: str = args.command
    if command == "login":
        user_id = await run_login(config, _paste_from_stdin if args.browser else None)
        print(f"signed in to Peloton as account {user_id}; tokens stored in "
              f"{config.auth.token_cache_path}")
        return 0
    if command in ("backfill", "refresh"):
        outcomes = await harvest_accounts(config, command, args.account,
                                          progress=_progress_factory(args),
                                          allow_mass_delete=args.allow_mass_delete)
        for outcome in outcomes:
            if outcome.report is not None:
                named = len(outcomes) > 1 or bool(config.accounts)
                print(f"{outcome.name}: " * named + outcome.report.summary())
        failed = failure_line(outcomes)
        if failed is not None:
            _say_error(failed, config)
        return exit_code(outcomes)
    if command == "plan":
        accounts = config.select(args.account)
        if not accounts:
            print((await plan_harvest(config)).describe())
        for account in accounts:
            own = config.for_account(account)
            require_credentials(own, account)
            print(f"{account.name}: {(await plan_harvest(own)).describe()}")
        return 0
    if command == "verify":
        from harvester.verify import verify

        return await verify(config, repair=args.repair, print_line=print)
    if command == "status":
        print("\n".join(read_status(config)))
        return 0
    if command == "demo":
        return await _demo(args, config)
    raise ConfigError(f"unknown command {command!r}")


def _say_error(message: str, config: Config) -> None:
    """One error line on stderr, every account's secrets redacted."""
    for account in config.accounts:
        for secret in account.credentials.secrets():
            message = message.replace(secret, "[redacted]")
    print(f"{PROG}: error: {message}", file=sys.stderr)


async def _paste_from_stdin(url: str) -> str:
    """Show the sign-in URL on a line of its own; read the pasted callback URL."""
    print("Open this address in a browser and sign in to Peloton; then copy the address the "
          "browser lands on (https://members.onepeloton.com/callback?code=...) and paste it "
          "here:", file=sys.stderr, flush=True)
    print(url, flush=True)
    line: str = await anyio.to_thread.run_sync(sys.stdin.readline)
    if not line.strip():
        raise ConfigError("no callback URL was pasted; run `peloton-harvester login --browser` again")
    return line.strip()


async def _demo(args: argparse.Namespace, config: Config) -> int:
    from dataclasses import replace

    from harvester.config import Credentials
    from harvester.emulator import Emulator, EmulatorSettings

    if args.workouts < 1:
        raise ConfigError("--workouts must be at least 1")
    settings = EmulatorSettings(
        workouts=args.workouts, seed=args.seed, latency_ms=DEMO_LATENCY_MS,
        jitter_ms=DEMO_LATENCY_MS, in_progress=True,
    )
    emulator = Emulator(settings)
    url = await emulator.start()
    print(f"emulator: synthetic account with {args.workouts} workouts at {url}", flush=True)
    try:
        import tempfile  # only the demo needs it

        with tempfile.TemporaryDirectory(prefix="peloton-demo-") as tmp:
            demo_config = replace(
                config,
                api=replace(config.api, base_url=url, auth_url=url),
                auth=replace(config.auth, method="login", client_id="",
                             token_cache=f"{tmp}/tokens.json"),
                credentials=Credentials(username=settings.username, password=settings.password),
            )
            report = await run_harvest(demo_config, "backfill", progress=_progress_factory(args))
    finally:
        await emulator.stop()
    print(report.summary())
    root = demo_config.output.root_path.resolve()
    print(
        "\nTry it with DuckDB (pip install duckdb):\n"
        f"  duckdb -c \"SELECT date_trunc('month', to_timestamp(created_at)) AS month, "
        f"fitness_discipline, count(*) AS workouts FROM read_json('{root}/workouts/**/*.jsonl', "
        "hive_partitioning=true) GROUP BY ALL ORDER BY month DESC, workouts DESC LIMIT 12\""
    )
    return report.exit_code


def _run_emulator(args: argparse.Namespace) -> int:
    from harvester.emulator import SettingsError, serve, settings_from_args

    try:
        settings, host, port = settings_from_args(args)
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(serve, settings, host, port)
    except SettingsError as exc:  # a bad option value, a port in use
        raise ConfigError(f"emulator: {exc}") from None
    return 0


# -- progress and logging -----------------------------------------------------


def _progress_factory(
    args: argparse.Namespace,
) -> Callable[[RequestStats], AbstractContextManager[ProgressHook | None]] | None:
    if args.no_progress or not sys.stderr.isatty():
        return None
    return _tqdm_progress


@contextmanager
def _tqdm_progress(stats: RequestStats) -> Iterator[ProgressHook | None]:
    # Imported here: a cron run (no terminal) never pays for it.
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    started = time.monotonic()
    with tqdm(total=0, unit="workout", file=sys.stderr, dynamic_ncols=True) as bar, \
            logging_redirect_tqdm():

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            elapsed = max(time.monotonic() - started, 1e-6)
            bar.set_postfix(req_s=f"{stats.requests / elapsed:.1f}", retries=stats.retries,
                            refresh=False)
            bar.refresh()

        yield update


class _RedactingFilter(logging.Filter):
    """Defence in depth: no known secret survives into a log line."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "[redacted]")
            record.msg, record.args = message, None
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(verbose: int, fmt: str, secrets: list[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactingFilter(secrets))
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root.setLevel(level)
    # Third-party debug output can echo request headers; keep it out even at -vv.
    for noisy in ("aiohttp", "asyncio", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.INFO))
