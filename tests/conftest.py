"""Shared fixtures for the end-to-end tests: real databases, real runner processes.

Nothing here is a mock. A swarm is a `timmy.Swarm` on a SQLite file in
``tmp_path`` with real ``python -m timmy.engine.runner`` children. A test marked
``@pytest.mark.postgres`` that takes ``db_url`` (or ``make_swarm``) runs twice:
on SQLite and on a real PostgreSQL server, in a schema of its own (see
`pg_server_url` for where the server comes from). Where a test needs a
runner that misbehaves (never bids, crashes, sends garbage), `scripted_runner`
writes a small real program that speaks the JSON-lines wire protocol of
DESIGN.md and hands it to the swarm as its ``runner_command``; a script can
also `become_real_runner()` (exec the real runner) for the personas that
should behave, so one swarm can mix both.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest

from timmy import Swarm

# The first lines of every scripted runner: arguments, and small helpers to speak the protocol.
RUNNER_PREAMBLE = '''\
import argparse, json, os, sys, time
from timmy.engine.protocol import decode_spec

ap = argparse.ArgumentParser()
ap.add_argument("--spec", required=True)
args = decode_spec(ap.parse_args().spec)   # a RunnerSpec: args.agent_id, args.seed, ...
if not isinstance(args.persona, str):      # a persona outside the catalog: by its fields
    args = argparse.Namespace(**{f: getattr(args, f) for f in args.__struct_fields__})
    args.persona = args.persona["id"]
HERE = os.path.dirname(os.path.abspath(__file__))

def send(line):
    """Write one raw line (valid or not) to the coordinator."""
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()

def say(kind, **fields):
    send(json.dumps({"v": 1, "type": kind, **fields}))

def hello():
    say("hello", agent_id=args.agent_id, persona=args.persona, pid=os.getpid())

def become_real_runner():
    """Replace this process with the real runner (same pid, same arguments)."""
    os.execv(sys.executable, [sys.executable, "-m", "timmy.engine.runner", *sys.argv[1:]])

def messages():
    """Coordinator messages until shutdown or until stdin closes (pings are answered)."""
    for line in iter(sys.stdin.readline, ""):
        msg = json.loads(line)
        if msg["type"] == "shutdown":
            return
        if msg["type"] == "ping":
            say("pong", seq=msg["seq"])
            continue
        yield msg
'''

# A program that owns a swarm, reports on stdout, then idles (or waits on its first task)
# inside the `with` block until it is killed or interrupted.
OWNER_SCRIPT = '''\
import json, sys, time
from timmy import Swarm

plan = json.loads(sys.argv[1])
with Swarm(**plan["swarm"]) as swarm:
    swarm.spawn_all(plan["personas"])
    posted = swarm.post_many(plan["descriptions"]) if plan["descriptions"] else []
    deadline = time.monotonic() + 20
    settled = None
    while time.monotonic() < deadline:   # until enough tasks run and nothing changes any more
        statuses = [t.status for t in swarm.tasks()]
        if statuses.count("running") >= plan["running"] and statuses == settled:
            break
        settled = statuses
        time.sleep(0.1)
    print(json.dumps({
        "pids": [a.pid for a in swarm.agents()],
        "tasks": {t.task_id: t.status for t in swarm.tasks()},
        "posted": [t.task_id for t in posted],
    }), flush=True)
    if plan["then"] == "wait":
        swarm.wait(posted[0].task_id)
    else:
        time.sleep(600)
'''


@pytest.fixture(name="eventually")
def eventually_fixture() -> Callable[..., object]:
    """`eventually(predicate, timeout=5.0, what=...)`: poll until the predicate holds."""
    return eventually


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "timmy.db"


@pytest.fixture
def db_url(request: pytest.FixtureRequest, db_path: Path) -> str:
    """This test's database: an SQLite file, or (``[postgresql]``) a fresh PostgreSQL schema."""
    if getattr(request, "param", "sqlite") == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{db_path}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``postgres`` that use a database run on both SQLite and PostgreSQL."""
    marker = metafunc.definition.get_closest_marker("postgres")
    if "db_url" in metafunc.fixturenames and marker:
        # @pytest.mark.postgres(only=True): a PostgreSQL-only behaviour, no [sqlite] run
        stores = ["postgresql"] if marker.kwargs.get("only") else ["sqlite", "postgresql"]
        metafunc.parametrize("db_url", stores, indirect=True)


# -- PostgreSQL ----------------------------------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _no_postgres(why: str) -> None:
    """Skip (locally) or fail (in CI, where the Makefile installs PostgreSQL) the PG tests."""
    message = (f"no PostgreSQL for the [postgresql] tests: {why}. To run them, install "
               "Debian's postgresql package (a throwaway server is then started for the "
               "session), or set TIMMY_TEST_PG_URL=postgresql+psycopg://USER:PASSWORD@HOST/DB")
    if _in_ci():
        pytest.fail(message + " (CI is set: not skipping)", pytrace=False)
    pytest.skip(message)


def libpq_url(url: str) -> str:
    """An SQLAlchemy PostgreSQL URL as psycopg.connect takes it."""
    import sqlalchemy as sa

    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(
        hide_password=False)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterable[str]:
    """A PostgreSQL database for this session: TIMMY_TEST_PG_URL if set, else a throwaway
    server (tests/pgserver.py: initdb and pg_ctl of Debian's postgresql package) on a free
    loopback port, removed at the end. Without either: skipped, or failed when CI is set."""
    try:
        import psycopg
    except ImportError:
        _no_postgres('psycopg is not installed (pip install "timmy[postgres]")')
    given = os.environ.get("TIMMY_TEST_PG_URL", "").strip()
    if given:
        try:
            psycopg.connect(libpq_url(given), connect_timeout=10).close()
        except psycopg.Error as exc:
            _no_postgres(f"TIMMY_TEST_PG_URL does not answer ({str(exc).strip()[:300]})")
        yield given
        return
    from pgserver import ServerUnavailable, throwaway

    server = throwaway()
    try:
        started = server.__enter__()
    except ServerUnavailable as exc:
        _no_postgres(str(exc))
    try:
        yield started.url()
    finally:
        server.__exit__(None, None, None)


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterable[str]:
    """A schema of its own on the session's server, as a URL whose search_path is that schema
    (so every timmy table, lock and sequence of this test lives in it); dropped afterwards."""
    import psycopg
    import sqlalchemy as sa

    from timmy.storage import store

    schema = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(libpq_url(pg_server_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = sa.engine.make_url(pg_server_url).update_query_dict(
        {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    yield url
    for key, engine in list(store._engines.items()):   # pooled connections into the schema
        if key.startswith(f"{url}#"):
            engine.dispose()
            del store._engines[key]
    with contextlib.suppress(psycopg.Error), \
            psycopg.connect(libpq_url(pg_server_url), autocommit=True) as conn:
        conn.execute("SET lock_timeout = '5s'")
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(name="rows_of")
def rows_of_fixture() -> Callable[..., list[tuple]]:
    """`rows_of(url, sql)`: a query's rows read with plain SQLAlchemy (no timmy code)."""
    return rows_of


def rows_of(url: str, sql: str, **params) -> list[tuple]:
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


@pytest.fixture
def make_swarm(db_url: str) -> Iterable[Callable[..., Swarm]]:
    """Start swarms on this test's database (fast defaults); every one is closed at teardown."""
    started: list[Swarm] = []

    def make(**overrides) -> Swarm:
        kwargs = {"db": db_url, "seed": 1, "task_seconds": 0.0, "auction_window": 1.0}
        kwargs.update(overrides)
        swarm = Swarm(**kwargs).start()
        started.append(swarm)
        return swarm

    yield make
    for swarm in started:
        swarm.close()


@pytest.fixture
def scripted_runner(tmp_path: Path) -> Callable[[str, str], list[str]]:
    """Write a runner program (preamble + ``body``); returns the ``runner_command`` for it."""

    def write(name: str, body: str) -> list[str]:
        path = tmp_path / f"{name}.py"
        path.write_text(RUNNER_PREAMBLE + "\n" + textwrap.dedent(body))
        return [sys.executable, str(path)]

    return write


@pytest.fixture
def start_owner(tmp_path: Path):
    """Run a swarm in a separate Python process, to kill or interrupt it.

    Returns (process, report): the report has the runner ``pids``, the ``tasks`` by status,
    the ``posted`` task ids, and ``stderr``, the file the process writes its errors to.
    """
    procs: list[subprocess.Popen] = []

    def start(swarm: dict, personas: list[str], descriptions: Sequence[str] = (),
              running: int = 0, then: str = "sleep") -> tuple[subprocess.Popen, dict]:
        script = tmp_path / "owner.py"
        script.write_text(OWNER_SCRIPT)
        plan = {"swarm": swarm, "personas": personas, "descriptions": list(descriptions),
                "running": running, "then": then}
        stderr = tmp_path / f"owner-{len(procs) + 1}.err"
        # Its own session, like a program started from a terminal: Ctrl-C can reach the group.
        with stderr.open("w") as err:
            proc = subprocess.Popen([sys.executable, str(script), json.dumps(plan)],
                                    stdout=subprocess.PIPE, stderr=err, text=True,
                                    start_new_session=True)
        procs.append(proc)
        line = proc.stdout.readline()
        assert line, f"the owner died before reporting: {stderr.read_text()[-2000:]}"
        report = json.loads(line)
        report["tasks"] = {int(k): v for k, v in report["tasks"].items()}
        report["stderr"] = stderr
        return proc, report

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)   # the owner and anything left in its group
        proc.wait()
        proc.stdout.close()


def eventually(predicate: Callable[[], object], timeout: float = 5.0,
               interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout}s (last value: {value!r})")
        time.sleep(interval)


@pytest.fixture(params=["local", "attached"])
def swarm(request, make_swarm, tmp_path):
    """A local `timmy.Swarm`, or the same swarm behind ``timmy serve`` (`Swarm.attach`)."""
    if request.param == "local":
        swarm = make_swarm()
        swarm.spawn_all()
        yield swarm
        return
    from test_service import ServiceProcess

    svc = ServiceProcess(tmp_path / "served.db")
    swarm = svc.attach()
    yield swarm
    swarm.close()
    svc.stop()
