"""The run store: one directory per run, ``results/<study>/<run-key>/``, written atomically.

A run directory holds ``run.yaml`` (study, stage, params, resolved config: enough to redo the run
alone), ``status.json`` (pending/running/finished/failed/interrupted), ``metrics.json`` (final
metrics, written last: its presence means finished), ``checkpoints/last.ckpt`` (resume point) and
the W&B offline run. Nothing finished is ever overwritten or deleted by a re-run.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from analysis.files import atomic_write

STATUSES = ("pending", "running", "interrupted", "failed", "finished")


def results_root(explicit: str | os.PathLike | None = None) -> Path:
    """Where results go: the argument, else ``$TSUITE_RESULTS``, else ``./results``."""
    return Path(explicit or os.environ.get("TSUITE_RESULTS", "results")).resolve()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (fsync before the rename)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data), durable=True)


def atomic_save_state(path: Path, state: dict) -> None:
    """A state dict (tensors moved to CPU) saved with torch.save, atomically: a unique temp file per writer,
    so DDP ranks saving the same file at once never collide and readers never see half a file."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _dead_here(record: dict) -> bool:
    """True when the recorded writer ran on this host and its process no longer exists (another host's
    process cannot be checked from here: such a run keeps the status it wrote)."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


class RunBusy(Exception):
    """Another live process holds the run's lock: it is training this run now."""

    def __init__(self, key: str, holder: dict) -> None:
        self.key, self.holder = key, holder
        super().__init__(f"{key} is being run by pid {holder.get('pid')} on {holder.get('host')}")


def _read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when the file is unreadable or not a JSON object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _warn(path: Path, consequence: str) -> None:
    print(f"warning: {path} is unreadable (truncated or corrupt): {consequence}.", file=sys.stderr)


def _read_lock(path: Path) -> dict:
    """The lock's holder; an unreadable lock older than a minute counts as stale (its writer died mid-write)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        try:
            old = time.time() - path.stat().st_mtime > 60
        except OSError:
            old = True
        return {"unreadable": old}


class RunStore:
    """Directory-backed store of the runs of one study."""

    def __init__(self, study: str, root: str | os.PathLike | None = None) -> None:
        self.study = study
        self.root = results_root(root) / study
        self.root.mkdir(parents=True, exist_ok=True)

    def run_dir(self, key: str) -> Path:
        return self.root / key

    def checkpoint_dir(self, key: str) -> Path:
        return self.run_dir(key) / "checkpoints"

    def last_checkpoint(self, key: str) -> Path | None:
        path = self.checkpoint_dir(key) / "last.ckpt"
        return path if path.exists() else None

    def status(self, key: str) -> str:
        if self.metrics_or_none(key) is not None:
            return "finished"
        path = self.run_dir(key) / "status.json"
        if not path.exists():
            return "pending"
        record = _read_json(path)
        if record is None:
            _warn(path, "its status is taken as interrupted; the next launch resumes the run and rewrites it")
            return "interrupted"
        status = record.get("status", "pending")
        if status == "running" and _dead_here(record):
            return "interrupted"  # its process is gone (kill -9, crash) on this host
        if status == "finished":
            return "interrupted"  # metrics.json, the mark of a finished run, is gone: it resumes to write it
        return status

    @contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """One writer per run: ``<run dir>/lock`` (pid, host) is created exclusively (O_EXCL, atomic also on
        NFS v3+) for as long as the run trains. A lock whose holder died on this host is stale and taken over;
        a live holder, or one on another host (not checkable from here), raises RunBusy."""
        path = self.run_dir(key) / "lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        for _ in range(2):
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = _read_lock(path)
                if not (_dead_here(holder) or holder.get("unreadable")):
                    raise RunBusy(key, holder) from None
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(descriptor, "w") as handle:
                json.dump(mine, handle)
            break
        else:
            raise RunBusy(key, _read_lock(path))
        try:
            yield
        finally:
            if _read_lock(path).get("pid") == mine["pid"]:
                path.unlink(missing_ok=True)

    def is_finished(self, key: str) -> bool:
        return self.status(key) == "finished"

    def set_status(self, key: str, status: str, **extra: Any) -> None:
        assert status in STATUSES, status
        atomic_write_json(self.run_dir(key) / "status.json", {"status": status, "time": time.time(),
                                                              "pid": os.getpid(), "host": socket.gethostname(),
                                                              **extra})

    def write_run_config(self, key: str, record: dict) -> Path:
        path = self.run_dir(key) / "run.yaml"
        atomic_write_text(path, yaml.safe_dump(record, sort_keys=False))
        return path

    def read_run_config(self, key: str) -> dict:
        return yaml.safe_load((self.run_dir(key) / "run.yaml").read_text())

    def finish(self, key: str, metrics: dict, wall_seconds: float) -> None:
        """Write metrics.json (the mark of a finished run) and the final status."""
        atomic_write_json(self.run_dir(key) / "metrics.json", {**metrics, "wall_seconds": wall_seconds})
        self.set_status(key, "finished", wall_seconds=wall_seconds)

    def metrics(self, key: str) -> dict:
        return json.loads((self.run_dir(key) / "metrics.json").read_text())

    def metrics_or_none(self, key: str) -> dict | None:
        """The run's metrics, or None when it has not finished. An unreadable metrics.json (truncated, edited)
        is set aside as metrics.json.corrupt with a warning: the run then counts as interrupted, and resuming
        from its final checkpoint writes it again (the logged metrics travel with the checkpoint)."""
        path = self.run_dir(key) / "metrics.json"
        if not path.exists():
            return None
        metrics = _read_json(path)
        if metrics is None:
            _warn(path, "set aside as metrics.json.corrupt; the run resumes from its last checkpoint to rewrite it")
            try:
                path.replace(path.with_name("metrics.json.corrupt"))
            except OSError:
                pass  # a read-only store: the warning stands, the run counts as unfinished
        return metrics

    def finished_runs(self, stage: str | None = None) -> list[dict]:
        """Every finished run as {'key', 'stage', 'params', 'config', 'metrics', 'dir'} (a run whose run.yaml
        is unreadable is left out with a warning; reports read the plan instead: results.plan_results)."""
        rows = []
        for metrics_path in sorted(self.root.glob("*/metrics.json")):
            run_dir = metrics_path.parent
            metrics = self.metrics_or_none(run_dir.name)
            try:
                record = yaml.safe_load((run_dir / "run.yaml").read_text())
                run_stage, params, config = record["stage"], record["params"], record["config"]
            except (OSError, yaml.YAMLError, TypeError, KeyError):
                _warn(run_dir / "run.yaml", "this run is left out of the list (the study command rewrites it)")
                continue
            if metrics is None or (stage is not None and run_stage != stage):
                continue
            rows.append({"key": run_dir.name, "stage": run_stage, "params": params, "config": config,
                         "metrics": metrics, "dir": run_dir})
        return rows
