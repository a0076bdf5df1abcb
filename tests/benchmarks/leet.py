"""Read offline W&B runs with wandb's own reader (``wandb leet inspect --json``), for tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _leet(*args: str) -> str:
    wandb = os.path.join(os.path.dirname(sys.executable), "wandb")
    return subprocess.run([wandb, "leet", "inspect", *args], capture_output=True, text=True, timeout=120,
                          check=True).stdout


def leet_records(part: Path) -> list[dict]:
    """Every record of one offline run directory, as wandb prints them (one JSON object per record)."""
    return [json.loads(line) for line in _leet("--json", str(part)).splitlines() if line.startswith("{")]


def leet_steps(part: Path) -> list[int]:
    """The ``_step`` of every history record of one offline run directory."""
    return [r["history"]["item"]["_step"] for r in leet_records(part) if r.get("type") == "history"]


def leet_summary(part: Path) -> dict:
    """The run's state, name, config and summary (``wandb leet inspect --summary --json``)."""
    return json.loads(_leet("--summary", "--json", str(part)))
