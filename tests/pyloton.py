"""pylotoncycle 0.9.5 pointed at an emulator (used by tests/test_fidelity.py and scripts/bench).

pylotoncycle has no base-URL option and calls /api/me inside its constructor, so
the URL has to be in place before ``__init__`` runs: a subclass whose ``base_url``
ignores the assignment the constructor makes.
"""

from __future__ import annotations

from typing import Any

from pylotoncycle import PylotonCycle


def pointed(base_url: str, username: str, password: str) -> Any:
    """A logged-in PylotonCycle talking to ``base_url`` for both login and data."""

    class Pointed(PylotonCycle):  # type: ignore[misc]
        @property
        def base_url(self) -> str:
            return base_url

        @base_url.setter
        def base_url(self, _ignored: str) -> None:
            pass

    return Pointed(username, password, token_url=f"{base_url}/oauth/token")
