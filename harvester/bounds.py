"""What a hostile server cannot make a run do: grow its memory, or spend it answer by answer.

The per-attempt total deadline is ``aiohttp.ClientTimeout(total=api.timeout_s)``
in client.py; this module holds the rest: the body cap (decompressed), the
redirect bound, and the count of answers no Peloton server sends, past which the
run stops (``MisbehavingServerError``) instead of paying for each item.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp

from harvester.errors import MisbehavingServerError

# Decompressed: a gzip bomb must not grow memory. The largest real answer (a
# two-hour ride's performance graph with GPS) is well under a megabyte.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_REDIRECTS = 5  # for requests that follow redirects at all (most do not)
# Answers too big or stalled mid-body that a run tolerates before it stops: one fails
# its item, but each costs a whole deadline or a bomb inflated to the cap.
DEFAULT_MAX_MISBEHAVIOUR = 3
EXIT_TEMPORARY = 75
_READ_CHUNK = 256 * 1024

Kind = tuple[str, int, str]  # a misbehaviour: what the answers were, exit code, advice
STALLED: Kind = ("still incomplete when the deadline passed", EXIT_TEMPORARY, "try again later")


def oversized(limit: int) -> Kind:
    return (f"larger than {limit // (1024 * 1024)} MB", 2,
            "check api.base_url and any proxy in between")


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body as aiohttp decodes it (gzip undone), or None once it passes ``limit`` bytes.

    Read in chunks so memory never holds more than ``limit`` plus one chunk: aiohttp
    decompresses incrementally under flow control, so neither an endless body nor a
    gzip bomb is ever inflated past the cap. The rest of the body is never read.
    """
    declared = resp.content_length
    headers = resp.headers
    if declared is not None and "Content-Encoding" not in headers and "Transfer-Encoding" not in headers:
        # As sent, and aiohttp stops at the declared length: the usual answer is one read.
        return None if declared > limit else await resp.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Misbehaviour:
    """Counts a run's answers no Peloton server sends; past the limit, stops the run."""

    def __init__(self, limit: int = DEFAULT_MAX_MISBEHAVIOUR) -> None:
        self.limit = limit
        self.count = 0

    def note(self, method: str, url: str, kind: Kind) -> None:
        """Count one; MisbehavingServerError (not an ApiError: no item catches it) past the limit."""
        self.count += 1
        if self.count <= self.limit:
            return
        what, exit_code, advice = kind
        parts = urlsplit(url)
        raise MisbehavingServerError(
            f"stopped: {parts.hostname or 'the server'} sent {self.count} answers {what} (the "
            f"last for {method} {parts.path}); no Peloton server does that: {advice}",
            exit_code=exit_code)
