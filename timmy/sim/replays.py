"""What-if replay: every recorded auction (live or simulated) re-cleared under another rule
with the engine's own `timmy.market.auction.clear`: who would have won, at what price.
"""

from __future__ import annotations

from pathlib import Path

from timmy.errors import ConfigError, require
from timmy.market.auction import Bid, check_rule, clear


def _bids_table(source):
    """The bids of an export directory, a SimRun, or a DataFrame of bids."""
    pd = require("pandas", "analysis")
    if isinstance(source, pd.DataFrame):
        return source
    if hasattr(source, "bids") and not isinstance(source, str | Path):
        return source.bids
    from timmy.analysis.connection import export_files

    return pd.read_parquet(export_files(source)["bids"])


def _descriptions(source) -> dict[int, str]:
    """task_id -> description when ``source`` has its tasks (an export or a SimRun)."""
    pd = require("pandas", "analysis")
    if isinstance(source, pd.DataFrame):
        return {}
    if hasattr(source, "tasks") and not isinstance(source, str | Path):
        tasks = source.tasks
    else:
        from timmy.analysis.connection import export_files

        tasks = pd.read_parquet(export_files(source)["tasks"], columns=["task_id", "description"])
    return dict(zip(tasks.task_id.astype(int), tasks.description, strict=True))


def replay(source, rule: str):
    """Re-clear every recorded auction of ``source`` under ``rule``; one row per auction.

    Columns: task_id, attempt, auction_id, bids, actual_winner, actual_price,
    actual_on_spec, winner, price, on_spec, changed (another winner or price).

    Every auction in an export keeps all its sealed bids, so the same bids can be
    cleared again. The replay does not re-run what would have followed (other
    learning, other failures): for that, simulate the workload under the other rule
    with `timmy.sim.simulator.simulate`.

    ``rule``: any registered mechanism (`timmy.market.mechanisms`), asked with the task's
    description when ``source`` has its tasks, and every bidder's reliability 1.0. A
    mechanism that fails leaves ``winner`` empty and says why in ``error``.
    """
    pd = require("pandas", "analysis")
    check_rule(rule)
    bids = _bids_table(source)
    texts = _descriptions(source)
    rows = []
    for (auction_id, task_id, attempt, actual_rule), group in bids.groupby(
            ["auction_id", "task_id", "attempt", "rule"], sort=True):
        recorded = [Bid(a, int(s), bool(o)) for a, s, o in
                    zip(group.agent_id, group.sats, group.on_spec, strict=True)]
        won = group[group.won]
        text = texts.get(int(task_id), "")
        try:
            actual = (clear(int(task_id), recorded, actual_rule, description=text)
                      if len(won) else None)
        except ConfigError:   # recorded under a mechanism not registered here
            actual = None
        again = clear(int(task_id), recorded, rule, description=text)
        actual_winner = won.agent_id.iloc[0] if len(won) else None
        rows.append({
            "task_id": int(task_id), "attempt": int(attempt), "auction_id": int(auction_id),
            "bids": len(recorded), "actual_rule": actual_rule,
            "actual_winner": actual_winner,
            # a bidder that was full at the time is not in the record: if the re-clear
            # disagrees with the recorded winner, its own bid is what it was paid
            "actual_price": (None if actual is None else actual.price_sats
                             if actual.winner == actual_winner else int(won.sats.iloc[0])),
            "actual_on_spec": bool(won.on_spec.iloc[0]) if len(won) else None,
            "winner": again.winner, "price": again.price_sats,
            "on_spec": again.winning_bid.on_spec if again.winning_bid else None,
            "why": again.reason, "error": again.error,
        })
    out = pd.DataFrame(rows)
    if not out.empty:
        out["changed"] = (out.winner != out.actual_winner) | (out.price != out.actual_price)
    return out


def replay_summary(source, rules=("specialist_first", "lowest", "second_price")):
    """Per rule: sats paid for the recorded auctions, specialist share, winners changed."""
    pd = require("pandas", "analysis")
    bids = _bids_table(source)
    rows = []
    for rule in rules:
        r = replay(bids, rule)
        decided = r[r.actual_winner.notna()]
        rows.append({
            "rule": rule, "auctions": len(decided),
            "sats_paid": int(decided.price.sum()),
            "actual_sats_paid": int(decided.actual_price.sum()),
            "specialist_share": float(decided.on_spec.mean()) if len(decided) else float("nan"),
            "winners_changed": int((decided.winner != decided.actual_winner).sum()),
        })
    return pd.DataFrame(rows)
