"""The `unhardcoded` command line. Each subsystem adds its own subcommands through ``add_commands``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import import_module
from typing import Any, Callable, Sequence

from .errors import UnhardcodedError

CATALOG_ENV = "UNHARDCODED_CATALOG"
# Modules that define `add_commands(subparsers)`; one that is not there yet is passed over.
COMMAND_MODULES = (
    "unhardcoded.commands",
    "unhardcoded.receipts.commands",
    "unhardcoded.processor.commands",
    "unhardcoded.server.commands",
)


class UsageError(UnhardcodedError):
    """Bad command-line input: exit 2 with a one-line reason."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own usage errors: one line, exit 2
        print(f"unhardcoded: {message}", file=sys.stderr)
        raise SystemExit(2)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def load_catalog_arg(path: str | None):  # -> Catalog
    """``--catalog FILE``, else ``$UNHARDCODED_CATALOG``, else the built-in catalog."""
    from .catalog import Catalog

    path = path or os.environ.get(CATALOG_ENV)
    return Catalog.from_file(path) if path else Catalog.builtin()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unhardcoded", description="Runtime LLM policy layer with OpenTelemetry-observable receipts.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.add_commands(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unhardcoded")
    except PackageNotFoundError:
        return "unknown"


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


if __name__ == "__main__":
    sys.exit(main())
