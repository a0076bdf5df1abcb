"""Where the suite keeps caches and where it looks for full-scale datasets.

Caches (rendered glyphs, composed scenes, converted weights) live under ``$TSUITE_CACHE``
(default ``~/.cache/transfer-suite``) so that a second build is fast and a fresh clone reuses them.
Full-scale datasets are read from a user-given data root (``--data-root`` or ``$DATA_ROOT``).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a directory under the suite's cache."""
    root = Path(os.environ.get("TSUITE_CACHE", Path.home() / ".cache" / "transfer-suite"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """The data root for full-scale datasets: the explicit argument, else ``$DATA_ROOT``, else None."""
    value = explicit if explicit not in (None, "") else os.environ.get("DATA_ROOT")
    return Path(value).expanduser() if value else None
