"""``python -m timmy``: the ``timmy`` command."""

from timmy.cli.app import main

if __name__ == "__main__":
    main()
