"""Where the suite keeps caches and where it looks for full-scale datasets.

Caches (rendered glyphs, composed scenes, converted weights) live under ``$TSUITE_CACHE``
(default ``~/.cache/transfer-suite``) so that a second build is fast and a fresh clone reuses them.
Full-scale datasets are read from a user-given data root (``--data-root`` or ``$DATA_ROOT``).
"""

from __future__ import annotations

import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


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


def read_cache(path: Path | None, read: Callable[[Path], T]) -> T | None:
    """``read(path)`` of a cache file, or None when there is none or it is corrupt, so the caller rebuilds it.

    Caches are .npz files: zip archives whose members carry a CRC-32 that numpy checks as it reads them,
    so a truncated or bit-flipped cache fails here (BadZipFile, EOFError, ValueError), never yields wrong
    arrays. A corrupt file is removed with a warning naming it. ``read`` must load every array it needs
    (numpy loads lazily), and is given ``allow_pickle=False`` files: a cache never runs code.
    """
    if path is None or not path.exists():
        return None
    try:
        return read(path)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as err:
        print(f"warning: cache file {path} is corrupt ({type(err).__name__}: {err}); removing it and rebuilding",
              file=sys.stderr)
        path.unlink(missing_ok=True)
        return None
