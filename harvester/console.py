"""What the CLI prints: results on stdout, logs and errors on stderr, as text or JSON lines.

``--log-format json`` makes every line the process prints, summaries and errors
included, one JSON object with ``ts`` (ISO-8601 UTC, milliseconds), ``level``,
``logger`` and ``message``. ``--quiet`` drops results that report success, so a
cron job that went well prints nothing; warnings and errors still reach stderr.
No known secret survives into any line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TextIO

import orjson

LOGGER = "harvester"
NOISY_LOGGERS = ("aiohttp", "asyncio", "urllib3")  # their debug output can echo headers


def utc_stamp(epoch_s: float) -> str:
    """``2026-11-30T23:59:59.123Z``: ISO-8601, UTC, milliseconds."""
    moment = datetime.fromtimestamp(epoch_s, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


class Console:
    """The CLI's own lines (results, errors), in the run's format."""

    def __init__(self, fmt: str = "text", *, quiet: bool = False,
                 secrets: Sequence[str] = ()) -> None:
        self.fmt = fmt
        self.quiet = quiet
        self.secrets = list(secrets)

    def result(self, message: str, *, ok: bool = True,
               fields: Mapping[str, object] | None = None) -> None:
        """A result line on stdout; with --quiet only when something is wrong."""
        if self.quiet and ok:
            return
        self._emit(sys.stdout, "info" if ok else "warning", message, fields or {})

    def error(self, message: str, **fields: object) -> None:
        """An error line on stderr (text form: ``peloton-harvester: error: …``)."""
        if self.fmt == "json":
            self._emit(sys.stderr, "error", message, fields)
        else:
            print(f"peloton-harvester: error: {redact(message, self.secrets)}", file=sys.stderr,
                  flush=True)

    def _emit(self, stream: TextIO, level: str, message: str, fields: Mapping[str, object]) -> None:
        message = redact(message, self.secrets)
        if self.fmt == "json":
            entry = {"ts": utc_stamp(datetime.now(UTC).timestamp()), "level": level,
                     "logger": LOGGER, "message": message, **fields}
            line = redact(orjson.dumps(entry, default=str).decode(), self.secrets)
        else:
            line = message
        print(line, file=stream, flush=True)


class _RedactingFilter(logging.Filter):
    """Defence in depth: no known secret survives into a log line."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = redact(record.getMessage(), self.secrets), None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``ts`` in ISO-8601 UTC with milliseconds."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": utc_stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    """``2026-11-30T23:59:59.123Z WARNING harvester.pipeline: …``: the same UTC stamps."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_stamp(record.created)


def configure_logging(verbose: int, fmt: str, secrets: Sequence[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactingFilter(secrets))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root.setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(level, logging.INFO))
