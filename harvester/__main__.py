from __future__ import annotations

from harvester.cli import main

raise SystemExit(main())
