"""Runners: start, watch, restart with backoff, stop. Nothing more: `Supervisor` owns one
`Slot` per agent, and each connection to a runner is a `Link` (a child process or a remote
runner's socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from subprocess import PIPE

import anyio
from anyio.abc import TaskGroup

from timmy.engine import protocol as p
from timmy.errors import RunnerError

log = logging.getLogger("timmy.engine.supervisor")


class Verdict(StrEnum):
    """How a runner's connection ended, as the supervisor tells `on_exit`."""

    RESTART = "restart"            # a child process died: it is restarted after a backoff
    STOPPED = "stopped"            # stopped on purpose (stop(), the swarm closing, a bye)
    FAILED = "failed"              # kept dying (past max_restarts) or could not start again
    DISCONNECTED = "disconnected"  # a remote runner's connection dropped: it may dial in again


@dataclass
class RestartPolicy:
    max_restarts: int = 5          # in any restart_window seconds; then the agent is "failed"
    restart_window: float = 60.0
    backoff_start: float = 0.05   # the wait before a restart, doubling with each quick crash
    backoff_max: float = 5.0
    healthy_after: float = 1.0     # a runner up this long started fine: its next restart
                                   # waits backoff_start again (the guard still counts it)
    garbage_limit: int = 20        # bad lines from one process before a forced restart
    stop_timeout: float = 2.0      # grace after shutdown before SIGTERM, then SIGKILL
    max_backlog: int = 8 << 20     # bytes unread by a runner before it is deemed hung


class Link:
    """One live connection to a runner: what it says (``reader``), what it is told
    (``writer``), and how to cut it off."""

    pid: int | None = None
    peer: str | None = None        # host:port of a remote runner

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.since = time.monotonic()

    @property
    def open(self) -> bool:
        """Not ended yet (the process runs, the connection is up)."""
        raise NotImplementedError

    def cut(self) -> None:
        """End it at once, as a crash would."""
        raise NotImplementedError


class ProcessLink(Link):
    """A ``python -m timmy.engine.runner`` child of this swarm: its stdout and stdin."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        super().__init__(process.stdout, process.stdin)
        self.process = process
        self.pid = process.pid

    @property
    def open(self) -> bool:
        return self.process.returncode is None

    def cut(self) -> None:
        if self.process.returncode is None:
            _signal_group(self.process, signal.SIGKILL)


class SocketLink(Link):
    """A runner on another machine that dialled in to the swarm service: its TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 peer: str) -> None:
        super().__init__(reader, writer)
        self.peer = peer
        self.ended = anyio.Event()

    @property
    def open(self) -> bool:
        return not self.ended.is_set()

    def cut(self) -> None:
        self.writer.transport.abort()   # the reader sees the end at once


@dataclass(eq=False)
class Slot:
    agent_id: str
    argv: list[str] | None         # None: a remote runner (it dials in; never started here)
    link: Link | None = None
    stopping: bool = False
    restarts: int = 0              # processes started after the first / reconnections
    garbage: int = 0
    restart_times: deque = field(default_factory=deque)
    quick_crashes: int = 0         # crashes in a row, each before healthy_after
    next_delay: float = 0.0        # the wait before the restart under way
    outbox: list[bytes] = field(default_factory=list)
    exited: anyio.Event = field(default_factory=anyio.Event)
    stop_asked: anyio.Event = field(default_factory=anyio.Event)  # cuts a restart backoff short
    links: int = 0                 # connections a remote runner has made

    @property
    def remote(self) -> bool:
        return self.argv is None

    @property
    def pid(self) -> int | None:
        return self.link.pid if self.link else None


class Supervisor:
    """Owns the runners of one swarm, inside the swarm's task group.

    Each agent gets one `Slot` that outlives its connections. A `ProcessLink` is a
    ``python -m timmy.engine.runner`` child and its pipes; a `SocketLink` is a runner on
    another machine that dialled in to the swarm service (``timmy runner --connect``).
    Both speak the same wire protocol, so the rest is shared: the supervisor reads JSON
    lines (decoded into typed messages), batches what the coordinator sends into one
    write per turn of the event loop, and cuts off a runner that keeps sending garbage
    or stops reading.

    When a child process dies it is restarted, after a wait that doubles while it keeps
    dying young (before ``healthy_after``) and is short again once it ran a while; at
    most ``max_restarts`` times in ``restart_window`` seconds. A remote runner is never
    restarted from here: when its connection drops the agent is "disconnected" until
    the runner dials in again (`serve_remote`). The coordinator hears about all of it
    through three callbacks. Processes are asyncio subprocesses, not
    `anyio.open_process` (why: docs/design.md, "Choices we made").
    """

    def __init__(
        self,
        tg: TaskGroup,
        *,
        on_message: Callable[[str, object], None],
        on_exit: Callable[[str, int | None, Verdict], None],
        on_garbage: Callable[[str, p.ProtocolError], None],
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tg = tg
        # What links' ages and the restart window are measured on: the coordinator's awake
        # clock, so a stall of the service itself makes no runner look slow to say hello.
        self.clock = clock
        self._on_message, self._on_exit, self._on_garbage = on_message, on_exit, on_garbage
        self.policy = policy or RestartPolicy()
        self.slots: dict[str, Slot] = {}
        self._dirty: dict[str, Slot] = {}          # slots with bytes waiting to be written
        self._flush_scheduled = False

    # -- public -------------------------------------------------------------
    async def start(self, agent_id: str, argv: list[str]) -> Slot:
        """Start a runner and keep it running until `stop`."""
        slot = Slot(agent_id, argv)
        self.slots[agent_id] = slot
        await self._launch(slot)
        self._tg.start_soon(self._supervise, slot)
        return slot

    def send(self, agent_id: str, data: bytes) -> bool:
        """Queue bytes for a runner; written at the next turn of its writer. False if gone."""
        slot = self.slots.get(agent_id)
        if slot is None or slot.link is None or slot.stopping:
            return False
        if not slot.outbox:
            self._dirty[agent_id] = slot
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._write_all)
        slot.outbox.append(data)
        return True

    async def stop(self, agent_id: str) -> None:
        """Ask a runner to shut down, then terminate, then kill; never restart it.

        A remote runner is told to shut down (it then exits instead of dialling in
        again) and its connection is cut if it does not close it in time.
        """
        slot = self.slots.get(agent_id)
        if slot is None:
            return
        slot.stopping = True
        slot.stop_asked.set()
        if slot.remote:
            await self._stop_remote(slot, tell=True)
            return
        proc = slot.link.process if slot.link is not None else None
        if proc is not None and proc.returncode is None:
            try:
                proc.stdin.write(p.encode(p.Shutdown()))
                proc.stdin.close()
            except (ConnectionError, RuntimeError, OSError):
                pass
            with anyio.move_on_after(self.policy.stop_timeout):
                await proc.wait()
            if proc.returncode is None:
                _signal_group(proc, signal.SIGTERM)
                with anyio.move_on_after(self.policy.stop_timeout):
                    await proc.wait()
            if proc.returncode is None:
                _signal_group(proc, signal.SIGKILL)
                await proc.wait()
        with anyio.move_on_after(self.policy.stop_timeout):
            await slot.exited.wait()

    async def stop_all(self) -> None:
        """Stop every child process. Remote runners are let go without being told to stop:
        their connections close, and they dial in again to the next service on this
        address."""
        async with anyio.create_task_group() as tg:
            for agent_id, slot in list(self.slots.items()):
                if slot.remote:
                    slot.stopping = True
                    tg.start_soon(self._stop_remote, slot, False)
                else:
                    tg.start_soon(self.stop, agent_id)

    def relaunch_with(self, agent_id: str, argv: list[str]) -> None:
        """The command line a child's next restart runs (the replacement starts with what
        the dead one had learned). No effect on a remote runner, which is never started here."""
        slot = self.slots.get(agent_id)
        if slot is not None and not slot.remote:
            slot.argv = argv

    def kill(self, agent_id: str) -> None:
        """Cut a runner off as a crash would: SIGKILL a child process (it is restarted by the
        policy), abort a remote runner's connection (it dials in again)."""
        slot = self.slots.get(agent_id)
        if slot is not None and slot.link is not None:
            slot.link.cut()

    # -- remote runners -----------------------------------------------------
    def add_remote(self, agent_id: str) -> Slot:
        """A slot for a runner that dials in (see `connect`)."""
        slot = Slot(agent_id, None)
        self.slots[agent_id] = slot
        return slot

    def connect(self, agent_id: str, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter, peer: str) -> SocketLink:
        """Make a fresh connection the link of a remote runner's slot, then `serve_remote` it.

        The newest connection wins: an older one still open (a half-open connection the
        runner already gave up on, or a second runner with the same agent_id) is told it
        was replaced, closed and reported as a disconnection first.
        """
        slot = self.slots[agent_id]
        old = slot.link
        if old is not None:
            with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                old.writer.write(p.encode(p.Shutdown(
                    reason=f"{agent_id} connected again from {peer}; this connection is "
                           "replaced")))
                old.writer.close()
            self._end_link(slot, old, Verdict.DISCONNECTED)
        link = SocketLink(reader, writer, peer)
        link.since = self.clock()
        slot.restarts = slot.links
        slot.links += 1
        slot.link, slot.stopping, slot.garbage = link, False, 0
        slot.outbox.clear()
        return link

    async def serve_remote(self, slot: Slot, link: SocketLink,
                           greet: Awaitable[None] | None = None) -> None:
        """Await ``greet`` (the answer to the runner's handshake), then read the runner until
        its connection ends, and report how it ended."""
        verdict = Verdict.DISCONNECTED
        try:
            if greet is not None:
                await greet
            await self._read_loop(slot, link)
        except asyncio.CancelledError:   # the service is closing: no fault of the runner's
            verdict = Verdict.STOPPED
            raise
        finally:
            if slot.stopping:
                verdict = Verdict.STOPPED
            self._end_link(slot, link, verdict)
            link.writer.close()

    def leaving(self, agent_id: str) -> None:
        """A remote runner said ``bye``: when its connection ends, it was stopped, not lost
        (its tasks keep their attempts). Rejoining later clears this, as for a stop."""
        slot = self.slots.get(agent_id)
        if slot is not None and slot.remote and slot.link is not None:
            slot.stopping = True

    async def _stop_remote(self, slot: Slot, tell: bool) -> None:
        link = slot.link
        if link is None:            # disconnected: it can only be told if it comes back
            if tell:
                self._on_exit(slot.agent_id, None, Verdict.STOPPED)
            return
        with contextlib.suppress(ConnectionError, RuntimeError, OSError):
            if tell:
                link.writer.write(p.encode(p.Shutdown(reason="stopped by the swarm")))
            link.writer.close()     # after what is buffered: the runner reads it, then EOF
        with anyio.move_on_after(self.policy.stop_timeout):
            await link.ended.wait()
        if not link.ended.is_set():
            link.cut()
            self._end_link(slot, link, Verdict.STOPPED)

    def _end_link(self, slot: Slot, link: SocketLink, verdict: Verdict) -> None:
        link.ended.set()
        if slot.link is not link:   # already replaced by a newer connection
            return
        slot.link = None
        slot.outbox.clear()
        self._dirty.pop(slot.agent_id, None)
        self._on_exit(slot.agent_id, None, verdict)

    # -- internals ----------------------------------------------------------
    async def _launch(self, slot: Slot) -> None:
        try:
            # A session of its own: a kill reaches the runner and anything it started (a
            # wrapper script's child), and a terminal's Ctrl-C reaches only the coordinator,
            # which then stops runners cleanly.
            process = await asyncio.create_subprocess_exec(
                *slot.argv, stdin=PIPE, stdout=PIPE, stderr=None, start_new_session=True)
        except OSError as exc:
            raise RunnerError(
                f"cannot start runner {slot.agent_id}: {exc}",
                hint="check that this Python can run `python -m timmy.engine.runner --help`",
            ) from exc
        slot.link = ProcessLink(process)
        slot.link.since = self.clock()
        slot.garbage = 0
        slot.outbox.clear()

    async def _supervise(self, slot: Slot) -> None:
        while True:
            link = slot.link
            proc = link.process
            await self._read_loop(slot, link)
            if proc.returncode is None:
                with anyio.move_on_after(self.policy.stop_timeout):
                    await proc.wait()
                if proc.returncode is None:
                    _signal_group(proc, signal.SIGKILL)
                    await proc.wait()
            slot.outbox.clear()
            self._dirty.pop(slot.agent_id, None)
            proc.stdin.close()
            verdict = self._verdict(slot)
            # Back off from a runner that keeps dying young (it cannot start); one that ran a
            # while (killed by someone, crashed once) comes back at once.
            if self.clock() - link.since >= self.policy.healthy_after:
                slot.quick_crashes = 0
            else:
                slot.quick_crashes += 1
            slot.next_delay = min(self.policy.backoff_max, self.policy.backoff_start
                                  * math.pow(2, max(0, slot.quick_crashes - 1)))
            self._on_exit(slot.agent_id, proc.returncode, verdict)
            if verdict is not Verdict.RESTART:
                slot.link = None
                slot.exited.set()
                return
            with anyio.move_on_after(slot.next_delay):
                await slot.stop_asked.wait()
            if slot.stopping:  # stopped while waiting to restart
                slot.link = None
                self._on_exit(slot.agent_id, None, Verdict.STOPPED)
                slot.exited.set()
                return
            slot.restarts += 1
            try:
                await self._launch(slot)
            except RunnerError as exc:
                log.error("%s", exc)
                slot.link = None
                self._on_exit(slot.agent_id, None, Verdict.FAILED)
                slot.exited.set()
                return

    def _verdict(self, slot: Slot) -> Verdict:
        if slot.stopping:
            return Verdict.STOPPED
        now = self.clock()
        window = slot.restart_times
        while window and now - window[0] > self.policy.restart_window:
            window.popleft()
        if len(window) >= self.policy.max_restarts:
            return Verdict.FAILED
        window.append(now)
        return Verdict.RESTART

    def _write_all(self) -> None:
        """Write everything queued this loop turn: one write per runner."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, {}
        for slot in dirty.values():
            link = slot.link
            if link is None or not slot.outbox:
                continue
            data = b"".join(slot.outbox)
            slot.outbox.clear()
            try:
                link.writer.write(data)
                backlog = link.writer.transport.get_write_buffer_size()
            except (ConnectionError, RuntimeError, OSError, AttributeError):
                continue  # the reader sees the link end and reports it
            if backlog > self.policy.max_backlog:
                log.warning("runner %s is not reading (%d bytes waiting): cutting it off",
                            slot.agent_id, backlog)
                link.cut()

    async def _read_loop(self, slot: Slot, link: Link) -> None:
        pending = b""
        discarding = False  # inside a line longer than MAX_LINE: drop up to its newline
        agent_id = slot.agent_id
        on_message = self._on_message
        reader = link.reader
        while True:
            try:
                chunk = await reader.read(1 << 16)
            except (ConnectionError, OSError):
                return
            if not chunk or slot.link is not link:   # ended, or replaced by a newer link
                return
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if discarding and lines:
                lines[0] = b""
                discarding = False
            if len(pending) > p.MAX_LINE and not discarding:
                self._garbage(slot, p.ProtocolError(
                    f"line longer than {p.MAX_LINE} bytes", hint="one message per line"))
                pending = b""
                discarding = True
            elif discarding:
                pending = b""
            for line in lines:
                if not line:
                    continue
                try:
                    msg = p.decode_runner(line)
                except p.ProtocolError as exc:
                    self._garbage(slot, exc)
                    continue
                on_message(agent_id, msg)

    def bad_line(self, agent_id: str, exc: p.ProtocolError) -> None:
        """A message that decoded but breaks a rule the coordinator checks (a bid outside
        the persona's range, a hello out of turn): it counts as garbage, so a runner that
        keeps sending such lines is cut off."""
        slot = self.slots.get(agent_id)
        if slot is not None:
            self._garbage(slot, exc)

    def _garbage(self, slot: Slot, exc: p.ProtocolError) -> None:
        slot.garbage += 1
        self._on_garbage(slot.agent_id, exc)
        if slot.garbage >= self.policy.garbage_limit:
            log.warning("runner %s sent %d bad lines: cutting it off",
                        slot.agent_id, slot.garbage)
            slot.garbage = 0
            if slot.link is not None:
                slot.link.cut()


def _signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Signal a runner's whole process group (it leads its own session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
