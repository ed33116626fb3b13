"""Imports only point down (DESIGN.md §3): an AST scan of src/tidings, and proof that the scan can fail.

The checker reads source text, so a violation is found even in code that never runs in the tests
(an import inside a function, under ``TYPE_CHECKING``, or relative like ``from ..store import x``).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tidings"
# The package's own __init__: it re-exports every layer, so no layer may take names from it.
FACADE = "tidings"

# Which tidings layers each layer may import (its own always included). This is DESIGN.md §3 read
# for the packages that exist or are planned. Two readings worth saying out loud:
# - the store may use messaging (codecs, ids) although the diagram draws it lower; messaging must
#   not use the store, so there is still no cycle;
# - brokers may use the store: the embedded `local` broker *is* the store's durable log.
ALLOWED_LAYERS: dict[str, frozenset[str]] = {
    "domain": frozenset({"domain"}),
    "messaging": frozenset({"domain", "messaging"}),
    "store": frozenset({"domain", "messaging", "store"}),
    "brokers": frozenset({"domain", "messaging", "store", "brokers"}),
    # Telemetry (span and metric vocabulary) sits under app and runtime, which record into it.
    "telemetry": frozenset({"domain", "messaging", "store", "brokers", "telemetry"}),
    "app": frozenset({"domain", "messaging", "store", "brokers", "telemetry", "app"}),
    "runtime": frozenset({"domain", "messaging", "store", "brokers", "telemetry", "app", "runtime"}),
    # Change data capture is a process beside the runtime's: it writes the outbox as the app layer does.
    "cdc": frozenset({"domain", "messaging", "store", "telemetry", "app", "cdc"}),
    # Contract tooling reads applications, consumers and sagas as wired (export, lock, check, docs).
    "contracts": frozenset({"domain", "messaging", "store", "brokers", "telemetry", "app", "runtime", "contracts"}),
    # Adoption edges: a command in the user's own transaction sits on the app layer; the FastAPI
    # integration runs the runtime's roles in a web app and uses it.
    "joined": frozenset({"domain", "messaging", "store", "telemetry", "app", "joined"}),
    "fastapi": frozenset({"domain", "messaging", "store", "brokers", "telemetry", "app", "runtime", "joined", "fastapi"}),
    # The users' test kit drives applications and runtimes, never the operator surfaces.
    "testing": frozenset({"domain", "messaging", "store", "brokers", "telemetry", "app", "runtime", "testing"}),
    "dashboard": frozenset({"domain", "messaging", "store", "brokers", "telemetry", "app", "runtime", "dashboard"}),
    # The command line may start the dashboard and read the package facade (``__version__``).
    "cli": frozenset({"domain", "messaging", "store", "brokers", "telemetry", "app", "runtime", "cdc", "contracts", "dashboard", "cli", FACADE}),
}

# Standard-library modules that do I/O or run concurrently; the domain is plain synchronous Python.
# Serialisation (json, pickle) is named too: turning messages into bytes belongs to messaging.
DOMAIN_FORBIDDEN_STDLIB = frozenset(
    {
        "asyncio", "concurrent", "dbm", "ftplib", "http", "imaplib", "importlib", "io", "json", "logging",
        "mmap", "multiprocessing", "os", "pathlib", "pickle", "poplib", "select", "selectors", "shelve",
        "shutil", "signal", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "subprocess", "sys",
        "tempfile", "threading", "urllib", "xmlrpc", "zipfile",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Violation:
    """One import that breaks a layering rule, located precisely enough to jump to."""

    path: str
    line: int
    imported: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.imported} — {self.reason}"


def module_name_of(path: Path) -> str:
    """The dotted module name of a file under src/ (``tidings/store/__init__.py`` → ``tidings.store``)."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_in(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every (line, absolute dotted name) imported anywhere in ``source``, relative imports resolved.

    ``from pkg import name`` yields ``pkg.name``, since ``name`` may be a submodule: that is how
    ``from tidings import store`` is seen to reach the store, and ``from tidings import Application``
    to take a name from the facade.
    """
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.extend(
                (node.lineno, base if alias.name == "*" else f"{base}.{alias.name}") for alias in node.names
            )
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            # Dynamic imports hide dependencies from readers; name them so the rule sees them.
            target = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else "<dynamic>"
            found.append((node.lineno, str(target)))
    return found


def existing_layers() -> set[str]:
    """The subpackages and top-level modules of tidings on disk (each is one layer)."""
    return {
        child.stem
        for child in PACKAGE.iterdir()
        if (child.is_dir() and (child / "__init__.py").exists()) or (child.suffix == ".py" and child.stem != "__init__")
    }


def tidings_layer_of(imported: str, known: set[str]) -> str | None:
    """The layer an imported tidings module belongs to; ``tidings`` for the facade; None if not tidings."""
    parts = imported.split(".")
    if parts[0] != "tidings":
        return None
    if len(parts) > 1 and parts[1] in known:
        return parts[1]
    # ``import tidings`` or ``from tidings import Application``: a name from the facade.
    return FACADE


def layer_violations(source: str, path: str, module: str, known: set[str], is_package: bool = False) -> list[Violation]:
    """Imports of tidings layers that ``module``'s layer may not use."""
    layer = module.split(".")[1]
    allowed = ALLOWED_LAYERS[layer]
    violations = []
    for line, imported in imports_in(source, module, is_package):
        target = tidings_layer_of(imported, known)
        if target is None or target in allowed:
            continue
        what = "the tidings facade (it imports every layer)" if target == FACADE else f"tidings.{target}"
        violations.append(
            Violation(path, line, imported, f"tidings.{layer} may not depend on {what}; imports only point down")
        )
    return violations


def domain_purity_violations(source: str, path: str, module: str, is_package: bool = False) -> list[Violation]:
    """Imports that make a domain module impure: other tidings layers, I/O modules, any third-party package."""
    violations = []
    for line, imported in imports_in(source, module, is_package):
        top = imported.split(".")[0]
        if top == "tidings":
            if not (imported == "tidings.domain" or imported.startswith("tidings.domain.")):
                violations.append(Violation(path, line, imported, "the domain layer imports nothing else from tidings"))
        elif top == "__future__":
            continue
        elif top in DOMAIN_FORBIDDEN_STDLIB:
            violations.append(Violation(path, line, imported, "I/O or infrastructure module; the domain layer is pure"))
        elif top not in sys.stdlib_module_names:
            violations.append(
                Violation(
                    path, line, imported, "third-party package; the domain layer depends on the standard library only"
                )
            )
    return violations


def source_files(layer: str) -> list[Path]:
    """Every .py file of one layer (a subpackage, or a single module)."""
    directory = PACKAGE / layer
    if directory.is_dir():
        return sorted(directory.rglob("*.py"))
    module = PACKAGE / f"{layer}.py"
    return [module] if module.exists() else []


def scan(layer: str, check: str) -> list[Violation]:
    """Run one checker over every file of ``layer`` on disk."""
    known = existing_layers()
    violations: list[Violation] = []
    for file in source_files(layer):
        source = file.read_text(encoding="utf-8")
        path = str(file.relative_to(SRC.parent))
        module = module_name_of(file)
        is_package = file.name == "__init__.py"
        if check == "purity":
            violations += domain_purity_violations(source, path, module, is_package)
        else:
            violations += layer_violations(source, path, module, known, is_package)
    return violations


def report(violations: list[Violation]) -> str:
    """One violation per line, for the assertion message."""
    return "\n".join(str(v) for v in violations)


# -- the real source tree ----------------------------------------------------------------------------


def test_domain_layer_exists_and_is_scanned() -> None:
    # Given the source tree / then the scan below really reads domain files (an empty scan proves nothing)
    files = source_files("domain")
    assert PACKAGE / "domain" / "aggregate.py" in files
    assert len(files) >= 3


def test_domain_layer_imports_nothing_impure() -> None:
    # Given every module of tidings.domain
    # When its imports are scanned
    violations = scan("domain", "purity")

    # Then none reaches another tidings layer, an I/O module or a third-party package
    assert not violations, "impure imports in the domain layer:\n" + report(violations)


def test_every_tidings_package_has_a_place_in_the_layers() -> None:
    # Given the subpackages and modules of tidings on disk
    # Then each is placed in DESIGN.md §3's order, so its imports are checked by the test below
    unplaced = sorted(existing_layers() - set(ALLOWED_LAYERS))
    assert not unplaced, f"tidings.{unplaced} not in ALLOWED_LAYERS of {__file__}; place it in DESIGN.md §3's order"


# Only layers on disk: a planned layer with no files would make a test that checks nothing.
@pytest.mark.parametrize("layer", sorted(existing_layers() & set(ALLOWED_LAYERS)))
def test_layer_imports_only_point_down(layer: str) -> None:
    # Given every module of one layer
    # When its tidings imports are scanned
    violations = scan(layer, "layers")

    # Then each points to the same or a lower layer
    assert not violations, f"tidings.{layer} imports upward:\n" + report(violations)


def test_layers_that_exist_today_are_scanned() -> None:
    # Given the layers the foundation ships / then each has files the scan reads
    for layer in ("domain", "messaging", "store", "app"):
        assert source_files(layer), f"tidings.{layer} has no source files"


# -- the checker can fail ----------------------------------------------------------------------------

IMPURE_DOMAIN_SOURCE = '''\
"""A domain module that does everything wrong."""
from __future__ import annotations
import copy
import sqlite3
from tidings.store.records import Changes
from ..messaging import registry
from tidings import DomainError
import msgspec


def load() -> None:
    import asyncio.tasks
    __import__("socket")
'''


def test_purity_check_reports_each_impure_import_with_file_and_line() -> None:
    # Given a synthetic domain module with six kinds of impure import
    # When it is checked
    violations = domain_purity_violations(IMPURE_DOMAIN_SOURCE, "src/tidings/domain/bad.py", "tidings.domain.bad")

    # Then each is reported at its line, and the harmless ones (copy, __future__) are not
    assert [(v.line, v.imported.split(".")[0:2]) for v in violations] == [
        (4, ["sqlite3"]),
        (5, ["tidings", "store"]),
        (6, ["tidings", "messaging"]),
        (7, ["tidings", "DomainError"]),
        (8, ["msgspec"]),
        (12, ["asyncio", "tasks"]),
        (13, ["socket"]),
    ]
    assert str(violations[0]) == (
        "src/tidings/domain/bad.py:4 imports sqlite3 — I/O or infrastructure module; the domain layer is pure"
    )
    assert "third-party package" in str(violations[4])


def test_purity_check_accepts_a_pure_module() -> None:
    # Given a domain module using only the standard library and its own layer
    source = (
        "from __future__ import annotations\nimport dataclasses\n"
        "from . import errors\nfrom tidings.domain.messages import Command\n"
    )

    # When it is checked / then nothing is reported
    assert domain_purity_violations(source, "src/tidings/domain/ok.py", "tidings.domain.ok") == []


@pytest.mark.parametrize(
    ("module", "source", "line", "imported"),
    [
        pytest.param(
            "tidings.messaging.codec",
            "import msgspec\nfrom tidings.store.base import Store\n",
            2,
            "tidings.store.base",
            id="messaging-imports-store",
        ),
        pytest.param(
            "tidings.messaging.codec",
            "from ..app import Application\n",
            1,
            "tidings.app",
            id="relative-messaging-imports-app",
        ),
        pytest.param(
            "tidings.store.sqlite",
            "\n\nfrom tidings.app.unit_of_work import UnitOfWork\n",
            3,
            "tidings.app.unit_of_work",
            id="store-imports-app",
        ),
        pytest.param("tidings.app.application", "from tidings import cli\n", 1, "tidings.cli", id="app-imports-cli"),
        pytest.param(
            "tidings.app.application",
            "def f():\n    from tidings.runtime.relay import Relay\n",
            2,
            "tidings.runtime.relay",
            id="app-imports-runtime-inside-a-function",
        ),
        pytest.param(
            "tidings.store.sqlite", "from tidings import Application\n", 1, "tidings", id="store-imports-the-facade"
        ),
    ],
)
def test_layer_check_reports_an_upward_import_with_file_and_line(
    module: str, source: str, line: int, imported: str
) -> None:
    # Given a synthetic module that imports from a higher layer (or from the facade)
    known = {"domain", "messaging", "store", "brokers", "app", "runtime", "dashboard", "cli"}
    path = "src/" + module.replace(".", "/") + ".py"

    # When it is checked
    violations = layer_violations(source, path, module, known)

    # Then exactly that import is reported at its line, naming the file
    assert len(violations) == 1
    assert (violations[0].path, violations[0].line) == (path, line)
    assert violations[0].imported.startswith(imported)
    assert str(violations[0]).startswith(f"{path}:{line} imports ")
    assert "imports only point down" in str(violations[0])


def test_layer_check_accepts_downward_and_same_layer_imports() -> None:
    # Given an app module importing every layer below it, relatively and absolutely
    source = (
        "from tidings.domain import Aggregate\nfrom tidings.messaging.envelope import Envelope\n"
        "from tidings.store.base import Store\nfrom .unit_of_work import UnitOfWork\nfrom . import partitioning\n"
    )
    known = {"domain", "messaging", "store", "app", "cli"}

    # When it is checked / then nothing is reported
    assert layer_violations(source, "src/tidings/app/x.py", "tidings.app.x", known) == []


def test_relative_imports_resolve_from_a_package_init() -> None:
    # Given ``from .sqlite import X`` inside tidings/store/__init__.py and ``from .. import app`` beside it
    # When resolved / then the first stays in the store and the second reaches tidings.app
    assert imports_in("from .sqlite import X\n", "tidings.store", is_package=True) == [(1, "tidings.store.sqlite.X")]
    assert imports_in("from .. import app\n", "tidings.store", is_package=True) == [(1, "tidings.app")]
    assert imports_in("from .. import app\n", "tidings.store.sqlite") == [(1, "tidings.app")]
    assert module_name_of(PACKAGE / "store" / "__init__.py") == "tidings.store"
    assert module_name_of(PACKAGE / "store" / "sqlite.py") == "tidings.store.sqlite"
