"""peloton-harvester: copy a Peloton workout history into a date-partitioned JSONL lake."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("peloton-harvester")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
