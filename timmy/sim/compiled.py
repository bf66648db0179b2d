"""The simulator's compiled engine: the live rules for tasks posted one at a time, restated
over arrays in numba, step by step and float for float, so it picks the same winners, prices
and bids as `timmy.sim.simulator.Simulator` (tests compare the two), hundreds of times faster.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from timmy.engine.executors import OFF_SPEC_SUCCESS, ON_SPEC_SUCCESS
from timmy.errors import ConfigError
from timmy.market.bidding import (
    MAX_BID,
    MIN_BID,
    MIN_OUTCOMES,
    OFF_SPEC_FACTOR,
    PROVEN_AFTER,
    STREAM_BID,
    STREAM_EXEC,
    text_key,
)
from timmy.market.lifecycle import (
    AGENT_JOINED,
    AUCTION_CLOSED,
    AUCTION_OPENED,
    COMPLETED,
    FAILED,
    TASK_ASSIGNED,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_POSTED,
    TASK_REQUEUED,
    Action,
    after_failure,
    spent_action,
)

CHUNK = 100_000   # tasks per kernel call: bounds the memory a long streamed run holds
# the rules the kernel clears (first_price is lowest by another name); any other mechanism
# runs on the Python engine (`timmy.sim.simulator.COMPILED_RULES` lists these names)
RULE_CODES = {"specialist_first": 0, "lowest": 1, "second_price": 2, "first_price": 1}
# event kinds (`timmy.market.lifecycle`'s), in the order `sim.Simulator` writes them; the
# kernel writes their codes (positions here)
EVENT_KINDS = (AGENT_JOINED, TASK_POSTED, AUCTION_OPENED, AUCTION_CLOSED, TASK_ASSIGNED,
               TASK_COMPLETED, TASK_REQUEUED, TASK_FAILED)
(_POSTED, _OPENED, _CLOSED, _ASSIGNED, _COMPLETED, _REQUEUED, _FAILED) = (
    EVENT_KINDS.index(k) for k in (TASK_POSTED, AUCTION_OPENED, AUCTION_CLOSED, TASK_ASSIGNED,
                                   TASK_COMPLETED, TASK_REQUEUED, TASK_FAILED))
# a finished task's status, by the kernel's code
END_STATES = (COMPLETED, FAILED)
_FAIL = int(Action.FAIL)


def failure_actions(max_attempts: int) -> np.ndarray:
    """`lifecycle.spent_action` for attempts 1, 2, ... up to the first that fails the task,
    as the kernel's table: what becomes of a task whose attempt n failed is
    ``actions[n - 1]`` (numba cannot call the Python rule, so it looks it up)."""
    top = max(max_attempts, 1)
    actions = np.array([int(spent_action(n, max_attempts)) for n in range(1, top + 1)],
                       np.int64)
    if actions[-1] != _FAIL:
        raise ValueError(f"the lifecycle lets a task fail more than {max_attempts} times")
    return actions

_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0


@njit(inline="always", cache=True)
def _mix(z):
    z = z + _G
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(inline="always", cache=True)
def _key(seed, stream, agent_key, task_id, attempt):
    z = _mix(seed ^ stream)
    z = _mix(z ^ agent_key)
    z = _mix(z ^ np.uint64(task_id))
    return _mix(z ^ np.uint64(attempt))


@njit(inline="always", cache=True)
def _random(key, n):
    return float(_mix(key ^ _mix(np.uint64(n))) >> _S11) * _INV53


@njit(cache=True)
def run_sequential(desc_idx, on_spec, kw_start, kw_ids, agent_persona, agent_key, agent_rank,
                   base, jitter, auctions, wins, won_ok, won_failed, kw_success,
                   seed, stream_bid, stream_exec, rule, actions, task_seconds,
                   first_task_id, first_event_id, now,
                   t_status, t_agent, t_price, t_attempts, t_created, t_assigned, t_completed,
                   b_task, b_attempt, b_auction, b_agent, b_sats, b_on_spec, b_won, b_time,
                   e_id, e_kind, e_task, e_agent, e_time):
    """Post each task when the previous one has finished; fill the output arrays.

    Learned counters (``auctions`` ... ``kw_success``) are updated in place, so a long
    run can be fed in chunks. ``actions``: `failure_actions`, what a failed attempt
    leads to. Returns (bids written, events written, the clock).
    """
    n_agents = agent_persona.shape[0]
    n_personas = base.shape[0]
    sats = np.empty(n_agents, np.int64)
    spec = np.empty(n_agents, np.bool_)
    nb = 0
    ne = 0
    event_id = first_event_id
    for t in range(desc_idx.shape[0]):
        tid = first_task_id + t
        d = desc_idx[t]
        t_created[t] = now
        e_id[ne], e_kind[ne], e_task[ne], e_agent[ne], e_time[ne] = event_id, _POSTED, tid, -1, now
        ne += 1
        event_id += 1
        attempt = 0
        while True:
            attempt += 1
            auction_id = event_id
            e_id[ne], e_kind[ne], e_task[ne], e_agent[ne], e_time[ne] = (
                event_id, _OPENED, tid, -1, now)
            ne += 1
            event_id += 1
            for a in range(n_agents):
                p = agent_persona[a]
                row = d * n_personas + p
                k0, k1 = kw_start[row], kw_start[row + 1]
                key = _key(seed, stream_bid, agent_key[a], tid, attempt)
                j = int(_random(key, 1) * (jitter[p] + 1))
                if on_spec[d, p]:
                    raw = max(MIN_BID, base[p] - j)
                else:
                    raw = min(MAX_BID, int(np.floor(OFF_SPEC_FACTOR * base[p])) + j)
                if auctions[a] >= MIN_OUTCOMES:
                    m = 1.0
                    rate = wins[a] / auctions[a]
                    if rate > 0.8:
                        m *= 1.15
                    elif rate < 0.2:
                        m *= 0.85
                    done = won_ok[a] + won_failed[a]
                    if done >= MIN_OUTCOMES and won_ok[a] / done < 0.5:
                        m *= 1.2
                    for k in range(k0, k1):
                        if kw_success[a, kw_ids[k]] >= PROVEN_AFTER:
                            m *= 0.9
                            break
                    if m != 1.0:
                        raw = round(raw * m)
                sats[a] = min(MAX_BID, max(MIN_BID, raw))
                spec[a] = on_spec[d, p]
            # clear: the best bid by (sats, agent_id) in the pool; ties to the lower agent_id
            any_spec = False
            for a in range(n_agents):
                any_spec = any_spec or spec[a]
            pool_spec = any_spec and rule != 1
            best = -1
            for a in range(n_agents):
                if pool_spec and not spec[a]:
                    continue
                if best < 0 or sats[a] < sats[best] or (
                        sats[a] == sats[best] and agent_rank[a] < agent_rank[best]):
                    best = a
            price = sats[best]
            if rule == 2:
                other = -1
                for a in range(n_agents):
                    if a == best or (pool_spec and not spec[a]):
                        continue
                    if other < 0 or sats[a] < sats[other]:
                        other = a
                if other < 0:
                    for a in range(n_agents):
                        if a != best and (other < 0 or sats[a] < sats[other]):
                            other = a
                if other >= 0:
                    price = max(sats[best], sats[other])
            for a in range(n_agents):
                b_task[nb], b_attempt[nb], b_auction[nb], b_agent[nb] = tid, attempt, auction_id, a
                b_sats[nb], b_on_spec[nb], b_won[nb], b_time[nb] = sats[a], spec[a], a == best, now
                nb += 1
                auctions[a] += 1
                if a == best:
                    wins[a] += 1
            for kind in (_CLOSED, _ASSIGNED):
                e_id[ne], e_kind[ne], e_task[ne], e_agent[ne], e_time[ne] = (
                    event_id, kind, tid, best, now)
                ne += 1
                event_id += 1
            t_agent[t], t_price[t], t_attempts[t], t_assigned[t] = best, price, attempt, now
            # execute: the seeded plan of executors.simulated_plan
            p = agent_persona[best]
            xkey = _key(seed, stream_exec, agent_key[best], tid, attempt)
            ok = _random(xkey, 1) < (ON_SPEC_SUCCESS if spec[best] else OFF_SPEC_SUCCESS)
            if task_seconds > 0:
                now += min(5 * task_seconds, -task_seconds * np.log1p(-_random(xkey, 2)))
            row = d * n_personas + p
            if ok:
                won_ok[best] += 1
                for k in range(kw_start[row], kw_start[row + 1]):
                    kw_success[best, kw_ids[k]] += 1
            else:
                won_failed[best] += 1
            if ok:
                kind, who = _COMPLETED, best
            elif actions[attempt - 1] == _FAIL:
                kind, who = _FAILED, best
            else:
                kind, who = _REQUEUED, -1
            e_id[ne], e_kind[ne], e_task[ne], e_agent[ne], e_time[ne] = (
                event_id, kind, tid, who, now)
            ne += 1
            event_id += 1
            if kind != _REQUEUED:
                t_status[t] = 0 if ok else 1
                t_completed[t] = now
                break
    return nb, ne, now


def _arrays(descriptions, catalog, agent_ids):
    """Descriptions matched once each; personas and agents as arrays for the kernel."""
    personas = list(catalog.values())
    vocab: dict[str, int] = {}   # matched keyword -> column of kw_success
    index: dict[str, int] = {}
    desc_idx = np.empty(len(descriptions), np.int64)
    unique: list[str] = []
    for i, text in enumerate(descriptions):
        j = index.get(text)
        if j is None:
            j = index[text] = len(unique)
            unique.append(text)
        desc_idx[i] = j
    on_spec = np.zeros((len(unique), len(personas)), np.bool_)
    kw_start = np.zeros(len(unique) * len(personas) + 1, np.int64)
    kw_list: list[int] = []
    for d, text in enumerate(unique):
        for p, persona in enumerate(personas):
            matched = persona.matched_keywords(text)
            on_spec[d, p] = bool(matched)
            kw_list.extend(vocab.setdefault(k, len(vocab)) for k in matched)
            kw_start[d * len(personas) + p + 1] = len(kw_list)
    pos = {p.id: i for i, p in enumerate(personas)}
    agent_persona = np.array([pos[a.rsplit("-", 1)[0]] for a in agent_ids], np.int64)
    rank = {a: r for r, a in enumerate(sorted(agent_ids))}
    return dict(
        unique=unique, desc_idx=desc_idx, on_spec=on_spec, kw_start=kw_start,
        kw_ids=np.array(kw_list, np.int64), vocab=len(vocab), agent_persona=agent_persona,
        agent_key=np.array([text_key(a) for a in agent_ids], np.uint64),
        agent_rank=np.array([rank[a] for a in agent_ids], np.int64),
        base=np.array([p.bid_base for p in personas], np.int64),
        jitter=np.array([p.bid_jitter for p in personas], np.int64),
    )


def simulate_sequential(descriptions, *, catalog, agent_ids, seed, rule, task_seconds,
                        max_attempts, sink, chunk: int | None = None, progress=None) -> None:
    """Run ``descriptions`` one at a time through the compiled rules, in chunks.

    ``sink(name, columns)`` receives each chunk's rows per table (dict of arrays/lists),
    so a long run can stream to Parquet with flat memory.

    It covers the sequential mode only (one task in flight, all runners idle at each
    auction) and the "adaptive" bidding strategy only (`ConfigError` for a persona of
    another: `timmy.market.strategies`); arrivals on a clock stay in the Python engine.
    """
    others = sorted({catalog[a.rsplit("-", 1)[0]].strategy for a in agent_ids} - {"adaptive"})
    if others:   # never silently different: the other strategies are the python engine's
        raise ConfigError(f"the compiled engine bids with the adaptive strategy only, not "
                          f"{', '.join(others)}", hint='use engine="python" (or "auto")')
    chunk = chunk or CHUNK
    actions = failure_actions(max_attempts)
    arr = _arrays(descriptions, catalog, agent_ids)
    n_agents = len(agent_ids)
    auctions = np.zeros(n_agents, np.int64)
    wins = np.zeros(n_agents, np.int64)
    won_ok = np.zeros(n_agents, np.int64)
    won_failed = np.zeros(n_agents, np.int64)
    earned = np.zeros(n_agents, np.int64)
    kw_success = np.zeros((n_agents, max(arr["vocab"], 1)), np.int64)
    import pyarrow as pa

    names = pa.array(agent_ids, pa.string())
    unique = pa.array(arr["unique"], pa.string())
    sink("events", {"event_id": np.arange(1, n_agents + 1), "ts": np.zeros(n_agents),
                    "kind": ["agent_joined"] * n_agents, "task_id": [None] * n_agents,
                    "agent_id": list(agent_ids), "data": ["{}"] * n_agents})
    now, event_id, bid_id, entry_id = 0.0, n_agents + 1, 1, 1
    seed_u = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    for lo in range(0, len(descriptions), chunk):
        idx = arr["desc_idx"][lo:lo + chunk]
        n = len(idx)
        cap_b = n * len(actions) * n_agents
        cap_e = n * (1 + 4 * len(actions))
        t = {k: np.zeros(n, dt) for k, dt in (
            ("status", np.int8), ("agent", np.int64), ("price", np.int64),
            ("attempts", np.int64), ("created", np.float64), ("assigned", np.float64),
            ("completed", np.float64))}
        b = {k: np.empty(cap_b, dt) for k, dt in (
            ("task", np.int64), ("attempt", np.int64), ("auction", np.int64),
            ("agent", np.int64), ("sats", np.int64), ("on_spec", np.bool_), ("won", np.bool_),
            ("time", np.float64))}
        e = {k: np.empty(cap_e, dt) for k, dt in (
            ("id", np.int64), ("kind", np.int8), ("task", np.int64), ("agent", np.int64),
            ("time", np.float64))}
        nb, ne, now = run_sequential(
            idx, arr["on_spec"], arr["kw_start"], arr["kw_ids"], arr["agent_persona"],
            arr["agent_key"], arr["agent_rank"], arr["base"], arr["jitter"],
            auctions, wins, won_ok, won_failed, kw_success, seed_u, np.uint64(STREAM_BID),
            np.uint64(STREAM_EXEC), RULE_CODES[rule], actions, float(task_seconds),
            lo + 1, event_id, now,
            t["status"], t["agent"], t["price"], t["attempts"], t["created"], t["assigned"],
            t["completed"], b["task"], b["attempt"], b["auction"], b["agent"], b["sats"],
            b["on_spec"], b["won"], b["time"], e["id"], e["kind"], e["task"], e["agent"],
            e["time"])
        event_id += ne
        entry_id += _emit_chunk(sink, lo, idx, t, {k: v[:nb] for k, v in b.items()},
                                {k: v[:ne] for k, v in e.items()}, names, unique, arr, rule,
                                bid_id, earned, max_attempts, entry_id)
        bid_id += nb
        if progress is not None:
            progress.update(n)
    sink("agents", {
        "agent_id": list(agent_ids), "persona": [a.rsplit("-", 1)[0] for a in agent_ids],
        "name": [catalog[a.rsplit("-", 1)[0]].name for a in agent_ids],
        "pid": [None] * n_agents, "status": ["stopped"] * n_agents,
        "restarts": np.zeros(n_agents, np.int64), "tasks_won": wins, "earned_sats": earned,
        "joined_at": np.zeros(n_agents)})


def _repeat(pa, value, n: int):
    return pa.array([value]).take(pa.array(np.zeros(n, np.int64)))


def _emit_chunk(sink, lo, idx, t, b, e, names, unique, arr, rule, bid_id, earned,
                max_attempts, entry_id: int = 1) -> int:
    """Turn one chunk's arrays into rows: Arrow takes and joins, Python only for failures.
    Returns how many ledger rows it wrote (one per completed task: the compiled engine
    does not verify, so none is ``verified``; tasks finish in order, so the ledger's
    order is the Python engine's)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(idx)
    ok = t["status"] == 0
    agents = names.take(pa.array(t["agent"]))
    texts = unique.take(pa.array(idx))
    np.add.at(earned, t["agent"][ok], t["price"][ok])
    result = pc.binary_join_element_wise(agents, pc.utf8_slice_codeunits(texts, 0, 200),
                                         " did: ")
    reason = pa.nulls(n, pa.string())
    failed = np.flatnonzero(~ok)
    if len(failed):
        spec = arr["on_spec"][idx[failed], arr["agent_persona"][t["agent"][failed]]]
        who = agents.take(pa.array(failed)).to_pylist()
        tries = t["attempts"][failed]
        what = [f"simulated failure ({'on' if s else 'off'}-spec task)" for s in spec]
        mask = pa.array(~ok)
        result = pc.replace_with_mask(result, mask, pa.array(what))
        reason = pc.replace_with_mask(reason, mask, pa.array([
            after_failure(int(k), max_attempts, a, w).reason
            for a, w, k in zip(who, what, tries, strict=True)]))
    sink("tasks", {
        "task_id": np.arange(lo + 1, lo + n + 1), "description": texts,
        "status": pa.array(END_STATES).take(pa.array(t["status"])),
        "assigned_agent": agents, "price_sats": t["price"], "attempts": t["attempts"],
        "result": result, "reason": reason, "created_at": t["created"],
        "assigned_at": t["assigned"], "completed_at": t["completed"]})
    nb = len(b["task"])
    sink("bids", {
        "bid_id": np.arange(bid_id, bid_id + nb), "task_id": b["task"],
        "attempt": b["attempt"], "auction_id": b["auction"],
        "agent_id": names.take(pa.array(b["agent"])), "sats": b["sats"],
        "on_spec": b["on_spec"], "won": b["won"], "rule": _repeat(pa, rule, nb),
        "created_at": b["time"]})
    ne = len(e["id"])
    sink("events", {
        "event_id": e["id"], "ts": e["time"],
        "kind": pa.array(EVENT_KINDS).take(pa.array(e["kind"])), "task_id": e["task"],
        "agent_id": names.take(pa.array(e["agent"], mask=e["agent"] < 0)),
        "data": _repeat(pa, "{}", ne)})
    paid = np.flatnonzero(ok)
    sink("ledger", {
        "entry_id": np.arange(entry_id, entry_id + len(paid)), "task_id": paid + lo + 1,
        "attempt": t["attempts"][paid], "agent_id": agents.take(pa.array(paid)),
        "sats": t["price"][paid], "verified": np.zeros(len(paid), np.bool_),
        "created_at": t["completed"][paid]})
    return len(paid)
