"""A person with a browser, for tests: signs in on the emulator's Universal Login by hand.

Written apart from harvester.auth.universal (plain aiohttp, regular expressions),
so the server is checked against a second reading of PELOTON_API.md 1a, and the
`login --browser` test has someone to play the person.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson
from yarl import URL

CALLBACK = "https://members.onepeloton.com/callback"
WEB_CLIENT_ID = "WVoJxVDdPoFx4RNewvvg6ch2mZ7bwnsM"
_CONFIG = re.compile(r"atob\('([A-Za-z0-9+/=]+)'\)")
_INPUT = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')
_ACTION = re.compile(r'<form method="post" name="hiddenform" action="([^"]+)">')


class Person:
    """One browser: a cookie jar per host and path, redirects followed by the browser."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.page_url = ""
        self.config: dict[str, Any] = {}

    async def open(self, authorize_url: str) -> int:
        """Follow the sign-in URL to the login page; its status."""
        async with self.session.get(authorize_url) as resp:
            self.page_url = str(resp.url)
            text = await resp.text()
            found = _CONFIG.search(text)
            if found:
                self.config = orjson.loads(base64.b64decode(found.group(1)))
            return resp.status

    @property
    def transaction(self) -> str:
        return str(self.config["internalOptions"]["state"])

    def cookie(self, name: str) -> str | None:
        url = URL(self.page_url).with_path("/usernamepassword/login").with_query(None)
        morsel = self.session.cookie_jar.filter_cookies(url).get(name)
        return morsel.value if morsel is not None else None

    async def submit(self, user: str, secret: str, **changes: Any) -> tuple[int, str]:
        """POST the credentials as the page's script does; status and body."""
        options = self.config["internalOptions"]
        body = {"client_id": self.config["clientID"], "redirect_uri": CALLBACK,
                "tenant": "peloton-prod", "response_type": "code", "scope": options["scope"],
                "audience": "https://api.onepeloton.com/", "_csrf": self.cookie("_csrf"),
                "state": self.transaction, "_intstate": "deprecated", "nonce": options["nonce"],
                "username": user, "password": secret, "connection": "pelo-user-password",
                "code_challenge": options["code_challenge"], "code_challenge_method": "S256",
                **changes}
        base = urlsplit(self.page_url)
        async with self.session.post(f"{base.scheme}://{base.netloc}/usernamepassword/login",
                                     json=body) as resp:
            return resp.status, await resp.text()

    async def post_form(self, page: str, *, decode: bool = True) -> str:
        """Let the auto-post form go; the callback URL the chain ends at (never fetched)."""
        action = _ACTION.search(page)
        assert action is not None, page[:300]
        fields = {k: html.unescape(v) if decode else v for k, v in _INPUT.findall(page)}
        url, method, data = html.unescape(action.group(1)), "POST", fields
        for _ in range(20):
            async with self.session.request(method, url, data=data,
                                            allow_redirects=False) as resp:
                location = resp.headers.get("Location")
                if resp.status != 302 or location is None:
                    return f"stopped:{resp.status}:{url}"
            url, method, data = urljoin(url, location), "GET", None
            if url.startswith(CALLBACK):
                return url
        return "stopped:hops"

    async def sign_in(self, authorize_url: str, username: str, password: str) -> str:
        """The whole sign-in as a person does it; the callback URL to paste."""
        assert await self.open(authorize_url) == 200
        status, page = await self.submit(username, password)
        assert status == 200, page
        return await self.post_form(page)


def browser_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
