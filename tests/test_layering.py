"""The import layering STYLE.md draws holds: imports flow one way."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "harvester"

# module (or package) -> the harvester modules it may import
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "files": set(),
    "config": {"errors"},
    "limiter": {"errors"},
    "bounds": {"errors"},
    "client": {"errors", "config", "limiter", "bounds", "__init__"},
    "auth": {"auth", "errors", "config", "client", "files"},
    "api": {"errors", "config", "client", "auth", "limiter"},
    "keys": {"errors"},
    "lakefile": {"errors", "keys", "storage"},
    "lake": {"errors", "files", "keys", "lakefile", "storage"},
    "state": {"errors", "storage"},
    "listing": {"errors", "api"},
    "scancache": {"errors", "storage"},
    "heal": {"errors", "lake", "scancache"},
    "reconcile": {"heal", "lake"},
    "frontier": {"keys", "lake"},
    "classes": {"frontier", "lake"},
    "jobs": set(),
    "writer": {"api", "classes", "frontier", "lake", "state"},
    "pipeline": {"errors", "config", "client", "api", "lake", "state", "heal", "reconcile",
                 "listing", "classes", "frontier", "jobs", "writer", "scancache"},
    "run": {"errors", "config", "client", "api", "auth", "classes", "lake", "state", "pipeline",
            "storage", "listing", "__init__"},
    "plan": {"errors", "config", "client", "api", "lake", "listing", "state", "storage"},
    "status": {"errors", "config", "lake", "state", "storage"},
    "console": set(),
    "demo": {"errors", "config", "console", "run", "emulator"},
    "verify": {"api", "config", "heal", "lake", "state", "run", "storage", "scancache"},
    "accounts": {"errors", "classes", "config", "client", "api", "run", "storage"},
}


def harvester_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "harvester":
                found.update("__init__" if a.name == "__version__" else a.name for a in node.names)
            elif node.module.startswith("harvester."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("harvester."))
    return found


def sources(name: str) -> list[Path]:
    """The module's file, or every file of the package of that name."""
    package = PACKAGE / name
    return sorted(package.glob("*.py")) if package.is_dir() else [PACKAGE / f"{name}.py"]


def test_core_modules_import_only_lower_layers() -> None:
    """No module imports one above it (cli -> run -> pipeline -> api/lake/state -> auth -> client -> config/errors)."""
    for name, allowed in ALLOWED.items():
        paths = sources(name)
        assert paths and all(p.is_file() for p in paths), name
        for path in paths:
            extra = harvester_imports(path) - allowed
            assert not extra, f"{path.relative_to(PACKAGE)} imports {sorted(extra)}"


def test_universal_login_knowledge_stays_in_one_file() -> None:
    """Only auth/universal.py names Auth0's sign-in paths: a change of Peloton's login lands there."""
    markers = ("/usernamepassword/login", "/authorize", "/login/callback")
    for path in PACKAGE.glob("*.py"):
        assert not any(m in path.read_text(encoding="utf-8") for m in markers), path.name
    for path in (PACKAGE / "auth").glob("*.py"):
        holds = any(m in path.read_text(encoding="utf-8") for m in markers)
        assert holds == (path.name == "universal.py"), path.name


def test_storage_stands_below_lake_and_state() -> None:
    """storage/ imports only errors, files, config and itself: lake and state will stand on it."""
    for path in (PACKAGE / "storage").glob("*.py"):
        extra = harvester_imports(path) - {"errors", "files", "config", "storage"}
        assert not extra, f"storage/{path.name} imports {sorted(extra)}"


def test_emulator_imports_nothing_from_the_harvester() -> None:
    """The emulator is an independent model of the remote API."""
    for path in (PACKAGE / "emulator").glob("*.py"):
        assert harvester_imports(path) <= {"emulator"}, path.name


def test_tables_read_the_raw_lake_only_as_files() -> None:
    """harvester/tables reads the lake through storage/ only (no lake, no pipeline), and no
    harvesting module (nor storage) depends on it."""
    for path in (PACKAGE / "tables").glob("*.py"):
        assert harvester_imports(path) <= {"errors", "files", "storage", "tables"}, path.name
    for name in [*ALLOWED, "storage"]:
        for path in sources(name):
            assert "tables" not in harvester_imports(path), path.relative_to(PACKAGE)
