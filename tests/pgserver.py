"""A throwaway PostgreSQL server for the tests and benchmarks: a cluster of its own, on 127.0.0.1.

It uses the server binaries of Debian's ``postgresql`` package (``initdb`` and
``pg_ctl`` under /usr/lib/postgresql/<version>/bin, or on PATH). ``initdb``
refuses to run as root, so as root the cluster belongs to the ``postgres``
user the package creates, and the directory is handed to it. The server
listens on 127.0.0.1 only, plus a Unix socket inside the directory; a
database user ``timmy`` logs in with a random password kept in the directory
(``server.json``, readable only by the cluster's owner and root).

    python tests/pgserver.py start [DIR] [--port 54329] [--fast]   prints the URL; a second
                                                                  start reuses the running server
    python tests/pgserver.py url [DIR]                             the URL of a running server
    python tests/pgserver.py stop [DIR]                            stop it (the files stay)

``DIR`` defaults to ``.pg`` in the current directory. ``--fast`` turns off
fsync (a test server: its data need not survive a power cut). The URLs are
``postgresql+psycopg://timmy:PASSWORD@127.0.0.1:PORT/timmy``: what
``TIMMY_TEST_PG_URL`` takes.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_PORT = 54329
DB_USER = "timmy"
CLUSTER_OWNER = "postgres"   # as root: the user Debian's package creates for its own clusters
NO_BINARIES = ("no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin "
               "or on PATH (or TIMMY_PG_BIN)")


class ServerUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, or the throwaway server would not start."""


def find_bindir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: TIMMY_PG_BIN, else Debian's newest, else PATH."""
    given = os.environ.get("TIMMY_PG_BIN")
    if given:
        candidates = [given]
    else:
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                            key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit()
                            else 0, reverse=True)
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(str(Path(on_path).parent))
    for c in candidates:
        if (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """A PostgreSQL cluster in ``root``/data, its log in ``root``/server.log."""

    def __init__(self, root: str | Path, bindir: Path | None = None) -> None:
        self.root = Path(root).absolute()
        self.data = self.root / "data"
        self.state = self.root / "server.json"
        self.log = self.root / "server.log"
        bindir = bindir or find_bindir()
        if bindir is None:
            raise ServerUnavailable(NO_BINARIES)
        self.bindir = bindir
        self._as_owner = os.geteuid() == 0

    # -- what a client needs -------------------------------------------------
    def url(self, database: str = DB_USER) -> str:
        s = self._read_state()
        return (f"postgresql+psycopg://{DB_USER}:{s['password']}@127.0.0.1:{s['port']}/"
                f"{database}")

    def libpq(self, database: str = DB_USER) -> str:
        """The same, as a libpq connection string (for psycopg.connect)."""
        s = self._read_state()
        return (f"host=127.0.0.1 port={s['port']} user={DB_USER} password={s['password']} "
                f"dbname={database}")

    # -- lifecycle -----------------------------------------------------------
    def running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        out = self._run("pg_ctl", "-D", str(self.data), "status", check=False)
        return out.returncode == 0

    def start(self, port: int | None = None, fast: bool = False, timeout: float = 60) -> str:
        """Create the cluster if there is none, start it if it is stopped; returns the URL."""
        if self.running():
            return self.url()
        if not (self.data / "PG_VERSION").exists():
            self._init(port or DEFAULT_PORT, fast)
        elif port is not None and port != self._read_state()["port"]:
            self._write_state({**self._read_state(), "port": port})
            self._configure(port, fast)
        out = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
                        "-t", str(int(timeout)), "start", check=False)
        if out.returncode != 0:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise ServerUnavailable(f"pg_ctl start failed ({out.stdout}{out.stderr}):\n{tail}")
        self._create_database(DB_USER)
        return self.url()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" (clients are disconnected, the data is saved cleanly) or
        "immediate" (no shutdown checkpoint: for a cluster about to be deleted)."""
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        """Stop the server and delete its directory."""
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- inside --------------------------------------------------------------
    def _init(self, port: int, fast: bool) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        password = secrets.token_hex(16)
        self._write_state({"port": port, "password": password})
        pwfile = self.root / "pwfile"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o600)
        if self._as_owner:
            self._hand_over(self.root)
        try:
            self._run("initdb", "-D", str(self.data), "-U", DB_USER, f"--pwfile={pwfile}",
                      "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                      "--no-locale", "--no-sync")
        finally:
            pwfile.unlink(missing_ok=True)
        self._configure(port, fast)

    def _configure(self, port: int, fast: bool) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "200",        # every test's engine pools a few
            "logging_collector": "off",
        }
        if fast:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        conf = self.data / "postgresql.auto.conf"
        conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        if self._as_owner:
            self._hand_over(conf)

    def _create_database(self, name: str) -> None:
        import psycopg

        s = self._read_state()
        with psycopg.connect(host="127.0.0.1", port=s["port"], user=DB_USER,
                             password=s["password"], dbname="postgres", autocommit=True,
                             connect_timeout=10) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return
            conn.execute(f'CREATE DATABASE "{name}"')

    def _hand_over(self, path: Path) -> None:
        """As root: the cluster's files belong to its owner, which must reach them."""
        import pwd

        try:
            owner = pwd.getpwnam(CLUSTER_OWNER)
        except KeyError:
            raise ServerUnavailable(
                f"running as root, and there is no {CLUSTER_OWNER!r} user to own the cluster "
                "(initdb refuses root); install Debian's postgresql package") from None
        for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
            os.chown(p, owner.pw_uid, owner.pw_gid)
        for parent in self.root.parents:   # each directory above must be searchable by it
            st = os.stat(parent)
            bit = (0o100 if st.st_uid == owner.pw_uid else
                   0o010 if st.st_gid == owner.pw_gid else 0o001)
            if not st.st_mode & bit:
                raise ServerUnavailable(
                    f"{parent} is not searchable by the {CLUSTER_OWNER} user; put the cluster "
                    "somewhere else (e.g. under /tmp)")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / tool), *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                             cwd=self.root if self.root.exists() else None,
                             user=CLUSTER_OWNER if self._as_owner else None)
        if check and out.returncode != 0:
            raise ServerUnavailable(f"{tool} failed ({out.returncode}): "
                                    f"{(out.stderr or out.stdout)[-1500:]}")
        return out

    def _read_state(self) -> dict:
        try:
            return json.loads(self.state.read_text())
        except FileNotFoundError:
            raise ServerUnavailable(f"no server set up in {self.root}") from None

    def _write_state(self, state: dict) -> None:
        self.state.write_text(json.dumps(state))
        os.chmod(self.state, 0o600)


@contextlib.contextmanager
def throwaway(fast: bool = True):
    """A fresh server in a new temporary directory on a free port, destroyed afterwards."""
    import tempfile

    bindir = find_bindir()
    if bindir is None:
        raise ServerUnavailable(NO_BINARIES)
    server = PgServer(tempfile.mkdtemp(prefix="timmy-pg-"), bindir)
    try:
        for attempt in range(3):   # a free port can be taken between finding and binding it
            try:
                server.start(port=free_port(), fast=fast)
                break
            except ServerUnavailable:
                if attempt == 2:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        server.destroy()


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=("start", "stop", "url"))
    ap.add_argument("dir", nargs="?", default=".pg")
    ap.add_argument("--port", type=int, default=None,
                    help=f"the port to listen on (default {DEFAULT_PORT})")
    ap.add_argument("--fast", action="store_true", help="fsync off: for tests only")
    args = ap.parse_args()
    try:
        server = PgServer(args.dir)
        if args.action == "start":
            print(server.start(port=args.port, fast=args.fast))
        elif args.action == "url":
            if not server.running():
                raise ServerUnavailable(f"no server running in {server.root}")
            print(server.url())
        else:
            server.stop()
    except ServerUnavailable as exc:
        print(f"pgserver: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
