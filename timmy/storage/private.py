"""Files for the owner only: the database (and so its WAL and SHM, which SQLite creates with
the database's mode) and the exports are created 0600, the directories made for them 0700,
without touching the process-wide umask.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dirs(path: str | Path) -> None:
    """``mkdir -p path``; each directory created here gets mode 0700. Like ``mkdir -p``,
    raises `NotADirectoryError` when ``path`` (or a parent) is something else."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(path))
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:
            continue


def private_file(path: str | Path) -> bool:
    """Create ``path`` empty with mode 0600 if it does not exist (its directories 0700);
    True if it was created here."""
    private_dirs(Path(path).absolute().parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True
