"""The exception tree of peloton-harvester.

    HarvesterError                    exit 1 unless a subclass says otherwise
    ├── ConfigError                   exit 2: bad config file, key, value or missing credential
    │   └── UsageError                exit 2: a bad command line (never echoes what was typed)
    ├── AuthError                     exit 4: wrong credentials, expired tokens
    │   ├── LegacyLoginGoneError      /auth/login answers 403 "no longer accepting requests"
    │   ├── SessionEndedError         no stored sign-in (or it was revoked) and no password: run `login`
    │   └── LoginRetryLaterError      exit 75: Auth0 throttles the login, or a transient anomaly
    │       └── LoginAnomalyError     AnomalyDetected / Invalid state / no _csrf: one retry first
    ├── ApiError                      exit 2: a request that did not give usable JSON
    │   ├── TransientApiError         exit 75, worth retrying: 5xx, resets, timeouts, empty/truncated
    │   │   ├── RateLimitedError      429, with the server's Retry-After when it sent one
    │   │   └── UnreachableError      DNS failure, connection refused, host or network unreachable
    │   └── PermanentApiError         not worth retrying: 4xx, a body that is not the expected JSON
    │       ├── NotFoundError         404 for an unknown id
    │       ├── TlsError              certificate or handshake failure
    │       ├── StalledResponseError  exit 75: headers came, the body did not finish by the deadline
    │       ├── UnexpectedResponseError  a 200 that is HTML, not an object, lacks `data`
    │       │   └── ResponseTooLargeError  a body past the cap, decompressed size counted
    │       └── ListingError          exit 3: the workout list repeats, or misses its total
    ├── MisbehavingServerError        exit 2 (bodies past the cap) or 75 (stalled bodies):
    │                                 stops the run after a few such answers; not an ApiError,
    │                                 so no item catches it
    ├── LakeError                     exit 2: output root not writable, corrupt lake file
    ├── StateError                    exit 2: state unreadable
    │   ├── LockedError               exit 75: another run holds the account's lock or lease
    │   │   └── LeaseLostError        the run's lease was taken over (it stalled past its expiry)
    │   └── NeedsBackfillError        exit 2: refresh on a lake with data but no state for the account
    └── StorageError                  exit 2: the lake's storage refused (no bucket, access denied)
        ├── StorageUnavailableError   exit 75: the storage server cannot be reached, times out, 5xx
        └── StorageConflictError      exit 75: a conditional write lost (exists, or changed since read)

Whether an ApiError is retried is decided by its class, nowhere else. Every
message is one line a user can act on, and never contains a secret.

An ApiError only decides the exit code when it stops a whole run (at login,
``/api/me``, or outside any item): failures of single items are recorded and
give exit 3. Exit 75 (EX_TEMPFAIL) means "try again later": the network or
Peloton is down or throttling, or another run holds the lake; cron and
orchestrators retry on it. Exit 2 means the user must fix something first
(``api.base_url``, proxy, CA certificates, the config). Neither is ever 1,
which is kept for bugs.
"""

from __future__ import annotations


class HarvesterError(Exception):
    """Base of every error the harvester raises on purpose."""

    exit_code = 1


EXIT_TEMPORARY = 75  # sysexits.h EX_TEMPFAIL: what cron wrappers and orchestrators retry on


class ConfigError(HarvesterError):
    """Invalid configuration, command line or missing credentials."""

    exit_code = 2


class UsageError(ConfigError):
    """A command line argparse refused; the message never repeats a typed value."""


class AuthError(HarvesterError):
    """Authentication failed and cannot succeed by retrying."""

    exit_code = 4


class LegacyLoginGoneError(AuthError):
    """The legacy session login endpoint has been switched off by Peloton."""


class SessionEndedError(AuthError):
    """No usable stored sign-in and no credentials to sign in again with."""


class LoginRetryLaterError(AuthError):
    """The sign-in failed in a way that waiting may cure (throttling, an Auth0 anomaly)."""

    exit_code = EXIT_TEMPORARY


class LoginAnomalyError(LoginRetryLaterError):
    """Auth0 saw an anomaly (Invalid state, no _csrf cookie): known to pass; worth one retry."""


class ApiError(HarvesterError):
    """A request did not produce usable JSON."""

    exit_code = 2

    def __init__(self, message: str, *, status: int | None = None, url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class TransientApiError(ApiError):
    """A failure that may well succeed if the request is repeated."""

    exit_code = EXIT_TEMPORARY


class RateLimitedError(TransientApiError):
    """The server (or its edge) asked us to slow down."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = 429,
        url: str = "",
    ) -> None:
        super().__init__(message, status=status, url=url)
        self.retry_after = retry_after


class UnreachableError(TransientApiError):
    """No connection at all: unknown host, refused, unreachable (the network or the host is down)."""


class PermanentApiError(ApiError):
    """A failure that repeating the request will not fix."""


class NotFoundError(PermanentApiError):
    """The server does not know the id (404)."""


class TlsError(PermanentApiError):
    """The TLS handshake or certificate check failed: retrying will not help."""


class StalledResponseError(PermanentApiError):
    """The server answered, then sent its body too slowly to finish within the deadline.

    Not retried within the run (another attempt would cost another whole
    deadline, and a dripping server drips again); the next run tries again.
    """

    exit_code = EXIT_TEMPORARY


class UnexpectedResponseError(PermanentApiError):
    """A success answer that is not the Peloton API's JSON (HTML, a list, no ``data``)."""


class ResponseTooLargeError(UnexpectedResponseError):
    """The answer grew past the body cap (its decompressed size, a gzip bomb included)."""


class ListingError(PermanentApiError):
    """Paging the workout list stopped making sense: a page with nothing new, a broken total.

    Recorded as a failure of the listing (exit 3); the listing is never "complete".
    Where it stops a command outright (``plan``), that command exits 3 as well.
    """

    exit_code = 3


class MisbehavingServerError(HarvesterError):
    """The server sent several answers no Peloton server sends (too big, stalled): stop the run.

    One such answer fails its item; a few more mean every request will, each at
    the cost of a deadline or of inflating a bomb to the cap, so the run ends.
    """

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class LakeError(HarvesterError):
    """The lake cannot be read or written."""

    exit_code = 2


class StateError(HarvesterError):
    """The harvester's own state cannot be read or written."""

    exit_code = 2


class LockedError(StateError):
    """Another run holds the account's lock (a local flock or an object-store lease)."""

    exit_code = EXIT_TEMPORARY


class LeaseLostError(LockedError):
    """Another run took over this run's lease: it was not renewed before it expired."""


class StorageError(HarvesterError):
    """The lake's storage (a folder or an object store) refused an operation."""

    exit_code = 2


class StorageUnavailableError(StorageError):
    """The storage cannot be reached now (connection refused, timeouts, 5xx after retries)."""

    exit_code = EXIT_TEMPORARY


class StorageConflictError(StorageError):
    """A conditional write lost: the object exists, or changed since it was read.

    Callers that merge retry on it (read again, merge, write again); it only
    reaches the user when another writer kept winning.
    """

    exit_code = EXIT_TEMPORARY


class NeedsBackfillError(StateError):
    """``refresh`` found a lake with data but no state for the account: run ``backfill``."""


def first_harvester_error(exc: BaseException) -> HarvesterError | None:
    """The error that stopped a run, also when task groups wrapped it in groups."""
    if isinstance(exc, HarvesterError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_harvester_error(inner)
            if found is not None:
                return found
    return None
