"""Bounded contexts never import each other and their domains stay pure: an AST scan of examples/licensing.

The checker reads source text, so it also sees imports that never run in the tests: inside
functions, under ``TYPE_CHECKING``, relative (``from ...compliance import x``) or dynamic
(``importlib.import_module("...")``). The rules, from PLATFORM.md and DESIGN.md §3:

- a module inside one context imports no other context (contexts share only ``contracts/``);
- ``contracts/`` imports no context (every context depends on it, so it may depend on none);
- a ``domain/`` module imports only ``tidings.domain``, the standard library (minus I/O modules),
  and its own context's ``domain/``.

Modules at the top of the platform package (outside any context) are the composition root: they
wire the contexts together and may import all of them.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLATFORM = ROOT / "examples" / "licensing"
PACKAGE = "examples.licensing"
CONTEXTS = frozenset({"asset_processing", "licensing", "compliance"})
LAYERS = ("domain", "application", "infrastructure")

# Standard-library modules that do I/O or run concurrently (the same reading as tidings' own
# domain rule): a domain is plain synchronous Python that can be tested without a machine around it.
DOMAIN_FORBIDDEN_STDLIB = frozenset(
    {
        "asyncio", "concurrent", "dbm", "ftplib", "http", "imaplib", "importlib", "io", "json", "logging",
        "mmap", "multiprocessing", "os", "pathlib", "pickle", "poplib", "select", "selectors", "shelve",
        "shutil", "signal", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "subprocess", "sys",
        "tempfile", "threading", "urllib", "xmlrpc", "zipfile",
    }
)  # fmt: skip

CROSS_CONTEXT = "contexts never import each other; share an integration event in contracts/ instead"
CONTRACTS_IMPORT_CONTEXT = "contracts are shared by every context, so they import none"
IMPURE_DOMAIN = "a domain imports only tidings.domain, the standard library and its own context's domain"
IO_IN_DOMAIN = "I/O or infrastructure module; a domain is pure"


@dataclass(frozen=True)
class Violation:
    """One import that breaks a boundary, located precisely enough to jump to."""

    path: str
    line: int
    imported: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.imported} — {self.reason}"


def module_name_of(file: Path, root: Path, package: str) -> str:
    """The dotted name of ``file`` under the package rooted at ``root`` (``…/domain/__init__.py`` → ``….domain``)."""
    parts = list(file.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imports_in(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every (line, absolute dotted name) ``source`` imports, relative and dynamic imports resolved.

    ``from pkg import name`` yields ``pkg.name`` because ``name`` may be a submodule: that is how
    ``from examples.licensing import compliance`` is seen to reach the compliance context.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.extend((node.lineno, base if alias.name == "*" else f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            # A dependency hidden in a string is still a dependency.
            first = node.args[0] if node.args else None
            target = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else "<dynamic>"
            found.append((node.lineno, target))
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in {"__import__", "import_module"}
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def context_of(module: str, package: str) -> str | None:
    """The bounded context a module belongs to, or None (contracts, the composition root, anything else)."""
    prefix = f"{package}."
    if not module.startswith(prefix):
        return None
    first = module[len(prefix) :].split(".")[0]
    return first if first in CONTEXTS else None


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def check_import(importer: str, imported: str, package: str) -> str | None:
    """Why ``importer`` may not import ``imported``, or None when it may."""
    own = context_of(importer, package)
    target = context_of(imported, package)
    if own is not None and target is not None and target != own:
        return CROSS_CONTEXT
    if _within(importer, f"{package}.contracts") and target is not None:
        return CONTRACTS_IMPORT_CONTEXT
    if own is not None and _within(importer, f"{package}.{own}.domain"):
        top = imported.split(".")[0]
        if _within(imported, "tidings.domain") or _within(imported, f"{package}.{own}.domain") or top == "__future__":
            return None
        if top in DOMAIN_FORBIDDEN_STDLIB:
            return IO_IN_DOMAIN
        if top not in sys.stdlib_module_names:
            return IMPURE_DOMAIN
        # Any other standard-library module (uuid, re, datetime, enum…) is fine.
    return None


def boundary_violations(root: Path, package: str = PACKAGE) -> list[Violation]:
    """Every import under ``root`` (the platform package's directory) that breaks a boundary rule."""
    violations: list[Violation] = []
    for file in sorted(root.rglob("*.py")):
        module = module_name_of(file, root, package)
        source = file.read_text(encoding="utf-8")
        for line, imported in imports_in(source, module, is_package=file.name == "__init__.py"):
            reason = check_import(module, imported, package)
            if reason is not None:
                violations.append(Violation(file.relative_to(root).as_posix(), line, imported, reason))
    return violations


def report(violations: list[Violation]) -> str:
    """One violation per line, for the assertion message."""
    return "\n".join(str(violation) for violation in violations)


# -- the real platform -----------------------------------------------------------------------------


def test_every_context_has_its_three_layers_on_disk() -> None:
    # Given the platform package / then each context is there with domain, application, infrastructure,
    # and the domains have code in them (an empty scan would prove nothing)
    for context in sorted(CONTEXTS):
        for layer in LAYERS:
            assert (PLATFORM / context / layer / "__init__.py").is_file(), f"{context}/{layer}/__init__.py is missing"
        assert len(list((PLATFORM / context / "domain").glob("*.py"))) >= 3
    assert (PLATFORM / "contracts" / "__init__.py").is_file()


def test_the_scan_reads_imports_of_every_domain_module() -> None:
    # Given the real tree / then the scan sees each domain import tidings.domain (so it is reading them)
    seen = {
        module_name_of(file, PLATFORM, PACKAGE)
        for file in PLATFORM.rglob("*.py")
        if any(_within(name, "tidings.domain") for _, name in imports_in(file.read_text(encoding="utf-8"), "x.y"))
    }
    for context in sorted(CONTEXTS):
        assert any(_within(module, f"{PACKAGE}.{context}.domain") for module in seen), context


def test_no_context_imports_another_and_every_domain_is_pure() -> None:
    # Given every module of the platform
    # When its imports are checked
    violations = boundary_violations(PLATFORM)

    # Then none crosses a context boundary, none makes contracts depend on a context, no domain is impure
    assert not violations, "boundary violations in examples/licensing:\n" + report(violations)


# -- the checker can fail --------------------------------------------------------------------------

SYNTHETIC_TREE = {
    "__init__.py": '"""The composition root may import every context."""\n'
    "from examples.licensing.licensing.domain import License\n"
    "from examples.licensing.compliance.domain import Investigation\n",
    "contracts/__init__.py": "from examples.licensing.licensing.domain import License\n",
    "licensing/__init__.py": "",
    "licensing/domain/__init__.py": "from .license import License\n",
    "licensing/domain/license.py": (
        "from __future__ import annotations\n"  # 1 fine
        "import uuid\n"  # 2 fine: standard library
        "from tidings.domain import DomainError\n"  # 3 fine
        "from examples.licensing.licensing.domain.events import LicenseOffered\n"  # 4 fine: own domain
        "from examples.licensing.compliance.domain import Investigation\n"  # 5 another context
        "from tidings.app import Application\n"  # 6 another tidings layer
        "import msgspec\n"  # 7 third-party
        "import sqlite3\n"  # 8 I/O
        "from ...contracts import LicensePurchaseConfirmed\n"  # 9 contracts, relatively
        "from ..application import handlers\n"  # 10 its own application layer
        "def later() -> None:\n"
        "    import examples.licensing.asset_processing\n"  # 12 another context, inside a function
    ),
    "asset_processing/application/handlers.py": (
        "from examples.licensing.contracts import AssetReadyForSearch\n"  # 1 fine
        "from examples.licensing.asset_processing.domain import Asset\n"  # 2 fine
        "from ...licensing.domain import License\n"  # 3 another context, relatively
        "import importlib\n"  # 4 fine outside a domain
        "LATE = importlib.import_module('examples.licensing.compliance.domain')\n"  # 5 dynamic
    ),
    "compliance/infrastructure/acl.py": (
        "import json\n"  # 1 fine outside a domain
        "from examples.licensing import licensing\n"  # 2 another context by its package name
    ),
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (relative path → source) under ``root`` and return ``root``."""
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root


def test_checker_reports_each_broken_boundary_with_file_and_line(tmp_path: Path) -> None:
    # Given a synthetic platform tree that breaks every rule once or more
    root = write_tree(tmp_path / "examples" / "licensing", SYNTHETIC_TREE)

    # When it is checked
    violations = boundary_violations(root)

    # Then exactly the bad imports are reported, at their lines, with the rule they break
    assert [(v.path, v.line, v.imported, v.reason) for v in violations] == [
        ("asset_processing/application/handlers.py", 3, "examples.licensing.licensing.domain.License", CROSS_CONTEXT),
        ("asset_processing/application/handlers.py", 5, "examples.licensing.compliance.domain", CROSS_CONTEXT),
        ("compliance/infrastructure/acl.py", 2, "examples.licensing.licensing", CROSS_CONTEXT),
        ("contracts/__init__.py", 1, "examples.licensing.licensing.domain.License", CONTRACTS_IMPORT_CONTEXT),
        ("licensing/domain/license.py", 5, "examples.licensing.compliance.domain.Investigation", CROSS_CONTEXT),
        ("licensing/domain/license.py", 6, "tidings.app.Application", IMPURE_DOMAIN),
        ("licensing/domain/license.py", 7, "msgspec", IMPURE_DOMAIN),
        ("licensing/domain/license.py", 8, "sqlite3", IO_IN_DOMAIN),
        ("licensing/domain/license.py", 9, "examples.licensing.contracts.LicensePurchaseConfirmed", IMPURE_DOMAIN),
        ("licensing/domain/license.py", 10, "examples.licensing.licensing.application.handlers", IMPURE_DOMAIN),
        ("licensing/domain/license.py", 12, "examples.licensing.asset_processing", CROSS_CONTEXT),
    ]
    assert str(violations[0]) == (
        "asset_processing/application/handlers.py:3 imports examples.licensing.licensing.domain.License — "
        + CROSS_CONTEXT
    )


def test_checker_accepts_a_tree_that_keeps_its_boundaries(tmp_path: Path) -> None:
    # Given a synthetic tree with only allowed imports (composition root, own domain, contracts, stdlib)
    root = write_tree(
        tmp_path / "examples" / "licensing",
        {
            "__init__.py": SYNTHETIC_TREE["__init__.py"],
            "contracts/__init__.py": "from tidings.messaging import IntegrationEvent\n",
            "licensing/domain/__init__.py": "from . import license\nfrom .license import License\n",
            "licensing/domain/license.py": "import re\nfrom tidings.domain.aggregate import Aggregate\n",
            "licensing/application/handlers.py": (
                "import json\nfrom ..domain import License\nfrom examples.licensing.contracts import X\n"
                "from tidings.app import Application\n"
            ),
        },
    )

    # When it is checked / then nothing is reported
    assert boundary_violations(root) == []


def test_relative_imports_resolve_from_modules_and_package_inits() -> None:
    # Given relative imports in a module and in a package __init__ / then they resolve like Python does
    assert imports_in("from ..domain import X\n", "examples.licensing.licensing.application.handlers") == [
        (1, "examples.licensing.licensing.domain.X")
    ]
    assert imports_in("from .license import X\n", "examples.licensing.licensing.domain", is_package=True) == [
        (1, "examples.licensing.licensing.domain.license.X")
    ]
    assert imports_in("from ... import compliance\n", "examples.licensing.licensing.domain.license") == [
        (1, "examples.licensing.compliance")
    ]
    assert imports_in("__import__(name)\n", "m") == [(1, "<dynamic>")]
