"""Every catalog version seen, kept by content hash so a decision can be replayed against it."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .._paths import data_dir
from ..errors import CatalogError
from .model import Catalog

CATALOG_DIR_ENV = "UNHARDCODED_CATALOG_DIR"
_VERSION = re.compile(r"^[0-9a-f]{16}$")


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
