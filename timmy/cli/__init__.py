"""The ``timmy`` command, one module per group of commands (`app` holds the group itself)."""

from timmy.cli.app import main

__all__ = ["main"]
