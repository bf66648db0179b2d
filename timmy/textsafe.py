"""Text from users and agents made safe to print on a terminal: `clean` shows control
characters and bidi overrides as visible escapes; `text` does the same for a rich cell.
"""

from __future__ import annotations

import logging
import re
from typing import Any

# C0 controls but tab and newline, DEL, C1 controls; the bidi embeddings, overrides and
# isolates, and the line/paragraph separators a terminal may treat as line breaks.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                     "\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\r": "\\r", "\x0b": "\\v", "\x0c": "\\f", "\x08": "\\b", "\x07": "\\a",
          "\x00": "\\0"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(value: Any, *, newlines: bool = True) -> str:
    """``str(value)`` with every control character shown as an escape instead of acting on
    the terminal; ``newlines=False`` escapes newlines (``\\n``) and tabs too, for text that
    must stay on one line.

    A task description, a result, an agent's name or an error message can carry terminal
    escapes: OSC 52 writes the reader's clipboard, OSC 0 retitles the window, CSI 8m hides the
    text after it, a carriage return or backspaces overwrite what was printed. Every printer of
    the command line (`timmy.cli` and its modules, the remote runner, the log lines of
    ``timmy serve``) passes such text through here: C0/C1 controls and DEL become ``\\x1b``,
    ``\\r``, ``\\x9b``..., and so do the Unicode controls that reorder what is shown
    (bidirectional overrides and isolates). Ordinary Unicode is kept.
    """
    out = _UNSAFE.sub(_escape, str(value))
    if not newlines:
        out = out.replace("\n", "\\n").replace("\t", "\\t")
    return out


def text(value: Any, style: str = "") -> Any:
    """A rich `Text` of ``clean(value)``: shown as written, never parsed as rich markup (a
    description with ``[link=...]`` or ``[/]`` in it stays literal)."""
    from rich.text import Text

    return Text(clean(value), style=style)


class CleanFormatter(logging.Formatter):
    """A log formatter whose lines (and tracebacks) pass through `clean`."""

    def format(self, record: logging.LogRecord) -> str:
        return clean(super().format(record))


def install_log_handler(level: int = logging.WARNING) -> None:
    """Log timmy's warnings and errors to stderr through `clean` (what the command line
    uses instead of Python's last-resort handler, which prints them as they are)."""
    logger = logging.getLogger("timmy")
    if any(isinstance(h.formatter, CleanFormatter) for h in logger.handlers):
        return
    handler = logging.StreamHandler()
    handler.setLevel(level)
    handler.setFormatter(CleanFormatter("%(message)s"))
    logger.addHandler(handler)
