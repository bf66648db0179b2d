"""Database addresses: a path or an SQLAlchemy URL, in, a URL out; and the file behind one.

``timmy.Swarm(db="data/timmy.db")``, ``--db data/timmy.db`` and
``--db sqlite:///data/timmy.db`` all mean the same SQLite file.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

# What SQLAlchemy's URL parser would take from a path: ``?`` starts the query (``x?y.db``
# silently opened ``x``), and it percent-decodes the database, so ``%`` must be escaped too;
# ``#`` is escaped for any other URL parser the address meets.
_URL_QUOTES = str.maketrans({"%": "%25", "?": "%3F", "#": "%23"})


def db_url(value: str) -> str:
    """An SQLAlchemy URL as given, or a filesystem path turned into a ``sqlite:///`` URL
    that names exactly that file (``?``, ``#`` and ``%`` in it are percent-escaped)."""
    if "://" in value:
        return value
    if not value.strip():
        raise ConfigError("the database is an empty string",
                          hint="pass a path such as data/timmy.db or an SQLAlchemy URL")
    return f"sqlite:///{str(Path(value)).translate(_URL_QUOTES)}"


def sqlite_file(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL (None for other databases and in-memory ones)."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:" \
            or db.startswith("file:"):
        return None
    return Path(db)


def describe_db(url: str) -> str:
    """Where a database lives, for humans: the absolute file, or the URL without password."""
    path = sqlite_file(url)
    if path is not None:
        return str(path.resolve())
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url
