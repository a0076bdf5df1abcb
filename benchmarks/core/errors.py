"""User-facing errors: one paragraph that names the problem and the fix, printed without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input (config, path, name). ``str()`` is the paragraph shown to them."""

    def __init__(self, problem: str, fix: str) -> None:
        end = "" if problem.endswith("?") else "."
        super().__init__(f"{problem.rstrip('.')}{end} Fix: {fix}")
        self.problem, self.fix = problem, fix


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean "x"?' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f' Did you mean "{close[0]}"?' if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """The standard error for an unknown registry name (encoder, dataset, measure, study...)."""
    choices = sorted(choices)
    return UserError(f'unknown {kind} "{name}".{did_you_mean(name, choices)}',
                     f"use one of: {', '.join(choices)}")
