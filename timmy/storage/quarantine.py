"""Rows the database refuses: `is_row_error` tells them from other failures, `refusal` says
what is wrong as a `Refused`, so `Store.apply` saves the rest of a batch and the coordinator
records a ``row_quarantined`` event.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class Refused:
    """A row the database refused, left out of its batch.

    ``key``: the task_id (tasks, bids), agent_id (agents) or event_id (events) it was
    about. ``column``: the column whose value does not fit, when it can be told (else
    None and ``reason`` is the database's own words). ``values``: the row, by column.
    """

    table: str
    key: Any
    column: str | None
    reason: str
    values: dict[str, Any] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        return f"a row of {self.table} ({self.key!r}) was refused: {where}: {self.reason}"


def is_row_error(exc: BaseException, dbapi: Any) -> bool:
    """Whether ``exc`` is the database (or its driver) refusing a value of a row, not the
    database failing: a data error (out of range, too long, bad text), an integrity
    error (a constraint), or a value the driver cannot send (a Python int past 64 bits,
    text that is not UTF-8). Connection, lock and permission errors are not: a batch that
    fails so is kept whole and retried."""
    from timmy.errors import StoreError

    if isinstance(exc, StoreError):   # OwnershipLost and friends: never a row's fault
        return False
    if isinstance(exc, sa.exc.DBAPIError):
        exc = exc.orig if exc.orig is not None else exc
        if isinstance(exc, sa.exc.DBAPIError):
            return isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError)
    if dbapi is not None and isinstance(exc, dbapi.DataError | dbapi.IntegrityError):
        return True
    if isinstance(exc, sa.exc.StatementError) and exc.orig is not None:
        exc = exc.orig
    return isinstance(exc, ValueError | OverflowError)


def refusal(table: sa.Table, columns: Sequence[str], row: Sequence[Any], exc: BaseException,
            server: bool) -> Refused:
    """Describe why ``row`` (values in ``columns`` order) of ``table`` was refused."""
    values = dict(zip(columns, row, strict=True))
    key_name = {"tasks": "task_id", "agents": "agent_id", "bids": "task_id",
                "events": "event_id"}.get(table.name)
    key = values.get(key_name)
    for name, value in values.items():
        if name in table.c:
            why = misfit(table.c[name], value, server)
            if why is not None:
                return Refused(str(table.name), key, name, why, values)
    return Refused(str(table.name), key, None, database_words(exc), values)


def misfit(column: sa.Column, value: Any, server: bool) -> str | None:
    """Why ``value`` cannot go into ``column``, as far as we can tell; None if it looks fine."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        bits = 64 if isinstance(column.type, sa.BigInteger) or not server else 32
        if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            return f"{value} is out of the column's range ({bits}-bit integer)"
        return None
    if isinstance(value, str):
        if "\x00" in value and server:
            return (f"the text holds a NUL character (\\x00) at position "
                    f"{value.index(chr(0))}, which the database's text cannot store")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"the text is not valid Unicode (a lone surrogate at position {exc.start})"
        length = getattr(column.type, "length", None)
        if length is not None and server and len(value) > length:
            return f"the text is {len(value)} characters long, over the column's {length}"
    return None


def database_words(exc: BaseException) -> str:
    """The first line of the database's (or driver's) message, fit for a log and an event."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return storable(text)[:300]


def storable(text: str) -> str:
    """``text`` with what no database column can hold (NUL, lone surrogates) or what a log
    should not carry (control characters) replaced."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub("\ufffd", text)
