"""Everything one running emulator holds: knobs, account, credentials, counters, cache."""

from __future__ import annotations

import random
import time
from collections import OrderedDict

from aiohttp import web

from harvester.emulator.account import Account, Workout
from harvester.emulator.faults import FaultInjector, TokenBucket
from harvester.emulator.logins import LoginState
from harvester.emulator.render import month_summary
from harvester.emulator.settings import EmulatorSettings
from harvester.emulator.stats import Stats
from harvester.emulator.tokens import TokenIssuer

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
CacheKey = tuple[object, ...]


class ByteCache:
    """Encoded responses, least recently used dropped first past a byte budget."""

    def __init__(self, budget: int = DEFAULT_CACHE_BYTES) -> None:
        self.budget = budget
        self.size = 0
        self._items: OrderedDict[CacheKey, bytes] = OrderedDict()

    def get(self, key: CacheKey) -> bytes | None:
        body = self._items.get(key)
        if body is not None:
            self._items.move_to_end(key)
        return body

    def put(self, key: CacheKey, body: bytes) -> None:
        if key in self._items:
            return
        self._items[key] = body
        self.size += len(body)
        while self.size > self.budget and self._items:
            _, old = self._items.popitem(last=False)
            self.size -= len(old)

    def clear(self) -> None:
        self._items.clear()
        self.size = 0


class EmulatorState:
    """One emulator's mutable world; handlers reach it as request.app[STATE]."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.clock_offset = 0.0  # tests move time forward instead of sleeping
        self.account = Account(
            settings.workouts,
            settings.seed,
            settings.username,
            settings.quirks,
            settings.in_progress,
            history_days=settings.history_days,
        )
        # The other members (--accounts): own histories, the first one's instructors and classes.
        self.accounts = [self.account] + [
            Account(settings.workouts, settings.seed ^ (k * 0x9E3779B1), username, shared=self.account,
                    history_days=settings.history_days)
            for k, (username, _) in enumerate(settings.logins()[1:], start=1)
        ]
        self.tokens = TokenIssuer(self.account.user_id)
        self.issuers = [self.tokens] + [TokenIssuer(a.user_id) for a in self.accounts[1:]]
        self.login = LoginState()
        self.orca_url = ""  # the second listener's base URL once started; "" skips that hop
        self.stats = Stats(time.monotonic())
        self.faults = FaultInjector(settings.seed)
        self.jitter = random.Random(settings.seed ^ 0x717)
        self.cache = ByteCache()
        self.bucket: TokenBucket | None = None
        self.list_requests = 0
        # page -> faults to serve for it, one per list request, in order (admin.py)
        self.page_faults: dict[int, list[str]] = {}
        self._summary: tuple[int, dict[str, int]] | None = None
        self._reset_bucket()

    def now(self) -> float:
        """Wall-clock time as the emulator sees it (tokens, arrivals)."""
        return time.time() + self.clock_offset

    def apply(self, settings: EmulatorSettings) -> None:
        """Swap in new runtime knobs."""
        old, self.settings = self.settings, settings
        if old.anomalies != settings.anomalies:
            self.login.anomalies_served = 0
        if old.missing_csrf != settings.missing_csrf:
            self.login.csrf_dropped = 0
        if (old.rate_limit, old.burst) != (settings.rate_limit, settings.burst):
            self._reset_bucket()

    def _reset_bucket(self) -> None:
        s = self.settings
        self.bucket = TokenBucket(s.rate_limit, s.burst, time.monotonic()) if s.rate_limit else None

    def summary(self, account: Account | None = None) -> dict[str, int]:
        account = account or self.account
        if account is not self.account:  # other members: small, rendered each time
            return month_summary(account)
        generation = account.generation
        if self._summary is None or self._summary[0] != generation:
            self._summary = (generation, month_summary(account))
        return self._summary[1]

    def account_index(self, username: object, password: object) -> int | None:
        """The index of the member these credentials sign in as, or None."""
        if not isinstance(username, str):
            return None
        for index, (name, secret) in enumerate(self.settings.logins()):
            if username.lower() == name.lower() and password == secret:
                return index
        return None

    def refresh_issuer(self, token: str) -> TokenIssuer:
        """The issuer of the member a refresh token was granted to (the first if none was)."""
        return next((i for i in self.issuers if token in i.refresh_tokens), self.tokens)

    def bearer_account(self, token: str) -> Account | None:
        """The account an unexpired bearer token was issued for, or None."""
        now = self.now()
        for issuer, account in zip(self.issuers, self.accounts, strict=True):
            if issuer.check_bearer(token, now):
                return account
        return None

    def session_account(self, session: str) -> Account | None:
        for issuer, account in zip(self.issuers, self.accounts, strict=True):
            if session in issuer.sessions:
                return account
        return None

    def find_workout(self, workout_id: str) -> tuple[Account, Workout] | None:
        """A workout of any member, with its owner (ids are global, as Peloton's are)."""
        for account in self.accounts:
            w = account.by_id.get(workout_id)
            if w is not None:
                return account, w
        return None

    def note_list_request(self) -> None:
        """Count a list request; every `arrive_every`-th one brings a new workout."""
        self.list_requests += 1
        every = self.settings.arrive_every
        if every and self.list_requests % every == 0:
            self.account.add_workout(self.now())

    def add_workouts(self, count: int) -> list[Workout]:
        return [self.account.add_workout(self.now()) for _ in range(count)]

    def delete_workouts(self, ids: list[str]) -> list[str]:
        """Delete at the source; the ids that existed."""
        deleted = [i for i in ids if self.account.delete(i)]
        self.cache.clear()
        return deleted

    def move_workout(self, workout_id: str, created_at: int) -> bool:
        """Change a workout's created_at at the source (its detail and list item follow)."""
        moved = self.account.set_created_at(workout_id, created_at)
        self.cache.clear()  # details are cached by id, not by generation
        return moved

    def take_page_fault(self, page: int) -> str | None:
        """The fault to serve for this list page now, if one is pending."""
        pending = self.page_faults.get(page)
        if not pending:
            return None
        fault = pending.pop(0)
        if not pending:
            del self.page_faults[page]
        return fault


STATE: web.AppKey[EmulatorState] = web.AppKey("emulator_state", EmulatorState)
