"""The object-store backend (S3, GCS, Azure) on ``obstore``.

Why obstore: it exposes the stores' conditional writes as one API on all three
(``PutMode`` ``"create"`` is ``If-None-Match: *``, an ``UpdateVersion`` is
``If-Match: <etag>``), so create-if-absent and compare-and-swap are the
store's own atomic operations, not a read-then-write race. It reads each
provider's standard environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, ``AWS_ENDPOINT_URL``; ``GOOGLE_*``; ``AZURE_*``).

Whole objects only: every write is one PUT of content that is complete in
memory (multipart is off), so there is no temporary object and nothing a
dataset's glob could see half-written. A batch PUTs in the order it was
staged, which keeps the lake's "graphs before workouts" order.

obstore's errors are translated here and nowhere else: not found is None,
a lost precondition is StorageConflictError, refused credentials are
StorageError (exit 2), and a server that cannot be reached or keeps
failing after the client's retries is StorageUnavailableError (exit 75).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn, TypeVar, cast
from urllib.parse import urlsplit

from harvester.errors import (
    ConfigError,
    StorageConflictError,
    StorageError,
    StorageUnavailableError,
)
from harvester.storage.base import Batch, Blob, Entry, ObjectUrl, check_key, check_prefix

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig, S3Config

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_MAX_RETRIES = 4
DEFAULT_RETRY_TIMEOUT_S = 60.0
DEFAULT_BATCH_WORKERS = 8  # concurrent PUTs of one batch level
# Where each provider's standard environment names a custom endpoint.
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3",
                      "GOOGLE_BASE_URL", "AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT")
# Where the SDKs look for a role's credentials when the environment has none: an
# error from one of them means "no credentials", not "the store is down".
CREDENTIAL_SOURCES = ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "metadata.google.internal")
T = TypeVar("T")


def open_object_store(
    url: ObjectUrl, env: Mapping[str, str] | None = None, *,
    timeout_s: float = DEFAULT_TIMEOUT_S, max_retries: int = DEFAULT_MAX_RETRIES,
    retry_timeout_s: float = DEFAULT_RETRY_TIMEOUT_S,
) -> ObjectStorage:
    """The store for ``url``; plain-http endpoints only on loopback hosts, else ConfigError."""
    from obstore.store import S3Store, from_url

    env = os.environ if env is None else env
    client: ClientConfig = {
        "timeout": timedelta(seconds=timeout_s),
        "connect_timeout": timedelta(seconds=min(timeout_s, DEFAULT_CONNECT_TIMEOUT_S)),
        "allow_http": _allow_http(env),
    }
    retry: RetryConfig = {"max_retries": max_retries,
                          "retry_timeout": timedelta(seconds=retry_timeout_s)}
    full = f"{url.scheme}://{url.bucket}/{url.prefix}".rstrip("/")
    store: ObjectStore
    try:
        if url.scheme == "s3":
            store = S3Store.from_url(full, config=cast("S3Config", _s3_config(env)),
                                     client_options=client, retry_config=retry)
        else:  # GCS and Azure read GOOGLE_* / AZURE_* from the process environment
            store = from_url(full, client_options=client, retry_config=retry)
    except Exception as exc:  # obstore raises plain ValueError/BaseError for bad config
        raise ConfigError(f"output.root {url}: {_first_line(exc)}") from None
    return ObjectStorage(store, str(url))


def _s3_config(env: Mapping[str, str]) -> dict[str, str]:
    """The standard AWS_* variables of ``env`` as obstore settings (they win over the process's)."""
    names = {"AWS_ACCESS_KEY_ID": "access_key_id", "AWS_SECRET_ACCESS_KEY": "secret_access_key",
             "AWS_SESSION_TOKEN": "session_token", "AWS_REGION": "region",
             "AWS_DEFAULT_REGION": "default_region", "AWS_ENDPOINT_URL": "endpoint"}
    return {key: env[name] for name, key in names.items() if env.get(name)}


def _allow_http(env: Mapping[str, str]) -> bool:
    """True if the configured endpoint is http:// on loopback; ConfigError if http:// elsewhere."""
    from harvester.config import is_loopback

    allow = False
    for name in ENDPOINT_VARIABLES:
        endpoint = env.get(name, "")
        parts = urlsplit(endpoint)
        if parts.scheme != "http":
            continue
        if not is_loopback(parts.hostname or ""):
            raise ConfigError(f"{name}: plain http:// is refused except for loopback hosts; use https://")
        allow = True
    return allow


class ObjectStorage:
    """Whole objects in a bucket under a prefix; see the module docstring and base.Storage."""

    def __init__(self, store: ObjectStore, url: str) -> None:
        self._store = store
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    @property
    def is_local(self) -> bool:
        return False

    def check_writable(self) -> None:
        """PUT and delete a probe under ``_harvester/``: proves bucket, credentials and endpoint."""
        probe = f"_harvester/probe-{secrets.token_hex(6)}"
        self._put(probe, b"", "overwrite")
        self.delete(probe)

    def read(self, key: str) -> Blob | None:
        import obstore

        def get() -> Blob:
            result = obstore.get(self._store, check_key(key))
            return Blob(bytes(result.bytes()), result.meta["e_tag"] or "")

        return self._call("read", key, get, missing=True)

    def stat(self, key: str) -> Entry | None:
        import obstore

        return self._call("read", key, lambda: _entry(obstore.head(self._store, check_key(key))),
                          missing=True)

    def write(self, key: str, data: bytes, *, private: bool = False) -> None:
        self._put(key, data, "overwrite")

    def create(self, key: str, data: bytes, *, private: bool = False) -> str:
        return self._put(key, data, "create")

    def replace(self, key: str, data: bytes, version: str, *, private: bool = False) -> str:
        return self._put(key, data, version)

    def delete(self, key: str) -> None:
        import obstore

        self._call("delete", key, lambda: obstore.delete(self._store, check_key(key)), missing=True)

    def move(self, key: str, to: str) -> None:
        """Copy then delete (object stores have no rename): ``to`` is whole either way."""
        import obstore

        self._call("move", key, lambda: obstore.rename(self._store, check_key(key), check_key(to)))

    def walk(self, prefix: str) -> Iterator[Entry]:
        import obstore

        prefix = check_prefix(prefix)
        pages = self._call("list", prefix, lambda: list(obstore.list(self._store, prefix or None)))
        entries = [_entry(meta) for page in pages or [] for meta in page]
        yield from sorted(entries, key=lambda e: e.key)

    def list_dir(self, prefix: str) -> tuple[list[str], list[Entry]]:
        import obstore

        prefix = check_prefix(prefix)
        found = self._call("list", prefix,
                           lambda: obstore.list_with_delimiter(self._store, prefix or None))
        if found is None:
            return [], []
        files = sorted((_entry(meta) for meta in found["objects"]), key=lambda e: e.key)
        return sorted(found["common_prefixes"]), files

    def batch(self) -> ObjectBatch:
        return ObjectBatch(self)

    def sweep_temp(self, prefix: str, *, recursive: bool = True) -> int:
        return 0  # nothing is ever written under a temporary name here

    def _put(self, key: str, data: bytes, mode: str) -> str:
        """One PUT of the whole object; ``mode`` is overwrite, create, or the ETag to match."""
        import obstore

        def put() -> str:
            if mode in ("overwrite", "create"):
                result = obstore.put(self._store, check_key(key), data, mode=mode,  # type: ignore[arg-type]
                                     use_multipart=False)
            else:
                result = obstore.put(self._store, check_key(key), data, mode={"e_tag": mode},
                                     use_multipart=False)
            return result["e_tag"] or ""

        version = self._call("write", key, put)
        assert version is not None
        return version

    def _call(self, op: str, key: str, action: Callable[[], T], *, missing: bool = False) -> T | None:
        """Run one obstore call, translating its errors; None for a missing object if allowed."""
        from obstore import exceptions

        try:
            return action()
        except FileNotFoundError as exc:  # obstore's NotFoundError
            if missing:
                return None
            raise StorageError(f"cannot {op} {self._url}/{key}: not found (no such object, or the "
                               f"bucket or container does not exist: {_first_line(exc)})") from None
        except (exceptions.AlreadyExistsError, exceptions.PreconditionError):
            raise StorageConflictError(
                f"{self._url}/{key} already exists or changed since it was read"
            ) from None
        except (exceptions.PermissionDeniedError, exceptions.UnauthenticatedError) as exc:
            raise StorageError(f"{self._url}: access denied ({_first_line(exc)}); "
                               "check the storage credentials in the environment") from None
        except exceptions.BaseError as exc:
            _raise_generic(op, f"{self._url}/{key}", exc)


class ObjectBatch:
    """Objects kept in memory until ``commit`` PUTs them, each whole.

    The objects staged between two ``barrier`` calls are PUT concurrently (a
    backfill stages hundreds of small objects per dataset: one after another,
    each would wait a round trip); the groups go in staging order, so the
    lake's "graphs before workouts" holds. A group's removals follow its PUTs.
    """

    def __init__(self, storage: ObjectStorage, workers: int = DEFAULT_BATCH_WORKERS) -> None:
        self._storage = storage
        self._workers = workers
        self._groups: list[list[tuple[str, bytes | None, Sequence[str]]]] = [[]]

    def put(self, key: str, data: bytes, *, replaces: Sequence[str] = ()) -> None:
        self._groups[-1].append((check_key(key), data, [k for k in replaces if k != key]))

    def remove(self, key: str) -> None:
        self._groups[-1].append((check_key(key), None, ()))

    def barrier(self) -> None:
        if self._groups[-1]:
            self._groups.append([])

    def commit(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self._workers) as pool:
            while self._groups:
                group = self._groups[0]
                puts = [(key, data) for key, data, _ in group if data is not None]
                # list(): wait for all, and raise the first error, before anything later
                list(pool.map(lambda item: self._storage.write(*item), puts))
                for key, data, stale in group:
                    for other in stale if data is not None else (key,):
                        self._storage.delete(other)
                self._groups.pop(0)
        self._groups = [[]]

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._groups = [[]]


def _entry(meta: Mapping[str, object]) -> Entry:
    from datetime import datetime

    modified = meta["last_modified"]
    stamp = int(modified.timestamp() * 1e9) if isinstance(modified, datetime) else 0
    size = meta["size"]
    return Entry(str(meta["path"]), size if isinstance(size, int) else 0, stamp,
                 str(meta.get("e_tag") or ""))


def _raise_generic(op: str, where: str, exc: Exception) -> NoReturn:
    """A generic obstore error: unreachable or failing server (75), else a refusal (2)."""
    text = str(exc)
    if any(mark in text for mark in CREDENTIAL_SOURCES):
        raise StorageError(
            f"cannot {op} {where}: no storage credentials (none in the environment, and no "
            "instance or container role answered); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or GOOGLE_* / AZURE_*)"
        ) from None
    transient = ("error sending request", "retries", "timed out", "timeout", "connection",
                 "Server returned non-2xx status code: 5", "dns error")
    if any(word.lower() in text.lower() for word in transient):
        raise StorageUnavailableError(
            f"the storage at {where} cannot be reached ({_first_line(exc)}); try again later"
        ) from None
    raise StorageError(f"cannot {op} {where}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]
