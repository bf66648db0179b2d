"""DuckDB over bid logs: `connect` to an export, a live store or a simulated run (see
`timmy.analysis.connection`), then ask the canned questions (`REPORTS`: each a function of
the connection returning a pandas DataFrame) or your own SQL. duckdb and pandas are imported
on first use (extra ``analysis``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from timmy.analysis.connection import EXPORT_HINT, TABLES, connect, export_files
from timmy.errors import ConfigError, ExportError, require

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

__all__ = ["EXPORT_HINT", "REPORTS", "TABLES", "balances", "bids_per_auction", "connect",
           "earnings_by_persona", "export_files", "latency_percentiles", "price_by_keyword",
           "price_by_spec", "price_over_time", "reauctions_and_failures", "reputation", "title",
           "win_rate_by_persona"]


def _connection(source) -> duckdb.DuckDBPyConnection:
    duckdb = require("duckdb", "analysis")
    return source if isinstance(source, duckdb.DuckDBPyConnection) else connect(source)


def _frame(source, sql: str) -> pd.DataFrame:
    require("pandas", "analysis")
    duckdb = require("duckdb", "analysis")
    try:
        return _connection(source).execute(sql).df()
    except duckdb.Error as exc:     # a value the table's type allows but the query cannot use
        raise ExportError(f"a report query failed on this data: {_first_line(exc)}",
                          hint=f"the tables may come from another program or be edited by "
                               f"hand; export them again; {EXPORT_HINT}") from exc


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n", 1)[0].split())[:300]


# Each bid with its persona (from agents; the agent id's "<persona>-<n>" when unknown).
_BIDS = """(SELECT b.*, coalesce(a.persona, regexp_replace(b.agent_id, '-[0-9]+$', ''))
             AS persona FROM bids b LEFT JOIN agents a USING (agent_id))"""


# -- the canned queries ---------------------------------------------------------------


def win_rate_by_persona(source) -> pd.DataFrame:
    """Win rate by persona: auctions entered, auctions won, and the share won.

    One row per persona that bid: ``auctions_entered`` (distinct auctions any of
    its agents bid in; a re-auctioned task counts once per auction), ``won``
    and ``win_rate`` = won / entered. Most wins first.
    """
    return _frame(source, f"""
        SELECT persona,
               count(DISTINCT auction_id) AS auctions_entered,
               count(*) FILTER (WHERE won) AS won,
               count(*) FILTER (WHERE won) / count(DISTINCT auction_id) AS win_rate
        FROM {_BIDS} GROUP BY persona
        ORDER BY won DESC, persona""")


def earnings_by_persona(source) -> pd.DataFrame:
    """Earnings by persona: completed tasks, sats earned, mean price paid.

    One row per persona with an agent (zero when it completed nothing):
    ``completed`` tasks won and finished, ``sats_earned`` (their prices),
    ``mean_price`` and ``earnings_share`` (of all sats paid). Richest first.
    """
    return _frame(source, """
        WITH done AS (
            SELECT coalesce(a.persona, regexp_replace(t.assigned_agent, '-[0-9]+$', ''))
                   AS persona, t.price_sats
            FROM tasks t LEFT JOIN agents a ON a.agent_id = t.assigned_agent
            WHERE t.status = 'completed'),
        personas AS (SELECT persona FROM agents UNION SELECT persona FROM done)
        SELECT p.persona,
               count(d.price_sats) AS completed,
               coalesce(sum(d.price_sats), 0)::BIGINT AS sats_earned,
               avg(d.price_sats) AS mean_price,
               coalesce(sum(d.price_sats), 0)
                   / nullif(sum(sum(d.price_sats)) OVER (), 0) AS earnings_share
        FROM personas p LEFT JOIN done d USING (persona)
        GROUP BY p.persona
        ORDER BY sats_earned DESC, p.persona""")


def price_by_keyword(source) -> pd.DataFrame:
    """Price by keyword: what tasks mentioning each catalog keyword cost, and who won them.

    One row per matched keyword (``personas``: whose keyword it is), plus
    ``(none)`` for tasks that match no keyword: ``tasks`` that mention it,
    ``completed``, ``mean_price`` and ``median_price`` paid for the completed
    ones, and ``on_spec_share``: the share of their winning bids (every
    auction, re-auctions included) that were on the winner's speciality.
    """
    return _frame(source, """
        WITH tk AS (
            SELECT DISTINCT task_id, keyword FROM task_keywords
            UNION ALL
            SELECT task_id, '(none)' FROM tasks
            WHERE task_id NOT IN (SELECT task_id FROM task_keywords)),
        owners AS (
            SELECT keyword, string_agg(DISTINCT persona, ', ' ORDER BY persona) AS personas
            FROM task_keywords GROUP BY keyword),
        wins AS (
            SELECT task_id, count(*) AS wins, count(*) FILTER (WHERE on_spec) AS on_spec_wins
            FROM bids WHERE won GROUP BY task_id)
        SELECT tk.keyword,
               coalesce(any_value(o.personas), '') AS personas,
               count(*) AS tasks,
               count(*) FILTER (WHERE t.status = 'completed') AS completed,
               avg(t.price_sats) FILTER (WHERE t.status = 'completed') AS mean_price,
               median(t.price_sats) FILTER (WHERE t.status = 'completed') AS median_price,
               sum(w.on_spec_wins) / nullif(sum(w.wins), 0) AS on_spec_share
        FROM tk JOIN tasks t USING (task_id)
             LEFT JOIN owners o USING (keyword)
             LEFT JOIN wins w USING (task_id)
        GROUP BY tk.keyword
        ORDER BY tk.keyword = '(none)', tasks DESC, tk.keyword""")


def price_by_spec(source) -> pd.DataFrame:
    """On- vs off-spec winners: how many, at what price, and how often they delivered.

    One row each for winning bids on and off the winner's speciality: ``wins``
    (auctions won), ``mean_bid`` (what the winners asked), ``completed`` (wins
    whose task the winner finished), ``mean_price`` and ``median_price`` paid
    for those, and ``success_rate`` = completed / decided wins, where a win is
    decided once the task is completed or failed, or a later auction replaced it.
    """
    return _frame(source, """
        WITH last_win AS (
            SELECT task_id, max(auction_id) AS auction_id FROM bids WHERE won GROUP BY task_id),
        w AS (
            SELECT b.on_spec, b.sats, t.price_sats,
                   b.auction_id = l.auction_id AND t.status = 'completed' AS succeeded,
                   b.auction_id < l.auction_id OR t.status IN ('completed', 'failed')
                       AS decided
            FROM bids b JOIN last_win l USING (task_id) JOIN tasks t USING (task_id)
            WHERE b.won)
        SELECT CASE WHEN on_spec THEN 'on-spec' ELSE 'off-spec' END AS spec,
               count(*) AS wins,
               avg(sats) AS mean_bid,
               count(*) FILTER (WHERE succeeded) AS completed,
               avg(price_sats) FILTER (WHERE succeeded) AS mean_price,
               median(price_sats) FILTER (WHERE succeeded) AS median_price,
               count(*) FILTER (WHERE succeeded)
                   / nullif(count(*) FILTER (WHERE decided), 0) AS success_rate
        FROM w GROUP BY on_spec
        ORDER BY on_spec DESC""")


def latency_percentiles(source) -> pd.DataFrame:
    """Latency percentiles (ms): post -> assign, assign -> complete, post -> complete.

    Over completed tasks: ``created_at`` -> ``assigned_at`` (the last
    assignment, so a re-auctioned task's wait includes its failed attempts)
    -> ``completed_at``. One row per stage: ``tasks``, ``p50_ms``, ``p90_ms``,
    ``p99_ms`` (linear interpolation) and ``max_ms``.
    """
    return _frame(source, """
        WITH d AS (
            SELECT created_at, assigned_at, completed_at FROM tasks
            WHERE status = 'completed' AND assigned_at IS NOT NULL
                  AND completed_at IS NOT NULL),
        ms AS (
            SELECT 1 AS ord, (assigned_at - created_at) * 1000 AS ms FROM d
            UNION ALL SELECT 2, (completed_at - assigned_at) * 1000 FROM d
            UNION ALL SELECT 3, (completed_at - created_at) * 1000 FROM d)
        SELECT s.stage,
               count(ms.ms) AS tasks,
               quantile_cont(ms.ms, 0.5) AS p50_ms,
               quantile_cont(ms.ms, 0.9) AS p90_ms,
               quantile_cont(ms.ms, 0.99) AS p99_ms,
               max(ms.ms) AS max_ms
        FROM (VALUES (1, 'post -> assign'), (2, 'assign -> complete'),
                     (3, 'post -> complete')) s(ord, stage)
             LEFT JOIN ms USING (ord)
        GROUP BY s.ord, s.stage ORDER BY s.ord""")


def reauctions_and_failures(source) -> pd.DataFrame:
    """Re-auctions and failures: attempts and auctions per task, outcomes, why tasks failed.

    A long table of task counts (``share`` of all tasks), ``what`` being
    ``attempts`` (tasks by attempts used), ``auctions`` (tasks by auctions
    held, a re-auction without a used attempt included), ``re-auctioned``
    (tasks with more than one auction), ``status`` (tasks by state) and
    ``failure`` (failed tasks by reason, agent ids shown as ``<agent>`` and
    numbers as ``N`` so alike reasons group together).
    """
    return _frame(source, r"""
        WITH auctions AS (
            SELECT t.task_id, count(DISTINCT b.auction_id) AS n
            FROM tasks t LEFT JOIN bids b USING (task_id) GROUP BY t.task_id),
        rows AS (
            SELECT 1 AS ord, 'attempts' AS what, attempts::VARCHAR AS value,
                   attempts AS sort, count(*) AS tasks
            FROM tasks GROUP BY attempts
            UNION ALL
            SELECT 2, 'auctions', n::VARCHAR, n, count(*) FROM auctions GROUP BY n
            UNION ALL
            SELECT 3, 're-auctioned', 'more than one auction', 0, count(*)
            FROM auctions WHERE n > 1
            UNION ALL
            SELECT 4, 'status', status, -count(*), count(*) FROM tasks GROUP BY status
            UNION ALL
            SELECT 5, 'failure', reason, -count(*), count(*) FROM (
                SELECT coalesce(regexp_replace(regexp_replace(reason,
                           '\b[a-z][a-z0-9_]*-[0-9]+\b', '<agent>', 'g'), '[0-9]+', 'N', 'g'),
                           '(no reason)') AS reason
                FROM tasks WHERE status = 'failed')
            GROUP BY reason)
        SELECT what, value, tasks,
               tasks / nullif((SELECT count(*) FROM tasks), 0) AS share
        FROM rows ORDER BY ord, sort, value""")


def bids_per_auction(source) -> pd.DataFrame:
    """Bids per auction: how many auctions drew how many bids.

    One row per bid count: ``bids`` in an auction (``auction_id``), the number
    of ``auctions`` that drew that many, and their ``share`` of all auctions.
    Auctions nobody bid in leave no bid rows and do not appear.
    """
    return _frame(source, """
        WITH per AS (SELECT auction_id, count(*) AS bids FROM bids GROUP BY auction_id)
        SELECT bids, count(*) AS auctions, count(*) / sum(count(*)) OVER () AS share
        FROM per GROUP BY bids ORDER BY bids""")


def price_over_time(source, *, buckets: int = 50, window: int = 5) -> pd.DataFrame:
    """Price over time: the price paid per completed task by time bucket, with a moving average.

    Completion times are cut into ``buckets`` equal spans from the first
    completion to the last. One row per non-empty bucket: ``bucket``,
    ``start_s`` (seconds after the first completion), ``tasks``, ``mean_price``
    and ``moving_avg``: the mean price of the tasks in this bucket and the
    ``window - 1`` before it.
    """
    buckets, window = int(buckets), int(window)
    if buckets < 1 or window < 1:
        raise ConfigError(f"price_over_time needs buckets >= 1 and window >= 1, "
                          f"got {buckets} and {window}", hint="e.g. buckets=50, window=5")
    return _frame(source, f"""
        WITH done AS (
            SELECT completed_at AS t, price_sats FROM tasks
            WHERE status = 'completed' AND completed_at IS NOT NULL
                  AND price_sats IS NOT NULL),
        span AS (SELECT min(t) AS t0, max(t) - min(t) AS width FROM done),
        b AS (
            SELECT CASE WHEN width > 0
                        THEN least(floor((t - t0) / width * {buckets}), {buckets - 1})
                        ELSE 0 END::BIGINT AS bucket,
                   price_sats, width
            FROM done, span)
        SELECT bucket,
               bucket * any_value(width) / {buckets} AS start_s,
               count(*) AS tasks,
               avg(price_sats) AS mean_price,
               sum(sum(price_sats)) OVER w / sum(count(*)) OVER w AS moving_avg
        FROM b GROUP BY bucket
        WINDOW w AS (ORDER BY bucket RANGE BETWEEN {window - 1} PRECEDING AND CURRENT ROW)
        ORDER BY bucket""")


def balances(source) -> pd.DataFrame:
    """Balances by agent: what the ledger paid each agent, in tasks and sats.

    One row per agent the ledger paid (a row per paid task, at the mechanism's clearing
    price, written with the task's completion): ``tasks`` paid, ``sats`` paid in all,
    ``verified`` (tasks whose result passed a verifier), ``mean_sats`` and ``share`` of
    everything paid. Richest first; empty for an export made before the ledger existed.
    """
    return _frame(source, """
        SELECT agent_id,
               coalesce(a.persona, regexp_replace(agent_id, '-[0-9]+$', '')) AS persona,
               count(*) AS tasks,
               sum(l.sats)::BIGINT AS sats,
               count(*) FILTER (WHERE l.verified) AS verified,
               avg(l.sats) AS mean_sats,
               sum(l.sats) / nullif(sum(sum(l.sats)) OVER (), 0) AS share
        FROM ledger l LEFT JOIN agents a USING (agent_id)
        GROUP BY agent_id, a.persona
        ORDER BY sats DESC, agent_id""")


def reputation(source) -> pd.DataFrame:
    """Reputation by agent: verified outcomes, reliability and timeliness.

    One row per agent with a record in the ``reputation`` table (`timmy.market.reputation`):
    ``successes`` (results paid), ``failures`` (results its runner reported failed),
    ``verification_failures``, ``outcomes`` (their sum), ``reliability`` (the Laplace
    estimate (successes + 1) / (outcomes + 2) the ``reputation`` and ``score`` mechanisms
    read), ``on_time`` and ``late`` (results against a task's deadline) and ``timeliness``
    (on_time / (on_time + late), empty with no deadline). Most reliable first.

    A live export or store has the table (``reputation.parquet``). A simulated run (a
    `SimRun`, its ``export`` or ``simulate(out=)``) has ``SimRun.reputation`` as that
    table when its Python engine ran (it has no deadlines: on_time and late are 0); the
    compiled engine keeps no reputation, so there, as in an export made before reputation
    existed, this table is empty.
    """
    return _frame(source, """
        SELECT r.agent_id,
               coalesce(a.persona, regexp_replace(r.agent_id, '-[0-9]+$', '')) AS persona,
               r.successes::BIGINT AS successes, r.failures::BIGINT AS failures,
               r.verification_failures::BIGINT AS verification_failures,
               (r.successes + r.failures + r.verification_failures)::BIGINT AS outcomes,
               (r.successes + 1)::DOUBLE
                   / (r.successes + r.failures + r.verification_failures + 2) AS reliability,
               r.on_time::BIGINT AS on_time, r.late::BIGINT AS late,
               r.on_time::DOUBLE / nullif(r.on_time + r.late, 0) AS timeliness
        FROM reputation r LEFT JOIN agents a USING (agent_id)
        ORDER BY reliability DESC, r.agent_id""")


#: Every canned query by name, in the order ``timmy report`` prints them.
REPORTS: dict[str, Callable[..., pd.DataFrame]] = {
    "win_rate_by_persona": win_rate_by_persona,
    "earnings_by_persona": earnings_by_persona,
    "price_by_keyword": price_by_keyword,
    "price_by_spec": price_by_spec,
    "latency_percentiles": latency_percentiles,
    "reauctions_and_failures": reauctions_and_failures,
    "bids_per_auction": bids_per_auction,
    "price_over_time": price_over_time,
    "balances": balances,
    "reputation": reputation,
}


def title(name: str) -> str:
    """A report's title: the first line of its docstring."""
    return (REPORTS[name].__doc__ or name).strip().splitlines()[0].rstrip(".")
