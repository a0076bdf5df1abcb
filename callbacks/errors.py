"""Clear errors for bad callback input: name the problem and the fix, suggest close names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CallbackConfigError(ValueError):
    """A mistake in how a callback or analysis function was configured (``str()`` says how to fix it)."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem.rstrip('.')}. Fix: {fix}")
        self.problem, self.fix = problem, fix


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean "x"?' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f' Did you mean "{close[0]}"?' if close else ""


def check_choice(kind: str, value: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a did-you-mean error."""
    choices = list(choices)
    if value not in choices:
        raise CallbackConfigError(f'unknown {kind} "{value}".{did_you_mean(value, choices)}',
                                  f"use one of: {', '.join(choices)}")
    return value
