"""Configuration errors that name the problem and the fix, with did-you-mean suggestions.

The single definition for the suite's code below ``benchmarks/``: ``analysis/`` raises these, and
``callbacks/`` re-exports them (``callbacks.errors.CallbackConfigError`` is ``ConfigError``), so one
``except`` catches a bad setting whether the math or the Lightning wiring found it. ``similarity/``
keeps its own (it depends on nothing of the suite), ``benchmarks.core.errors`` has the user-facing
``UserError`` of the command line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A mistake in how an analysis function or a callback was configured (``str()`` says how to fix it)."""

    def __init__(self, problem: str, fix: str) -> None:
        end = "" if problem.endswith("?") else "."
        super().__init__(f"{problem.rstrip('.')}{end} Fix: {fix}")
        self.problem, self.fix = problem, fix


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean "x"?' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f' Did you mean "{close[0]}"?' if close else ""


def check_choice(kind: str, value: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a did-you-mean ``ConfigError``."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f'unknown {kind} "{value}".{did_you_mean(value, choices)}',
                          f"use one of: {', '.join(choices)}")
    return value
