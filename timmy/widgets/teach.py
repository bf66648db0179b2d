"""What the desktop page teaches: the "how this works" panel, the tooltips of column headers
and stat cards, and empty states that say what to do; pure strings.
"""

from __future__ import annotations

#: One line per column header and stat card (shown as the browser's tooltip).
TIPS = {
    "task": "the task's number, in the order tasks were posted",
    "description": "what the poster asked for",
    "status": "where the task stands: queued → bidding → assigned → running → completed "
              "(or failed, cancelled, awaiting_approval)",
    "winner": "the agent whose bid won the task's auction",
    "price": "what the winner is paid, in sats, set by the clearing rule",
    "attempt": "how many times the task was assigned (a failed attempt is re-auctioned)",
    "why / reason": "why the winning bid won, or why the task failed or was re-queued",
    "agent": "one persona runner, a real OS process (persona-number)",
    "persona": "the agent's specialty: tasks in its keywords are on-spec for it",
    "holds": "tasks this agent holds now (assigned or running)",
    "won": "auctions this agent won",
    "earned (sats)": "sats paid to this agent for completed tasks",
    "restarts": "times its runner process was replaced after a crash or hang",
    "reliability": "share of its recent tasks that completed (its reputation)",
    "runners": "runner processes alive, and how many hold a task",
    "tasks": "tasks not finished yet, and every state's count",
    "awaiting": "tasks whose winning bid went over max_price or the budget: approve or reject",
    "rate": "tasks completed per second over the last minute",
    "latency": "seconds from post to completed, median and 95th percentile",
    "spend": "sats paid plus held for approval, and what the budget has left",
}

EMPTY_TASKS = "no tasks yet: post a task above (describe it, press Post task)"
EMPTY_FILTERED = "no tasks in this state: pick \"all\" in the status filter"
EMPTY_CHARTS = ("no completed tasks yet: spawn a runner and post a task above; "
                "the charts fill from the stored history and then live")

HOW = """
<details class="timmy-how" style="font-size:13px;margin:4px 0 8px 0">
<summary style="cursor:pointer;font-weight:600">How this works</summary>
<ul style="margin:4px 0;padding-left:18px;line-height:1.5">
<li><b>Task</b>: a piece of work you post ("fix the parser bug"). It waits
<i>queued</i> until an auction finds it an agent.</li>
<li><b>Agents</b> are persona runners (forge, quill, …), each a real process.
Every live agent sees the task and may send one sealed <b>bid</b>: a price in
<b>sats</b> (satoshis, the market's unit of payment) that the others cannot see.</li>
<li><b>On-spec</b>: the task's words match the persona's specialty; on-spec bids
are marked ★ and win over off-spec ones.</li>
<li>The <b>clearing rule</b> picks the winner and the price: by default
(<code>specialist_first</code>) the lowest on-spec bid wins, or the lowest bid when none
is on-spec, and is paid its own price; <code>second_price</code> pays the runner-up's
price instead; each task's "why" names the rule. The winner runs the task and is paid when it
completes; a price over the task's max_price or the budget waits for your approval.</li>
<li><b>Where the numbers come from</b>: the swarm's stored events (the newest
10,000) when the page opens, then the live event stream, redrawn at most four times
a second. A reload reads the same stored events, so it shows the same picture.
Spend and budget come from the swarm's status().</li>
</ul></details>
"""
