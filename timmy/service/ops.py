"""The ops of the control protocol: each op's arguments (a struct that refuses unknown
fields) and what it calls on the served swarm."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from timmy.errors import ProtocolError
from timmy.paging import DEFAULT_LIMIT, MAX_LIMIT
from timmy.service.wire import Request

Name = Annotated[str, Meta(min_length=1, max_length=64)]
TaskId = Annotated[int, Meta(ge=1, le=2**62)]
Seconds = Annotated[float, Meta(ge=0, le=10**7)]
Count = Annotated[int, Meta(ge=0, le=10**9)]
EventId = Annotated[int, Meta(ge=0, le=2**62)]


class Args(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every op's arguments: unknown fields are refused."""


class NoArgs(Args):
    pass


class PersonaArgs(Args):
    persona: Name


class SpawnAllArgs(Args):
    personas: Annotated[list[Name], Meta(max_length=1000)] | None = None


class AgentArgs(Args):
    agent_id: Name


Spec = Annotated[str, Meta(min_length=1, max_length=4096)]


class PostArgs(Args):
    description: str             # the engine checks length and content
    task_timeout: float | None = None   # seconds; None: the swarm's (the engine checks it)
    verify: Spec | None = None   # a verify spec (`timmy.market.verification`; engine checks)
    max_price: int | float | None = None   # sats (`timmy.market.budgets`; the engine checks)


class PostManyArgs(Args):
    descriptions: Annotated[list[str], Meta(max_length=100_000)]
    task_timeout: float | None = None
    verify: Spec | None = None
    max_price: int | float | None = None


class LedgerArgs(Args):
    agent_id: Name | None = None
    limit: Count | None = None
    after: EventId | None = None     # entry_ids
    before: EventId | None = None


class TaskArgs(Args):
    task_id: TaskId


class WaitArgs(Args):
    task_id: TaskId
    timeout: Seconds | None = None


class RunArgs(Args):
    descriptions: Annotated[list[str], Meta(max_length=100_000)]
    timeout: Seconds | None = None
    sequential: bool = False


class TasksArgs(Args):
    status: Name | None = None
    limit: Count | None = None       # default DEFAULT_LIMIT, at most MAX_LIMIT (`_cap`)
    after: EventId | None = None     # cursors: task_ids (`timmy.paging`)
    before: EventId | None = None


class BidsArgs(Args):
    task_id: TaskId | None = None
    limit: Count | None = None
    after: EventId | None = None     # bid_ids
    before: EventId | None = None


class EventsArgs(Args):
    after: EventId | None = None     # None: the newest page
    limit: Count | None = None
    before: EventId | None = None


class AgentsArgs(Args):
    limit: Count | None = None
    after: Name | None = None


class ExportArgs(Args):
    out_dir: Annotated[str, Meta(min_length=1, max_length=4096)]
    fmt: Literal["parquet", "csv"] = "parquet"


class SubscribeArgs(Args):
    after: EventId | None = None   # None: from now on


AgentName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class RunnerArgs(Args):
    persona: Name
    agent_id: AgentName | None = None     # None: the service names it (persona-N)
    stats: dict[str, Any] | None = None   # what it learned: adopted if the swarm knows less
    # The rejoin_key of its last welcome: lets a runner token replace the agent's connection
    # while the service still holds one (a half-open connection the runner gave up on).
    key: Annotated[str, Meta(max_length=128)] | None = None


Op = tuple[type[Args], Callable[[Any, Any], Awaitable[Any]]]


async def _export(swarm, a: ExportArgs) -> dict[str, str]:
    return {k: str(v) for k, v in (await swarm.export(a.out_dir, a.fmt)).items()}


OPS: dict[str, Op] = {
    "ping": (NoArgs, lambda s, a: _const("pong")),
    "spawn": (PersonaArgs, lambda s, a: s.spawn(a.persona)),
    "spawn_all": (SpawnAllArgs, lambda s, a: s.spawn_all(a.personas)),
    "stop": (AgentArgs, lambda s, a: s.stop(a.agent_id)),
    "kill": (AgentArgs, lambda s, a: s.kill(a.agent_id)),
    "agents": (AgentsArgs, lambda s, a: s.agents(_cap(a.limit), a.after)),
    "post": (PostArgs, lambda s, a: s.post(a.description, a.task_timeout, verify=a.verify,
                                           max_price=a.max_price)),
    "post_many": (PostManyArgs, lambda s, a: s.post_many(a.descriptions, a.task_timeout,
                                                         verify=a.verify,
                                                         max_price=a.max_price)),
    "approve": (TaskArgs, lambda s, a: s.approve(a.task_id)),
    "reject": (TaskArgs, lambda s, a: s.reject(a.task_id)),
    "wait": (WaitArgs, lambda s, a: s.wait(a.task_id, a.timeout)),
    "run": (RunArgs, lambda s, a: s.run(a.descriptions, a.timeout, False, a.sequential)),
    "cancel": (TaskArgs, lambda s, a: s.cancel(a.task_id)),
    "tasks": (TasksArgs, lambda s, a: s.tasks(a.status, _cap(a.limit), after=a.after,
                                              before=a.before)),
    "task": (TaskArgs, lambda s, a: s.task(a.task_id)),
    "bids": (BidsArgs, lambda s, a: s.bids(a.task_id, _cap(a.limit), after=a.after,
                                           before=a.before)),
    "events": (EventsArgs, lambda s, a: s.events(a.after, _cap(a.limit), before=a.before)),
    "export": (ExportArgs, _export),
    "ledger": (LedgerArgs, lambda s, a: s.ledger(a.agent_id, _cap(a.limit), after=a.after,
                                                 before=a.before)),
    "balances": (NoArgs, lambda s, a: s.balances()),
    "reputation": (NoArgs, lambda s, a: s.reputation()),
}


async def _const(value):
    return value


def _cap(limit: int | None) -> int:
    """A list op's page size: the default, and never more than `MAX_LIMIT` rows, whatever a
    client asks (one answer is held in memory and written in one piece)."""
    return DEFAULT_LIMIT if limit is None else min(limit, MAX_LIMIT)



def op_args(args_type: type[Args], req: Request) -> Any:
    try:
        return msgspec.convert(req.args, args_type)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"bad arguments for {req.op}: {exc}",
                            hint=f"see the {req.op} method of timmy.Swarm for its arguments") \
            from None


