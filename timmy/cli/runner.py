"""``timmy runner --connect``: join a swarm service from another machine
(`timmy.service.remote`); registered by `timmy.cli.app`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from timmy.cli.common import CONTEXT_SETTINGS
from timmy.engine.executors import EXECUTORS
from timmy.errors import ConfigError


def runner_token(token: str | None, token_file: Path | None) -> str:
    """--token, else --token-file, else TIMMY_TOKEN."""
    if token:
        click.echo("warning: a token on the command line is visible to every local user (ps); "
                   "use --token-file FILE or TIMMY_TOKEN instead", err=True)
        return token
    if token_file is not None:
        from timmy.service.tokens import read_token

        return read_token(token_file)
    env = os.environ.get("TIMMY_TOKEN")
    if env:
        return env
    raise ConfigError("no token for the swarm service",
                      hint="pass --token, --token-file (the .token file `timmy serve` wrote "
                           "beside its database, copied here with mode 0600) or set "
                           "TIMMY_TOKEN")


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Run one persona here, as a runner of a swarm service elsewhere.")
@click.option("--connect", "url", required=True, envvar="TIMMY_URL", metavar="URL",
              help="The swarm service to join, tcp://HOST:PORT (default: TIMMY_URL).")
@click.option("--token", default=None, metavar="TOKEN",
              help="The service's runner token (its .runner.token file; the admin token "
                   "works too), visible to every local user in `ps`: prefer --token-file or "
                   "TIMMY_TOKEN. Default: --token-file, else TIMMY_TOKEN.")
@click.option("--token-file", default=None, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Read the token from this file (mode 0600, as `timmy serve` writes it).")
@click.option("--persona", required=True, help="The persona to run: an id of the swarm's "
                                               "catalog (the service sends its definition).")
@click.option("--agent-id", default=None, metavar="ID",
              help="The agent to be, e.g. forge-r1 (rejoins as it after a restart). Default: "
                   "the service names it, and it keeps that name across reconnections.")
@click.option("--executor", type=click.Choice(EXECUTORS), default=None,
              help="What to do with a task won. Default: the swarm's executor.")
@click.option("--seed", type=int, default=None,
              help="Seeds the bids and simulated runs. Default: the swarm's seed.")
@click.option("--task-seconds", type=click.FloatRange(0, 3600), default=None,
              help="Mean simulated task duration. Default: the swarm's.")
@click.option("--model", default=None, metavar="NAME",
              help="Ollama model. Default: the one the swarm gives this persona.")
@click.option("--ollama-host", default=None, metavar="URL",
              help="The Ollama server this runner asks. Default: OLLAMA_HOST, else "
                   "http://127.0.0.1:11434 (on this machine).")
@click.option("--max-retries", type=click.IntRange(0), default=None,
              help="Give up (exit code 1) after this many failed attempts in a row to dial "
                   "in. Default: keep trying.")
def runner_cmd(url: str, token: str | None, token_file: Path | None, persona: str,
               agent_id: str | None, executor: str | None, seed: int | None,
               task_seconds: float | None, model: str | None, ollama_host: str | None,
               max_retries: int | None) -> None:
    """Join the swarm service at --connect as one runner of --persona, over the same
    JSON-lines wire protocol a local runner speaks on its pipes.

    The service is the one listener (`timmy serve --host ... --allow-remote` to be
    reachable from another machine); this runner dials in with the token, bids,
    executes what it wins, and when the connection drops dials in again with backoff
    (0.05 s doubling to 2 s) as the same agent while the service re-auctions what it
    held. It exits when the service stops it (`swarm.stop(agent_id)`), on Ctrl-C or
    SIGTERM (what it held is auctioned again), and when the service refuses it (wrong
    token, unknown persona, an agent_id in use by a local runner: exit code 2).
    """
    from timmy.service.remote import Options, run
    from timmy.service.wire import parse_url

    parse_url(url)
    opts = Options(url=url, token=runner_token(token, token_file), persona=persona,
                   agent_id=agent_id, max_retries=max_retries,
                   spec=dict(executor=executor, seed=seed, task_seconds=task_seconds,
                             model=model, ollama_host=ollama_host))
    sys.exit(run(opts))
