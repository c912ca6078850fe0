"""The ``edgedb`` parser and ``main()``: every error is one line on stderr,
``edgedb COMMAND: error: ...``, and exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from edgedb.cli import bench, build, compare, detect, evaluate, export, quantize, rewrite, serve, train
from edgedb.cli._common import _in_cli_words
from edgedb.errors import EdgeDBError


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block above them)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Library arguments whose flag is not their name with dashes (the rest are found from the
# parser): a CLI error names the flag, never the Python argument ("pass gt_dir" once).
_FLAG_OF_ARGUMENT = {"gt_dir": "--gt", "images_dir": "--images", "warm_up_ms": "--warm-up", "duration_s": "--duration",
                     "workspace_mib": "--workspace", "image_sizes": "--image-size", "cache_dir": "--cache"}


def _flags_of(parser: argparse.ArgumentParser) -> dict:
    """Python argument name -> flag, for the long flags of ``parser``."""
    flags = dict(_FLAG_OF_ARGUMENT)
    actions: list[argparse.Action] = parser._actions  # argparse keeps no public list of them
    for action in actions:
        options: list[str] = getattr(action, "option_strings", [])  # an instance attribute trt-api-check cannot see
        for option in options:
            if option.startswith("--") and option != "--help":
                flags.setdefault(option[2:].replace("-", "_"), option)
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgedb",
        description="DBNet text detection for edge devices: TensorRT on GPUs, ONNX Runtime on CPUs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and decisions")
    # -v after the command too (edgedb detect -v); SUPPRESS keeps the one given before it.
    verbose = _Parser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log progress and decisions")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    add_parser = commands.add_parser

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return add_parser(name, parents=[verbose], **kwargs)

    commands.add_parser = command  # type: ignore[method-assign]

    for module in (detect, evaluate, rewrite, quantize, compare, build, bench, train, export, serve):
        module.add_parser(commands)
    for subparser in commands.choices.values():
        subparser.set_defaults(cli_flags=_flags_of(subparser))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    command = None
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help, or a usage error already printed on one line
            return done.code if isinstance(done.code, int) else 2
        command = args.command
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
        if not command:
            parser.print_help()
            return 0
        return _run(args)
    except KeyboardInterrupt:  # Ctrl-C wherever it lands (imports, model load, a batch): 128 + SIGINT
        print(f"edgedb{' ' + command if command else ''}: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    """The command's exit code; the errors it may raise on purpose become one line and 2."""
    try:
        return args.run(args)
    except BrokenPipeError:  # e.g. piped into head
        return 0
    except EdgeDBError as error:
        message = _in_cli_words(str(error), getattr(args, "cli_flags", {}))
    except MemoryError:
        message = "out of memory: try a smaller --input-size / --limit-side-len or fewer images at once"
    except OSError as error:  # permission denied, disk full, ...
        where = f": {error.filename}" if error.filename else ""
        message = f"{error.strerror or error}{where}"
    print(f"edgedb {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2
