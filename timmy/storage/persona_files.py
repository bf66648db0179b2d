"""Persona files: `load_personas` reads a TOML or JSON file into a persona catalog (the
parsing, pure, is `timmy.market.personas.parse_personas`)."""

from __future__ import annotations

from pathlib import Path

from timmy.errors import PersonaError
from timmy.market.personas import Persona, parse_personas


def load_personas(path: str | Path) -> dict[str, Persona]:
    """Read personas from a TOML (``[[persona]]`` tables) or JSON (a list) file.

    Raises `PersonaError` naming the file and the bad field.
    """
    path = Path(path)
    if path.suffix.lower() not in (".toml", ".json"):
        raise PersonaError(
            f"{path}: unknown persona file type {path.suffix or '(none)'!r}",
            hint="name the file .toml or .json",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PersonaError(f"{path}: not UTF-8: {exc}", hint="save the file as UTF-8") from exc
    except OSError as exc:
        raise PersonaError(
            f"cannot read persona file {path}: {exc.strerror or exc}",
            hint="check the path; persona files are .toml or .json",
        ) from exc
    return parse_personas(text, path.suffix, str(path))
