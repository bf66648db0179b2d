"""What an executor's ``run`` returns: an `Outcome`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from timmy.engine.protocol import Usage


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an execution came to. ``output`` is the result, or on failure the reason.

    ``usage``: tokens and timing, from executors that call a model. ``permanent``: the
    failure would repeat on any runner (see `timmy.engine.protocol.Result`), so re-auctioning
    the task cannot help.
    """

    ok: bool
    output: str
    elapsed_s: float
    usage: Usage | None = None
    permanent: bool = False
