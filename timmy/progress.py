"""A progress bar for waits on many tasks (tqdm, imported when a bar is made)."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int) -> Any:
    """A tqdm bar for ``total`` tasks: a widget in Jupyter, a text bar in a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="tasks", unit="task")
