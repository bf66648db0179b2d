"""The service's token files: an admin token and a runner token, each written once with mode
0600 beside the database (or under ./data), read back by `timmy serve`, clients and runners.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from timmy.errors import ConfigError


def token_path(db: str) -> Path:
    """Where the service's token is kept: beside an SQLite file, else under ./data."""
    from timmy.storage.address import DatabaseAddress

    beside = DatabaseAddress.parse(db).beside(".token")
    return beside if beside is not None else Path("data", "timmy-service.token").absolute()


def runner_token_path(db: str) -> Path:
    """Where the service's runner token is kept: beside its admin token, ``.runner.token``
    for ``.token`` (e.g. data/timmy.db.runner.token).

    The admin token allows every op; the runner token allows ``runner`` and nothing else,
    so a machine that only runs a persona cannot post, cancel, stop, kill, export or read
    the swarm.
    """
    path = token_path(db)
    return path.with_name(path.name.removesuffix(".token") + ".runner.token")


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The token stored at ``path``, or a new one written there with mode 0600.

    Returns ``(token, created)``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(path), False
    except OSError as exc:
        raise ConfigError(f"cannot create the token file {path}: {exc.strerror}",
                          hint="pass --token, or a --db in a directory you can write to") \
            from exc
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def read_token(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"no token file at {path}",
                          hint="start the service with `timmy serve` (it writes one), or pass "
                               "the token (token=... / --token / TIMMY_TOKEN)") from None
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc}",
                          hint="pass the token (token=... / --token / TIMMY_TOKEN)") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"the token file {path} can be read by other users "
                          f"(mode {stat.S_IMODE(mode):o})",
                          hint=f"chmod 600 {path}")
    if not token:
        raise ConfigError(f"the token file {path} is empty",
                          hint="delete it and restart `timmy serve` to make a new token")
    return token


def default_token(db: str | None = None) -> str:
    """TIMMY_TOKEN, else the token file beside ``db`` (default: the default database)."""
    env = os.environ.get("TIMMY_TOKEN")
    if env:
        return env
    from timmy.storage.address import DEFAULT_DB

    return read_token(token_path(db or DEFAULT_DB))
