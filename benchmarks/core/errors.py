"""User-facing errors: one paragraph that names the problem and the fix, printed without a traceback."""

from __future__ import annotations

import errno
from collections.abc import Iterable

from analysis.errors import ConfigError, did_you_mean


class UserError(ConfigError):
    """A mistake in the user's input (config, path, name). ``str()`` is the paragraph shown to them:
    the problem, then "Fix: ..." (the one problem-and-fix error class of the suite, analysis.errors)."""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """The standard error for an unknown registry name (encoder, dataset, measure, study...)."""
    choices = sorted(choices)
    return UserError(f'unknown {kind} "{name}".{did_you_mean(name, choices)}',
                     f"use one of: {', '.join(choices)}")


# OSError numbers that mean "this place cannot be written": permissions, a read-only file system, a full disk or quota
CANNOT_WRITE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def cannot_write(err: OSError) -> UserError:
    """The paragraph for a write that the file system refused, during a run or a report."""
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    problem = (f"the disk is full (or over quota) writing {err.filename}" if full
               else f"cannot write {err.filename}: {err.strerror}")
    return UserError(f"{problem}; finished runs are kept, and a run that was training resumes from its last "
                     "checkpoint", "free space (or make the results directory writable), or pass --results <a "
                     "writable directory> for new runs, then run the same command again; `python -m benchmarks "
                     "status <study>` and `report <study> --stdout` read a read-only results directory")
