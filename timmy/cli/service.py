"""``timmy serve``, ``status``, ``spawn`` and ``post``: the swarm service from a shell
(`timmy.service.host.run_service` and `timmy.Swarm.attach` calls); registered by
`timmy.cli.app`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from timmy.cli.common import (
    CONTEXT_SETTINGS,
    RUN_DB,
    check_db_dir,
    create_option,
    make_console,
    model_option,
    say_executor,
    status_line,
    swarm_options,
    task_timeout_option,
)
from timmy.errors import ConfigError
from timmy.service.server import (
    FIRST_LINE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_HANDSHAKES,
    SEND_TIMEOUT,
)
from timmy.service.wire import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_URL
from timmy.storage.address import db_url, describe_db
from timmy.textsafe import clean, text

_URL_HELP = f"The service's address. Default: TIMMY_URL, else {DEFAULT_URL}."
_TOKEN_HELP = ("The service's token (visible to every local user in `ps`: prefer --token-file "
               "or TIMMY_TOKEN). Default: --token-file, else TIMMY_TOKEN, else the .token file "
               "beside the database given by --db.")
_ARGV_TOKEN = ("warning: a token on the command line is visible to every local user (ps); "
               "use --token-file FILE or TIMMY_TOKEN instead")


def _keep_token_file(ctx: click.Context, _param, value: Path | None) -> Path | None:
    if value is not None:
        ctx.meta["timmy.token_file"] = value
    return value


def _token_file_option(help: str):
    """``--token-file FILE``, kept in the click context (the commands' signatures stay)."""
    return click.option("--token-file", default=None, metavar="FILE", expose_value=False,
                        type=click.Path(dir_okay=False, path_type=Path),
                        callback=_keep_token_file, is_eager=True, help=help)


def _token_not_in_argv(token: str | None) -> str | None:
    """--token (with a warning: ps shows it), else --token-file, else TIMMY_TOKEN, else None."""
    if token is not None:
        click.echo(_ARGV_TOKEN, err=True)
        return token
    path = click.get_current_context().meta.get("timmy.token_file")
    if path is not None:
        from timmy.service.tokens import read_token

        return read_token(path)
    return os.environ.get("TIMMY_TOKEN") or None


def _otel_provider():
    try:
        from timmy.service.tracing import default_provider

        return default_provider()
    except ImportError as exc:
        raise ConfigError("--otel needs opentelemetry-sdk, which is not installed",
                          hint="pip install 'timmy[otel]'") from exc


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Host one swarm as a service that dashboards and notebooks attach to.")
@click.option("--db", default=RUN_DB, show_default=True, metavar="URL",
              help="SQLAlchemy URL or SQLite path of the swarm's database.")
@create_option
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to listen on; a non-loopback one needs --allow-remote.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free port, printed on start).")
@click.option("--token", default=None, metavar="TOKEN",
              help="Use this token instead of the one stored beside the database (made and "
                   "printed on first start, mode 0600). Visible to every local user in `ps`: "
                   "prefer --token-file or TIMMY_TOKEN.")
@_token_file_option("Use the token in this file (mode 0600). Default: TIMMY_TOKEN, else the "
                    "one stored beside the database.")
@click.option("--allow-remote", is_flag=True,
              help="Allow a non-loopback --host: anyone who reaches it with the token controls "
                   "the swarm, and the traffic is not encrypted.")
@click.option("--spawn/--no-spawn", default=True, show_default=True,
              help="Start one runner per persona on start.")
@swarm_options
@click.option("--personas", "personas_file", default=None, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Use the personas of this TOML/JSON file instead of the built-ins.")
@click.option("--max-connections", default=MAX_CONNECTIONS, show_default=True,
              type=click.IntRange(1, 10_000),
              help="Authenticated connections (clients, runners) served at once.")
@click.option("--max-handshakes", default=MAX_HANDSHAKES, show_default=True,
              type=click.IntRange(1, 10_000),
              help="Connections at once that have not yet sent a request with the token; "
                   "past it the oldest is closed. Apart from --max-connections.")
@click.option("--send-timeout", default=SEND_TIMEOUT, show_default=True,
              type=click.FloatRange(min=0.01), metavar="SECONDS",
              help="Drop a client (a dashboard, a subscriber) that reads nothing for this long "
                   "while the service has events for it, instead of buffering without end.")
@click.option("--first-line-timeout", "--handshake-timeout", "first_line_timeout",
              default=FIRST_LINE_TIMEOUT, show_default=True,
              type=click.FloatRange(min=0.01), metavar="SECONDS",
              help="Close a connection that sends no request with the token this long after "
                   "connecting, whatever else it sends (one deadline for the handshake).")
@click.option("--max-restarts", default=5, show_default=True, type=click.IntRange(1),
              help="Restarts of one runner in any 60 s before it is marked failed (the guard "
                   "against a runner that cannot start; a chaos soak raises it).")
@click.option("--max-queued", default=100_000, show_default=True, type=click.IntRange(1),
              help="Unfinished tasks the swarm holds; past it a post is refused (QueueFull) "
                   "instead of memory growing without end.")
@click.option("--hello-timeout", default=15.0, show_default=True,
              type=click.FloatRange(min=0.01), metavar="SECONDS",
              help="Cut off a restarted or remote runner that says no hello for this long "
                   "(checked every 5 s); it is restarted or dials in again.")
@click.option("--budget", default=None, type=int, metavar="SATS",
              help="Sats the swarm may spend (paid + held) before an auction's winner waits "
                   "for `timmy approve ID` / `timmy reject ID` (see docs/guide.md).")
@click.option("--ping-interval", default=5.0, show_default=True,
              type=click.FloatRange(0.01, 3600), metavar="SECONDS",
              help="Seconds between pings to each runner.")
@click.option("--otel", is_flag=True,
              help="Record OpenTelemetry traces: one span per task, its auctions as children "
                   "(OTLP when opentelemetry-exporter-otlp is installed, else JSON on stderr; "
                   "extra `otel`).")
@click.option("--metrics-port", default=None, type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port, "
                   "printed on start; needs prometheus-client, extra `metrics`). See "
                   "docs/metrics.md.")
@click.option("--ping-timeout", default=30.0, show_default=True,
              type=click.FloatRange(0.1, 86400), metavar="SECONDS",
              help="Restart a runner silent this long while the service was awake (a stall "
                   "of the service itself, e.g. a suspended laptop, does not count).")
def serve_cmd(db: str, host: str, port: int, token: str | None, allow_remote: bool,
              spawn: bool, seed: int, rule: str, executor: str, task_seconds: float,
              models: tuple[str, ...], personas_file: Path | None, max_connections: int,
              max_handshakes: int,
              send_timeout: float, first_line_timeout: float, max_restarts: int,
              max_queued: int, hello_timeout: float, task_timeout: float | None = None,
              ping_interval: float = 5.0, ping_timeout: float = 30.0,
              plugins: tuple[str, ...] = (), budget: int | None = None,
              create: bool = False, metrics_port: int | None = None,
              otel: bool = False) -> None:
    """Host one swarm until Ctrl-C or SIGTERM; `timmy.Swarm.attach(url)` talks to it.

    ``--plugin MODULE`` imports a module before the swarm starts: one that registers the
    clearing mechanism ``--rule`` names (`timmy.register_mechanism`).

    The control endpoint speaks JSON lines on loopback and needs a token: the
    first start makes one, stores it with mode 0600 beside the database
    (e.g. data/timmy.db.token) and prints it once. Beside it, a runner token
    (data/timmy.db.runner.token, mode 0600) lets `timmy runner --connect` join
    and do nothing else. Stopping the service stops its runners; everything is
    kept in the database.
    """
    from timmy.service.host import check_bind, run_service
    from timmy.service.tokens import load_or_create_token, runner_token_path, token_path
    from timmy.storage.persona_files import load_personas

    check_bind(host, allow_remote)
    if allow_remote and host not in ("127.0.0.1", "::1", "localhost"):
        click.echo(f"warning: listening on {host}: anyone who reaches it with the token "
                   "controls this swarm, and requests travel unencrypted", err=True)
    check_db_dir(db, create)
    url = db_url(db)
    token = _token_not_in_argv(token)
    if token is None:
        path = token_path(url)
        token, created = load_or_create_token(path)
        if created:
            click.echo(f"token (shown once; stored in {path}, mode 0600): {token}")
        else:
            click.echo(f"token: stored in {path}")
    runner_path = runner_token_path(url)
    try:   # what remote runners join with: it allows nothing else
        runner_token, _ = load_or_create_token(runner_path)
        click.echo(f"runner token: {runner_path} (mode 0600; for `timmy runner --connect`, "
                   "which it allows and nothing else)")
    except ConfigError as exc:
        runner_token = None
        click.echo(f"warning: no runner token ({exc.message}): remote runners need the admin "
                   "token", err=True)
    from timmy.engine.supervisor import RestartPolicy

    options: dict = {"restart": RestartPolicy(max_restarts=max_restarts),
                     "max_queued": max_queued, "hello_timeout": hello_timeout,
                     "task_timeout": task_timeout, "ping_interval": ping_interval,
                     "ping_timeout": ping_timeout, "budget": budget}
    if personas_file is not None:
        options["personas"] = load_personas(personas_file)
    if models:
        from timmy.market.personas import PERSONAS

        options["model"] = model_option(models, options.get("personas", PERSONAS))

    def ready(address: str, swarm) -> None:
        n = len(swarm.engine.agents)
        say_executor(swarm)
        click.echo(clean(f"timmy serve: listening on {address} · database {describe_db(url)} · "
                         f"{n} runners · executor {swarm.executor} · Ctrl-C stops"))
        sys.stdout.flush()

    run_service(url, host=host, port=port, token=token, allow_remote=allow_remote,
                spawn=spawn, max_connections=max_connections, send_timeout=send_timeout,
                max_handshakes=max_handshakes,
                first_line_timeout=first_line_timeout, on_ready=ready, seed=seed,
                rule=rule, executor=executor, task_seconds=task_seconds,
                runner_token=runner_token, plugins=plugins, metrics_port=metrics_port,
                on_metrics=lambda u: click.echo(clean(f"timmy serve: metrics at {u}")),
                tracer_provider=_otel_provider() if otel else None,
                **options)
    click.echo("timmy serve: stopped (runners stopped, everything saved)")


def _attach(url: str | None, token: str | None, db: str | None):
    from timmy.service.client import AttachedSwarm, default_token

    url = url or os.environ.get("TIMMY_URL") or DEFAULT_URL
    token = _token_not_in_argv(token)
    if token is None:
        token = default_token(db_url(db) if db else None)
    return AttachedSwarm(url, token)


_url = click.option("--url", default=None, metavar="URL", help=_URL_HELP)


def _token(command):
    """``--token`` and ``--token-file`` (read by `_attach`)."""
    command = _token_file_option("Read the service's token from this file (mode 0600).")(command)
    return click.option("--token", default=None, metavar="TOKEN", help=_TOKEN_HELP)(command)

_db = click.option("--db", default=None, metavar="URL",
                   help=f"The service's database, to find its token file. Default: {RUN_DB}.")


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Show the state of a running swarm service.")
@_url
@_token
@_db
def status_cmd(url: str | None, token: str | None, db: str | None) -> None:
    """Show a running service's tasks by state, runners and agents."""
    from rich.table import Table

    with _attach(url, token, db) as swarm:
        status = swarm.status()
        agents = swarm.agents()
    console = make_console()
    table = Table(title=text(f"{len(agents)} agents at {swarm.url}"), title_justify="left")
    for name, justify in (("agent", "left"), ("status", "left"), ("where", "left"),
                          ("pid", "right"), ("restarts", "right"), ("won", "right"),
                          ("earned", "right")):
        table.add_column(name, justify=justify)
    for a in agents:   # a remote runner: where it connects from, and its pid there
        table.add_row(text(a.agent_id), text(a.status), text(a.peer or "local"),
                      str(a.pid or "-"),
                      str(a.restarts), str(a.tasks_won), str(a.earned_sats))
    console.print(table)
    console.print(text(status_line(status)))
    service = status.get("service", {})
    console.print(f"service: {service.get('connections', 0)} connections, "
                  f"{service.get('runners', 0)} remote runners, "
                  f"{service.get('subscribers', 0)} subscribers, "
                  f"{service.get('requests', 0)} requests, {service.get('refused', 0)} refused")


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Post a task to a running swarm service.")
@click.argument("description")
@click.option("--wait", "wait", is_flag=True, help="Wait for the task to finish; show its result.")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds to wait with --wait.")
@task_timeout_option
@click.option("--verify", "verify", default=None, metavar="SPEC",
              help="What the result must pass to be paid: nonempty, regex:PATTERN, "
                   "json-schema:PATH, command:CMD or a registered verifier's name.")
@click.option("--max-price", "max_price", default=None, type=int, metavar="SATS",
              help="An auction clearing over this waits for `timmy approve ID`.")
@_url
@_token
@_db
def post_cmd(description: str, wait: bool, timeout: float, url: str | None, token: str | None,
             db: str | None, task_timeout: float | None = None,
             verify: str | None = None, max_price: int | None = None) -> None:
    """Post DESCRIPTION as a task; with --wait, print how it ended."""
    with _attach(url, token, db) as swarm:
        task = swarm.post(description, task_timeout=task_timeout, verify=verify,
                          max_price=max_price)
        if not wait:
            click.echo(clean(f"task {task.task_id} {task.status}"))
            return
        task = swarm.wait(task.task_id, timeout)
    price = "-" if task.price_sats is None else f"{task.price_sats} sats"
    click.echo(clean(f"task {task.task_id} {task.status} · winner "
                     f"{task.assigned_agent or '-'} · price {price} · attempts {task.attempts}"))
    note = task.result if task.status == "completed" else task.reason
    if note:
        click.echo(clean(note))


def _decide_cmd(verb: str, task_id: int, url: str | None, token: str | None,
                db: str | None) -> None:
    with _attach(url, token, db) as swarm:
        task = getattr(swarm, verb)(task_id)
    price = "-" if task.price_sats is None else f"{task.price_sats} sats"
    click.echo(clean(f"task {task.task_id} {task.status} · agent {task.assigned_agent or '-'} "
                     f"· price {price}" + (f"\n{task.reason}" if task.reason else "")))


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Approve a task awaiting approval (assign it at its held price).")
@click.argument("task_id", type=int)
@_url
@_token
@_db
def approve_cmd(task_id: int, url: str | None, token: str | None, db: str | None) -> None:
    """Assign TASK_ID, which awaits approval (over its --max-price or the service's
    --budget), to the agent whose bid is held, at that price."""
    _decide_cmd("approve", task_id, url, token, db)


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Reject a task awaiting approval (cancel it).")
@click.argument("task_id", type=int)
@_url
@_token
@_db
def reject_cmd(task_id: int, url: str | None, token: str | None, db: str | None) -> None:
    """Cancel TASK_ID, which awaits approval; its held bid is dropped."""
    _decide_cmd("reject", task_id, url, token, db)


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Start runners in a running swarm service.")
@click.argument("personas", nargs=-1, metavar="[PERSONA]...")
@_url
@_token
@_db
def spawn_cmd(personas: tuple[str, ...], url: str | None, token: str | None,
              db: str | None) -> None:
    """Start one runner per PERSONA (every persona of the swarm when none is named) in the
    service, e.g. after its agents were stopped or failed; waiting tasks then run."""
    with _attach(url, token, db) as swarm:
        agents = swarm.spawn_all(list(personas) if personas else None)
    for a in agents:
        click.echo(clean(f"{a.agent_id} {a.status} · pid {a.pid}"))


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Start the swarm service and the Voilà dashboards (desktop, mobile).")
@click.option("--db", default=RUN_DB, show_default=True, metavar="URL",
              help="SQLAlchemy URL or SQLite path of the swarm's database.")
@create_option
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address both listen on (loopback; a phone on your network needs "
                   "--allow-remote and a --host it can reach).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="The swarm service's port (0: any free port).")
@click.option("--voila-port", default=8866, show_default=True, type=click.IntRange(1, 65535),
              help="Voilà's port.")
@click.option("--notebooks", default="dashboards", show_default=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder with desktop.ipynb and mobile.ipynb.")
@click.option("--allow-remote", is_flag=True,
              help="Allow a non-loopback --host (see `timmy serve --help`).")
@click.option("--stop", "stop", is_flag=True,
              help="Stop the dashboards started for --db from another shell (`make stop`).")
@click.option("--preheat", default=1, show_default=True, type=click.IntRange(0, 8),
              help="Kernels per notebook that Voilà starts ahead of a visit (the page then "
                   "shows sooner); 0 starts a kernel per visit instead.")
@click.option("--metrics-port", default=None, type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port, "
                   "printed on start; needs prometheus-client, extra `metrics`). See "
                   "docs/metrics.md.")
def dashboards_cmd(db: str, host: str, port: int, voila_port: int, notebooks: Path,
                   allow_remote: bool, stop: bool, preheat: int, create: bool = False,
                   metrics_port: int | None = None) -> None:
    """Run the swarm service on --db (spawning the nine personas) and Voilà on loopback,
    print the desktop and mobile URLs, and keep both up until Ctrl-C, SIGTERM or
    `timmy dashboards --stop`. Stopping stops Voilà, then the service and its runners;
    everything is kept in the database.
    """
    from timmy.ops.launcher import Dashboards, state_file, stop_running
    from timmy.service.host import check_bind

    url = db_url(db)
    if stop:
        was = stop_running(url)
        if was is None:
            click.echo("nothing to stop")
        elif was.stale:
            click.echo(clean(f"nothing to stop: {state_file(url)} was stale (none of its "
                             "processes is still running); removed it, signalled nothing"))
        else:
            click.echo(clean(f"stopped the dashboards (service {was.running.service_url}, "
                             f"pid {was.running.launcher_pid})"))
        return
    check_bind(host, allow_remote)
    check_db_dir(db, create)
    serve_args = ("--allow-remote",) if allow_remote else ()
    if metrics_port is not None:
        serve_args += ("--metrics-port", str(metrics_port))
    dash = Dashboards(url, notebooks, host=host, port=port, voila_port=voila_port,
                      serve_args=serve_args, echo=lambda line: click.echo(clean(line)),
                      preheat=preheat)
    click.echo(clean(f"timmy dashboards: starting the swarm service on {describe_db(url)} "
                     "and Voilà…"))
    running = dash.start()
    click.echo("")
    click.echo(clean(f"  desktop  {running.desktop_url}"))
    click.echo(clean(f"  mobile   {running.mobile_url}"))
    click.echo(clean(f"  service  {running.service_url}  (timmy status / timmy post \"...\")"))
    click.echo("")
    click.echo("Ctrl-C (or `make stop` in another shell) stops both.")
    sys.stdout.flush()
    code = dash.wait()
    click.echo("timmy dashboards: stopped (Voilà, then the service; everything saved)")
    sys.exit(code)
