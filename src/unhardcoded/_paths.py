"""Where unhardcoded keeps its per-user data: the receipt store and the catalog archive."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "UNHARDCODED_HOME"


def data_dir() -> Path:
    """``$UNHARDCODED_HOME``, else ``$XDG_DATA_HOME/unhardcoded``, else ``~/.local/share/unhardcoded``."""
    explicit = os.environ.get(HOME_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "unhardcoded"
