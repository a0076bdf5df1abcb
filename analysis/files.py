"""Atomic file writes: a reader sees the old file or the whole new one, never half of it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    """The process umask: from /proc on Linux (reading it elsewhere means setting it, not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, durable: bool = False) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path`` (same directory, so atomic).

    The temp file ends with the suffix of ``path`` (``np.savez`` and friends keep the name as given),
    the parent directory is created, and the temp file is removed when ``write`` fails. ``durable``
    flushes the data to disk before the rename (for records that must survive a power cut, e.g. a
    run's status), at the cost of an fsync. The file gets the mode a plain ``open`` would give it
    (0644 under umask 022), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results on shared storage must stay readable
        write(Path(tmp))
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
