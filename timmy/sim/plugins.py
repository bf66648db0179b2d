"""Plugins on Dask workers: the modules a sweep's or an experiment's runs import first, since
a mechanism or verifier registered in this process is unknown to a worker process until the
module that registers it is imported there (`import_plugins`, `worker_plugins`)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable

from timmy.errors import ConfigError
from timmy.plugins import import_plugins as load

_PLUGIN_HINT = ("define it in a module that registers it when imported (timmy.register_mechanism"
                " / timmy.register_verifier at the module's top level), put the module on the "
                "workers' PYTHONPATH (or install it) and pass plugins=['that_module'] "
                "(`timmy sweep --plugin that_module`)")


def check_plugins(plugins: Iterable[str] | None) -> tuple[str, ...]:
    """``plugins`` as a tuple of module names; `ConfigError` for anything else."""
    if plugins is None:
        return ()
    if isinstance(plugins, str):
        plugins = [plugins]
    out = []
    for name in plugins:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"a plugin is a module name, got {name!r}",
                              hint="e.g. plugins=['my_rules'] for my_rules.py on the "
                                   "PYTHONPATH")
        if name not in out:
            out.append(name.strip())
    return tuple(out)


def import_plugins(plugins: Iterable[str]) -> None:
    """Import each module (already imported: nothing to do); a module that fails to import
    is a `ConfigError` naming it and why (on a worker: that worker's reason)."""
    load(plugins, hint="name an importable module (on the PYTHONPATH of this process and of "
                       "every Dask worker, or installed)")


def _home(fn: object) -> str | None:
    """The module ``fn`` was defined in (a callable object's class's module)."""
    module = getattr(fn, "__module__", None)
    return module if isinstance(module, str) else None


def _importable(module: str | None) -> bool:
    if not module or module == "__main__" or module.startswith("__"):
        return False
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def worker_plugins(plugins: Iterable[str], *, rules: Iterable[str] = (),
                   verifiers: Iterable[str | None] = ()) -> tuple[str, ...]:
    """The modules every run on a Dask worker imports first: ``plugins``, then the modules
    the registered mechanisms of ``rules`` and the registered verifiers of ``verifiers``
    were defined in. Built-in rules and verifiers need none.

    Raises `ConfigError` for a registered one defined where a worker cannot import it
    (``__main__``: a notebook or a script), with a hint to move it into a module.
    """
    from timmy.market import mechanisms, verification

    out = list(plugins)

    def need(kind: str, name: str, fn: object) -> None:
        module = _home(fn)
        if module in out:
            return
        if not _importable(module):
            raise ConfigError(
                f"{kind} {name!r} is registered in this process only (defined in "
                f"{module or 'no module'}), so the Dask workers cannot have it",
                hint=f"{_PLUGIN_HINT}; or run without Dask (serial)")
        out.append(module)

    for rule in rules:
        name, _ = mechanisms.split_rule(rule)
        if name in mechanisms.BUILTIN or name in mechanisms.LEGACY:
            continue
        fn = mechanisms._registered.get(name)
        if fn is not None:
            need("mechanism", name, fn)
    for spec in verifiers:
        if spec is None:
            continue
        parsed = verification.parse(spec)
        if parsed.kind == verification.REGISTERED:
            need("verifier", parsed.arg, verification.registered(parsed.arg))
    return tuple(out)
