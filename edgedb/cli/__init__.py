"""The ``edgedb`` command: the parser and ``main()`` in ``main.py``, one module per subcommand."""

from edgedb.cli._common import _counted, _in_cli_words  # noqa: F401  (tests use them)
from edgedb.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
