"""The shared study tester: what every study must do, each study's test is a subclass that says how.

A subclass sets ``study_name`` and implements ``fabricate(finding_id, holds, tmp_path)``: finished runs,
made up, under which that finding must come out ``holds`` (holds=True) or ``does not hold``
(holds=False). The base then checks, for the study as the README runs it (``make bench-<study>
PROFILE=smoke``):
- the smoke profile runs end to end and writes report.md, summary.csv and findings.json;
- a second run of the same command trains nothing;
- the report reads only the current plan's runs (a run of another config in the same store is ignored);
- every finding id in findings.json can be made to hold and to fail with fabricated runs;
- a run interrupted (Ctrl-C) after a checkpoint resumes to exactly the uninterrupted run's metrics.json: a
  subclass names the run with ``resume_stage`` (a stage whose runs need no other run) and ``resume_overrides``
  (``--set`` values under which that run trains several checkpointed epochs of the smoke profile);
- ``make dashboards`` writes the golden W&B view spec, and every panel finds its keys in the smoke runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.core.dashboards import IMPLICIT_X, line_panels, view_spec
from benchmarks.core.pipeline import decide, publish
from benchmarks.core.registry import get_study
from benchmarks.core.results import PlanResults
from benchmarks.core.runner import resolve_config
from benchmarks.core.runstore import RunStore
from benchmarks.core.stats import VERDICTS
from benchmarks.core.study import Run
from benchmarks.core.wandb_reader import find_offline_runs, read_offline_run
from tests.benchmarks.dashboard_keys import dashboard_problems

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "dashboards"


def run_make(study: str, results: Path, *extra: str) -> subprocess.CompletedProcess:
    """``make bench-<study> PROFILE=smoke`` into ``results``, as the README tells users to run it."""
    env = {**os.environ, "TSUITE_RESULTS": str(results)}
    args = " ".join(["--results", str(results), *extra])
    return subprocess.run(["make", "-s", "-C", str(REPO), f"bench-{study}", "PROFILE=smoke", f"ARGS={args}"],
                          capture_output=True, text=True, env=env, timeout=1800)


def fabricated(study: str, cfg: dict, runs: list[dict], root: Path | None = None) -> PlanResults:
    """PlanResults of made-up finished runs (run-store rows); ``root`` is where a report would be written."""
    planned = [Run(study, r["stage"], r["params"], r["config"]) for r in runs]  # as if the plan were these runs
    return PlanResults(study=study, profile=str(cfg.get("profile", "tiny")), planned=planned, runs=runs, cfg=cfg,
                       root=root or Path("/nonexistent"))


def row(stage: str, params: dict, metrics: dict, run_dir: Path | None = None, config: dict | None = None,
        key: str | None = None) -> dict:
    """One fabricated run-store row."""
    key = key or f"{stage}__" + "_".join(f"{k}={v}" for k, v in params.items())
    return {"key": key, "stage": stage, "params": dict(params), "config": dict(config or {}),
            "metrics": dict(metrics), "dir": run_dir or Path("/nonexistent") / key}


class StudyTester:
    """Subclass with ``study_name = "<study>"`` and a ``fabricate`` method; see the module docstring."""

    study_name: str = ""
    smoke_args: tuple[str, ...] = ()
    resume_stage: str = ""
    resume_overrides: tuple[str, ...] = ()
    timing_metrics: tuple[str, ...] = ("wall_seconds", "train_seconds")  # clock readings, not results

    def fabricate(self, finding_id: str, holds: bool, tmp_path: Path) -> PlanResults:
        raise NotImplementedError(f"{type(self).__name__} has no fabricated runs for finding {finding_id!r}")

    # -- fixtures --------------------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    def smoke(self, tmp_path_factory):
        """The smoke profile once per study, through make: (first CompletedProcess, results dir)."""
        results = tmp_path_factory.mktemp(f"{self.study_name}_smoke")
        done = run_make(self.study_name, results, *self.smoke_args)
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
        return done, results

    @property
    def study(self):
        return get_study(self.study_name)

    def smoke_cfg(self) -> dict:
        return resolve_config(self.study_name, "smoke", list(self._set_overrides()))

    def _set_overrides(self):
        args = list(self.smoke_args)
        for flag, value in zip(args, args[1:]):
            if flag == "--set":
                yield value

    # -- the checks every study gets -------------------------------------------------------------------
    def test_smoke_run_writes_report_summary_and_findings(self, smoke):
        done, results = smoke
        root = results / self.study_name
        assert (root / "report.md").exists() and (root / "summary.csv").exists()
        data = json.loads((root / "findings.json").read_text())
        assert data["complete"] is False and "smoke" in data["completeness"]
        assert sorted(f["id"] for f in data["findings"]) == sorted(c.id for c in self.study.claims)
        for finding in data["findings"]:
            assert finding["verdict"] in VERDICTS and finding["unit"] and finding["test"]
        report = (root / "report.md").read_text()
        assert "Incomplete" in report and "findings.json" in done.stdout

    def test_a_second_run_trains_nothing(self, smoke):
        _, results = smoke
        again = run_make(self.study_name, results, *self.smoke_args)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "done in" not in again.stderr and "already finished" in again.stderr

    def test_the_report_uses_only_the_current_plans_runs(self, smoke, tmp_path):
        """A finished run of another config in the same store (another key) is left out of the report."""
        _, results = smoke
        store_root = tmp_path / "results"
        shutil.copytree(results, store_root)
        store = RunStore(self.study_name, store_root)
        cfg = self.smoke_cfg()
        planned = {r.key for r in self.study.plan(cfg)}
        first = sorted(planned)[0]
        stray = store.run_dir(first).with_name(first.rsplit("__", 1)[0] + "__0ther0ne")
        shutil.copytree(store.run_dir(first), stray)
        published = publish(self.study, cfg, store)
        assert published.results.n_finished == len(planned) == published.results.n_planned
        assert stray.name not in {r["key"] for r in published.results.runs}
        data = json.loads(published.findings_json.read_text())
        assert data["completeness"].startswith(f"{len(planned)} of {len(planned)} runs")

    def test_every_finding_holds_and_fails_with_fabricated_runs(self, tmp_path):
        """For every claim id: fabricated runs where it holds, and where it does not hold."""
        study = self.study
        missing, wrong = [], []
        for claim in study.claims:
            for holds in (True, False):
                try:
                    results = self.fabricate(claim.id, holds, tmp_path / f"{claim.id}-{holds}")
                except NotImplementedError:
                    missing.append(claim.id)
                    break
                verdicts = {f.id: f.verdict for f in decide(study, results)}
                expected = "holds" if holds else "does not hold"
                if verdicts[claim.id] != expected:
                    wrong.append(f"{claim.id}: expected {expected!r}, got {verdicts[claim.id]!r}")
        assert not missing, f"findings without a flip test: {missing}"
        assert not wrong, "\n".join(wrong)

    # -- the W&B dashboard ------------------------------------------------------------------------------
    def test_make_dashboards_writes_the_golden_view_spec_offline(self, tmp_path):
        """``make dashboards STUDY=<study>`` (tiny profile, no login, no network) writes a view spec that loads
        back, names the x-axis of every line panel, and equals the golden file in tests/benchmarks/dashboards/
        (after a deliberate change: TSUITE_UPDATE_GOLDEN=1 rewrites it; review the diff)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
        done = subprocess.run(["make", "-s", "-C", str(REPO), "dashboards", f"STUDY={self.study_name}",
                               f"ARGS=--results {tmp_path}"], capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "to publish it" in done.stdout and "--wandb online" in done.stdout
        spec = json.loads((tmp_path / self.study_name / "dashboard.json").read_text())
        assert spec == view_spec(self.study.dashboard(resolve_config(self.study_name, "tiny", [])), "tiny")
        assert all(p["config"]["xAxis"] not in IMPLICIT_X for p in line_panels(spec)) and line_panels(spec)
        golden = GOLDEN / f"{self.study_name}.tiny.json"
        if os.environ.get("TSUITE_UPDATE_GOLDEN"):
            golden.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
        assert spec == json.loads(golden.read_text()), f"{golden} differs: a panel changed (see the docstring)"

    def test_every_dashboard_panel_finds_its_keys_in_the_smoke_runs(self, smoke):
        """Each panel's keys exist in the offline W&B runs of the smoke profile (read with wandb's own reader),
        each line's x-axis increasing within a run: a change to what a study logs that breaks a panel fails."""
        _, results = smoke
        runs = [read_offline_run(part) for part in find_offline_runs(results / self.study_name)]
        assert runs and all(r.config.get("profile") == "smoke" for r in runs)
        problems = dashboard_problems(self.study.dashboard(self.smoke_cfg()), runs)
        assert not problems, "\n".join(problems)

    def test_a_run_interrupted_at_a_checkpoint_resumes_to_the_uninterrupted_metrics(self, tmp_path):
        """Ctrl-C once the run has a checkpoint, then the same command: metrics.json equals the uninterrupted
        run's (CPU, same seed, one thread), RNG streams, samplers, optimiser and schedulers included."""
        assert self.resume_stage, f"{type(self).__name__} must name resume_stage and resume_overrides"
        overrides = ["threads=1", *self.resume_overrides] if "threads" in self.smoke_cfg() else [
            *self.resume_overrides]
        cfg = resolve_config(self.study_name, "smoke", overrides)
        run = next(r for r in self.study.plan(cfg) if r.stage == self.resume_stage and not r.needs)
        command = [sys.executable, "-m", "benchmarks", self.study_name, "--profile", "smoke", "--keys", run.key,
                   "--jobs", "1", "--accelerator", "cpu", *[a for o in overrides for a in ("--set", o)]]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}

        def launch(results: Path, **popen):
            return subprocess.Popen([*command, "--results", str(results)], cwd=REPO, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)

        whole = launch(tmp_path / "whole")
        assert whole.wait(timeout=900) == 0, whole.stdout.read()[-3000:]
        part = launch(tmp_path / "part", start_new_session=True)
        run_dir = RunStore(self.study_name, tmp_path / "part").run_dir(run.key)
        deadline = time.time() + 600
        while time.time() < deadline and part.poll() is None and not list(run_dir.glob("**/*.ckpt")):
            time.sleep(0.1)
        os.killpg(part.pid, signal.SIGINT)
        output, _ = part.communicate(timeout=300)
        assert part.returncode == 130, f"the run was not interrupted after its first checkpoint:\n{output[-3000:]}"
        again = launch(tmp_path / "part")
        output, _ = again.communicate(timeout=900)
        assert again.returncode == 0 and "(resuming)" in output, output[-3000:]

        def metrics(results: Path) -> dict:
            values = RunStore(self.study_name, results).metrics(run.key)
            return {k: v for k, v in values.items() if k not in self.timing_metrics}

        resumed, whole_metrics = metrics(tmp_path / "part"), metrics(tmp_path / "whole")
        differ = {k: (resumed.get(k), whole_metrics.get(k)) for k in resumed.keys() | whole_metrics.keys()
                  if resumed.get(k) != whole_metrics.get(k)}
        assert not differ, f"resumed vs uninterrupted: {differ}"
