"""docs/design.md's package table names every module of the package, so it cannot drift."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _table() -> dict[str, str]:
    """The table's rows by package folder (``timmy/engine/`` -> its row)."""
    text = (ROOT / "docs" / "design.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 4 and "`timmy/" in cells[1]:
            rows[cells[1]] = line
    return rows


def test_every_module_is_in_the_design_table():
    rows = _table()
    missing = []
    for path in sorted((ROOT / "timmy").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.name in ("__init__.py", "__main__.py"):
            continue
        if len(rel.parts) == 2:     # a top-level module: named as `x.py` in some row
            found = any(re.search(rf"`(timmy/)?{re.escape(rel.name)}`", r) for r in rows.values())
        else:                       # in a package: its row names it in backquotes
            row = next((r for k, r in rows.items() if f"`timmy/{rel.parts[1]}/`" in k), "")
            found = re.search(rf"`{re.escape(rel.stem)}`", row) is not None
        if not found:
            missing.append(str(rel))
    assert not missing, f"docs/design.md's package table does not name: {missing}"


def test_the_check_can_fail():
    rows = _table()
    assert rows, "the table was not found"
    engine = next(r for k, r in rows.items() if k.startswith("`timmy/engine/"))
    assert re.search(r"`coordinator`", engine)
    assert not re.search(r"`no_such_module`", engine)
