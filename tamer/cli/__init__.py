"""The ``tamer`` command: one module per command family; each only parses its arguments and calls the library."""

from tamer.cli.commands import main

__all__ = ["main"]
