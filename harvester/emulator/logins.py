"""What Universal Login remembers between requests: transactions, codes, failed attempts.

A transaction starts at /authorize and is named by Auth0's own state (``T``,
about 160 characters), never the client's. It collects the client's PKCE
challenge, the cookies it set, and, once the password checked out and the form
came back, the signed-in user. /authorize/resume then trades it for a code:
single-use, short-lived, bound to the client, the redirect URI and the challenge.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

MAX_TRANSACTIONS = 4096  # oldest dropped first: a client that never finishes costs little


@dataclass
class Transaction:
    client_id: str
    redirect_uri: str
    client_state: str
    nonce: str
    challenge: str
    scope: str
    auth_origin: str  # scheme://host:port the client reached /authorize at
    id: str = field(default_factory=lambda: new_transaction_id())  # Auth0's transaction state T
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    session: str = field(default_factory=lambda: secrets.token_urlsafe(24))  # `auth0` cookie
    did: str = field(default_factory=lambda: secrets.token_urlsafe(12))  # this host's `did`
    orca_sid: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    orca_did: str = field(default_factory=lambda: secrets.token_urlsafe(12))  # auth-orca's `did`
    wresult: str | None = None  # the form's signed result, until posted back
    authenticated: bool = False
    account: int = 0  # which member (--accounts) signed in
    orca_done: bool = False


@dataclass
class CodeGrant:
    transaction: Transaction
    issued: float
    used: bool = False


@dataclass
class LoginState:
    transactions: dict[str, Transaction] = field(default_factory=dict)
    codes: dict[str, CodeGrant] = field(default_factory=dict)
    failures: int = 0  # wrong passwords in a row (one account)
    anomalies_served: int = 0
    csrf_dropped: int = 0

    def begin(self, txn: Transaction) -> Transaction:
        while len(self.transactions) >= MAX_TRANSACTIONS:
            self.transactions.pop(next(iter(self.transactions)))
        self.transactions[txn.id] = txn
        return txn

    def issue_code(self, txn: Transaction, now: float) -> str:
        code = secrets.token_urlsafe(24)
        self.codes[code] = CodeGrant(txn, now)
        self.transactions.pop(txn.id, None)  # a transaction ends in one code
        return code

    def redeem(self, code: str, client_id: str, redirect_uri: str, verifier: str, now: float,
               ttl: float) -> Transaction | None:
        """The code's transaction if every check passes; the code is spent either way."""
        grant = self.codes.get(code)
        if grant is None or grant.used:
            return None
        grant.used = True
        txn = grant.transaction
        fresh = now - grant.issued <= ttl
        if not (fresh and txn.client_id == client_id and txn.redirect_uri == redirect_uri):
            return None
        return txn if pkce_matches(verifier, txn.challenge) else None


def new_transaction_id() -> str:
    """About 160 characters, as Auth0's are."""
    return "hKFo2SB" + secrets.token_urlsafe(114)


def pkce_matches(verifier: str, challenge: str) -> bool:
    """S256: base64url(sha256(verifier)) == challenge; verifiers are 43 to 128 characters."""
    if not 43 <= len(verifier) <= 128:
        return False
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return hmac.compare_digest(digest.decode(), challenge)
