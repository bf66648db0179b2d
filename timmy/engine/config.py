"""`Config`, how a swarm behaves, and the checks on what callers pass it (limits, the
executor, the Ollama models and server, a task's description and deadline)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field

from timmy.engine import protocol as p
from timmy.engine.executors import check_executor
from timmy.engine.supervisor import RestartPolicy
from timmy.errors import ConfigError, MissingDependency, QueueFull, TaskNotFound
from timmy.llm import DEFAULT_TIMEOUT, base_url, check_models, choose_executor, model_for
from timmy.market.auction import check_rule
from timmy.market.budgets import check_sats
from timmy.market.personas import PERSONAS, Persona


@dataclass
class Config:
    """How a swarm behaves; validated on construction."""

    seed: int = 0
    executor: str = "simulated"
    task_seconds: float = 0.05
    auction_window: float = 2.0
    rule: str = "specialist_first"   # any registered mechanism (timmy.market.mechanisms)
    max_attempts: int = 3
    personas: dict[str, Persona] = field(default_factory=lambda: dict(PERSONAS))
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    runner_command: Sequence[str] | None = None   # replaces `python -m timmy.engine.runner` (tests)
    max_queued: int = 100_000      # unfinished tasks the swarm holds; past it post() refuses
    runner_queue: int = 32         # tasks a runner may hold (running + waiting): past that its
                                   # bids are passed over. 1 = a runner works only when idle
    ping_interval: float = 5.0     # seconds between pings to each runner
    ping_timeout: float = 30.0     # a runner silent this long is deemed hung and restarted
    hello_timeout: float = 15.0    # a restarted or remote runner's time to say hello
    task_timeout: float | None = None  # seconds a runner may work on one task (None: no limit)
    close_timeout: float = 10.0    # how long closing keeps trying to save the last changes
    # The Ollama executor (see timmy.llm): one model for all, or {persona id: model};
    # the server (None: OLLAMA_HOST, else the local default); how long it may stay silent.
    model: str | dict[str, str] | None = None
    ollama_host: str | None = None
    ollama_timeout: float = DEFAULT_TIMEOUT
    verify_timeout: float = 30.0   # seconds a verifier (a command, a callable) may take
    budget: int | None = None      # sats the swarm may spend without approval (market.budgets)

    def __post_init__(self) -> None:
        check_rule(self.rule)
        check_executor(self.executor)
        _check_number("seed", self.seed, -(2**63), 2**63 - 1, "pass seed=1 (any integer)",
                      integer=True)
        _check_number("auction_window", self.auction_window, 1e-3, 3600, "the default is 2.0")
        _check_number("task_seconds", self.task_seconds, 0, 3600,
                      "0 makes simulated tasks instant; the default is 0.05")
        _check_number("runner_queue", self.runner_queue, 1, 1000, "the default is 32",
                      integer=True)
        _check_number("max_attempts", self.max_attempts, 1, 100, "the default is 3",
                      integer=True)
        _check_number("max_queued", self.max_queued, 1, 100_000_000, "the default is 100000",
                      integer=True)
        _check_number("ping_interval", self.ping_interval, 0.01, 3600, "the default is 5.0")
        _check_number("ping_timeout", self.ping_timeout, 0.1, 86400, "the default is 30.0")
        _check_number("close_timeout", self.close_timeout, 0, 3600, "the default is 10.0")
        _check_number("hello_timeout", self.hello_timeout, 0.01, 3600, "the default is 15.0")
        check_task_timeout(self.task_timeout)
        _check_number("verify_timeout", self.verify_timeout, 0.01, 86400, "the default is 30.0")
        self.budget = check_sats("budget", self.budget)
        if self.ping_timeout <= self.ping_interval:
            raise ConfigError(
                f"ping_timeout ({self.ping_timeout}s) must be longer than ping_interval "
                f"({self.ping_interval}s), or every runner would be restarted at every ping",
                hint="keep ping_timeout several times ping_interval (defaults: 30 and 5)")
        self._check_ollama()
        if self.runner_command is not None and (
            isinstance(self.runner_command, str)
            or not all(isinstance(a, str) for a in self.runner_command)
        ):
            raise ConfigError(f"runner_command must be a list of strings, got "
                              f"{self.runner_command!r}",
                              hint='e.g. runner_command=["python", "my_runner.py"]')

    def _check_ollama(self) -> None:
        """The Ollama settings: checked whatever the executor, resolved for "ollama" and
        "auto" (a bad server address, OLLAMA_HOST or TIMMY_OLLAMA_MODEL fails here), and
        the client installed for "ollama"."""
        _check_number("ollama_timeout", self.ollama_timeout, 0.01, 86400,
                      f"the default is {DEFAULT_TIMEOUT:g}")
        check_models(self.model, self.personas)
        if self.ollama_host is not None and not isinstance(self.ollama_host, str):
            raise ConfigError(f"ollama_host must be a URL string, got {self.ollama_host!r}",
                              hint="e.g. http://127.0.0.1:11434")
        if self.executor in ("ollama", "auto"):
            base_url(self.ollama_host)
            for persona_id in self.personas:
                model_for(persona_id, self.model)
        if self.executor == "ollama" and importlib.util.find_spec("ollama") is None:
            raise MissingDependency("the ollama executor needs the ollama Python client",
                                    hint='pip install "timmy[llm]"')

    def resolve_auto(self) -> tuple[str, str]:
        """Resolve "auto" (blocking: one probe of the server): Ollama if it answers with every
        model the personas use, else the simulated executor; and why."""
        models = [model_for(pid, self.model) for pid in self.personas]
        return choose_executor(self.ollama_host, models)


def _check_number(name: str, value: object, lo: float, hi: float, hint: str,
                  integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not lo <= value <= hi:
        what = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {what} in [{lo:g}, {hi:g}], got {value!r}", hint=hint)


def check_task_timeout(value: object) -> None:
    """A task's execution deadline: None (no limit) or seconds, up to 30 days."""
    if value is not None:
        _check_number("task_timeout", value, 0.01, 30 * 86400,
                      "seconds a runner may work on one task, e.g. task_timeout=600; None "
                      "for no limit")


def check_description(description: object) -> str:
    """A task description as posted: non-empty text a database can store, within
    `protocol.MAX_DESCRIPTION`; returned as is, else `ConfigError`."""
    if not isinstance(description, str):
        raise ConfigError(f"a task description must be a string, got "
                          f"{type(description).__name__}", hint="post('describe the work')")
    if not description.strip():
        raise ConfigError("a task description is empty",
                          hint="describe the work, e.g. 'fix the bug in the api client'")
    try:
        description.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"a task description is not valid text: {exc.reason} at position "
                          f"{exc.start}", hint="remove the stray surrogate characters") from None
    if "\x00" in description:   # a server database's text cannot hold it (PostgreSQL)
        raise ConfigError(f"a task description contains a NUL character (\\x00) at position "
                          f"{description.index(chr(0))}",
                          hint="remove it: databases such as PostgreSQL cannot store it")
    if len(description) > p.MAX_DESCRIPTION:
        raise ConfigError(
            f"a task description is {len(description)} characters long, over the "
            f"{p.MAX_DESCRIPTION}-character limit",
            hint="shorten it, or split the work into several tasks",
        )
    return description


def check_posts(descriptions: Sequence[str], task_timeout: object, unfinished: int,
                max_queued: int) -> list[str]:
    """What `post_many` is given, checked: a list of descriptions (`check_description`), a
    ``task_timeout``, and room for them beside the ``unfinished`` tasks (`QueueFull`)."""
    check_task_timeout(task_timeout)
    if isinstance(descriptions, str):
        raise ConfigError("post_many() takes a list of descriptions, got one string",
                          hint="use post(description) for one task, or pass [description]")
    descriptions = [check_description(d) for d in descriptions]
    if descriptions and unfinished + len(descriptions) > max_queued:
        raise QueueFull(
            f"{unfinished:,} tasks are unfinished and the cap is "
            f"{max_queued:,}: {len(descriptions):,} more would not fit",
            hint="wait for some to finish (swarm.wait / run), post fewer at once, or "
                 "start the swarm with a higher max_queued (--max-queued)")
    return descriptions


def check_task_id(task_id: object) -> None:
    """A task id as a caller passes it: an integer in [1, 2**62], else `TaskNotFound`."""
    if not isinstance(task_id, int) or isinstance(task_id, bool):
        raise TaskNotFound(f"task ids are integers, got {task_id!r}",
                           hint="use the task_id of a Task returned by post()")
    if not 1 <= task_id <= 2**62:
        raise TaskNotFound(f"no task with id {task_id}",
                           hint="task ids start at 1; use the task_id returned by post()")
