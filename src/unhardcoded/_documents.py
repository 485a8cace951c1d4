"""Reading YAML or JSON documents with errors that say which file and which line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import UnhardcodedError


class _Yaml12Loader(yaml.SafeLoader):
    """Safe loader with YAML 1.2 booleans: only true/false, so keys like `on:` stay strings."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # PyYAML's scalar constructors raise plain ValueError/KeyError/... for values such as
        # `2024-13-45` or `!!int x`; give them the node's position like any other YAML error.
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, IndexError):
            shown = node.value if isinstance(node.value, str) else ""
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {tag} value {shown!r}", node.start_mark
            ) from None


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _located(error: type[UnhardcodedError], message: str, line: int | None) -> UnhardcodedError:
    """The error, with the 1-based line it points at kept as ``.line`` for callers that want it."""
    exc = error(message)
    exc.line = line  # type: ignore[attr-defined]
    return exc


def parse_document(text: str, source: str, error: type[UnhardcodedError], *, json_only: bool = False) -> Any:
    """Parse YAML (a superset of JSON); a syntax error names the source and line. ``json_only``: strict JSON."""
    if json_only:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise _located(
                error, f"{source}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}", exc.lineno
            ) from None
        except RecursionError:
            raise error(f"{source}: invalid JSON: nested too deeply") from None
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            # Flow-style YAML (`{schema: ..., models: [...]}`) starts the same way; only if it is
            # not YAML either is the document reported, as the JSON it looked like.
            try:
                return yaml.load(text, Loader=_Yaml12Loader)
            except (yaml.YAMLError, RecursionError):
                raise _located(error, f"{source}: line {exc.lineno}: invalid JSON: {exc.msg}", exc.lineno) from None
        except RecursionError:
            raise error(f"{source}: invalid JSON: nested too deeply") from None
    try:
        return yaml.load(text, Loader=_Yaml12Loader)
    except RecursionError:
        # Both parsers recurse per nesting level; a hostile document must not escape as a RecursionError.
        raise error(f"{source}: invalid YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise _located(error, f"{source}: {where}invalid YAML: {problem}", mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise error(f"{source}: invalid YAML: {exc}") from None


def read_document(path: str | Path, error: type[UnhardcodedError]) -> Any:
    """Read and parse a file; a missing or unreadable file is reported as ``error``. A ``.json`` file must be JSON."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{p}: cannot read: {exc.__class__.__name__}") from None
    return parse_document(text, str(p), error, json_only=p.suffix.lower() == ".json")


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def key_path(parent: str, key: object) -> str:
    """``parent.key``; a key that is empty or not a plain name is quoted (``parent["a b"]``) so the path stays readable."""
    if isinstance(key, str) and _PLAIN_KEY.match(key):
        return f"{parent}.{key}" if parent else key
    shown = json.dumps(key, ensure_ascii=False) if isinstance(key, str) else str(key)
    if len(shown) > 40:
        shown = shown[:37] + '..."'
    return f"{parent}[{shown}]"
