"""Command line: parse, configure logging, run a command, map errors to exit codes.

Each command is one row of ``COMMANDS``: its one-line help, its description and
the options it takes (names from ``OPTIONS``), so ``COMMAND --help`` lists only
what applies, with defaults. A new command adds a row and a branch in ``_dispatch``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import anyio
import orjson

from harvester import __version__
from harvester.accounts import check_credentials, check_lake_root, exit_code, failure_line, harvest_accounts
from harvester.client import RequestStats
from harvester.config import SECRET_KEYS, Config, load_config, require_credentials
from harvester.console import Console, configure_logging
from harvester.errors import ApiError, ConfigError, UsageError, first_harvester_error
from harvester.pipeline import ProgressHook
from harvester.plan import plan_harvest
from harvester.run import run_login
from harvester.status import read_status, render
from harvester.storage import is_object_url, parse_object_url

log = logging.getLogger("harvester")

PROG = "peloton-harvester"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_DEFAULTS = Config()
_SECRET_OPTIONS = {f"--{key.replace('_', '-')}": var for key, var in SECRET_KEYS.items()} | {
    "--pass": "PELOTON_PASSWORD", "--passwd": "PELOTON_PASSWORD",
}
_NO_SECRET_CHECK = frozenset({"emulator"})  # its --username/--password are the fake account's


@dataclass(frozen=True, slots=True)
class Command:
    help: str
    description: str
    options: tuple[str, ...]  # keys of OPTIONS


_HARVEST_OPTIONS = ("config", "out", "account", "concurrency", "rps", "no-progress", "quiet",
                    "log-format", "verbose", "allow-mass-delete")
COMMANDS: dict[str, Command] = {
    "login": Command(
        "sign in once and store the tokens, so later runs need no password",
        "Sign in and store the tokens at auth.token_cache. Headless with "
        "PELOTON_USERNAME/PELOTON_PASSWORD (asked for on a terminal when not set), or "
        "--browser: open the printed URL, sign in, paste the address the browser lands on.",
        ("config", "account", "browser", "quiet", "log-format", "verbose")),
    "backfill": Command(
        "make the lake complete and equal to the source (resumes)",
        "Make the lake complete and equal to the source: fetch every workout the lake lacks, "
        "with its performance graph and class details, then the daily datasets; re-home rows "
        "whose date changed and remove what the source deleted. Safe to stop and run again.",
        _HARVEST_OPTIONS),
    "refresh": Command(
        "harvest what is new, plus a look-back window; reconcile at most daily (for cron)",
        "Fetch workouts newer than the watermark minus harvest.lookback_days, what failed "
        "last time and workouts that were in progress; reconcile deletes at most once a day. "
        "Cheap when nothing is new; exit 75 means try again later.",
        _HARVEST_OPTIONS),
    "verify": Command(
        "check every lake invariant; exit 0 clean, 3 problems found",
        "Check every lake invariant (each key once, rows in their partitions, whole files, a "
        "graph per workout, a class per class workout, no stray temporary files) and print "
        "what is wrong; --repair fixes it.",
        ("config", "out", "repair", "concurrency", "rps", "no-progress", "quiet", "log-format",
         "verbose")),
    "plan": Command(
        "count workouts and price the next run; writes nothing",
        "Page the workout list only and estimate the requests and time of the next run at the "
        "configured rate: a backfill, or on a complete lake a refresh. Progress on stderr.",
        ("config", "out", "account", "rps", "no-progress", "quiet", "log-format", "verbose")),
    "status": Command(
        "show the last run and attempt, a running harvest, rows, items to retry",
        "Read the lake's state, run manifests and lock: per account the watermark, the last "
        "run and the last attempt (failed ones too), rows per dataset, items to retry, "
        "workouts in progress and classes without details. Exit 2 if the lake does not exist.",
        ("config", "out", "json", "log-format", "verbose")),
    "tables": Command(
        "(re)build the typed Parquet tables under <root>/tables/ (only what changed)",
        "Derive typed Parquet tables (workouts, workout_metrics, classes, instructors, "
        "class_types, deletions) from the raw lake under <root>/tables/, one explicit schema "
        "per table; only partitions whose raw files changed since the last build are rebuilt. "
        "Deleting tables/ loses nothing: the next build makes them again.",
        ("config", "out", "quiet", "log-format", "verbose")),
    "demo": Command(
        "backfill a synthetic account from the bundled emulator (no account, no network)",
        "Start the bundled emulator on loopback, backfill its synthetic account into "
        "./demo-lake (or --out), settle its in-progress workout with a refresh, and print a "
        "query to try.",
        ("out", "workouts", "seed", "no-progress", "log-format", "verbose")),
}


DEMO_WORKOUTS = 500
_H, _O = _DEFAULTS.harvest, _DEFAULTS.output
# option name -> (flags, add_argument keywords); help texts state the default.
OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "config": (("--config",), {"type": Path, "metavar": "PATH", "help": (
        "TOML config; relative paths in it start at its folder "
        "(default: ./peloton-harvester.toml when present)")}),
    "out": (("--out",), {"metavar": "DIR|URL", "help": (
        "lake root: a folder (relative to the current directory) or s3://bucket/prefix "
        f"(default: output.root, {_O.root})")}),
    "account": (("--account",), {"action": "append", "metavar": "NAME", "help": (
        "only this [[accounts]] entry (repeatable; default: all)")}),
    "concurrency": (("--concurrency",), {"type": int, "metavar": "N", "help": (
        f"workers (default: harvest.concurrency, {_H.concurrency})")}),
    "rps": (("--rps",), {"type": float, "metavar": "X", "help": (
        "requests per second, shared by every request "
        f"(default: harvest.requests_per_second, {_H.requests_per_second:g})")}),
    "no-progress": (("--no-progress",), {"action": "store_true", "help": (
        "no progress bar (default: a bar on stderr when it is a terminal)")}),
    "quiet": (("-q", "--quiet"), {"action": "store_true", "help": (
        "nothing on stdout when all went well; warnings and errors still go to stderr")}),
    "log-format": (("--log-format",), {"choices": ("text", "json"), "default": "text", "help": (
        "every line printed as text, or as one JSON object per line (default: text)")}),
    "verbose": (("-v", "--verbose"), {"action": "count", "default": 0, "help": (
        "more logging (-vv for debug); tracebacks on errors (default: warnings only)")}),
    "json": (("--json",), {"action": "store_true", "help": (
        "print one JSON document for machines (default: text)")}),
    "workouts": (("--workouts",), {"type": int, "default": DEMO_WORKOUTS, "metavar": "N", "help": (
        f"workouts in the synthetic account (default: {DEMO_WORKOUTS})")}),
    "seed": (("--seed",), {"type": int, "default": 1, "metavar": "N", "help": (
        "synthetic account seed (default: 1)")}),
    "allow-mass-delete": (("--allow-mass-delete",), {"action": "store_true", "help": (
        "apply deletions even when the listing would remove more than 10%% of an account's "
        "workouts (and more than 5) (default: refuse them)")}),
    "browser": (("--browser",), {"action": "store_true", "help": (
        "sign in with a browser and paste the callback URL back (default: headless sign-in)")}),
    "repair": (("--repair",), {"action": "store_true", "help": (
        "fix what is wrong: quarantine damaged files, fetch what is missing (default: only check)")}),
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, and never echoes a typed value."""

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            options = sorted({e.split("=", 1)[0] for e in extras if e.startswith("-")})
            what = f"unknown option(s) {', '.join(options)}" if options else "unexpected argument(s)"
            raise UsageError(f"{what} (values not shown); see {self.prog} --help")
        return parsed

    def error(self, message: str) -> NoReturn:
        message = re.sub(r"invalid (\w+) value: .*", r"invalid \1 value", message)
        message = re.sub(r"invalid choice: .*? \(", "invalid choice (", message)
        raise UsageError(f"{message}; see {self.prog} --help")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Copy a Peloton workout history into a date-partitioned JSONL lake.",
        epilog="Secrets come from the environment: PELOTON_USERNAME, PELOTON_PASSWORD, "
        "PELOTON_ACCESS_TOKEN, PELOTON_REFRESH_TOKEN (or the variables an [[accounts]] entry "
        "names), never from the command line. Exit codes: "
        "0 ok, 1 internal error (a bug), 2 fix the config or system, 3 some items or accounts "
        "failed (retried next run), 4 authentication failed (run `login`), "
        "75 temporary failure (try again later), "
        "130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        child = sub.add_parser(name, help=command.help, description=command.description)
        for option in command.options:
            flags, keywords = OPTIONS[option]
            child.add_argument(*flags, **keywords)
    from harvester.emulator import add_arguments

    emulator = sub.add_parser(
        "emulator", help="run the bundled Peloton API emulator in the foreground",
        description="Serve the Peloton API emulator on loopback until interrupted. The first "
        "line of stdout is its base URL; the next lines say how to point a config at it.",
        epilog="Changes at run time, by HTTP on the same base URL (curl -X POST URL/...): "
        "/_emulator/delete?id=ID (repeatable) or ?oldest=N deletes workouts at the source; "
        "/_emulator/move?id=ID&created_at=EPOCH (or &shift=SECONDS) changes a workout's "
        "created_at; /_emulator/page_fault?kind=duplicate|damaged&page=P&times=N serves a "
        "duplicate or damaged list page; /_emulator/workouts?count=N adds workouts; "
        "/_emulator/complete finishes the one in progress; /_emulator/revoke ends every "
        "sign-in. GET /_emulator/stats counts requests; GET /_emulator/truth lists what the "
        "source holds.")
    add_arguments(emulator)
    return parser


def entry() -> NoReturn:
    """What the console script and ``python -m harvester`` run: ``main``, then a quick exit.

    When ``main`` returns, the run has committed, synced and closed everything it
    wrote; what is left of the process is the interpreter unloading aiohttp and the
    rest, about 40 ms here, longer than a refresh with nothing new spends on the
    network. So flush what is buffered (logging, stdout, stderr) and leave at once,
    as mypy does. A SystemExit (``--help``) takes the ordinary way.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to save
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    console = Console(_format_in(argv))
    try:
        _refuse_secret_arguments(argv)
        parser = build_parser()
        args = parser.parse_args(argv)
    except UsageError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    verbose: int = getattr(args, "verbose", 0)
    console = Console(getattr(args, "log_format", "text"), quiet=getattr(args, "quiet", False))
    try:
        if args.command == "emulator":
            return _run_emulator(args)
        config = _config(args)
        console.secrets = [*config.credentials.secrets(),
                           *(s for account in config.accounts for s in account.credentials.secrets())]
        configure_logging(verbose, console.fmt, console.secrets)
        return anyio.run(_dispatch, args, config, console)
    except KeyboardInterrupt:
        console.error("interrupted", exit_code=EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except BaseException as exc:
        return _report_error(exc, verbose, console)


def _format_in(argv: Sequence[str]) -> str:
    """The --log-format asked for, for errors found before parsing succeeds."""
    for i, arg in enumerate(argv):
        if arg == "--log-format=json" or (arg == "--log-format" and argv[i + 1:i + 2] == ["json"]):
            return "json"
    return "text"


def _refuse_secret_arguments(argv: Sequence[str]) -> None:
    """``--password X`` is answered with the variable to set; X is never repeated."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in _NO_SECRET_CHECK:
        return
    for arg in argv:
        variable = _SECRET_OPTIONS.get(arg.split("=", 1)[0].replace("_", "-").lower())
        if variable is not None:
            raise UsageError(f"secrets come from the environment: set {variable} "
                             f"(the command line takes no {arg.split('=', 1)[0]}; "
                             "nothing typed after it is shown)")


def _report_error(exc: BaseException, verbose: int, console: Console) -> int:
    """One line on stderr, a traceback only with -v; the exit code the SPEC gives."""
    if isinstance(exc, SystemExit):
        raise exc
    error = first_harvester_error(exc)
    if error is not None:
        message, code = str(error), error.exit_code
        if isinstance(error, ApiError):
            message = f"the Peloton API request failed: {message}"
    else:
        message = f"internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)"
        code = 1
    if verbose:
        log.error("traceback follows", exc_info=exc)
    console.error(message, exit_code=code)
    return code


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, object] = {}
    if getattr(args, "out", None) is not None:
        overrides["output.root"] = args.out
    if getattr(args, "concurrency", None) is not None:
        overrides["harvest.concurrency"] = args.concurrency
    if getattr(args, "rps", None) is not None:
        overrides["harvest.requests_per_second"] = args.rps
    if args.command == "demo":
        from harvester.demo import demo_overrides

        demo = load_config(None, overrides=demo_overrides(overrides), search_default=False)
        check_lake_root(demo)
        return demo
    config = load_config(getattr(args, "config", None), overrides=overrides)
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


async def _dispatch(args: argparse.Namespace, config: Config, console: Console) -> int:
    command: str = args.command
    if command == "login":
        user_id = await run_login(config, _paste_from_stdin if args.browser else None)
        console.result(f"signed in to Peloton as account {user_id}; tokens stored in "
                       f"{config.auth.token_cache_path}")
        return 0
    if command in ("backfill", "refresh"):
        outcomes = await harvest_accounts(config, command, args.account,
                                          progress=_progress_factory(args),
                                          allow_mass_delete=args.allow_mass_delete)
        named = len(outcomes) > 1 or bool(config.accounts)
        for outcome in outcomes:
            if outcome.report is not None:
                report = outcome.report
                console.result(f"{outcome.name}: " * named + report.summary(),
                               ok=report.exit_code == 0,
                               fields={"event": "summary", "account": outcome.name, **report.fields()})
        failed = failure_line(outcomes)
        if failed is not None:
            console.error(failed)
        code = exit_code(outcomes)
        if config.output.tables and code in (0, 3):  # the lake is consistent, if incomplete
            await build_tables(config, console)
        return code
    if command == "tables":
        await build_tables(config, console)
        return 0
    if command == "verify":
        from harvester.verify import verify

        return await verify(config, repair=args.repair, print_line=console.result)
    if command == "plan":
        return await _plan(args, config, console)
    if command == "status":
        document = read_status(config)
        if args.json:
            sys.stdout.write(orjson.dumps(document).decode() + "\n")
        elif console.fmt == "json":
            console.result("status", fields={"event": "status", "status": document})
        else:
            for line in render(document):
                console.result(line)
        return 0
    if command == "demo":
        from harvester.demo import run_demo

        async def tables_and_recipe(demo: Config) -> None:
            from harvester.tables.recipes import format_monthly, monthly_output

            await build_tables(demo, console)
            console.result("Workouts and output per month, local time (README \"Typed tables\"):")
            months = await anyio.to_thread.run_sync(monthly_output, demo.output.root_path, 6)
            for line in format_monthly(months).splitlines():
                console.result(f"  {line}")

        return await run_demo(config, console, workouts=args.workouts, seed=args.seed,
                              progress=_progress_factory(args), tables=tables_and_recipe)
    raise ConfigError(f"unknown command {command!r}")


async def build_tables(config: Config, console: Console) -> None:
    """Rebuild what changed of the typed tables; one summary line."""
    from harvester.storage import is_object_url, open_storage
    from harvester.tables import build_tables as build  # pyarrow: only the commands that build pay

    if is_object_url(config.output.root):
        storage = open_storage(config.output.root)
        dirs, files = await anyio.to_thread.run_sync(storage.list_dir, "")
        if not dirs and not files:
            raise ConfigError(f"no lake at {storage.url}: run backfill first, or pass --out")
    else:
        root = config.output.root_path
        if not await anyio.Path(root).is_dir():
            raise ConfigError(f"no lake at {root}: run backfill first, or pass --out")
        storage = open_storage(str(root))
    report = await anyio.to_thread.run_sync(build, storage)
    console.result(report.summary(), fields={"event": "tables"})


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


async def _plan(args: argparse.Namespace, config: Config, console: Console) -> int:
    accounts = config.select(args.account)
    for account in accounts or [None]:
        own = config if account is None else config.for_account(account)
        if account is not None:
            require_credentials(own, account)
        plan = await plan_harvest(own, progress=_progress_factory(args))
        prefix = f"{account.name}: " if account is not None else ""
        console.result(prefix + plan.describe(), fields={"event": "plan", **plan.fields()})
    return 0


def _run_emulator(args: argparse.Namespace) -> int:
    from harvester.emulator import SettingsError, serve, settings_from_args

    try:
        settings, host, port = settings_from_args(args)
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(serve, settings, host, port)
    except SettingsError as exc:  # a bad option value, a port in use
        raise ConfigError(f"emulator: {exc}") from None
    return 0


# -- progress -----------------------------------------------------------------


def _progress_factory(
    args: argparse.Namespace,
) -> Callable[[RequestStats], AbstractContextManager[ProgressHook | None]] | None:
    # A bar is not a JSON line: --log-format json promises nothing but those.
    if args.no_progress or getattr(args, "log_format", "text") == "json" or not sys.stderr.isatty():
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
