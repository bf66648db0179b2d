"""Database errors in words: what went wrong and what to do, as a `StoreError`."""

from __future__ import annotations

from timmy.errors import StoreError
from timmy.storage.address import DatabaseAddress, safe_url


def explain(url: str | DatabaseAddress, exc: Exception) -> StoreError:
    """Turn a database exception into a `StoreError` that says what to do."""
    text = str(getattr(exc, "orig", None) or exc)
    low = text.lower()
    server = _explain_server(low)
    if server is not None:
        what, hint = server
    elif _refused_value(exc, low):
        what = "the database refused a value of a row (it does not fit its column)"
        hint = ("the database works; one value does not fit (named above): a swarm leaves "
                "such a row out of its batch, saves the rest and counts it as "
                "rows_quarantined in status(); for a post, fix that text and post it again")
    elif "unique" in low or "integrity" in low or "duplicate key" in low:
        hint = "run one swarm per database: another coordinator may be writing to it"
        what = "a row with the same key already exists"
    elif "locked" in low or "busy" in low:
        hint = "another process holds a write lock: stop the other writer or use another --db"
        what = "the database is locked by another writer"
    elif "not a database" in low or "malformed" in low or "file is encrypted" in low:
        hint = "the file is not a timmy database (or is corrupt): move it aside or use another --db"
        what = "the file is not a valid database"
    elif "readonly" in low or "read-only" in low or "permission" in low:
        hint = "make the file and its directory writable, or use another --db"
        what = "the database is read-only"
    elif "unable to open" in low:
        hint = "check that the path exists, is a file and is readable and writable"
        what = "the database file cannot be opened"
    elif "disk i/o error" in low:
        hint = ("check that the file system is writable and healthy (mount options, "
                "chattr -i, dmesg); work in flight is kept in memory and retried")
        what = "the disk refused a read or write"
    elif "disk" in low and "full" in low:
        hint = "free disk space; work in flight is kept in memory and retried"
        what = "the disk is full"
    else:
        hint = ("check that the database server is running and the URL's host, port, "
                "database name and credentials are right")
        what = "database error"
    first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    where = url.display if isinstance(url, DatabaseAddress) else safe_url(url)
    return StoreError(f"{where}: {what} ({first})", hint=hint)


def _refused_value(exc: Exception, low: str) -> bool:
    """A data or constraint error: the database refusing a value, not failing."""
    from timmy.storage.quarantine import is_row_error

    if "unique" in low or "duplicate key" in low:   # said below, with its own hint
        return False
    return is_row_error(exc, None) or any(w in low for w in (
        "out of range", "value too long", "nul (0x00)", "invalid byte sequence",
        "surrogates not allowed", "too large to convert", "violates"))


def _explain_server(low: str) -> tuple[str, str] | None:
    """(what, hint) for the errors of a database server (PostgreSQL's wording), else None."""
    if "password authentication failed" in low or "no password supplied" in low \
            or "no pg_hba.conf entry" in low or ("role" in low and "does not exist" in low):
        return ("the server refused the login",
                "check the user name and password in the URL (postgresql+psycopg://USER:"
                "PASSWORD@host/db), and that the server lets that user in (pg_hba.conf)")
    if "database" in low and "does not exist" in low:
        return ("the database does not exist",
                "create it first (createdb NAME, or CREATE DATABASE NAME as a privileged "
                "user), or fix the database name at the end of the URL")
    if "connection refused" in low or "could not connect" in low \
            or ("no such file or directory" in low and "socket" in low):
        return ("no database server answers there",
                "start the server (e.g. pg_ctlcluster 15 main start), or fix the host and "
                "port in the URL")
    if "could not translate host name" in low or "name or service not known" in low \
            or "nodename nor servname" in low:
        return ("unknown host", "fix the host name in the URL")
    if "timeout expired" in low or "timed out" in low:
        return ("the database server did not answer in time",
                "check that the host is reachable and the server running; a firewall may "
                "drop the connection")
    if "server closed the connection" in low or "terminating connection" in low \
            or "connection is closed" in low or "consuming input failed" in low:
        return ("the connection to the database server was lost",
                "check that the server is still running; work in flight is kept in memory "
                "and written again")
    if "permission denied for" in low or "must be owner of" in low:
        return ("the database user lacks a privilege",
                "grant the URL's user CREATE on the schema and SELECT, INSERT, UPDATE on "
                "timmy's tables, or connect as the user who created them")
    if "cannot execute" in low and "read-only transaction" in low:
        return ("the database is read-only (a standby, or default_transaction_read_only)",
                "point the URL at the primary server, or at a database you can write to")
    if "too many clients" in low or "remaining connection slots" in low:
        return ("the database server has no free connection",
                "raise max_connections on the server, or stop other clients")
    return None
