"""Database addresses: a path or an SQLAlchemy URL, in, a URL out; and the file behind one.

``timmy.Swarm(db="data/timmy.db")``, ``--db data/timmy.db`` and
``--db sqlite:///data/timmy.db`` all mean the same SQLite file.
"""

from __future__ import annotations

from pathlib import Path

from timmy.errors import ConfigError

DEFAULT_DB = "sqlite:///data/timmy.db"   # the database of a swarm given none

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
    """The file SQLite opens for an ``sqlite://`` URL, as given (it may be relative to the
    working directory, or a symlink); None for other databases and in-memory ones.

    The one place that reads a database file out of a URL, so the lock, the read-only
    checks and the messages agree with what SQLite opens: a path, or with ``uri=true`` a
    SQLite ``file:`` URI (percent-escapes decoded, ``?query`` and ``#fragment`` cut off,
    ``mode=memory`` and ``vfs=memdb`` in memory). Without ``uri=true`` a name that starts
    with ``file:`` is an ordinary file of that name, as SQLAlchemy hands it to SQLite.
    """
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:":
        return None
    query = dict(parsed.query)
    if str(query.get("uri", "")).strip().lower() not in ("true", "yes", "on", "y", "t", "1"):
        return Path(db)
    # What SQLAlchemy's pysqlite dialect hands SQLite: the name, then the query it does not
    # use itself; SQLite then reads it as a URI when it starts with "file:".
    driver = ("uri", "timeout", "isolation_level", "detect_types", "check_same_thread",
              "cached_statements")
    rest = "&".join(f"{k}={v}" for k, v in sorted(query.items()) if k not in driver)
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
