"""The `unhardcoded` command line: the parser, ``main``, and what every command shares.

Each module of this package adds its subcommands through ``add_commands``; they import the code they run
inside the command, so ``unhardcoded --help`` loads neither the servers nor the OpenTelemetry SDK.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import TYPE_CHECKING, Any, NoReturn

from .._version import package_version
from ..errors import UnhardcodedError

if TYPE_CHECKING:
    from ..catalog import Catalog

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]
    """What ``add_commands`` of each command module adds its subcommands to."""

CATALOG_ENV = "UNHARDCODED_CATALOG"
# Modules that define `add_commands(subparsers)`, in the order `unhardcoded --help` lists their commands.
COMMAND_MODULES = (
    "unhardcoded.cli.core",
    "unhardcoded.cli.catalog",
    "unhardcoded.cli.receipts",
    "unhardcoded.cli.processor",
    "unhardcoded.cli.serve",
    "unhardcoded.cli.keys",
)


class UsageError(UnhardcodedError):
    """Bad command-line input: exit 2 with a one-line reason."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own usage errors: one line, exit 2
        print(f"unhardcoded: {message}", file=sys.stderr)
        raise SystemExit(2)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def load_catalog_arg(path: str | None) -> Catalog:
    """``--catalog FILE``, else ``$UNHARDCODED_CATALOG``, else the newest ``catalog update``, else the built-in."""
    from ..catalog.archive import default_catalog

    return default_catalog(path)[0]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unhardcoded", description="Runtime LLM policy layer with OpenTelemetry-observable receipts.")
    parser.add_argument("--version", action="version", version=package_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        import_module(name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        return int(run(args) or 0)
    except UnhardcodedError as exc:
        print(f"unhardcoded: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())
