"""Read an offline W&B run back (history, summary, config, metric definitions) with wandb's own reader.

``wandb leet inspect --json <run dir>`` (wandb >= 0.31) prints every record of a run's ``.wandb``
transaction log as one JSON object per line; this module only groups those records. Nested keys come
back as wandb flattens them (``<key>.<field>``, e.g. ``interp/plot._type``). Used by the tests to prove
what reached W&B, and by the logger to continue a resumed run's step count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class OfflineRun:
    run_id: str
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    metric_definitions: list[dict] = field(default_factory=list)
    group: str = ""
    job_type: str = ""
    name: str = ""

    def series(self, key: str) -> list:
        """All logged values of one history key, in order."""
        return [row[key] for row in self.history if key in row]

    def keys(self) -> set[str]:
        """Every metric key this run logged to its history (wandb's own ``_``-keys left out)."""
        return {key for row in self.history for key in row if not key.startswith("_")}


def wandb_cli() -> str:
    """The ``wandb`` command of the running interpreter's environment."""
    return os.path.join(os.path.dirname(sys.executable), "wandb")


def _leet(*args: str) -> str:
    path = Path(args[-1])
    if path.is_dir() and not any(path.glob("run-*.wandb")):
        raise FileNotFoundError(f"no run-*.wandb file in {path}; is this an offline W&B run directory?")
    out = subprocess.run([wandb_cli(), "leet", "inspect", *args], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"`wandb leet inspect {' '.join(args)}` failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def leet_records(path: str | Path) -> list[dict]:
    """Every record of one offline run (its directory or ``.wandb`` file), as ``wandb leet`` prints them."""
    return [json.loads(line) for line in _leet("--json", str(path)).splitlines() if line.startswith("{")]


def leet_summary(path: str | Path) -> dict:
    """The run's state, name, config and latest values, as ``wandb leet inspect --summary --json`` prints them."""
    return json.loads(_leet("--summary", "--json", str(path)))


def read_offline_run(path: str | Path, wait: float = 30.0) -> OfflineRun:
    """Read an offline run directory (``offline-run-*``) or its ``run-<id>.wandb`` file.

    ``wandb.finish()`` can return before wandb-core has flushed the file: wait up to ``wait`` seconds
    for the run's final "exit" record before reading (a crashed run has none; it is read as it is).
    """
    deadline = time.time() + wait
    while True:
        records = leet_records(path)
        finished = any(r.get("type") == "exit" for r in records)
        if finished or time.time() >= deadline:
            return _group(records, Path(path))
        time.sleep(0.2)


def _group(records: list[dict], path: Path) -> OfflineRun:
    stem = next(path.glob("run-*.wandb")).stem if path.is_dir() else path.stem
    run = OfflineRun(run_id=stem.removeprefix("run-"))
    for record in records:
        kind = record.get("type")
        body = record.get(kind) or {}
        if kind == "history":
            run.history.append(dict(body.get("item", {})))
        elif kind == "summary":
            run.summary.update(body.get("update", {}))
        elif kind == "run":
            run.config.update(_config(body.get("config", {}).get("update", {})))
            run.group, run.job_type, run.name = body.get("run_group", ""), body.get("job_type", ""), \
                body.get("display_name", "")
        elif kind == "config":
            run.config.update(_config(body.get("update", {})))
        elif kind == "metric":
            run.metric_definitions.append({"name": body.get("name") or body.get("glob_name", ""),
                                           "step_metric": body.get("step_metric", "")})
    for row in reversed(run.history):  # a run cut short has no summary for its last rows: the last value wins
        for key, value in row.items():
            if not key.startswith("_"):
                run.summary.setdefault(key, value)
    return run


def _config(update: dict) -> dict:
    return {key: value["value"] if isinstance(value, dict) and set(value) == {"value", "desc"} else value
            for key, value in update.items() if key != "_wandb"}


def find_offline_runs(wandb_dir: str | Path) -> list[Path]:
    """All offline run directories under a W&B dir (``<dir>/wandb/offline-run-*`` or ``<dir>/offline-run-*``)."""
    root = Path(wandb_dir)
    return sorted({p.parent for p in root.rglob("run-*.wandb") if p.parent.name.startswith("offline-run-")})
