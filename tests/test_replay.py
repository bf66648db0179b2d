"""What-if replay re-clears recorded auctions with the engine's own clearing rules."""

from __future__ import annotations

import pytest

import timmy
from timmy.errors import ConfigError, ExportError
from timmy.market.auction import Bid, clear
from timmy.sim import replay, simulate
from timmy.sim.workloads import demo_descriptions, keyword_mix


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A real live run's export: 80 tasks through nine runner processes."""
    tmp = tmp_path_factory.mktemp("replay")
    work = demo_descriptions(60, seed=3) + keyword_mix(20, 3, {"generic": 1})
    with timmy.Swarm(f"sqlite:///{tmp / 'x.db'}", seed=3, task_seconds=0) as swarm:
        swarm.spawn_all()
        for d in work:
            swarm.wait(swarm.post(d).task_id, timeout=20)
        swarm.export(tmp / "export")
    return tmp / "export"


def test_replaying_under_the_recorded_rule_changes_nothing(export_dir):
    again = replay(export_dir, "specialist_first")
    assert len(again) > 80
    assert not again.changed.any()
    assert (again.winner == again.actual_winner).all()


def test_replay_under_lowest_gives_generic_work_to_the_cheapest_and_pays_less(export_dir):
    import pandas as pd

    bids = pd.read_parquet(export_dir / "bids.parquet")
    lowest = replay(export_dir, "lowest")
    for row in lowest.itertuples():
        group = bids[bids.auction_id == row.auction_id]
        expected = clear(row.task_id, [Bid(a, s, o) for a, s, o in
                                       zip(group.agent_id, group.sats, group.on_spec,
                                           strict=True)], "lowest")
        assert (row.winner, row.price) == (expected.winner, expected.price_sats)
        assert row.price == group.sats.min()
    assert lowest.price.sum() <= lowest.actual_price.sum()


def test_second_price_pays_at_least_the_first_price(export_dir):
    second = replay(export_dir, "second_price")
    assert (second.winner == second.actual_winner).all()   # same winner as specialist_first
    assert (second.price >= second.actual_price).all()
    assert (second.price > second.actual_price).any()


def test_replay_works_on_a_simulated_run_and_on_its_export(tmp_path):
    run = simulate(demo_descriptions(200, seed=4), seed=4)
    import pandas as pd

    direct = replay(run, "lowest")
    run.export(tmp_path / "sim")
    exported = replay(tmp_path / "sim", "lowest")
    assert len(direct) >= 200
    pd.testing.assert_frame_equal(direct, exported, check_dtype=False)


def test_a_directory_that_is_not_an_export_is_refused_with_a_hint(tmp_path):
    with pytest.raises(ExportError) as info:
        replay(tmp_path, "lowest")
    assert str(tmp_path) in info.value.message and info.value.hint


def test_an_unknown_rule_is_refused(export_dir):
    with pytest.raises(ConfigError):
        replay(export_dir, "cheapest")
