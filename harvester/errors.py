"""The exception tree of peloton-harvester.

    HarvesterError                    exit 1 unless a subclass says otherwise
    ├── ConfigError                   exit 2: bad config file, key, value or missing credential
    ├── AuthError                     exit 4: wrong credentials, expired tokens
    │   └── LegacyLoginGoneError      /auth/login answers 403 "no longer accepting requests"
    ├── ApiError                      a request that did not give usable JSON
    │   ├── TransientApiError         worth retrying: 5xx, resets, timeouts, empty/truncated bodies
    │   │   └── RateLimitedError      429, with the server's Retry-After when it sent one
    │   └── PermanentApiError         not worth retrying: 4xx, a body that is not the expected JSON
    │       └── NotFoundError         404 for an unknown id
    ├── LakeError                     exit 2: output root not writable, corrupt lake file
    └── StateError                    exit 2: state unreadable
        └── LockedError               another run holds the lake's lock

Whether an ApiError is retried is decided by its class, nowhere else. Every
message is one line a user can act on, and never contains a secret.
"""

from __future__ import annotations


class HarvesterError(Exception):
    """Base of every error the harvester raises on purpose."""

    exit_code = 1


class ConfigError(HarvesterError):
    """Invalid configuration, command line or missing credentials."""

    exit_code = 2


class AuthError(HarvesterError):
    """Authentication failed and cannot succeed by retrying."""

    exit_code = 4


class LegacyLoginGoneError(AuthError):
    """The legacy session login endpoint has been switched off by Peloton."""


class ApiError(HarvesterError):
    """A request did not produce usable JSON."""

    def __init__(self, message: str, *, status: int | None = None, url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class TransientApiError(ApiError):
    """A failure that may well succeed if the request is repeated."""


class RateLimitedError(TransientApiError):
    """The server (or its edge) asked us to slow down."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = 429,
        url: str = "",
    ) -> None:
        super().__init__(message, status=status, url=url)
        self.retry_after = retry_after


class PermanentApiError(ApiError):
    """A failure that repeating the request will not fix."""


class NotFoundError(PermanentApiError):
    """The server does not know the id (404)."""


class LakeError(HarvesterError):
    """The lake cannot be read or written."""

    exit_code = 2


class StateError(HarvesterError):
    """The harvester's own state cannot be read or written."""

    exit_code = 2


class LockedError(StateError):
    """Another run holds the lake's lock."""
