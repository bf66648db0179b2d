"""Hosting a swarm: `serve` checks the address, listens and runs a `Service` until a
signal; `run_service` is what ``timmy serve`` calls."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from timmy.engine.protocol import MAX_LINE
from timmy.errors import ConfigError
from timmy.plugins import import_plugins
from timmy.service.server import (
    FIRST_LINE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_HANDSHAKES,
    SEND_TIMEOUT,
    Service,
)
from timmy.service.wire import DEFAULT_HOST, DEFAULT_PORT, url_host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False              # a host name: it may resolve to anything


def check_bind(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless asked for explicitly."""
    if is_loopback(host) or allow_remote:
        return
    raise ConfigError(
        f"refusing to listen on {host}: it is not a loopback address, so anyone who can reach "
        "it could control this swarm with the token, and requests and the token travel "
        "unencrypted",
        hint="keep the default --host 127.0.0.1 (tunnel with `ssh -L 7341:127.0.0.1:7341`), "
             "or pass --allow-remote on a network you trust")


def load_plugins(modules: Iterable[str]) -> list[str]:
    """Import each module (``timmy serve --plugin MODULE``): one that registers clearing
    mechanisms with `timmy.register_mechanism` as it is imported. Returns their names;
    a module that cannot be imported is a `ConfigError` saying why."""
    return import_plugins(modules, hint="name an importable module (on PYTHONPATH, or "
                                        "installed) that calls timmy.register_mechanism(name, fn)")


async def serve(db: str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str,
                allow_remote: bool = False, spawn: bool = True,
                max_connections: int = MAX_CONNECTIONS, send_timeout: float = SEND_TIMEOUT,
                first_line_timeout: float = FIRST_LINE_TIMEOUT,
                max_handshakes: int = MAX_HANDSHAKES,
                on_ready: Callable[[str, Any], None] | None = None,
                stop: asyncio.Event | None = None, mmap_threshold: int | None = None,
                runner_token: str | None = None, plugins: Iterable[str] = (),
                metrics_port: int | None = None,
                on_metrics: Callable[[str], None] | None = None,
                tracer_provider: Any = None,
                **swarm_options: Any) -> None:
    """Host one swarm on ``db`` until SIGINT/SIGTERM (or ``stop``); stops its runners on exit.

    ``plugins``: modules imported before the swarm starts (`load_plugins`), e.g. ones that
    register the clearing mechanism named by ``rule``.

    ``metrics_port`` (if given) serves Prometheus metrics at ``/metrics`` on ``host`` and
    that port (`timmy.service.metrics`); ``on_metrics(url)`` is told where.
    ``tracer_provider`` (an OpenTelemetry one) records one span per task, its auctions as
    children (`timmy.service.tracing`).

    ``token`` allows every op; ``runner_token`` (if given) only joining as a remote runner.

    ``on_ready(url, swarm)`` is called once the endpoint answers. ``mmap_threshold`` is
    only reported, in ``status()["service"]``: `run_service` sets it (`timmy.service.heap`).
    """
    import signal

    import anyio

    from timmy.engine.swarm import AsyncSwarm

    check_bind(host, allow_remote)
    load_plugins(plugins)
    async with AsyncSwarm(db, **swarm_options) as swarm:
        swarm.engine.accepts_remote = True   # runners may dial in: no agents is not stalled
        if spawn:
            await swarm.spawn_all()
        service = Service(swarm, token, max_connections, send_timeout=send_timeout,
                          first_line_timeout=first_line_timeout, max_handshakes=max_handshakes,
                          runner_token=runner_token)
        service.mmap_threshold = mmap_threshold
        endpoint = tracer = None
        if tracer_provider is not None:
            from timmy.service.tracing import TaskTracer

            tracer = TaskTracer(swarm, tracer_provider)
        if metrics_port is not None:
            from timmy.service.metrics import MetricsEndpoint, SwarmMetrics

            endpoint = MetricsEndpoint(SwarmMetrics(swarm, service))
            metrics_url = await endpoint.start(host, metrics_port)
            if on_metrics is not None:
                on_metrics(metrics_url)
        try:
            server = await asyncio.start_server(service.handle, host, port,
                                                limit=MAX_LINE + 1, backlog=256)
        except OSError as exc:
            if endpoint is not None:
                await endpoint.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                              hint="another `timmy serve` may use that port: stop it or pass "
                                   "--port") from exc
        try:
            sockname = server.sockets[0].getsockname()
            if on_ready is not None:
                on_ready(f"tcp://{url_host(sockname[0])}:{sockname[1]}", swarm)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with anyio.create_task_group() as tg:
                    async def on_signal() -> None:
                        async for _ in signals:
                            break
                        tg.cancel_scope.cancel()

                    tg.start_soon(on_signal)
                    if stop is not None:
                        await stop.wait()
                        tg.cancel_scope.cancel()
        finally:
            server.close()
            if endpoint is not None:
                await endpoint.close()
            await service.close()
            if tracer is not None:
                tracer.close()
                with contextlib.suppress(Exception):
                    tracer_provider.shutdown()


def run_service(db: str, **options: Any) -> None:
    """`serve` on a fresh asyncio loop (what ``timmy serve`` calls), with glibc's mmap
    threshold pinned so the service's RSS stays flat for days (`timmy.service.heap`)."""
    import anyio

    from timmy.service.heap import pin_mmap_threshold

    options.setdefault("mmap_threshold", pin_mmap_threshold())
    anyio.run(lambda: serve(db, **options), backend="asyncio")
