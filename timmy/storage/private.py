"""Files for the owner only: the database, its WAL and SHM, and the exports.

A swarm's database holds every task description and result; with the usual umask
(022) a file made by ``open()`` is readable by every local user. These helpers create
files 0600 and the directories they create 0700 up front, without touching the
process-wide umask (other threads create files too). SQLite gives its ``-wal`` and
``-shm`` files the mode of the database file, so a database created 0600 here, before
SQLite opens it, keeps its WAL and SHM private too. Existing files and directories are
left as the user made them.
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
