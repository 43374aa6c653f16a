from __future__ import annotations

from harvester.cli import entry

entry()
