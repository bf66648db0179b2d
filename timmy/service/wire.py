"""The control protocol a client, the service and a remote runner share: one JSON object per
line, typed with msgspec like the runner wire (`timmy.engine.protocol`).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from timmy.errors import ConfigError, ProtocolError, TimmyError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7341
DEFAULT_URL = f"tcp://{DEFAULT_HOST}:{DEFAULT_PORT}"


class ServiceError(TimmyError):
    """The swarm service refused a request or failed to answer it."""


class ServiceUnavailable(ServiceError, ConnectionError):
    """No swarm service answers at that address (or it closed the connection)."""


class AuthenticationError(ServiceError, PermissionError):
    """The request carried no token, the wrong one, or a runner token for another op."""


class ServiceBusy(ServiceError):
    """The service already serves as many connections as it allows."""


# -- the wire ---------------------------------------------------------------------

RequestId = Annotated[int, Meta(ge=0, le=2**53)]

class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One request; the service answers each with a `Response` of the same ``id``.

        -> {"id": 7, "token": "...", "op": "post", "args": {"description": "fix the bug"}}
        <- {"id": 7, "ok": true, "result": {"task_id": 12, "status": "queued", ...}}
        <- {"id": 8, "ok": false, "error": {"type": "TaskNotFound", "message": "...", ...}}

    ``subscribe {"after": N}`` turns a connection into an event stream: an ``ok`` answer saying
    where it starts, then every stored event after ``N``, then live ones, one `Event`
    per line. ``runner {"persona": "forge", ...}`` turns it into a remote runner's: an ``ok``
    answer (a `Welcome`), then the runner wire protocol, starting with the runner's ``hello``.
    """

    id: RequestId
    token: Annotated[str, Meta(max_length=512)]
    op: Annotated[str, Meta(min_length=1, max_length=32)]
    args: dict[str, Any] = {}


class ErrorInfo(msgspec.Struct, frozen=True):
    type: str
    message: str
    hint: str = ""


class Response(msgspec.Struct, frozen=True, omit_defaults=True):
    id: int | None
    ok: bool
    result: Any = None
    error: ErrorInfo | None = None


_encoder = msgspec.json.Encoder()
_request = msgspec.json.Decoder(Request)


def encode(msg: Any) -> bytes:
    """One message (a Response, a Request, an Event) as one line."""
    return _encoder.encode(msg) + b"\n"


def decode_request(line: bytes) -> Request:
    try:
        return _request.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError, RecursionError) as exc:
        raise ProtocolError(
            f"bad request: {exc}",
            hint='send one JSON object per line: {"id": 1, "token": "...", "op": "status", '
                 '"args": {}}',
        ) from None


def error_info(exc: TimmyError) -> ErrorInfo:
    return ErrorInfo(type=type(exc).__name__, message=exc.message, hint=exc.hint)


def parse_url(url: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` (or ``HOST:PORT``) as (host, port), or `ConfigError`."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    if parts.scheme != "tcp" or not parts.hostname:
        raise ConfigError(f"not a swarm service address: {url!r}",
                          hint=f"use tcp://HOST:PORT, e.g. {DEFAULT_URL}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError(f"bad port in {url!r}", hint=f"use tcp://HOST:PORT, e.g. {DEFAULT_URL}") \
            from None
    return parts.hostname, port


def url_host(host: str) -> str:
    """A host as written in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
