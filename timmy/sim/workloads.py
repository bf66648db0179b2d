"""Seeded task workloads: `demo_workload` (descriptions that exercise every persona's
speciality, plus generic ones no keyword matches), Poisson arrivals and bursts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Task templates per built-in persona; ``{x}`` is filled with a neutral subject.
PHRASES: dict[str, tuple[str, ...]] = {
    "echo": (
        "research how other teams handle {x}",
        "find three independent sources on {x}",
        "summarise the latest thinking on {x}",
        "search the archives for anything about {x}",
        "read the whitepaper on {x} and list the key facts",
    ),
    "mace": (
        "audit the login flow of {x} for security holes",
        "scan {x} for known vulnerability signatures",
        "harden the firewall rules around {x}",
        "investigate a possible intrusion into {x}",
        "patch the outdated libraries in {x}",
    ),
    "helm": (
        "deploy {x} to the staging server",
        "containerise {x} with docker",
        "move {x} onto kubernetes",
        "set up a ci pipeline for {x}",
        "automate the nightly restart of {x} with devops tooling",
    ),
    "seer": (
        "predict next month's usage of {x}",
        "chart the weekly metric trends for {x}",
        "spot the pattern behind the spikes in {x} data",
        "build a report with insight into {x}",
        "graph the adoption curve of {x}",
    ),
    "forge": (
        "fix the bug in the {x} api client",
        "refactor the parser module of {x}",
        "implement retries in the {x} script",
        "add a unit test for the {x} function",
        "merge the feature branch of {x}",
    ),
    "quill": (
        "write a blog post announcing {x}",
        "draft the readme for {x}",
        "proofread the onboarding article about {x}",
        "edit the launch copy for {x}",
        "document how to get started with {x}",
    ),
    "pixel": (
        "draw an illustration for {x}",
        "generate image concepts for {x}",
        "storyboard the onboarding for {x}",
        "create a portrait style artwork for {x}",
        "make the visual identity for {x}",
    ),
    "lyra": (
        "compose a short melody for {x}",
        "pen lyrics for a song about {x}",
        "remix the theme music of {x}",
        "produce an instrumental track for {x}",
        "record a vocal jingle for {x}",
    ),
    "reel": (
        "film a teaser video for {x}",
        "animate the logo of {x}",
        "render a cinematic trailer for {x}",
        "cut a timelapse clip of {x}",
        "turn the launch footage of {x} into a motion piece",
    ),
}

#: Tasks that match no built-in persona's keywords (everyone bids off-spec).
GENERIC: tuple[str, ...] = (
    "book a table for six on friday evening",
    "plan the agenda for the team offsite",
    "order new chairs for the office",
    "translate the welcome message into spanish",
    "organise the quarterly budget meeting",
    "reply to the customer about the late invoice",
    "schedule interviews for next week",
    "arrange travel to the conference in lisbon",
)

#: Neutral subjects for the ``{x}`` slot (none is a persona keyword).
SUBJECTS: tuple[str, ...] = (
    "the billing service", "the mobile app", "the payments gateway", "the user portal",
    "the lightning node", "the price index", "the newsletter", "the checkout flow",
    "the partner dashboard", "the wallet", "the sign-up page", "the help centre",
)

#: Share of generic tasks in a demo workload.
GENERIC_SHARE = 0.1


def demo_workload(n: int, seed: int) -> list[tuple[str, str | None]]:
    """``n`` seeded tasks as ``(description, intended persona id or None for generic)``.

    Tasks written for each of the nine built-in personas (each carries at least one of
    its keywords) are mixed in a fixed proportion with a few generic tasks that match no
    persona's keywords, so the clearing rule has to fall back to the cheapest off-spec
    bid. The same ``(n, seed)`` always gives the same list: draws come from one
    ``random.Random(seed)`` and nothing else.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        from timmy.errors import ConfigError

        raise ConfigError(f"the number of tasks must be a non-negative integer, got {n!r}",
                          hint="ask for e.g. 200 tasks")
    rng = random.Random(seed)
    personas = list(PHRASES)
    out: list[tuple[str, str | None]] = []
    for _ in range(n):
        if rng.random() < GENERIC_SHARE:
            out.append((rng.choice(GENERIC), None))
            continue
        pid = rng.choice(personas)
        text = rng.choice(PHRASES[pid]).format(x=rng.choice(SUBJECTS))
        out.append((text, pid))
    return out


def demo_descriptions(n: int, seed: int) -> list[str]:
    """``n`` seeded task descriptions (see `demo_workload`)."""
    return [text for text, _ in demo_workload(n, seed)]


def keyword_mix(n: int, seed: int, weights: dict[str, float]) -> list[str]:
    """``n`` seeded descriptions with the given share per persona (key "generic": none).

    ``keyword_mix(1000, 1, {"forge": 3, "quill": 1})`` is three code tasks to one writing task.
    """
    from timmy.errors import ConfigError

    unknown = sorted(set(weights) - set(PHRASES) - {"generic"})
    if unknown or not weights or any(w < 0 for w in weights.values()) \
            or sum(weights.values()) <= 0:
        raise ConfigError(
            f"bad keyword mix {weights!r}" + (f": unknown {unknown[0]!r}" if unknown else ""),
            hint=f"weights >= 0, not all 0, for: {', '.join([*PHRASES, 'generic'])}")
    rng = random.Random(seed)
    kinds, w = list(weights), list(weights.values())
    out = []
    for kind in rng.choices(kinds, weights=w, k=n):
        if kind == "generic":
            out.append(rng.choice(GENERIC))
        else:
            out.append(rng.choice(PHRASES[kind]).format(x=rng.choice(SUBJECTS)))
    return out


@dataclass(frozen=True, slots=True)
class Arrival:
    """A task that arrives ``at`` seconds into a simulated run."""

    at: float
    description: str


def poisson_arrivals(n: int, rate: float, seed: int,
                     descriptions: list[str] | None = None) -> list[Arrival]:
    """``n`` tasks arriving as a Poisson process of ``rate`` tasks per second."""
    rng = random.Random(seed)
    texts = descriptions if descriptions is not None else demo_descriptions(n, seed)
    t, out = 0.0, []
    for text in texts[:n]:
        t += rng.expovariate(rate)
        out.append(Arrival(t, text))
    return out


def bursts(n: int, seed: int, size: int = 50, every: float = 5.0,
           descriptions: list[str] | None = None) -> list[Arrival]:
    """``n`` tasks in bursts of ``size`` arriving together every ``every`` seconds."""
    texts = descriptions if descriptions is not None else demo_descriptions(n, seed)
    return [Arrival((i // size) * every, text) for i, text in enumerate(texts[:n])]
