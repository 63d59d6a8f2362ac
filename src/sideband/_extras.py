"""Optional dependencies: every lazy import of an extra goes through :func:`require`."""

from __future__ import annotations

import importlib
from types import ModuleType

from sideband.errors import MissingExtraError


def require(module: str, extra: str, what: str = "") -> ModuleType:
    """Import ``module``, or raise MissingExtraError naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        need = f"{what} needs {module.split('.')[0]}" if what else f"{module} is not installed"
        raise MissingExtraError(
            f"{need}; install the extra: pip install 'sideband[{extra}]'"
        ) from e
