"""Every catalog version seen, kept by content hash so a decision can be replayed against it."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .._paths import data_dir
from ..errors import CatalogError
from .model import Catalog

CATALOG_DIR_ENV = "UNHARDCODED_CATALOG_DIR"
_VERSION = re.compile(r"^[0-9a-f]{16}$")
UPDATED_FILE = "updated.json"
"""Names the version the last ``unhardcoded catalog update`` wrote: the default catalog from then on."""


class CatalogArchive:
    """A directory of ``{version}.json`` files, each a catalog in canonical form."""

    def __init__(self, directory: str | Path | None = None) -> None:
        if directory is None:
            directory = os.environ.get(CATALOG_DIR_ENV) or data_dir() / "catalogs"
        self.directory = Path(directory)

    def path_for(self, version: str) -> Path:
        if not _VERSION.match(version):
            raise CatalogError(f"{version!r} is not a catalog version (16 hex digits)")
        return self.directory / f"{version}.json"

    def save(self, catalog: Catalog) -> Path:
        """Keep ``catalog``; a version already kept is left as it is."""
        path = self.path_for(catalog.version)
        if path.exists():
            return path
        self.directory.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a crash never leaves a half-written version behind.
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(catalog.canonical)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def load(self, version: str) -> Catalog:
        path = self.path_for(version)
        if not path.exists():
            raise CatalogError(f"catalog version {version} is not in {self.directory}")
        catalog = Catalog.from_file(path)
        if catalog.version != version:
            raise CatalogError(f"{path}: content hashes to {catalog.version}, not {version}; the file was altered")
        return catalog

    def versions(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json") if _VERSION.match(p.stem))

    def mark_updated(self, catalog: Catalog, note: dict[str, Any]) -> Path:
        """Keep ``catalog`` and make it the default catalog (``note`` says where its prices came from)."""
        self.save(catalog)
        path = self.directory / UPDATED_FILE
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({**note, "version": catalog.version}, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def updated(self) -> dict[str, Any] | None:
        """What the last ``catalog update`` recorded (``version`` and where the prices came from), or None."""
        path = self.directory / UPDATED_FILE
        if not path.is_file():
            return None
        try:
            note = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CatalogError(f"{path}: cannot be read ({exc}); run `unhardcoded catalog update` again") from None
        if not isinstance(note, dict) or not isinstance(note.get("version"), str):
            raise CatalogError(f"{path}: names no catalog version; run `unhardcoded catalog update` again")
        return note


def default_catalog(path: str | None = None) -> tuple[Catalog, str]:
    """The catalog a command uses and where it came from: ``path`` (``--catalog``), else ``$UNHARDCODED_CATALOG``,
    else the version the last ``catalog update`` archived, else the built-in catalog."""
    path = path or os.environ.get("UNHARDCODED_CATALOG")
    if path:
        return Catalog.from_file(path), f"file {path}"
    archive = CatalogArchive()
    note = archive.updated()
    if note is not None:
        catalog = archive.load(note["version"])
        catalog.source = f"<catalog update {note['version']}>"
        when = note.get("updated", "")
        return catalog, f"archived update {note['version']} ({note.get('prices', 'prices')}, {when})"
    return Catalog.builtin(), "built-in"
