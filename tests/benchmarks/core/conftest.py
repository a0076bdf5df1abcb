"""The small digits study (tests/benchmarks/digits_study.py) as the ``study`` every runner test drives."""

from __future__ import annotations

import pytest

from benchmarks.core import runner
from tests.benchmarks.digits_study import DigitsStudy


@pytest.fixture
def study(monkeypatch):
    """A fresh DigitsStudy that the runner and ``rerun`` use for the name "digits" (records what it executed)."""
    DigitsStudy.executed = []
    DigitsStudy.interrupt_at = None
    instance = DigitsStudy()
    monkeypatch.setattr(runner, "get_study", lambda name: instance)
    monkeypatch.setattr("benchmarks.core.rerun.get_study", lambda name: instance)
    return instance
