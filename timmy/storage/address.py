"""Database addresses: a path or an SQLAlchemy URL, parsed once into a `DatabaseAddress`
(``data/timmy.db`` and ``sqlite:///data/timmy.db`` are the same SQLite file).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from timmy.errors import ConfigError

DEFAULT_DB = "sqlite:///data/timmy.db"   # the database of a swarm given none

# What SQLAlchemy's URL parser would take from a path: ``?`` starts the query (``x?y.db``
# silently opened ``x``), and it percent-decodes the database, so ``%`` must be escaped too;
# ``#`` is escaped for any other URL parser the address meets.
_URL_QUOTES = str.maketrans({"%": "%25", "?": "%3F", "#": "%23"})
# An ``sqlite:///`` URL whose database SQLAlchemy would read back unchanged (no escape, query,
# user or port): read without importing SQLAlchemy, so a client finding a token file beside
# the default database loads none of it.
_PLAIN_SQLITE = re.compile(r"sqlite:///([A-Za-z0-9_./-]*[A-Za-z0-9_-])")
_TRUE = ("true", "yes", "on", "y", "t", "1")
# What SQLAlchemy's pysqlite dialect keeps for itself of a URL's query; the rest reaches SQLite.
_DRIVER_ARGS = ("uri", "timeout", "isolation_level", "detect_types", "check_same_thread",
                "cached_statements")
_URL_HINT = ("pass a path such as data/timmy.db or an SQLAlchemy URL such as "
             "sqlite:///data/timmy.db or postgresql+psycopg://user@host/db")


@dataclass(frozen=True)
class DatabaseAddress:
    """One database, as every part of timmy names it: parse the text once, pass this down.

    ``url``: the SQLAlchemy URL (a path becomes ``sqlite:///path``); ``backend``: its
    dialect ("sqlite", "postgresql", ...); ``database``: the URL's database part as
    SQLAlchemy reads it; ``file``: the file SQLite opens, as given (it may be relative to
    the working directory, or a symlink), None for a server or an in-memory database.
    ``display`` (the URL with its password masked, for messages and logs), ``where`` (the
    absolute file, else ``display``: for people) and ``lock_file`` are derived on demand.
    """

    url: str
    backend: str
    database: str | None = None
    file: Path | None = None
    _display: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, text: str | os.PathLike[str] | DatabaseAddress) -> DatabaseAddress:
        """The address ``text`` names: an SQLAlchemy URL as given, or a filesystem path,
        turned into a ``sqlite:///`` URL that names exactly that file (``?``, ``#`` and
        ``%`` in it are percent-escaped). An address is returned as it is.

        Raises `ConfigError` (with a hint) for an empty string or a URL SQLAlchemy cannot
        parse.
        """
        if isinstance(text, DatabaseAddress):
            return text
        value = os.fspath(text)
        if "://" not in value:
            if not value.strip():
                raise ConfigError("the database is an empty string", hint=_URL_HINT)
            name = str(Path(value))
            url = f"sqlite:///{name.translate(_URL_QUOTES)}"
            return cls(url, "sqlite", name, None if name == ":memory:" else Path(name))
        plain = _PLAIN_SQLITE.fullmatch(value)
        if plain is not None:
            return cls(value, "sqlite", plain[1], Path(plain[1]), value)
        import sqlalchemy as sa

        try:
            parsed = sa.engine.make_url(value)
        except sa.exc.ArgumentError:
            raise ConfigError(f"bad database URL {value!r}", hint=_URL_HINT) from None
        backend = parsed.get_backend_name()
        file = _sqlite_file(parsed) if backend == "sqlite" else None
        return cls(value, backend, parsed.database, file,
                   parsed.render_as_string(hide_password=True))

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @property
    def display(self) -> str:
        """The URL fit for messages and logs: its password masked."""
        if self._display is not None:
            return self._display
        import sqlalchemy as sa

        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    @cached_property
    def where(self) -> str:
        """Where the database lives, for people: the absolute file, or `display`."""
        return str(self.file.resolve()) if self.file is not None else self.display

    @property
    def real_file(self) -> Path | None:
        """The SQLite file with symlinks and ``..`` resolved now (absolute); None without one."""
        return None if self.file is None else Path(os.path.realpath(self.file))

    @property
    def lock_file(self) -> Path | None:
        """``<real path>.lock``: the lock file beside the SQLite file (see `real_file`), so
        every spelling of the file meets it; None without a file."""
        real = self.real_file
        return None if real is None else Path(f"{real}.lock")

    def beside(self, suffix: str) -> Path | None:
        """``<database as written, absolute><suffix>`` (e.g. the service's token file,
        data/timmy.db.token); None for a server, in memory, or a ``file:`` name."""
        db = self.database
        if not self.is_sqlite or db in (None, "", ":memory:") or db.startswith("file:"):
            return None
        return Path(os.path.abspath(db) + suffix)


def _sqlite_file(parsed) -> Path | None:
    """The file SQLite opens for a parsed ``sqlite://`` URL; None in memory.

    A path, or with ``uri=true`` a SQLite ``file:`` URI (percent-escapes decoded,
    ``?query`` and ``#fragment`` cut off, ``mode=memory`` and ``vfs=memdb`` in memory).
    Without ``uri=true`` a name that starts with ``file:`` is an ordinary file of that
    name, as SQLAlchemy hands it to SQLite.
    """
    db = parsed.database
    if not db or db == ":memory:":
        return None
    query = dict(parsed.query)
    if str(query.get("uri", "")).strip().lower() not in _TRUE:
        return Path(db)
    # What the dialect hands SQLite: the name, then the query it does not use itself;
    # SQLite then reads it as a URI when it starts with "file:".
    rest = "&".join(f"{k}={v}" for k, v in sorted(query.items()) if k not in _DRIVER_ARGS)
    name = db + ("?" + rest if rest else "")
    if not name.startswith("file:"):
        return Path(name)
    return _uri_file(name)


def _uri_file(name: str) -> Path | None:
    """The file of a SQLite ``file:`` URI (https://sqlite.org/uri.html), None in memory."""
    from urllib.parse import parse_qsl, unquote

    body = name[len("file:"):].split("#", 1)[0]
    path, _, query = body.partition("?")
    if path.startswith("//"):   # an authority: empty or "localhost" (else SQLite refuses it)
        path = "/" + path[2:].partition("/")[2]
    params = {k: v for k, v in parse_qsl(query, keep_blank_values=True)}
    path = unquote(path)
    if params.get("mode") == "memory" or params.get("vfs") == "memdb" or not path \
            or path == ":memory:":
        return None
    return Path(path)


# -- thin functions over DatabaseAddress, for callers that hold a string ------------------


def db_url(value: str) -> str:
    """An SQLAlchemy URL as given, or a filesystem path turned into a ``sqlite:///`` URL
    that names exactly that file (see `DatabaseAddress.parse`)."""
    return DatabaseAddress.parse(value).url


def sqlite_file(url: str) -> Path | None:
    """The file SQLite opens for an ``sqlite://`` URL, as given; None for other databases,
    in-memory ones and text that is not a URL (see `DatabaseAddress.file`)."""
    if "://" not in url:
        return None
    try:
        return DatabaseAddress.parse(url).file
    except ConfigError:
        return None


def safe_url(url: str) -> str:
    """A URL fit for messages and logs: its password masked (the text as given if it is
    not a URL)."""
    try:
        return DatabaseAddress.parse(url).display if "://" in url else url
    except ConfigError:
        return url


def describe_db(url: str) -> str:
    """Where a database lives, for humans: the absolute file, or the URL without password."""
    try:
        return DatabaseAddress.parse(url).where if "://" in url else url
    except ConfigError:
        return url
