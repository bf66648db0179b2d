"""Golden values: what must not change when the package is reorganised (issue 13, point 8).

Every expected value here is a literal computed once from the code as it was before the
move. The other tests check behaviour (on-spec bids are lower, draws are uniform...); these
check the exact numbers, so that a refactor cannot silently change every seeded bid (and
so break replays of old exports) with all tests green. If one of these fails, behaviour
changed: do not update the literal unless the change is meant, and then say so.

The wire protocol's golden values are in test_golden_protocol.py.
"""

from __future__ import annotations

import hashlib
import json

import pytest

import timmy
from timmy.errors import PersonaError
from timmy.market.bidding import (
    MAX_BID,
    MIN_BID,
    MIN_OUTCOMES,
    OFF_SPEC_FACTOR,
    PROVEN_AFTER,
    STREAM_BID,
    STREAM_EXEC,
    BidStats,
    KeyedRandom,
    bid_range,
    bid_rng,
    compute_bid,
    draw_key,
    quote,
    splitmix64,
    text_key,
)
from timmy.market.personas import MAX_PERSONA_BYTES, PERSONAS, persona_from_dict
from timmy.sim.simulator import STREAM_CRASH, simulate
from timmy.sim.workloads import demo_descriptions

MASK = 2**64 - 1


# -- the keyed random draws ------------------------------------------------------------


@pytest.mark.parametrize(("z", "expected"), [
    (0, 16294208416658607535),
    (1, 10451216379200822465),
    (2, 10905525725756348110),
    (0x9E3779B97F4A7C15, 7960286522194355700),
    (2**63, 5196802822362493915),
    (MASK, 16490336266968443936),
    (12345678901234567890, 17967625711492519656),
])
def test_splitmix64(z, expected):
    assert splitmix64(z) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("", 13020603013274838756),
    ("a", 3405396810240292928),
    ("bid", 4404590842395075990),
    ("exec", 7887322879056676115),
    ("crash", 9915595718091931255),
    ("forge-1", 10223457528287802356),
    ("héllo wörld", 1394302091215309163),
    ("日本語", 5222810888430230004),
    ("🦀", 2025720227913271357),
])
def test_text_key(text, expected):
    assert text_key(text) == expected


def test_stream_keys():
    assert (STREAM_BID, STREAM_EXEC, STREAM_CRASH) == (
        4404590842395075990, 7887322879056676115, 9915595718091931255)


# key -> (first four bits(), first three random(), first six randint(0, 20))
KEYED = {
    0: ([6791897765849424158, 7235116703822611636, 13604808898340030615,
         11553561497916274123],
        [0.36818951565166946, 0.3922164624235318, 0.7375181681915192],
        [7, 8, 15, 13, 20, 14]),
    1: ([16860738450190168606, 16171810823986729605, 17027085370592858547,
         13382970043324668455],
        [0.9140224628703029, 0.8766756214195504, 0.9230401474946464],
        [19, 18, 19, 15, 18, 4]),
    MASK: ([11917333196513764506, 18160513901656682925, 4722581856061867462,
            8962554365876074115],
           [0.6460399270946922, 0.984483431281469, 0.25601167540414504],
           [13, 20, 5, 10, 14, 4]),
    42: ([9129838320742759465, 2139811525164838579, 4875857236239627170,
          10247000711120590919],
         [0.4949295270895354, 0.11599941521466184, 0.2643207504130085],
         [10, 2, 5, 11, 16, 3]),
}


@pytest.mark.parametrize("key", list(KEYED))
def test_keyed_random_draws(key):
    bits, floats, ints = KEYED[key]
    rng = KeyedRandom(key)
    assert [rng.bits() for _ in bits] == bits
    rng = KeyedRandom(key)
    assert [rng.random() for _ in floats] == floats
    rng = KeyedRandom(key)
    assert [rng.randint(0, 20) for _ in ints] == ints


def test_keyed_random_counter():
    """The n-th draw is mix(key, n), counting from 1; every method advances it by one."""
    key = 42
    bits = KEYED[key][0]
    assert bits == [splitmix64(key ^ splitmix64(n)) for n in (1, 2, 3, 4)]
    rng = KeyedRandom(key)
    rng.random()
    rng.randint(0, 20)
    rng.bits()
    assert rng.bits() == bits[3]
    assert KeyedRandom(key | (1 << 64)).bits() == bits[0]      # the key is taken mod 2**64
    assert KeyedRandom(-1).bits() == KEYED[MASK][0][0]
    assert KeyedRandom(key).random() == (bits[0] >> 11) / 2**53


# (seed, agent_id, task_id, attempt) -> (bid key, exec key, first five randint(0, 20))
DRAWS = [
    ((0, "forge-1", 1, 1), 4866364491325872027, 12493160534012343603, [7, 16, 12, 19, 12]),
    ((5, "echo-1", 7, 1), 3017318474471509586, 12289817235116103541, [18, 10, 18, 19, 12]),
    ((5, "echo-1", 7, 2), 5579603657442181658, 7228295764899390099, [9, 17, 19, 9, 20]),
    ((2**40 + 3, "reel-2", 123, 3), 8837440150871597811, 10229273209629526335,
     [17, 4, 7, 5, 4]),
]


@pytest.mark.parametrize(("args", "bid_key", "exec_key", "ints"), DRAWS)
def test_draw_key_and_bid_rng(args, bid_key, exec_key, ints):
    assert draw_key(*args) == bid_key
    assert draw_key(*args, stream=STREAM_EXEC) == exec_key
    rng = bid_rng(*args)
    assert [rng.randint(0, 20) for _ in ints] == ints
    assert bid_rng(*args, stream=STREAM_EXEC).bits() == KeyedRandom(exec_key).bits()


# -- bids ------------------------------------------------------------------------------


def test_bidding_constants():
    assert (MIN_BID, MAX_BID, MIN_OUTCOMES, PROVEN_AFTER, OFF_SPEC_FACTOR) == (
        1, 200, 3, 3, 1.8)


# the built-in catalog: id -> (rate_sats, bid_base, bid_jitter, keyword count,
#                              bid_range on-spec, bid_range off-spec)
CATALOG = {
    "echo": (50, 35, 15, 10, (15, 48), (48, 108)),
    "mace": (75, 55, 20, 10, (27, 76), (76, 164)),
    "helm": (60, 40, 20, 15, (15, 55), (55, 127)),
    "seer": (65, 45, 20, 10, (19, 62), (62, 139)),
    "forge": (55, 38, 17, 15, (16, 52), (52, 117)),
    "quill": (45, 30, 15, 10, (11, 41), (41, 95)),
    "pixel": (80, 60, 20, 14, (31, 83), (83, 177)),
    "lyra": (90, 70, 20, 14, (38, 97), (96, 200)),
    "reel": (100, 80, 20, 10, (46, 110), (110, 200)),
}


def test_builtin_catalog_and_bid_ranges():
    got = {p.id: (p.rate_sats, p.bid_base, p.bid_jitter, len(p.preferred_keywords),
                  bid_range(p, True), bid_range(p, False)) for p in PERSONAS.values()}
    assert got == CATALOG
    assert list(PERSONAS) == list(CATALOG)       # catalog order is spawn order


@pytest.mark.parametrize(("persona", "description", "draw", "sats"), [
    ("forge", "fix the bug in the api client", (0, "forge-1", 1, 1), 32),
    ("forge", "book a table for six on friday evening", (0, "forge-1", 1, 1), 74),
    ("forge", "open a pull request for the parser", (5, "forge-1", 3, 1), 38),
    ("echo", "research how other teams handle the wallet", (5, "echo-1", 7, 1), 21),
    ("echo", "research how other teams handle the wallet", (5, "echo-1", 7, 2), 29),
    ("pixel", "generate image concepts for the wallet", (2**40 + 3, "pixel-2", 123, 3), 54),
    ("pixel", "generate a picture", (2**40 + 3, "pixel-2", 123, 3), 54),
    ("reel", "plan the agenda for the team offsite", (9, "reel-1", 50, 1), 159),
    ("lyra", "compose a short melody", (9, "lyra-1", 50, 1), 69),
    ("mace", "specific security audit", (1, "mace-1", 2, 1), 51),
    ("helm", "specific configuration", (1, "helm-1", 2, 1), 76),    # "ci" is no keyword here
])
def test_compute_bid(persona, description, draw, sats):
    assert compute_bid(PERSONAS[persona], description, bid_rng(*draw)) == sats


STATS = {
    "new": BidStats(auctions=2, wins=2, won_ok=0, won_failed=2),      # too few to learn
    "hot": BidStats(auctions=10, wins=9, won_ok=9),
    "cold": BidStats(auctions=10, wins=1, won_ok=0, won_failed=1),
    "flaky": BidStats(auctions=5, wins=3, won_ok=1, won_failed=2),
    "proven": BidStats(auctions=10, wins=5, won_ok=5, keyword_successes={"bug": 3}),
}


@pytest.mark.parametrize(("stats", "multiplier", "on_spec_sats", "off_spec_sats"), [
    ("new", 1.0, 25, 81),
    ("hot", 1.15, 29, 93),
    ("cold", 0.85, 21, 69),
    ("flaky", 1.2, 30, 97),
    ("proven", 0.9, 22, 81),
])
def test_learned_bids(stats, multiplier, on_spec_sats, off_spec_sats):
    forge, st = PERSONAS["forge"], STATS[stats]
    assert st.multiplier(("bug",)) == multiplier
    on = quote(forge, "fix the bug in the api client", bid_rng(3, "forge-1", 4, 1), st)
    assert (on.sats, on.on_spec, on.keywords) == (on_spec_sats, True, ("api", "bug", "fix"))
    off = quote(forge, "book a table for six on friday evening", bid_rng(3, "forge-1", 4, 1), st)
    assert (off.sats, off.on_spec, off.keywords) == (off_spec_sats, False, ())


@pytest.mark.parametrize(("base", "jitter", "seed", "on_spec", "off_spec", "ranges"), [
    (199, 10, 1, 191, 200, ((145, 200), (153, 200))),   # off-spec clamped to MAX_BID
    (2, 200, 1, 1, 161, ((1, 3), (2, 200))),             # on-spec clamped to MIN_BID
    (2, 200, 7, 1, 200, ((1, 3), (2, 200))),             # a jitter of 200: both clamped
])
def test_bids_at_the_clamps(base, jitter, seed, on_spec, off_spec, ranges):
    p = persona_from_dict({"id": "edge", "role": "Edge", "bid_base": base, "bid_jitter": jitter,
                           "preferred_keywords": ["gold"]})
    assert compute_bid(p, "gold", bid_rng(seed, "edge-1", 1, 1)) == on_spec
    assert compute_bid(p, "silver", bid_rng(seed, "edge-1", 1, 1)) == off_spec
    assert (bid_range(p, True), bid_range(p, False)) == ranges


# -- a seeded 50-task run --------------------------------------------------------------

SIM_SEED, WORK_SEED, N = 7, 13, 50
RULES = ("specialist_first", "lowest", "second_price")


def test_the_golden_workload():
    work = demo_descriptions(N, seed=WORK_SEED)
    assert work[:3] == ["containerise the sign-up page with docker",
                        "chart the weekly metric trends for the payments gateway",
                        "translate the welcome message into spanish"]
    assert hashlib.sha256(json.dumps(work).encode()).hexdigest() == (
        "ebad60682f09ede87aae9d806a0a8fff3a061896afaa037ab1c4b5e67439705e")


# rule -> "winner:price" of tasks 1..50, in order
WINNERS = {
    "specialist_first": """
        helm-1:40 seer-1:27 quill-1:61 echo-1:29 echo-1:32 quill-1:62 pixel-1:35 seer-1:26
        pixel-1:44 mace-1:43 forge-1:22 helm-1:26 reel-1:67 reel-1:60 forge-1:24 helm-1:23
        seer-1:37 mace-1:39 lyra-1:56 echo-1:25 lyra-1:54 forge-1:30 quill-1:14 seer-1:37
        echo-1:28 quill-1:16 helm-1:29 reel-1:68 pixel-1:37 echo-1:24 reel-1:60 mace-1:31
        mace-1:35 echo-1:19 lyra-1:49 lyra-1:56 echo-1:26 helm-1:18 seer-1:27 quill-1:14
        seer-1:22 quill-1:54 mace-1:40 forge-1:20 reel-1:58 quill-1:59 helm-1:28 helm-1:31
        pixel-1:42 mace-1:45
    """,
    "lowest": """
        helm-1:40 seer-1:27 quill-1:61 echo-1:29 echo-1:32 quill-1:62 pixel-1:35 seer-1:26
        pixel-1:44 mace-1:43 forge-1:22 helm-1:26 quill-1:50 echo-1:58 forge-1:24 helm-1:23
        seer-1:37 mace-1:39 lyra-1:42 echo-1:25 lyra-1:54 forge-1:30 quill-1:14 seer-1:37
        echo-1:28 quill-1:16 helm-1:29 echo-1:54 pixel-1:37 echo-1:24 helm-1:61 mace-1:31
        mace-1:35 echo-1:19 quill-1:48 quill-1:55 echo-1:30 helm-1:18 seer-1:27 quill-1:17
        seer-1:22 quill-1:63 mace-1:40 forge-1:20 echo-1:55 quill-1:69 helm-1:28 helm-1:31
        pixel-1:42 mace-1:45
    """,
    "second_price": """
        helm-1:67 seer-1:63 quill-1:68 echo-1:66 echo-1:58 quill-1:64 pixel-1:64 seer-1:56
        pixel-1:61 mace-1:64 forge-1:56 helm-1:46 reel-1:67 reel-1:60 forge-1:51 helm-1:54
        seer-1:52 mace-1:54 lyra-1:56 echo-1:50 lyra-1:59 forge-1:54 quill-1:56 seer-1:46
        echo-1:56 quill-1:64 helm-1:48 reel-1:68 pixel-1:48 echo-1:47 reel-1:60 mace-1:59
        mace-1:55 echo-1:48 lyra-1:49 lyra-1:56 echo-1:50 helm-1:55 seer-1:48 quill-1:58
        seer-1:50 quill-1:59 mace-1:55 forge-1:54 reel-1:58 quill-1:60 helm-1:58 helm-1:56
        pixel-1:47 mace-1:58
    """,
}
# rule -> (tasks that took a second attempt, number of bids, sha256 of every bid as
#          canonical JSON [task_id, attempt, agent_id, sats, on_spec, won], makespan)
RUNS = {
    "specialist_first": ({11: 2, 31: 2, 32: 2}, 477,
                         "397e9f4630e72a3d5be12320e77ad2dc9dd2f82c9f8b3b6ce9051df72ff805c6",
                         2.605232438339437),
    "lowest": ({11: 2, 19: 2, 28: 2, 32: 2}, 486,
               "9e9dc7bb67c24e33fd285ffb40de67903d79694c746f09c8ced23063d41b1b64",
               2.625856603388952),
    # the same bids and winners as specialist_first; only the price differs
    "second_price": ({11: 2, 31: 2, 32: 2}, 477,
                     "397e9f4630e72a3d5be12320e77ad2dc9dd2f82c9f8b3b6ce9051df72ff805c6",
                     2.605232438339437),
}


def _engines() -> list:
    try:
        import numba  # noqa: F401
    except ImportError:
        return ["python", pytest.param("compiled", marks=pytest.mark.skip("numba not installed"))]
    return ["python", "compiled"]


@pytest.mark.parametrize("engine", _engines())
@pytest.mark.parametrize("rule", RULES)
def test_seeded_50_task_run(rule, engine):
    run = simulate(demo_descriptions(N, seed=WORK_SEED), seed=SIM_SEED, rule=rule,
                   task_seconds=0.05, engine=engine)
    tasks, bids = run.tasks, run.bids
    assert list(tasks.task_id) == list(range(1, N + 1))
    assert set(tasks.status) == {"completed"}
    assert [f"{a}:{p}" for a, p in zip(tasks.assigned_agent, tasks.price_sats, strict=True)] \
        == WINNERS[rule].split()
    retried, n_bids, digest, makespan = RUNS[rule]
    assert {int(t): int(a) for t, a in zip(tasks.task_id, tasks.attempts, strict=True)
            if a != 1} == retried
    rows = [[int(b.task_id), int(b.attempt), b.agent_id, int(b.sats), bool(b.on_spec),
             bool(b.won)] for b in bids.itertuples()]
    assert len(rows) == n_bids
    assert hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest() \
        == digest
    assert float(tasks.completed_at.max()) == pytest.approx(makespan, rel=1e-12)


@pytest.mark.timeout(60)
def test_a_live_seeded_run_picks_the_golden_winners(tmp_path):
    """A live swarm (real runner processes, simulated executor) agrees with the literals."""
    work = demo_descriptions(N, seed=WORK_SEED)[:12]
    with timmy.Swarm(f"sqlite:///{tmp_path / 'golden.db'}", seed=SIM_SEED,
                     task_seconds=0) as swarm:
        swarm.spawn_all()
        live = [swarm.wait(swarm.post(d).task_id, timeout=20) for d in work]
    assert [f"{t.assigned_agent}:{t.price_sats}" for t in live] \
        == WINNERS["specialist_first"].split()[:12]
    assert [t.attempts for t in live] == [1] * 10 + [2, 1]


# -- persona validation at its bounds --------------------------------------------------

BASE = {"id": "golden", "role": "Tester", "bid_base": 40, "bid_jitter": 10,
        "preferred_keywords": ["gold"]}
#: the longest description that keeps BASE within MAX_PERSONA_BYTES as JSON
LONGEST_DESCRIPTION = 65_379


@pytest.mark.parametrize(("field", "value", "ok"), [
    ("name", "n" * 128, True),
    ("name", "n" * 129, False),
    ("name", "é" * 128, True),             # characters, not bytes
    ("name", "é" * 129, False),
    ("name", "a\x00b", False),
    ("bid_base", 1, False),                # on-spec bids must stay below off-spec ones
    ("bid_base", 2, True),
    ("bid_base", 199, True),
    ("bid_base", 200, False),
    ("bid_jitter", -1, False),
    ("bid_jitter", 0, True),
    ("bid_jitter", 200, True),
    ("bid_jitter", 201, False),
    ("bid_jitter", True, False),           # a bool is not an integer here
    ("rate_sats", 0, False),
    ("rate_sats", 1, True),
    ("rate_sats", 10_000, True),
    ("rate_sats", 10_001, False),
    ("id", "a", True),
    ("id", "a" + "b" * 31, True),          # 32 characters
    ("id", "a" + "b" * 32, False),
    ("id", "a_9", True),
    ("id", "9a", False),
    ("id", "Ab", False),
    ("preferred_keywords", ["gold"], True),
    ("preferred_keywords", [], False),
    ("description", "d" * LONGEST_DESCRIPTION, True),
    ("description", "d" * (LONGEST_DESCRIPTION + 1), False),
])
def test_persona_bounds(field, value, ok):
    record = {**BASE, field: value}
    if ok:
        persona = persona_from_dict(record)
        got = getattr(persona, field)
        assert (list(got) if field == "preferred_keywords" else got) == value
    else:
        with pytest.raises(PersonaError) as info:
            persona_from_dict(record)
        wrong = "description" if field == "description" else field
        assert repr(wrong) in info.value.message


def test_persona_defaults_and_size_limit():
    assert MAX_PERSONA_BYTES == 65_536
    p = persona_from_dict(BASE)
    assert (p.name, p.description, p.capabilities, p.rate_sats) == ("Golden", "", (), 40)
