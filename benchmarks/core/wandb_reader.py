"""Read an offline W&B run (``run-<id>.wandb``) back: history, summary, config, metric definitions.

wandb 0.31 ships no reader. The file is leveldb-log framed: a 7-byte header (b":W&B", magic 0xBEE1,
version 0), then 32 KiB blocks of records, each with a 7-byte header (crc32, length, type FULL/FIRST/
MIDDLE/LAST), zero padding when fewer than 7 bytes remain in a block. Each payload is a
``wandb_internal_pb2.Record``. Used by the tests to prove what reached W&B.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


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


def _payloads(data: bytes):
    if data[:4] != b":W&B":
        raise ValueError("not a W&B offline run file (missing ':W&B' header)")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - (pos % BLOCK)
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left_in_block
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def _unflatten_config(items) -> dict:
    config: dict = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        value = json.loads(item.value_json)
        if isinstance(value, dict) and set(value) == {"value", "desc"}:
            value = value["value"]
        config[key] = value
    return config


def read_offline_run(path: str | Path, wait: float = 30.0) -> OfflineRun:
    """Parse an offline run directory (``offline-run-*``) or its ``run-<id>.wandb`` file.

    ``wandb.finish()`` can return before wandb-core has flushed the file: wait up to ``wait`` seconds
    for the run's final "exit" record before reading (a crashed run has none; it is read as it is).
    """
    import time

    deadline = time.time() + wait
    while True:
        run, finished = _read_once(path)
        if finished or time.time() >= deadline:
            return run
        time.sleep(0.2)


def _read_once(path: str | Path) -> tuple[OfflineRun, bool]:
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if not files:
            raise FileNotFoundError(f"no run-*.wandb file in {path}; is this an offline W&B run directory?")
        path = files[0]
    run = OfflineRun(run_id=path.stem.removeprefix("run-"))
    finished = False
    for payload in _payloads(path.read_bytes()):
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except Exception:  # noqa: BLE001 - a record still being written: stop here
            break
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run.history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "run":
            run.config.update(_unflatten_config(record.run.config.update))
            run.group, run.job_type, run.name = record.run.run_group, record.run.job_type, record.run.display_name
        elif kind == "config":
            run.config.update(_unflatten_config(record.config.update))
        elif kind == "exit":
            finished = True
        elif kind == "metric":
            run.metric_definitions.append({"name": record.metric.name or record.metric.glob_name,
                                           "step_metric": record.metric.step_metric})
    for row in run.history:  # offline 0.31 writes no wandb-summary.json: last value wins
        for key, value in row.items():
            if not key.startswith("_"):
                run.summary.setdefault(key, value)
    return run, finished


def find_offline_runs(wandb_dir: str | Path) -> list[Path]:
    """All offline run directories under a W&B dir (``<dir>/wandb/offline-run-*`` or ``<dir>/offline-run-*``)."""
    root = Path(wandb_dir)
    return sorted({p.parent for p in root.rglob("run-*.wandb") if p.parent.name.startswith("offline-run-")})
