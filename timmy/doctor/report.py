"""The doctor's answer: a `Check` per thing looked at, gathered in a `Report` that prints as a
plain-text table in a terminal, as HTML in a notebook, or as JSON, and knows whether
something required is missing (``timmy doctor``'s exit code).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

OK, WARN, MISSING = "ok", "warn", "missing"

# What each check returns: (name, group, passed, detail, fix); `timmy.doctor` makes the
# `Check` of it, with the status that depends on what is required.
Finding = tuple[str, str, bool, str, str]


@dataclass(frozen=True)
class Check:
    """One row of the report. ``group`` is "core" or a `REQUIRABLE` name."""

    name: str
    group: str
    status: str
    detail: str
    fix: str = ""


class Report:
    """The checks, as a table: plain text in a terminal, HTML in a notebook.

    ``report.ok`` is False when something required is missing; ``report.exit_code`` is
    what ``timmy doctor`` exits with (0 or 1); iterate it for the `Check` rows.
    """

    COLUMNS = ("check", "status", "detail", "fix")

    def __init__(self, checks: Iterable[Check]) -> None:
        self.checks = list(checks)

    def __iter__(self) -> Iterator[Check]:
        return iter(self.checks)

    def __len__(self) -> int:
        return len(self.checks)

    def __getitem__(self, name: str) -> Check:
        """The check called ``name`` (``report["database"]``)."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    @property
    def missing(self) -> list[Check]:
        return [c for c in self.checks if c.status == MISSING]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == WARN]

    @property
    def ok(self) -> bool:
        return not self.missing

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def summary(self) -> str:
        if self.missing:
            names = ", ".join(c.name for c in self.missing)
            return (f"missing (required): {names}; apply the fixes above, then run "
                    "timmy doctor again")
        if self.warnings:
            return (f"timmy can run; {len(self.warnings)} optional "
                    f"{'thing needs' if len(self.warnings) == 1 else 'things need'} "
                    "the fix shown to work")
        return "everything works"

    def rows(self) -> list[tuple[str, str, str, str]]:
        return [(c.name, c.status.upper(), c.detail, c.fix) for c in self.checks]

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "checks": [asdict(c) for c in self.checks]}, indent=2)

    def __str__(self) -> str:
        rows = [tuple(h.upper() for h in self.COLUMNS), *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True))
                 + "  " + r[3] for r in rows]
        return "\n".join(line.rstrip() for line in lines) + "\n" + self.summary()

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        colours = {OK: "#1a7f37", WARN: "#9a6700", MISSING: "#cf222e"}
        head = "".join(f"<th style='text-align:left'>{h}</th>" for h in self.COLUMNS)
        body = "".join(
            f"<tr><td>{html.escape(c.name)}</td>"
            f"<td style='color:{colours[c.status]};font-weight:bold'>{c.status.upper()}</td>"
            f"<td>{html.escape(c.detail)}</td>"
            f"<td>{f'<code>{html.escape(c.fix)}</code>' if c.fix else ''}</td></tr>"
            for c in self.checks)
        return (f"<table class='timmy-doctor'><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table><p>{html.escape(self.summary())}</p>")
