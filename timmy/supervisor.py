"""Runner processes: start, watch, restart with backoff, stop. Nothing more.

Each agent gets one `Slot` that outlives its processes: the supervisor starts
``python -m timmy.runner``, reads its stdout as JSON lines (decoded into typed
messages), batches what the coordinator sends to it into one write per turn of
the event loop, and when the process dies restarts it with
exponential backoff, at most ``max_restarts`` times in ``restart_window``
seconds. A runner that keeps sending garbage is killed and so restarted.
The coordinator hears about all of it through three callbacks.

Processes are asyncio subprocesses, not `anyio.open_process`: profiling showed
anyio's per-call stream overhead (cancel scopes, checkpoints) was the largest
cost per auction, and writing straight to the asyncio transport lets all the
messages for a runner in one loop turn go out in one syscall. The rest of the
engine (task groups, timeouts, threads, the blocking portal) is anyio, run on
its asyncio backend.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from subprocess import PIPE

import anyio
from anyio.abc import TaskGroup

from . import protocol as p
from .errors import RunnerError

log = logging.getLogger("timmy.supervisor")


@dataclass
class RestartPolicy:
    max_restarts: int = 5          # in any restart_window seconds; then the agent is "failed"
    restart_window: float = 60.0
    backoff_start: float = 0.05
    backoff_max: float = 5.0
    garbage_limit: int = 20        # bad lines from one process before a forced restart
    stop_timeout: float = 2.0      # grace after shutdown before SIGTERM, then SIGKILL
    max_backlog: int = 8 << 20     # bytes unread by a runner before it is deemed hung


@dataclass(eq=False)
class Slot:
    agent_id: str
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    stopping: bool = False
    restarts: int = 0
    garbage: int = 0
    restart_times: deque = field(default_factory=deque)
    outbox: list[bytes] = field(default_factory=list)
    exited: anyio.Event = field(default_factory=anyio.Event)
    stop_asked: anyio.Event = field(default_factory=anyio.Event)  # cuts a restart backoff short

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class Supervisor:
    """Owns the runner processes of one swarm, inside the swarm's task group."""

    def __init__(
        self,
        tg: TaskGroup,
        *,
        on_message: Callable[[str, object], None],
        on_exit: Callable[[str, int | None, str], None],
        on_garbage: Callable[[str, p.ProtocolError], None],
        policy: RestartPolicy | None = None,
    ) -> None:
        self._tg = tg
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
        if slot is None or slot.process is None or slot.stopping:
            return False
        if not slot.outbox:
            self._dirty[agent_id] = slot
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._write_all)
        slot.outbox.append(data)
        return True

    async def stop(self, agent_id: str) -> None:
        """Ask a runner to shut down, then terminate, then kill; never restart it."""
        slot = self.slots.get(agent_id)
        if slot is None:
            return
        slot.stopping = True
        slot.stop_asked.set()
        proc = slot.process
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
        async with anyio.create_task_group() as tg:
            for agent_id in list(self.slots):
                tg.start_soon(self.stop, agent_id)

    def kill(self, agent_id: str) -> None:
        """SIGKILL a runner's process (it will be restarted by the policy)."""
        slot = self.slots.get(agent_id)
        if slot and slot.process and slot.process.returncode is None:
            _signal_group(slot.process, signal.SIGKILL)

    # -- internals ----------------------------------------------------------
    async def _launch(self, slot: Slot) -> None:
        try:
            # A session of its own: a kill reaches the runner and anything it started (a
            # wrapper script's child), and a terminal's Ctrl-C reaches only the coordinator,
            # which then stops runners cleanly.
            slot.process = await asyncio.create_subprocess_exec(
                *slot.argv, stdin=PIPE, stdout=PIPE, stderr=None, start_new_session=True)
        except OSError as exc:
            raise RunnerError(
                f"cannot start runner {slot.agent_id}: {exc}",
                hint="check that this Python can run `python -m timmy.runner --help`",
            ) from exc
        slot.garbage = 0
        slot.outbox.clear()

    async def _supervise(self, slot: Slot) -> None:
        while True:
            proc = slot.process
            await self._read_loop(slot, proc)
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
            self._on_exit(slot.agent_id, proc.returncode, verdict)
            if verdict != "restart":
                slot.process = None
                slot.exited.set()
                return
            delay = min(self.policy.backoff_max,
                        self.policy.backoff_start * math.pow(2, len(slot.restart_times) - 1))
            with anyio.move_on_after(delay):
                await slot.stop_asked.wait()
            if slot.stopping:  # stopped while waiting to restart
                slot.process = None
                self._on_exit(slot.agent_id, None, "stopped")
                slot.exited.set()
                return
            slot.restarts += 1
            try:
                await self._launch(slot)
            except RunnerError as exc:
                log.error("%s", exc)
                slot.process = None
                self._on_exit(slot.agent_id, None, "failed")
                slot.exited.set()
                return

    def _verdict(self, slot: Slot) -> str:
        if slot.stopping:
            return "stopped"
        now = time.monotonic()
        window = slot.restart_times
        while window and now - window[0] > self.policy.restart_window:
            window.popleft()
        if len(window) >= self.policy.max_restarts:
            return "failed"
        window.append(now)
        return "restart"

    def _write_all(self) -> None:
        """Write everything queued this loop turn: one write per runner."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, {}
        for slot in dirty.values():
            proc = slot.process
            if proc is None or not slot.outbox:
                continue
            data = b"".join(slot.outbox)
            slot.outbox.clear()
            try:
                proc.stdin.write(data)
                backlog = proc.stdin.transport.get_write_buffer_size()
            except (ConnectionError, RuntimeError, OSError, AttributeError):
                continue  # the reader sees the process end and reports it
            if backlog > self.policy.max_backlog:
                log.warning("runner %s is not reading (%d bytes waiting): restarting it",
                            slot.agent_id, backlog)
                self.kill(slot.agent_id)

    async def _read_loop(self, slot: Slot, proc: asyncio.subprocess.Process) -> None:
        pending = b""
        discarding = False  # inside a line longer than MAX_LINE: drop up to its newline
        agent_id = slot.agent_id
        on_message = self._on_message
        while True:
            try:
                chunk = await proc.stdout.read(1 << 16)
            except (ConnectionError, OSError):
                return
            if not chunk:
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

    def _garbage(self, slot: Slot, exc: p.ProtocolError) -> None:
        slot.garbage += 1
        self._on_garbage(slot.agent_id, exc)
        if slot.garbage >= self.policy.garbage_limit:
            log.warning("runner %s sent %d bad lines: restarting it",
                        slot.agent_id, slot.garbage)
            slot.garbage = 0
            if slot.process is not None and slot.process.returncode is None:
                _signal_group(slot.process, signal.SIGKILL)


def _signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Signal a runner's whole process group (it leads its own session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
