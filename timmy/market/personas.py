"""The persona catalog: who bids, at what base price, on which keywords. The nine built-ins
are facts of the system timmy grows out of ("Timmy Time"); `parse_personas` reads more from
TOML or JSON text (`timmy.load_personas` reads a file).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field, fields
from typing import Any

from timmy.errors import PersonaError
from timmy.market.strategies import canonical

_WORD = re.compile(r"[a-z0-9]+")
#: A persona goes to its runner process as one command-line argument (JSON). Linux refuses
#: an argument over 128 KiB (MAX_ARG_STRLEN) and a whole command line over ARG_MAX, so a
#: persona is kept well under both; a bigger one is refused when it is made.
MAX_PERSONA_BYTES = 64 * 1024
_SPEC_FIELDS = ("id", "name", "role", "description", "capabilities", "rate_sats", "bid_base",
                "bid_jitter", "preferred_keywords", "strategy")
_ID = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def words(text: str) -> list[str]:
    """Lower-case word tokens of ``text``: what keywords are matched against."""
    return _WORD.findall(text.lower())


def _check_size(persona: Persona) -> None:
    """Refuse a persona too big to hand to its runner on the command line."""
    spec = {f: getattr(persona, f) for f in _SPEC_FIELDS
            if f != "strategy" or persona.strategy != "adaptive"}   # as a runner gets it
    size = len(json.dumps(spec, ensure_ascii=False, separators=(",", ":")).encode())
    if size <= MAX_PERSONA_BYTES:
        return
    sizes = {f: len(json.dumps(v, ensure_ascii=False).encode()) for f, v in spec.items()}
    biggest = max(sizes, key=sizes.__getitem__)
    raise PersonaError(
        f"persona {persona.id!r} is {size:,} bytes as JSON, over the {MAX_PERSONA_BYTES:,}-byte "
        f"limit of a persona (it is handed to its runner process on the command line); its "
        f"field {biggest!r} alone is {sizes[biggest]:,} bytes",
        hint=f"shorten its {biggest}: a persona's text is a few paragraphs at most")


@dataclass(frozen=True, slots=True)
class Words:
    """A description split once, to be matched against many personas (`Persona.matched_in`):
    the coordinator judges every runner's bid on a task with one split of its text."""

    tokens: frozenset[str]
    padded: str          # the tokens joined by single spaces, with one at each end

    @classmethod
    def of(cls, text: str) -> Words:
        toks = words(text)
        return cls(frozenset(toks), " " + " ".join(toks) + " ")


@dataclass(frozen=True, slots=True)
class Persona:
    """One kind of agent: its speciality, its price and how it bids."""

    id: str
    name: str
    role: str
    description: str
    capabilities: tuple[str, ...]
    rate_sats: int
    bid_base: int
    bid_jitter: int
    preferred_keywords: tuple[str, ...]
    #: How it bids (`timmy.market.strategies`): "adaptive" (the default), "truthful",
    #: "shade:F", "bandit:G".
    strategy: str = "adaptive"
    # Derived, for word-boundary matching: single words and multi-word phrases.
    _single: frozenset[str] = field(init=False, repr=False, compare=False)
    _phrases: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = [tuple(words(k)) for k in self.preferred_keywords]
        object.__setattr__(self, "_single", frozenset(t[0] for t in tokens if len(t) == 1))
        object.__setattr__(self, "_phrases", tuple(t for t in tokens if len(t) > 1))
        if self.strategy != "adaptive":   # checked and kept in one spelling
            object.__setattr__(self, "strategy", canonical(self.strategy))
        _check_size(self)

    def matched_keywords(self, description: str) -> list[str]:
        """Keywords found in ``description`` on word boundaries ("ci" does not match "specific")."""
        return self.matched_in(Words.of(description))

    def matched_in(self, text: Words) -> list[str]:
        """`matched_keywords` of a description already split (`Words.of`)."""
        found = sorted(self._single & text.tokens)
        if self._phrases:
            found += [" ".join(p) for p in self._phrases
                      if " " + " ".join(p) + " " in text.padded]
        return found

    def is_on_spec(self, description: str) -> bool:
        """True when any preferred keyword occurs in ``description`` as a whole word."""
        return bool(self.matched_keywords(description))


def _p(pid, role, rate, base, jitter, keywords, capabilities, description):
    return Persona(
        id=pid,
        name=pid.capitalize(),
        role=role,
        description=description,
        capabilities=tuple(capabilities.split()),
        rate_sats=rate,
        bid_base=base,
        bid_jitter=jitter,
        preferred_keywords=tuple(shlex.split(keywords)),  # "quoted phrases" stay whole
    )


# The catalog of the system timmy grows out of, one persona a row.
_BUILTIN = (
    _p("echo", "Research Analyst", 50, 35, 15,
       "research find search summarise summarize analyse analyze fact source read",
       "research summarisation fact-checking",
       "Finds sources, reads them and summarises what they say."),
    _p("mace", "Security Sentinel", 75, 55, 20,
       "security threat vulnerability audit monitor harden firewall scan intrusion patch",
       "security auditing monitoring",
       "Audits systems for threats and hardens them."),
    _p("helm", "System Navigator", 60, 40, 20,
       "deploy infrastructure config docker kubernetes server automation pipeline ci cd git "
       "push pull clone devops",
       "devops deployment infrastructure",
       "Deploys, configures and automates infrastructure."),
    _p("seer", "Data Oracle", 65, 45, 20,
       "data analyse analyze predict pattern chart graph report insight metric",
       "analytics forecasting reporting",
       "Finds patterns in data and reports what they mean."),
    _p("forge", "Code Smith", 55, 38, 17,
       'code function bug fix refactor test implement class api script commit branch merge git '
       '"pull request"',
       "coding testing refactoring",
       "Writes, fixes and tests code."),
    _p("quill", "Content Scribe", 45, 30, 15,
       "write draft document readme blog copy edit proofread content article",
       "writing editing documentation",
       "Writes and edits prose: docs, posts, articles."),
    _p("pixel", "Visual Architect", 80, 60, 20,
       'image picture photo draw illustration storyboard frame visual design "generate image" '
       "portrait landscape scene artwork",
       "illustration design imagery",
       "Designs and draws images, storyboards and artwork."),
    _p("lyra", "Sound Weaver", 90, 70, 20,
       "music song sing vocal instrumental melody beat track compose lyrics audio sound album "
       "remix",
       "music composition audio",
       "Composes music, writes lyrics and shapes sound."),
    _p("reel", "Motion Director", 100, 80, 20,
       "video clip animate motion film scene cinematic footage render timelapse",
       "video animation editing",
       "Directs, animates and renders video."),
)

#: The nine built-in personas, by id, in catalog order.
PERSONAS: dict[str, Persona] = {p.id: p for p in _BUILTIN}

_LIMITS = {"bid_base": (1, 199), "bid_jitter": (0, 200), "rate_sats": (1, 10_000)}


def get_persona(persona_id: str, catalog: dict[str, Persona] | None = None) -> Persona:
    """Look up a persona by id, or raise `PersonaError` listing the known ones."""
    catalog = PERSONAS if catalog is None else catalog
    try:
        return catalog[persona_id]
    except (KeyError, TypeError):
        raise PersonaError(
            f"unknown persona {persona_id!r}",
            hint=f"use one of: {', '.join(catalog)}; or load more with timmy.load_personas(path)",
        ) from None


def persona_from_dict(data: dict[str, Any], where: str = "<dict>") -> Persona:
    """Validate one persona record; errors name the field and ``where`` it came from."""

    def bad(name: str, why: str) -> PersonaError:
        return PersonaError(
            f"{where}: field {name!r} {why}",
            hint="fix that field; see `timmy personas` for examples of valid personas",
        )

    if not isinstance(data, dict):
        raise bad("<persona>", f"must be a table/object, got {type(data).__name__}")
    known = {f.name for f in fields(Persona) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise bad(unknown[0], f"is not a persona field (known: {', '.join(sorted(known))})")
    for name in ("id", "role", "bid_base", "bid_jitter", "preferred_keywords"):
        if name not in data:
            raise bad(name, "is missing")
    pid = data["id"]
    if not isinstance(pid, str) or not _ID.match(pid):
        raise bad("id", f"must be a lower-case identifier like 'forge', got {pid!r}")
    for name in ("name", "role", "description"):
        if name in data and not isinstance(data[name], str):
            raise bad(name, f"must be a string, got {type(data[name]).__name__}")
        if "\x00" in data.get(name, ""):
            raise bad(name, "contains a NUL character (\\x00)")
    if len(data.get("name", "")) > 128:   # the agents table's name column (any database)
        raise bad("name", f"must be at most 128 characters, got {len(data['name'])}")
    ints = {}
    for name, (lo, hi) in _LIMITS.items():
        value = data.get(name, data.get("bid_base") if name == "rate_sats" else None)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise bad(name, f"must be an integer in [{lo}, {hi}], got {value!r}")
        ints[name] = value
    if ints["bid_base"] < 2:
        raise bad("bid_base", "must be at least 2 so on-spec bids stay below off-spec ones")
    lists = {}
    for name in ("preferred_keywords", "capabilities"):
        value = data.get(name, [])
        if isinstance(value, str) or not isinstance(value, list | tuple) or not all(
            isinstance(k, str) and words(k) for k in value
        ):
            raise bad(name, f"must be a list of non-empty words, got {value!r}")
        lists[name] = tuple(value)
    if not lists["preferred_keywords"]:
        raise bad("preferred_keywords", "must list at least one keyword")
    strategy = data.get("strategy", "adaptive")
    if strategy != "adaptive":
        try:
            strategy = canonical(strategy)
        except PersonaError as exc:
            raise PersonaError(f"{where}: field 'strategy': {exc.message}",
                               hint=exc.hint) from None
    try:
        return Persona(
            id=pid,
            name=data.get("name", pid.capitalize()),
            role=data["role"],
            description=data.get("description", ""),
            capabilities=lists["capabilities"],
            rate_sats=ints["rate_sats"],
            bid_base=ints["bid_base"],
            bid_jitter=ints["bid_jitter"],
            preferred_keywords=lists["preferred_keywords"],
            strategy=strategy,
        )
    except PersonaError as exc:
        raise PersonaError(f"{where}: {exc.message}", hint=exc.hint) from None


def parse_personas(text: str, kind: str, where: str) -> dict[str, Persona]:
    """Personas from the text of a TOML (``kind=".toml"``: ``[[persona]]`` tables) or JSON
    (``".json"``: a list) file; ``where`` names it in errors (`timmy.load_personas` reads
    the file).

    Raises `PersonaError` naming the file and the bad field.
    """
    kind = kind.lower()
    try:
        if kind == ".toml":
            import tomllib

            records = tomllib.loads(text).get("persona")
        else:
            loaded = json.loads(text)
            records = loaded.get("persona") if isinstance(loaded, dict) else loaded
    except (ValueError, RecursionError) as exc:
        raise PersonaError(
            f"{where}: not valid {kind.lstrip('.').upper()}: {exc}",
            hint="fix the syntax error at the position shown",
        ) from exc
    if not isinstance(records, list) or not records:
        raise PersonaError(
            f"{where}: no personas found",
            hint="TOML: one [[persona]] table per persona; JSON: a list of objects",
        )
    result: dict[str, Persona] = {}
    for i, record in enumerate(records):
        persona = persona_from_dict(record, where=f"{where} persona #{i + 1}")
        if persona.id in result:
            raise PersonaError(
                f"{where} persona #{i + 1}: field 'id' repeats {persona.id!r}",
                hint="give every persona a unique id",
            )
        result[persona.id] = persona
    return result

