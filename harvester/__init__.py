"""peloton-harvester: copy a Peloton workout history into a date-partitioned JSONL lake."""

from __future__ import annotations

# The one place the version is written; pyproject.toml reads it from here.
__version__ = "0.1.0"
