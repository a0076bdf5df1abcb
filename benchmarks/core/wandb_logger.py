"""The one logger factory: a W&B run per suite run (offline by default) plus a local CSV copy.

W&B project = ``transfer-suite-<study>``, group = study, job_type = stage, run id derived from the
run key (stable across requeues and re-runs, so a resumed run continues the same W&B run).
``WANDB_MODE=online`` (or ``--wandb online``) switches to online logging.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from pathlib import Path

import wandb
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from benchmarks.core.config import flatten
from benchmarks.core.errors import UserError
from callbacks.run_outputs import STEP_KEY

FLUSH_SECONDS = 1.0  # the offline .wandb file is written at least this often (wandb's default is 15 s): a kill -9
# loses at most this much history, the CSV copy flushes each epoch


def settings() -> wandb.Settings:
    """The W&B settings of every run of the suite: quiet, no console capture, history on disk within a second."""
    return wandb.Settings(console="off", silent=True, x_transaction_log_flush_interval=FLUSH_SECONDS)


def wandb_run_id(study: str, key: str) -> str:
    """A W&B-safe id (<= 64 chars, [a-z0-9-]) that is a pure function of the run key."""
    return f"{study[:12]}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"


def wandb_mode() -> str:
    return os.environ.get("WANDB_MODE", "offline")


def check_online_logging(timeout: float = 5.0) -> None:
    """Fail fast, before any training, when online W&B logging cannot work: no API key (WANDB_API_KEY or a
    netrc entry for the W&B host) or no route to the host. Without this, wandb asks for a key on a batch node
    or retries for ~90 s per run and then fails; offline logging (the default) needs neither."""
    import netrc
    import socket
    from urllib.parse import urlparse

    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = urlparse(url).hostname or "api.wandb.ai"
    offline = "use --wandb offline (the default: runs are kept and uploaded later with `wandb sync`)"
    key = os.environ.get("WANDB_API_KEY")
    if not key:
        try:
            entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
        except (OSError, netrc.NetrcParseError):
            entry = None
        key = entry[2] if entry else None
    if not key:
        raise UserError(f"--wandb online (WANDB_MODE=online) but no W&B API key for {host} is set up",
                        f"run `wandb login` or set WANDB_API_KEY, or {offline}")
    problem = api_key_problem(key)
    if problem:
        raise UserError(f"--wandb online but the W&B API key for {host} is malformed ({problem})",
                        f"run `wandb login` again or correct WANDB_API_KEY, or {offline}")
    port = urlparse(url).port or (443 if url.startswith("https") else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise UserError(f"--wandb online but {host}:{port} cannot be reached ({err})",
                        f"check the network or WANDB_BASE_URL, or {offline}") from None


def api_key_problem(key: str) -> str | None:
    """What wandb's own format check finds wrong with an API key (None: well-formed)."""
    try:
        from wandb.sdk.lib.wbauth.validation import check_api_key
    except ImportError:  # another wandb layout: wandb itself will say so at login
        return None
    return check_api_key(key)


def make_loggers(study: str, stage: str, key: str, name: str, config: dict, params: dict,
                 run_dir: Path, profile: str = "") -> list[Logger]:
    """Loggers for one run; the W&B files land in ``<run_dir>/wandb/``. ``profile`` goes into the W&B config
    so that a dashboard can show one profile's runs."""
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")
    mode = wandb_mode()
    flat = {**flatten(config), **{f"params.{k}": v for k, v in params.items()}, "run_key": key,
            "profile": profile}
    wandb_logger = ContinuingWandbLogger(
        project=f"transfer-suite-{study}",
        name=name,
        id=wandb_run_id(study, key),
        group=study,
        job_type=stage,
        save_dir=str(run_dir),
        offline=mode != "online",
        resume="allow",
        config=flat,
        log_model=False,
        settings=settings(),
    )
    # Lightning always passes wandb's deprecated ``anonymous`` setting, which then warns on every run.
    wandb_logger._wandb_init.pop("anonymous", None)
    csv_logger = AppendingCSVLogger(save_dir=str(run_dir), name="csv", version="")
    return [wandb_logger, csv_logger]


class ContinuingWandbLogger(WandbLogger):
    """A WandbLogger whose resumed run continues the step count of its earlier parts, with its step key pinned.

    Offline, every process that resumes a run writes a new ``offline-run-*`` directory with the same run id,
    and wandb's ``_step`` would start again at 0 (on upload, rows with a step already seen are dropped).
    The first use of the experiment moves the step past the last one logged by the earlier parts, so that
    ``wandb sync`` of all parts (it uploads parts of one run in order of start time) gives one history.
    The trainer step is logged as ``STEP_KEY`` whatever key Lightning's logger uses, since the dashboards
    name it.
    """

    @property
    @rank_zero_experiment
    def experiment(self):
        run = super().experiment
        if not getattr(self, "_continued", False):
            self._continued = True
            run.define_metric(STEP_KEY)
            run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
            last = last_logged_step(Path(self.save_dir or "."), run.id, exclude=Path(run.dir).parent)
            if last is not None:
                run.log({}, step=last + 1, commit=False)
        return run


    def log_metrics(self, metrics, step: int | None = None) -> None:
        super().log_metrics({**metrics, STEP_KEY: step} if step is not None else metrics)  # rank 0 only, as super


def last_logged_step(run_dir: Path, run_id: str, exclude: Path | None = None) -> int | None:
    """The highest ``_step`` in the earlier offline parts of W&B run ``run_id`` under ``run_dir`` (None: none)."""
    from benchmarks.core.wandb_reader import find_offline_runs, read_offline_run

    steps = [step for part in find_offline_runs(run_dir) if part.name.endswith(run_id) and part != exclude
             for step in read_offline_run(part, wait=0).series("_step")]
    return max(steps) if steps else None


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted.

    Lightning deletes the file when the directory is not empty, so a resumed run kept only the epochs
    after its checkpoint. Epochs re-run after the checkpoint appear twice (both rows are real)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class AppendingCSVLogger(CSVLogger):
    """CSVLogger writing through :class:`AppendingExperimentWriter` (rank 0 only, like its parent)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            if self.root_dir:
                self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


FINDINGS_COLUMNS = ("finding", "verdict", "effect", "ci_low", "ci_high", "n", "unit", "p", "mde", "test", "claim",
                    "paper_value", "complete")


def log_findings(study: str, profile: str, findings: list, root: Path) -> str:
    """Log the verdicts as a W&B table ("findings") of a study-level run (job_type "findings"), so that a
    dashboard shows whether each finding holds. The run id is fixed per study and profile: a rebuilt report
    continues the same W&B run. Files land in ``<root>/wandb/``; returns the run id."""
    os.environ.setdefault("WANDB_SILENT", "true")
    run_id = wandb_run_id(study, f"findings-{profile}")
    rows = [[f.id, f.verdict, *map(_finite, (f.effect, f.ci_low, f.ci_high)), f.n, f.unit, _finite(f.p),
             _finite(f.mde), f.test, f.claim, f.paper_value, f.complete] for f in findings]
    run = wandb.init(project=f"transfer-suite-{study}", id=run_id, name=f"findings ({profile})", group=study,
                     job_type="findings", dir=str(root), mode="online" if wandb_mode() == "online" else "offline",
                     resume="allow", config={"profile": profile}, reinit="create_new",
                     settings=settings())
    try:
        run.log({"findings": wandb.Table(columns=list(FINDINGS_COLUMNS), data=rows),
                 **{f"finding/{f.id}/holds": float(f.verdict == "holds") for f in findings}})
    finally:
        run.finish()
    return run_id


def _finite(value: float | None) -> float | None:
    """A number a W&B table can hold (NaN and infinities, e.g. of an unmeasured finding, become empty)."""
    return float(value) if value is not None and math.isfinite(value) else None


def finish_wandb() -> None:
    """Close the active W&B run so its file is complete before the next run starts."""
    if wandb.run is not None:
        wandb.finish()


def sync_hint(results_dir: Path) -> str:
    return f"wandb sync {results_dir}/*/wandb/offline-run-*"
