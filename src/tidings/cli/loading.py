"""Finding the user's objects named on the command line as ``module:attribute``."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__all__ = ["import_attribute"]


def import_attribute(spec: str, *, what: str, example: str) -> Any:
    """The object ``module:attribute`` names (dotted attributes allowed); ValueError saying what to fix.

    ``what`` names the option or argument in errors; ``example`` shows a valid spec.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what} takes module:attribute (for example {example}), got {spec!r}")
    # Like other app servers and `python -m`: a module in the current directory is found without installing it.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} named by {what}: {exc}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"{module_name} has no attribute {attribute!r} (named by {what})") from None
    return target
