"""Auth0 Universal Login with PKCE: the only module that knows Auth0's URLs, forms and answers.

One small function per step (PELOTON_API.md 1a):

    1. open_login_page   GET /authorize (PKCE challenge, our state) -> redirects -> the login
                         page; Auth0's transaction state from its URL or injected config;
                         the _csrf cookie
    2. submit_password   POST /usernamepassword/login (JSON) -> the auto-post form, its
                         entity-encoded values decoded by a real HTML parser
    3. post_form         POST the form -> redirects across two hosts, followed by hand with
                         one cookie jar (per host and path), until one names redirect_uri
                         (never fetched)
    .  code_from_callback  our state checked, the code taken
    4. exchange_code     POST /oauth/token (authorization_code + code_verifier)

The browser fallback (1b) is ``authorize_url`` + a pasted callback URL +
``code_from_callback`` + ``exchange_code``. No message holds a password, token,
code, state or cookie: URLs are shown as host and path only.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
import secrets
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import aiohttp
import anyio
import orjson
from yarl import URL

from harvester.client import (
    BASE_HEADERS,
    HttpClient,
    JsonObject,
    RejectedError,
    parse_retry_after,
    translate_exception,
)
from harvester.config import is_loopback
from harvester.errors import (
    AuthError,
    LoginAnomalyError,
    LoginRetryLaterError,
    RateLimitedError,
    UnexpectedResponseError,
)

REDIRECT_URI = "https://members.onepeloton.com/callback"  # fixed: Auth0 allows no other for this client
AUDIENCE = "https://api.onepeloton.com/"
SCOPE = "offline_access openid peloton-api.members:default"
CONNECTION = "pelo-user-password"
TENANT = "peloton-prod"
AUTH0_CLIENT = base64.b64encode(b'{"name":"auth0.js-ulp","version":"9.14.3"}').decode()
CSRF_COOKIE = "_csrf"
TOO_MANY_ATTEMPTS = "too_many_attempts"  # Auth0's brute-force protection
DEFAULT_MAX_HOPS = 20  # redirects followed before giving up on reaching the callback
MAX_PAGE_BYTES = 2 * 1024 * 1024  # a login page or form is a few kB
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_INJECTED = re.compile(r"injectedConfig\s*=.*?['\"]([A-Za-z0-9+/_=-]{16,})['\"]")
_LOGIN_ENDPOINT = "login"  # the name these requests are counted under in RequestStats


@dataclass(frozen=True, slots=True)
class Pkce:
    """One sign-in's secrets: the PKCE verifier, our ``state`` and ``nonce``."""

    verifier: str = field(repr=False)
    state: str = field(repr=False)
    nonce: str = field(repr=False)

    @property
    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_pkce() -> Pkce:
    return Pkce(secrets.token_urlsafe(48), secrets.token_urlsafe(24), secrets.token_urlsafe(24))


@dataclass(frozen=True, slots=True)
class Tenant:
    """Where and as whom to sign in."""

    auth_url: str
    client_id: str
    redirect_uri: str = REDIRECT_URI

    def url(self, path: str) -> str:
        return f"{self.auth_url.rstrip('/')}{path}"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    url: str
    location: str | None
    body: bytes = field(repr=False)
    retry_after: str | None = None

    def json(self) -> dict[str, object]:
        try:
            value = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class LoginPage:
    url: str
    transaction: str = field(repr=False)  # Auth0's state <T>, not ours
    csrf: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class HiddenForm:
    action: str
    fields: dict[str, str] = field(repr=False)


class Browser:
    """One sign-in's HTTP: its own cookie jar, redirects by hand, the run's limiter and counters."""

    def __init__(self, http: HttpClient, session: aiohttp.ClientSession) -> None:
        self._http = http
        self._session = session
        self._rng = random.Random()  # backoff jitter

    def cookie(self, url: str, name: str) -> str | None:
        """The value the jar would send to ``url`` for cookie ``name``."""
        morsel = self._session.cookie_jar.filter_cookies(URL(url)).get(name)
        return morsel.value if morsel is not None else None

    async def send(self, method: str, url: str, *, json: object = None,
                   data: dict[str, str] | None = None,
                   headers: dict[str, str] | None = None) -> Answer:
        """One step; an edge's 429 is waited out (Retry-After, else backoff) like any request's,
        Auth0's brute-force block (too_many_attempts) is not: waiting seconds will not lift it."""
        _check_scheme(url)
        sent = {"User-Agent": BASE_HEADERS["User-Agent"], **(headers or {})}
        http, attempt = self._http, 0
        while True:
            attempt += 1
            answer = await self._send_once(method, url, json, data, sent)
            if answer.status != 429 or answer.json().get("code") == TOO_MANY_ATTEMPTS:
                return answer
            http.stats.throttled += 1
            http.limiter.on_throttled()
            throttled = RateLimitedError(f"{method} {_path(url)}: HTTP 429",
                                         retry_after=parse_retry_after(answer.retry_after))
            if not http.policy.should_retry(throttled, attempt):
                return answer
            http.stats.retries += 1
            await anyio.sleep(http.policy.delay(throttled, attempt, self._rng))

    async def _send_once(self, method: str, url: str, json: object,
                         data: dict[str, str] | None, headers: dict[str, str]) -> Answer:
        stats = self._http.stats
        async with self._http.limiter:
            stats.requests += 1
            stats.by_endpoint[_LOGIN_ENDPOINT] = stats.by_endpoint.get(_LOGIN_ENDPOINT, 0) + 1
            try:
                async with self._session.request(
                    method, url, json=json, data=data, headers=headers, allow_redirects=False,
                    timeout=self._http.timeout,
                ) as resp:
                    body = await _read_bounded(resp, method, url)
                    return Answer(resp.status, url, resp.headers.get("Location"), body,
                                  resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise translate_exception(exc, method, url, self._http.timeout.total) from exc


async def _read_bounded(resp: aiohttp.ClientResponse, method: str, url: str) -> bytes:
    """The whole body, refusing one larger than any sign-in page."""
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_PAGE_BYTES:
            raise UnexpectedResponseError(f"{method} {_path(url)}: answer larger than "
                                          f"{MAX_PAGE_BYTES} bytes; check api.auth_url")
    return bytes(body)


def open_browser() -> aiohttp.ClientSession:
    """A session whose jar keeps cookies per host and path, IP hosts included (``unsafe``)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def authorize_url(tenant: Tenant, pkce: Pkce) -> str:
    query = {
        "client_id": tenant.client_id, "audience": AUDIENCE, "scope": SCOPE,
        "response_type": "code", "response_mode": "query", "redirect_uri": tenant.redirect_uri,
        "state": pkce.state, "nonce": pkce.nonce, "code_challenge": pkce.challenge,
        "code_challenge_method": "S256", "auth0Client": AUTH0_CLIENT,
    }
    return f"{tenant.url('/authorize')}?{urlencode(query)}"


# -- step 1 -------------------------------------------------------------------


async def open_login_page(browser: Browser, tenant: Tenant, pkce: Pkce) -> LoginPage:
    """GET /authorize and its redirects up to the login page; read Auth0's transaction state."""
    answer = await browser.send("GET", authorize_url(tenant, pkce))
    transaction = None
    for _ in range(DEFAULT_MAX_HOPS):
        if answer.status not in REDIRECTS or not answer.location:
            break
        target = urljoin(answer.url, answer.location)
        transaction = _query(target, "state") or transaction
        answer = await browser.send("GET", target)
    if answer.status >= 500 or answer.status == 429:
        raise LoginRetryLaterError(f"the Peloton sign-in is failing ({_where(answer)}); try "
                                   "again later")
    if answer.status != 200:
        raise UnexpectedResponseError(f"Auth0 refused to start the sign-in ({_where(answer)}); "
                                      "check api.auth_url and auth.client_id")
    config = injected_config(answer.body)
    options = config.get("internalOptions")
    options = options if isinstance(options, dict) else {}
    transaction = transaction or _text(options.get("state"))
    if not transaction:
        raise UnexpectedResponseError(f"{_where(answer)} is not an Auth0 sign-in page (no "
                                      "transaction state); check api.auth_url")
    csrf = browser.cookie(tenant.url("/usernamepassword/login"), CSRF_COOKIE)
    if not csrf:
        raise LoginAnomalyError("Auth0 set no _csrf cookie (Missing CSRF token); this is "
                                "sometimes transient: try again later")
    return LoginPage(answer.url, transaction, csrf)


def injected_config(page: bytes) -> dict[str, object]:
    """The login page's ``window.injectedConfig`` (base64 JSON), or {} when absent."""
    found = _INJECTED.search(page.decode("utf-8", "replace"))
    if found is None:
        return {}
    text = found.group(1)
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_")
        value = orjson.loads(decoded)
    except (ValueError, orjson.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


# -- step 2 -------------------------------------------------------------------


async def submit_password(browser: Browser, tenant: Tenant, pkce: Pkce, page: LoginPage,
                          username: str, password: str) -> HiddenForm:
    """POST the credentials with Auth0's transaction state; the auto-post form that answers."""
    body = {
        "client_id": tenant.client_id, "redirect_uri": tenant.redirect_uri, "tenant": TENANT,
        "response_type": "code", "scope": SCOPE, "audience": AUDIENCE, "_csrf": page.csrf,
        "state": page.transaction, "_intstate": "deprecated", "nonce": pkce.nonce,
        "username": username, "password": password, "connection": CONNECTION,
        "code_challenge": pkce.challenge, "code_challenge_method": "S256",
    }
    origin = urlsplit(tenant.auth_url)
    headers = {"Origin": f"{origin.scheme}://{origin.netloc}", "Referer": page.url,
               "Auth0-Client": AUTH0_CLIENT}
    answer = await browser.send("POST", tenant.url("/usernamepassword/login"), json=body,
                                headers=headers)
    if answer.status != 200:
        raise _refusal(answer)
    form = parse_form(answer.body)
    if form is None or "wresult" not in form.fields:
        raise AuthError("Peloton asks for a verification step (or answered an unexpected page) "
                        "that cannot be done headless; sign in with `peloton-harvester login "
                        "--browser`")
    return HiddenForm(urljoin(answer.url, form.action), form.fields)


def _refusal(answer: Answer) -> AuthError:
    """The one-line error for a refused POST /usernamepassword/login."""
    body = answer.json()
    code = _text(body.get("code")) or _text(body.get("error")) or ""
    name = _text(body.get("name")) or ""
    description = _text(body.get("description")) or _text(body.get("error_description")) or ""
    if code == TOO_MANY_ATTEMPTS:
        return LoginRetryLaterError(
            "Auth0 is blocking sign-ins to this account after too many attempts "
            "(too_many_attempts); wait, follow Peloton's unblock e-mail if one came, then try again")
    if answer.status == 429:
        return LoginRetryLaterError(f"Peloton is throttling the sign-in ({_where(answer)}); "
                                    "try again later")
    if answer.status == 401 or code == "invalid_user_password":
        return AuthError("Peloton says: wrong email or password; check PELOTON_USERNAME and "
                         "PELOTON_PASSWORD")
    if name == "AnomalyDetected" or "state" in description.lower() or "csrf" in description.lower():
        return LoginAnomalyError(
            f"Auth0 refused the sign-in as an anomaly ({_short(description or code or name)}); "
            "this is sometimes transient: try again later")
    if answer.status >= 500:
        return LoginRetryLaterError(f"the Peloton sign-in failed ({_where(answer)}); try again later")
    return AuthError(f"the Peloton sign-in was refused ({_where(answer)} {_short(code)}); "
                     "try `peloton-harvester login --browser`")


class _FormParser(HTMLParser):
    """The first <form> and its inputs; attribute values arrive entity-decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.form: HiddenForm | None = None
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form" and self.form is None:
            self.form = HiddenForm(values.get("action", ""), {})
            self._inside = True
        elif tag == "input" and self._inside and self.form is not None and values.get("name"):
            self.form.fields[values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False


def parse_form(page: bytes) -> HiddenForm | None:
    parser = _FormParser()
    parser.feed(page.decode("utf-8", "replace"))
    parser.close()
    return parser.form


# -- step 3 -------------------------------------------------------------------


async def post_form(browser: Browser, tenant: Tenant, form: HiddenForm) -> str:
    """POST the hidden form, follow the redirects by hand; the URL that names redirect_uri."""
    answer = await browser.send("POST", form.action, data=form.fields)
    for _ in range(DEFAULT_MAX_HOPS):
        if answer.status not in REDIRECTS or not answer.location:
            raise AuthError(f"the sign-in never reached the callback: it stopped at "
                            f"{_where(answer)}")
        target = urljoin(answer.url, answer.location)
        if is_callback(target, tenant.redirect_uri):
            return target  # never fetched: the code is in its query
        answer = await browser.send("GET", target)
    raise AuthError(f"the sign-in never reached the callback: more than {DEFAULT_MAX_HOPS} "
                    f"redirects, the last to {_path(answer.url)}")


def is_callback(url: str, redirect_uri: str) -> bool:
    a, b = urlsplit(url), urlsplit(redirect_uri)
    return (a.scheme, a.netloc.lower(), a.path) == (b.scheme, b.netloc.lower(), b.path)


def code_from_callback(url: str, tenant: Tenant, pkce: Pkce) -> str:
    """The authorization code of a callback URL whose ``state`` is ours."""
    if not is_callback(url.strip(), tenant.redirect_uri):
        raise AuthError(f"that is not the sign-in callback ({_path(url.strip())}); paste the whole "
                        f"address starting with {tenant.redirect_uri}?code=")
    error = _query(url, "error")
    if error:
        raise AuthError(f"Auth0 answered the sign-in with an error ({_short(error)}); sign in again")
    if not secrets.compare_digest(_query(url, "state") or "", pkce.state):
        raise AuthError("the callback's state does not match this sign-in (an old or someone "
                        "else's URL?); sign in again with `peloton-harvester login`")
    code = _query(url, "code")
    if not code:
        raise AuthError("the callback URL carries no code; paste the whole address from the "
                        "browser's address bar")
    return code


# -- step 4 -------------------------------------------------------------------


async def exchange_code(http: HttpClient, tenant: Tenant, code: str, pkce: Pkce) -> JsonObject:
    """Trade the code and the PKCE verifier for tokens."""
    body = {"grant_type": "authorization_code", "client_id": tenant.client_id,
            "code_verifier": pkce.verifier, "code": code, "redirect_uri": tenant.redirect_uri}
    try:
        return await http.request_json("POST", tenant.url("/oauth/token"), endpoint="token",
                                       json=body)
    except RejectedError as exc:
        raise AuthError(f"Peloton refused the authorization code ({exc.reason or exc.status}); "
                        "sign in again with `peloton-harvester login`") from exc


async def sign_in(http: HttpClient, tenant: Tenant, username: str, password: str) -> JsonObject:
    """Steps 1 to 4 headless, with a fresh cookie jar; the token endpoint's answer."""
    pkce = new_pkce()
    async with open_browser() as session:
        browser = Browser(http, session)
        page = await open_login_page(browser, tenant, pkce)
        form = await submit_password(browser, tenant, pkce, page, username, password)
        callback = await post_form(browser, tenant, form)
    return await exchange_code(http, tenant, code_from_callback(callback, tenant, pkce), pkce)


# -- helpers ------------------------------------------------------------------


def _check_scheme(url: str) -> None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback(host)):
        return
    raise AuthError(f"the sign-in led to {parts.scheme}://{host}, which is refused (only https, "
                    "or http on loopback)")


def _query(url: str, name: str) -> str | None:
    values = parse_qs(urlsplit(url).query).get(name)
    return values[0] if values else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _short(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)[:80]


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or ''}{parts.path}"


def _where(answer: Answer) -> str:
    return f"{_path(answer.url)} HTTP {answer.status}"
