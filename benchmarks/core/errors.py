"""User-facing errors: one paragraph that names the problem and the fix, printed without a traceback."""

from __future__ import annotations

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
