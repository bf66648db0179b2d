"""Plugin modules: imported by name so that they register mechanisms or verifiers."""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Iterable

from timmy.errors import ConfigError


def import_plugins(modules: Iterable[str], hint: str) -> list[str]:
    """Import each module (one already imported costs nothing) and return their names.

    A module that fails to import is a `ConfigError` naming it, the error and the line it
    came from, with ``hint`` (where such a module must be, for the caller's process).
    """
    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any error of a plugin is the user's to fix
            where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            at = f" ({where.filename}:{where.lineno})" if where else ""
            raise ConfigError(f"plugin {name!r} failed to import: {type(exc).__name__}: "
                              f"{exc}{at}", hint=hint) from exc
        loaded.append(name)
    return loaded
