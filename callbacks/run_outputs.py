"""Where callback results go: atomic files in the run directory and, when present, the W&B run.

One place decides three things for every callback: which process writes (global rank 0 only), how
files are written (``analysis.files.atomic_write``: temp file in the same directory, then
``os.replace``, so a reader never sees a half-written file), and how W&B is reached (the run behind a
``WandbLogger`` among ``trainer.loggers``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from analysis.files import atomic_write

STEP_KEY = "trainer/global_step"  # the trainer step in W&B (pinned by the suite's logger; dashboards name it)


def find_wandb_run(trainer: Any) -> Any | None:
    """The W&B run of the first ``WandbLogger`` among ``trainer.loggers``, or None (also on ranks > 0)."""
    return wandb_run_of(getattr(trainer, "loggers", None) or [], getattr(trainer, "global_rank", 0))


def wandb_run_of(loggers: Iterable[Any], global_rank: int = 0) -> Any | None:
    """The W&B run of the first ``WandbLogger`` among ``loggers``, or None (also on ranks > 0)."""
    from lightning.pytorch.loggers import WandbLogger

    if global_rank != 0:
        return None
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            return logger.experiment
    return None


def json_safe(value: Any) -> Any:
    """Turn tensors/arrays/numpy scalars into lists and floats; non-finite floats become None."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # torch.Tensor, np.ndarray, numpy scalar
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    rows = [json_safe(dict(r)) for r in rows]
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue()))


def write_figure(path: str | os.PathLike, figure: Any, dpi: int = 110) -> Path:
    """Save a matplotlib ``Figure`` as PNG."""
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))


def write_arrays(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """Save named tensors as ``.safetensors`` or ``.npz`` (chosen by the suffix of ``path``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in arrays.items()}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
    if path.suffix == ".npz":
        numpy_arrays = {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v)
                        for k, v in arrays.items()}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **numpy_arrays)

        return atomic_write(path, write)
    raise ValueError(f"cannot write arrays to {path.name}: unknown suffix {path.suffix!r}. "
                     "Fix: use a path ending in .safetensors or .npz")


def read_arrays(path: str | os.PathLike) -> dict[str, Any]:
    """Read back what ``write_arrays`` wrote (torch tensors)."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    with np.load(path) as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


class RunOutputs:
    """The outputs of one callback in one run: files under ``out_dir`` and the W&B run, rank 0 only.

    On ranks > 0 every method is a no-op, so callbacks can compute identically on every rank and
    call these unconditionally.
    """

    def __init__(self, trainer: Any, out_dir: str | os.PathLike | None = None) -> None:
        self.enabled = getattr(trainer, "is_global_zero", True)
        root = out_dir if out_dir is not None else getattr(trainer, "default_root_dir", None) or "."
        self.dir = Path(root)
        self.run = find_wandb_run(trainer) if self.enabled else None

    @classmethod
    def of_loggers(cls, loggers: Iterable[Any], out_dir: str | os.PathLike, global_rank: int = 0) -> RunOutputs:
        """The outputs of work done outside a Trainer (analyses of trained weights) in a run's directory."""
        outputs = cls.__new__(cls)
        outputs.enabled, outputs.dir = global_rank == 0, Path(out_dir)
        outputs.run = wandb_run_of(loggers, global_rank)
        return outputs

    # -- files -------------------------------------------------------------------------------------
    def json(self, name: str, obj: Any) -> Path | None:
        return write_json(self.dir / name, obj) if self.enabled else None

    def csv(self, name: str, rows: Iterable[Mapping[str, Any]]) -> Path | None:
        return write_csv(self.dir / name, rows) if self.enabled else None

    def figure(self, name: str, figure: Any, wandb_key: str | None = None) -> Path | None:
        """Write the PNG and, with ``wandb_key``, log it as a ``wandb.Image``."""
        if not self.enabled:
            return None
        path = write_figure(self.dir / name, figure)
        if wandb_key and self.run is not None:
            import wandb

            self.run.log({wandb_key: wandb.Image(str(path))})
        return path

    def arrays(self, name: str, arrays: Mapping[str, Any]) -> Path | None:
        return write_arrays(self.dir / name, arrays) if self.enabled else None

    # -- W&B ---------------------------------------------------------------------------------------
    def define_curve(self, prefix: str, step_key: str, keys: Iterable[str] = ()) -> None:
        """Plot ``<prefix>/*`` against ``step_key`` instead of the global step.

        The glob follows the suite's convention; the exact names are defined too because W&B picks
        among several matching globs (Lightning defines ``*``) in no fixed order, exact names win.
        """
        if self.run is None:
            return
        self.run.define_metric(step_key)
        self.run.define_metric(f"{prefix}/*", step_metric=step_key)
        for key in keys:
            if key != step_key:
                self.run.define_metric(key, step_metric=step_key)

    def log(self, row: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.log(dict(row))

    def table(self, key: str, rows: list[Mapping[str, Any]]) -> None:
        if self.run is None or not rows:
            return
        import wandb

        columns = list(rows[0])
        data = [[json_safe(r.get(c)) for c in columns] for r in rows]
        self.run.log({key: wandb.Table(columns=columns, data=data)})

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        for key, value in values.items():
            self.run.summary[key] = json_safe(value)
