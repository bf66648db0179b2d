"""The persona catalog: the nine built-ins, word-boundary matching, loading from files."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest

from timmy.errors import PersonaError, TimmyError
from timmy.market.personas import PERSONAS, Persona, get_persona, persona_from_dict
from timmy.storage.persona_files import load_personas

# The catalog table: id | role | rate_sats | bid_base | bid_jitter | keywords ("..." = a phrase).
TABLE = """
echo  | Research Analyst  | 50  | 35 | 15 | research find search summarise summarize analyse analyze fact source read
mace  | Security Sentinel | 75  | 55 | 20 | security threat vulnerability audit monitor harden firewall scan intrusion patch
helm  | System Navigator  | 60  | 40 | 20 | deploy infrastructure config docker kubernetes server automation pipeline ci cd git push pull clone devops
seer  | Data Oracle       | 65  | 45 | 20 | data analyse analyze predict pattern chart graph report insight metric
forge | Code Smith        | 55  | 38 | 17 | code function bug fix refactor test implement class api script commit branch merge git "pull request"
quill | Content Scribe    | 45  | 30 | 15 | write draft document readme blog copy edit proofread content article
pixel | Visual Architect  | 80  | 60 | 20 | image picture photo draw illustration storyboard frame visual design "generate image" portrait landscape scene artwork
lyra  | Sound Weaver      | 90  | 70 | 20 | music song sing vocal instrumental melody beat track compose lyrics audio sound album remix
reel  | Motion Director   | 100 | 80 | 20 | video clip animate motion film scene cinematic footage render timelapse
"""  # noqa: E501


def parse_table(table: str) -> dict[str, tuple[str, int, int, int, list[str]]]:
    rows = {}
    for line in table.strip().splitlines():
        pid, role, rate, base, jitter, keywords = (cell.strip() for cell in line.split("|"))
        rows[pid] = (role, int(rate), int(base), int(jitter), shlex.split(keywords))
    return rows


BUILTINS = parse_table(TABLE)
ALL_KEYWORDS = sorted({(pid, kw) for pid, row in BUILTINS.items() for kw in row[4]})


def on_spec_ids(description: str) -> set[str]:
    return {pid for pid, p in PERSONAS.items() if p.is_on_spec(description)}


# -- the nine built-ins --------------------------------------------------------------------


def test_builtin_catalog_holds_exactly_the_nine_personas_in_catalog_order():
    assert list(PERSONAS) == list(BUILTINS)  # the table above is in catalog order
    assert len(PERSONAS) == 9


@pytest.mark.parametrize("pid", list(BUILTINS))
def test_builtin_persona_matches_the_catalog_table(pid):
    role, rate, base, jitter, keywords = BUILTINS[pid]
    persona = PERSONAS[pid]
    assert isinstance(persona, Persona)
    assert persona.id == pid
    assert persona.role == role
    assert persona.rate_sats == rate
    assert persona.bid_base == base
    assert persona.bid_jitter == jitter
    assert sorted(persona.preferred_keywords) == sorted(keywords)
    assert len(set(persona.preferred_keywords)) == len(persona.preferred_keywords)


@pytest.mark.parametrize("pid", list(BUILTINS))
def test_builtin_persona_has_a_name_and_description(pid):
    persona = PERSONAS[pid]
    assert persona.name.lower() == pid
    assert persona.description.strip()
    assert persona.capabilities and all(isinstance(c, str) for c in persona.capabilities)


def test_persona_is_frozen():
    with pytest.raises(AttributeError):
        PERSONAS["forge"].bid_base = 1  # type: ignore[misc]


def test_get_persona_returns_builtin_and_rejects_unknown_id_with_hint():
    assert get_persona("forge") is PERSONAS["forge"]
    with pytest.raises(PersonaError) as info:
        get_persona("nobody")
    assert "nobody" in info.value.message
    assert "forge" in info.value.hint


# -- word-boundary matching -------------------------------------------------------------------


@pytest.mark.parametrize(("pid", "keyword"), ALL_KEYWORDS)
def test_every_builtin_keyword_puts_its_persona_on_spec(pid, keyword):
    description = f"Please {keyword.upper()} this, thanks."
    assert PERSONAS[pid].is_on_spec(description)
    assert keyword in PERSONAS[pid].matched_keywords(description)


def test_ci_does_not_match_inside_specific():
    assert not PERSONAS["helm"].is_on_spec("be specific about the scope")
    assert PERSONAS["helm"].matched_keywords("be specific about the scope") == []


@pytest.mark.parametrize(
    "description",
    [
        "ci/cd pipeline for the service",
        "set up CI for the repo",
        "our CI/CD is flaky",
        "ci",
    ],
)
def test_ci_as_a_whole_word_matches_helm(description):
    assert PERSONAS["helm"].is_on_spec(description)


def test_ci_cd_pipeline_matches_helm_on_each_word():
    assert PERSONAS["helm"].matched_keywords("ci/cd pipeline") == ["cd", "ci", "pipeline"]


@pytest.mark.parametrize(
    ("description", "persona", "not_a_match"),
    [
        ("write some testing notes", "forge", "test"),
        ("classify the emails", "forge", "class"),
        ("the dataset is big", "seer", "data"),
        ("already done", "echo", "read"),
        ("scenery of the alps", "pixel", "scene"),
        ("a codex of laws", "forge", "code"),
        ("soundproof the room", "lyra", "sound"),
        ("patchwork quilt", "mace", "patch"),
        ("pulled pork recipe", "helm", "pull"),
    ],
)
def test_keyword_inside_a_longer_word_does_not_match(description, persona, not_a_match):
    assert not_a_match not in PERSONAS[persona].matched_keywords(description)
    assert not PERSONAS[persona].is_on_spec(description)


@pytest.mark.parametrize(
    "description",
    ["open a pull request", "Review this Pull   Request!", "pull-request review", "pull\nrequest"],
)
def test_pull_request_phrase_matches_forge(description):
    assert PERSONAS["forge"].is_on_spec(description)
    assert "pull request" in PERSONAS["forge"].matched_keywords(description)


@pytest.mark.parametrize("description", ["pull the latest changes", "git pull", "pull"])
def test_pull_alone_matches_helm_not_forge_phrase(description):
    assert PERSONAS["helm"].is_on_spec(description)
    assert "pull request" not in PERSONAS["forge"].matched_keywords(description)


def test_pull_alone_leaves_forge_off_spec():
    assert not PERSONAS["forge"].is_on_spec("pull the latest changes")


def test_phrase_words_in_the_wrong_order_do_not_match():
    assert not PERSONAS["forge"].is_on_spec("request a pull")


def test_phrase_words_must_be_adjacent():
    assert not PERSONAS["forge"].is_on_spec("pull this request")


def test_pull_request_puts_both_forge_and_helm_on_spec():
    assert on_spec_ids("open a pull request") == {"forge", "helm"}


@pytest.mark.parametrize(
    "description", ["the weather is nice today", "", "   ", "!!! ???", "specific specification"]
)
def test_description_without_keywords_is_off_spec_for_everyone(description):
    assert on_spec_ids(description) == set()


def test_is_on_spec_agrees_with_matched_keywords():
    samples = [
        "fix the bug in the api client",
        "deploy the docker image to kubernetes",
        "compose a song and render a video clip",
        "research the data and write a report",
        "open a pull request",
        "be specific",
    ]
    for description in samples:
        for persona in PERSONAS.values():
            assert persona.is_on_spec(description) == bool(persona.matched_keywords(description))


def test_generate_image_phrase_matches_pixel():
    assert "generate image" in PERSONAS["pixel"].matched_keywords("please generate image of a cat")


# -- load_personas: good files -----------------------------------------------------------------


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def to_toml(records: list[dict]) -> str:
    out = []
    for record in records:
        out.append("[[persona]]")
        out.extend(f"{key} = {_toml_value(value)}" for key, value in record.items())
        out.append("")
    return "\n".join(out)


FULL = {
    "id": "scout",
    "name": "Scout",
    "role": "Web Scout",
    "description": "Crawls the web.",
    "capabilities": ["crawling", "scraping"],
    "rate_sats": 42,
    "bid_base": 33,
    "bid_jitter": 7,
    "preferred_keywords": ["crawl", "scrape", "web page"],
}
MINIMAL = {
    "id": "tiny",
    "role": "Tiny Helper",
    "bid_base": 10,
    "bid_jitter": 0,
    "preferred_keywords": ["tiny"],
}


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def check_loaded(loaded: dict[str, Persona]) -> None:
    assert list(loaded) == ["scout", "tiny"]
    scout, tiny = loaded["scout"], loaded["tiny"]
    assert scout == Persona(
        id="scout",
        name="Scout",
        role="Web Scout",
        description="Crawls the web.",
        capabilities=("crawling", "scraping"),
        rate_sats=42,
        bid_base=33,
        bid_jitter=7,
        preferred_keywords=("crawl", "scrape", "web page"),
    )
    # Optional fields take their documented defaults.
    assert tiny.name == "Tiny"
    assert tiny.description == ""
    assert tiny.capabilities == ()
    assert tiny.rate_sats == tiny.bid_base == 10
    assert tiny.bid_jitter == 0
    # Loaded personas match on word boundaries like the built-ins.
    assert scout.is_on_spec("scrape this web page")
    assert scout.matched_keywords("scrape this web page") == ["scrape", "web page"]
    assert not scout.is_on_spec("webpages and scrapers")


def test_load_personas_reads_toml_persona_tables(tmp_path):
    check_loaded(load_personas(write(tmp_path, "team.toml", to_toml([FULL, MINIMAL]))))


def test_load_personas_reads_json_list(tmp_path):
    check_loaded(load_personas(write(tmp_path, "team.json", json.dumps([FULL, MINIMAL]))))


def test_load_personas_accepts_str_path_and_upper_case_suffix(tmp_path):
    path = write(tmp_path, "TEAM.TOML", to_toml([FULL, MINIMAL]))
    check_loaded(load_personas(str(path)))


def test_load_personas_may_reuse_a_builtin_id(tmp_path):
    record = dict(MINIMAL, id="forge", bid_base=5)
    loaded = load_personas(write(tmp_path, "p.json", json.dumps([record])))
    assert loaded["forge"].bid_base == 5
    assert PERSONAS["forge"].bid_base == 38  # the catalog is not modified


def test_load_personas_accepts_boundary_values(tmp_path):
    low = dict(MINIMAL, id="low", bid_base=2, bid_jitter=0, rate_sats=1)
    high = dict(MINIMAL, id="high", bid_base=199, bid_jitter=200, rate_sats=10_000)
    loaded = load_personas(write(tmp_path, "p.json", json.dumps([low, high])))
    assert loaded["low"].bid_base == 2
    assert loaded["high"].rate_sats == 10_000


# -- load_personas: bad files --------------------------------------------------------------------


def without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


BAD_RECORDS = {
    # missing fields
    "missing_id": (without(FULL, "id"), "id"),
    "missing_role": (without(FULL, "role"), "role"),
    "missing_bid_base": (without(FULL, "bid_base"), "bid_base"),
    "missing_bid_jitter": (without(FULL, "bid_jitter"), "bid_jitter"),
    "missing_keywords": (without(FULL, "preferred_keywords"), "preferred_keywords"),
    # wrong types
    "id_not_a_string": (dict(FULL, id=7), "id"),
    "role_not_a_string": (dict(FULL, role=7), "role"),
    "name_not_a_string": (dict(FULL, name=["x"]), "name"),
    "description_not_a_string": (dict(FULL, description=3), "description"),
    "bid_base_a_string": (dict(FULL, bid_base="35"), "bid_base"),
    "bid_base_a_float": (dict(FULL, bid_base=35.5), "bid_base"),
    "bid_base_a_bool": (dict(FULL, bid_base=True), "bid_base"),
    "bid_jitter_a_float": (dict(FULL, bid_jitter=1.5), "bid_jitter"),
    "rate_sats_a_string": (dict(FULL, rate_sats="many"), "rate_sats"),
    "keywords_a_string": (dict(FULL, preferred_keywords="code"), "preferred_keywords"),
    "keywords_of_numbers": (dict(FULL, preferred_keywords=[1, 2]), "preferred_keywords"),
    "capabilities_a_string": (dict(FULL, capabilities="crawling"), "capabilities"),
    # out of range
    "bid_base_zero": (dict(FULL, bid_base=0), "bid_base"),
    "bid_base_one": (dict(FULL, bid_base=1), "bid_base"),
    "bid_base_too_high": (dict(FULL, bid_base=201), "bid_base"),
    "bid_jitter_negative": (dict(FULL, bid_jitter=-1), "bid_jitter"),
    "bid_jitter_too_high": (dict(FULL, bid_jitter=201), "bid_jitter"),
    "rate_sats_zero": (dict(FULL, rate_sats=0), "rate_sats"),
    "rate_sats_too_high": (dict(FULL, rate_sats=10_001), "rate_sats"),
    "id_upper_case": (dict(FULL, id="Scout"), "id"),
    "id_with_space": (dict(FULL, id="web scout"), "id"),
    "id_too_long": (dict(FULL, id="s" * 33), "id"),
    "id_empty": (dict(FULL, id=""), "id"),
    "keywords_empty": (dict(FULL, preferred_keywords=[]), "preferred_keywords"),
    "keyword_blank": (dict(FULL, preferred_keywords=["crawl", "  "]), "preferred_keywords"),
    "keyword_punctuation_only": (dict(FULL, preferred_keywords=["!!"]), "preferred_keywords"),
    # unknown field
    "unknown_field": (dict(FULL, bid_bsae=3), "bid_bsae"),
}


def assert_names(exc: TimmyError, path: Path, *things: str) -> None:
    message = exc.message
    assert str(path) in message, f"message does not name the file: {message!r}"
    # The field must be named in the message itself, not just in the file name.
    rest = message.replace(str(path), "")
    for thing in things:
        assert re.search(rf"(?<![a-z_]){re.escape(thing)}(?![a-z_])", rest), (
            f"message does not name {thing!r}: {message!r}"
        )
    assert exc.hint.strip(), "the error has no hint"
    assert exc.hint in str(exc)


@pytest.mark.parametrize("fmt", ["toml", "json"])
@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_bad_persona_field_raises_persona_error_naming_file_and_field(tmp_path, case, fmt):
    record, field_name = BAD_RECORDS[case]
    text = to_toml([MINIMAL, record]) if fmt == "toml" else json.dumps([MINIMAL, record])
    path = write(tmp_path, f"team.{fmt}", text)
    with pytest.raises(PersonaError) as info:
        load_personas(path)
    assert_names(info.value, path, field_name)
    assert "#2" in info.value.message, "the message should say which persona in the file"


@pytest.mark.parametrize("bid_base", [0, -3, "35", 2.5, None])
def test_bad_bid_base_is_named_even_when_rate_sats_defaults_to_it(tmp_path, bid_base):
    record = dict(MINIMAL, bid_base=bid_base)  # no rate_sats: it defaults to bid_base
    path = write(tmp_path, "team.json", json.dumps([record]))
    with pytest.raises(PersonaError) as info:
        load_personas(path)
    assert "'bid_base'" in info.value.message, (
        "BUG timmy.market.personas.persona_from_dict: rate_sats (defaulting to bid_base) is "
        "checked "
        "before bid_base, so the error blames 'rate_sats', a field the file does not have: "
        f"{info.value.message}"
    )


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_duplicate_persona_id_raises_persona_error_naming_id(tmp_path, fmt):
    records = [FULL, MINIMAL, dict(MINIMAL, role="Another")]
    text = to_toml(records) if fmt == "toml" else json.dumps(records)
    path = write(tmp_path, f"team.{fmt}", text)
    with pytest.raises(PersonaError) as info:
        load_personas(path)
    assert_names(info.value, path, "id", "tiny")


@pytest.mark.parametrize(
    ("name", "text", "names"),
    [
        ("bad.toml", "[[persona]]\nid = 'x\nrole = 3", ["TOML"]),
        ("bad.toml", "[[persona]\n", ["TOML"]),
        ("bad.json", '[{"id": "x",]', ["JSON"]),
        ("bad.json", "{", ["JSON"]),
        ("bad.json", "[1, 2", ["JSON"]),
    ],
)
def test_bad_syntax_raises_persona_error_naming_file_and_format(tmp_path, name, text, names):
    path = write(tmp_path, name, text)
    with pytest.raises(PersonaError) as info:
        load_personas(path)
    assert_names(info.value, path, *names)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("empty.toml", ""),
        ("empty.json", ""),
        ("blank.toml", "\n\n  \n"),
        ("other.toml", "[settings]\nseed = 1\n"),
        ("single_table.toml", "[persona]\nid = 'x'\n"),
        ("empty_list.json", "[]"),
        ("object.json", '{"id": "x"}'),
        ("number.json", "42"),
        ("null.json", "null"),
    ],
)
def test_file_without_personas_raises_persona_error_naming_file(tmp_path, name, text):
    path = write(tmp_path, name, text)
    with pytest.raises(PersonaError) as info:
        load_personas(path)
    assert_names(info.value, path)


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_persona_that_is_not_a_table_raises_persona_error(tmp_path, fmt):
    text = 'persona = ["forge"]\n' if fmt == "toml" else '["forge"]'
    path = write(tmp_path, f"p.{fmt}", text)
    with pytest.raises(PersonaError) as info:
        load_personas(path)
    assert_names(info.value, path)


@pytest.mark.parametrize("name", ["team.yaml", "team.txt", "team", "team.toml.bak"])
def test_unknown_suffix_raises_persona_error_naming_file_and_suffix(tmp_path, name):
    path = write(tmp_path, name, json.dumps([FULL]))
    with pytest.raises(PersonaError) as info:
        load_personas(path)
    assert_names(info.value, path)
    assert "not valid" not in info.value.message and ".toml" in info.value.hint, (
        "BUG timmy.market.personas.load_personas: the unknown-suffix PersonaError is raised inside "
        "`try: ... except (ValueError, UnicodeDecodeError)` and PersonaError subclasses "
        "ValueError, so it is re-wrapped as 'not valid <SUFFIX>' with the syntax-error hint: "
        f"{info.value}"
    )
    assert ".json" in info.value.hint


def test_missing_file_raises_persona_error_naming_file(tmp_path):
    path = tmp_path / "nowhere" / "team.toml"
    with pytest.raises(PersonaError) as info:
        load_personas(path)
    assert_names(info.value, path)


def test_directory_instead_of_file_raises_persona_error(tmp_path):
    path = tmp_path / "team.toml"
    path.mkdir()
    with pytest.raises(PersonaError) as info:
        load_personas(path)
    assert_names(info.value, path)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file"
)
def test_unreadable_file_raises_persona_error(tmp_path):
    path = write(tmp_path, "team.toml", to_toml([FULL]))
    path.chmod(0)
    try:
        with pytest.raises(PersonaError) as info:
            load_personas(path)
        assert_names(info.value, path)
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_file_that_is_not_utf8_raises_persona_error(tmp_path, fmt):
    text = to_toml([FULL]) if fmt == "toml" else json.dumps([FULL])
    path = write(tmp_path, f"team.{fmt}", text.replace("Crawls", "Cr\xe2wls").encode("latin-1"))
    try:
        load_personas(path)
    except PersonaError as exc:
        assert_names(exc, path)
    except UnicodeDecodeError as exc:  # pragma: no cover - documents the bug
        pytest.fail(
            f"BUG timmy.market.personas.load_personas: a non-UTF-8 file leaks {exc!r} instead of "
            "PersonaError (read_text is outside the try that maps ValueError)"
        )
    else:  # pragma: no cover
        pytest.fail("a non-UTF-8 persona file was accepted")


def test_deeply_nested_json_raises_persona_error(tmp_path):
    path = write(tmp_path, "team.json", "[" * 100_000 + "]" * 100_000)
    try:
        load_personas(path)
    except PersonaError as exc:
        assert_names(exc, path)
    except RecursionError as exc:  # pragma: no cover - documents the bug
        pytest.fail(
            f"BUG timmy.market.personas.load_personas: deeply nested JSON leaks {exc!r} "
            "instead of PersonaError"
        )
    else:  # pragma: no cover
        pytest.fail("a deeply nested JSON file was accepted")


def test_persona_error_is_a_timmy_error_and_value_error(tmp_path):
    path = write(tmp_path, "team.json", "[]")
    with pytest.raises(TimmyError):
        load_personas(path)
    with pytest.raises(ValueError):
        load_personas(path)


def test_persona_from_dict_names_where_it_came_from():
    with pytest.raises(PersonaError) as info:
        persona_from_dict(dict(FULL, bid_base=0), where="--persona")
    assert "--persona" in info.value.message
    assert "bid_base" in info.value.message
    assert info.value.hint
