"""What a study is: a plan of runs (stages x grid) and how to execute one run.

A ``Study`` turns a profile config into ``Run``s with stable keys, executes one run given a
``RunContext`` (run directory, loggers, a Trainer factory with checkpoint/resume), and writes a
report from the finished runs. The runner (benchmarks/runner.py) does the rest: skipping finished
runs, resuming interrupted ones, progress, summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.core.runstore import RunStore


@dataclass(frozen=True)
class Run:
    """One run of a study. ``params`` are the grid values that vary; ``config`` is fully resolved."""

    study: str
    stage: str
    params: Mapping[str, Any]
    config: Mapping[str, Any]
    needs: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Readable and stable: ``<stage>__k=v_k=v__<hash of the resolved config>``."""
        readable = "_".join(f"{k}={_slug(v)}" for k, v in self.params.items())
        digest = hashlib.sha1(json.dumps([self.stage, dict(self.params), dict(self.config)], sort_keys=True,
                                         default=str).encode()).hexdigest()[:8]
        return f"{self.stage}__{readable}__{digest}" if readable else f"{self.stage}__{digest}"

    @property
    def name(self) -> str:
        """A W&B display name that says what varies."""
        return " ".join([self.stage] + [f"{k}={v}" for k, v in self.params.items()])

    def record(self) -> dict:
        return {"study": self.study, "stage": self.stage, "params": dict(self.params),
                "config": _plain(self.config), "needs": list(self.needs), "key": self.key}


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value))[:40]


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _unloadable(path: Path) -> str | None:
    """Why a checkpoint cannot be loaded safely (None when it can): torch.load with weights_only=True."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- any failure to load means: do not resume from it
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    return None


def global_rank() -> int:
    """Rank of this process under DDP/SLURM (0 when alone): only rank 0 writes the run store."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


@dataclass
class RunContext:
    """Everything a study needs to execute one run."""

    run: Run
    store: RunStore
    devices: int | str = 1
    num_nodes: int = 1
    accelerator: str = "cpu"
    strategy: str = "auto"
    profile: str = ""
    _loggers: list | None = field(default=None, repr=False)

    @property
    def run_dir(self) -> Path:
        return self.store.run_dir(self.run.key)

    @property
    def seed(self) -> int:
        return int(self.run.params.get("seed", self.run.config.get("seed", 0)))

    def output_of(self, key: str) -> Path:
        """The run directory of a run this one depends on (it must be finished)."""
        if not self.store.is_finished(key):
            raise RuntimeError(f"run {key} is needed by {self.run.key} but has not finished")
        return self.store.run_dir(key)

    def loggers(self) -> list:
        from benchmarks.core.wandb_logger import make_loggers

        if self._loggers is None:
            self._loggers = make_loggers(self.run.study, self.run.stage, self.run.key, self.run.name,
                                         dict(self.run.config), dict(self.run.params), self.run_dir,
                                         profile=self.profile)
        return self._loggers

    def trainer(self, max_epochs: int | None = None, callbacks: list | None = None, checkpoint: bool = True,
                **kwargs: Any):
        """A Lightning Trainer wired to this run: loggers, last-checkpoint every epoch, devices."""
        import lightning as L
        from lightning.pytorch.callbacks import ModelCheckpoint

        from benchmarks.core.training import EpochSeededRandomness, LoggedMetricsInCheckpoint

        # exact resume from an epoch's checkpoint (this run's or a study's own): the logged metrics and the
        # random streams of every later epoch are those of the uninterrupted run
        cbs = [*(callbacks or []), LoggedMetricsInCheckpoint(), EpochSeededRandomness(self.seed)]
        if checkpoint:
            cbs.append(ModelCheckpoint(dirpath=self.store.checkpoint_dir(self.run.key), filename="last",
                                       save_last=False, save_top_k=1, every_n_epochs=1,
                                       enable_version_counter=False))
        options: dict[str, Any] = dict(
            default_root_dir=str(self.run_dir), logger=self.loggers(), callbacks=cbs,
            accelerator=self.accelerator, devices=self.devices, num_nodes=self.num_nodes,
            strategy=self.strategy, enable_model_summary=False, log_every_n_steps=1,
            enable_progress_bar=sys.stderr.isatty(), deterministic=False,
        )
        if max_epochs is not None:
            options["max_epochs"] = max_epochs
        options.update(kwargs)
        return L.Trainer(**options)

    def resume_path(self) -> str | None:
        """The checkpoint to resume from: the newest loadable of a SLURM requeue checkpoint and last.ckpt, else None.

        A checkpoint that does not load as tensors and plain data (truncated, corrupt, or holding pickled code:
        ``weights_only`` loading never runs it) is set aside as ``<name>.corrupt`` with a warning; the run then
        resumes from the previous good one, or restarts from scratch, and says so.
        """
        candidates = list(self.run_dir.glob("hpc_ckpt_*.ckpt"))
        last = self.store.last_checkpoint(self.run.key)
        if last is not None:
            candidates.append(last)
        for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
            problem = _unloadable(path)
            if problem is None:
                return str(path)
            others = "resuming from an older checkpoint" if len(candidates) > 1 else "restarting this run from scratch"
            print(f"warning: checkpoint {path} cannot be loaded ({problem}); set aside as {path.name}.corrupt, "
                  f"{others}.", file=sys.stderr)
            if global_rank() == 0:
                try:
                    path.replace(path.with_name(path.name + ".corrupt"))
                except OSError:
                    pass
            candidates.remove(path)
        return None

    def outputs(self):
        """Files in the run directory and the run's W&B run, for work outside a Trainer (rank 0 writes):
        the one route to W&B besides the loggers (callbacks.run_outputs.RunOutputs)."""
        from callbacks.run_outputs import RunOutputs

        return RunOutputs.of_loggers(self.loggers(), self.run_dir, global_rank())

    def close(self) -> None:
        from benchmarks.core.wandb_logger import finish_wandb

        finish_wandb()
        self._loggers = None


class Study(ABC):
    """A benchmark: plan runs from a config, execute one, decide its findings from the finished runs.

    After the runs, the core (benchmarks/core/pipeline.py) hands the study the finished runs of the
    current plan (``PlanResults``); ``findings`` decides every claim of ``claims`` through
    benchmarks.core.stats; the core writes findings.json, and ``write_report`` writes report.md (with
    ``benchmarks.core.report.findings_section``), summary.csv and figures.
    """

    name: str = ""
    protocol: str = ""  # repository path of the study's protocol, e.g. "docs/protocols/maml.md"
    claims: tuple = ()  # every benchmarks.core.findings.Claim this study decides
    run_threads: int = 1  # CPU intra-op threads that still pay off for one run (--jobs auto: cores // this)
    run_memory_gib: float = 2.0  # peak memory of one run's process (--jobs auto stays within MemAvailable)

    @abstractmethod
    def plan(self, cfg: dict) -> list[Run]:
        """All runs, in an order where every run comes after the runs it ``needs``."""

    @abstractmethod
    def execute(self, run: Run, ctx: RunContext) -> dict[str, float]:
        """Train/evaluate one run; return its final metrics (JSON-able). Resume via ctx.resume_path()."""

    @abstractmethod
    def findings(self, results) -> list:
        """One benchmarks.core.findings.Finding per claim, from the finished runs of the plan (PlanResults)."""

    @abstractmethod
    def write_report(self, results, findings: list) -> Path:
        """Write ``report.md`` (+ figures, summary.csv) into the store root; return its path."""

    def shadows(self, cfg: dict) -> dict[str, list[str]]:
        """{general key: the more specific keys of ``cfg`` that override it} (e.g. "seeds" ->
        ["sources.imagenet.seeds"]): a ``--set`` of a general key that a specific one shadows is an error."""
        return {}

    def summary_lines(self, results, findings: list) -> list[str]:
        """A compact table for the terminal at the end of a benchmark (default: none)."""
        return []

    def dashboard(self, cfg: dict):
        """The study's W&B dashboard (``benchmarks.core.dashboards.Dashboard``) for a resolved config."""
        from benchmarks.core.errors import UserError

        raise UserError(f"study {self.name!r} defines no W&B dashboard",
                        "define Study.dashboard(cfg), as the studies under benchmarks/studies/ do")
