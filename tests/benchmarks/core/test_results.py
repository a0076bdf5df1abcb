"""The core hands a study only the finished runs of the current plan, and says how complete they are."""

from __future__ import annotations

from benchmarks.core.results import by_seed, plan_results
from benchmarks.core.runstore import RunStore
from benchmarks.core.study import Run


class TwoRuns:
    name = "toy"

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def plan(self, cfg):
        return [Run("toy", "train", {"seed": s}, {"lr": self.lr}) for s in (0, 1)]


def finish(store: RunStore, run: Run, value: float) -> None:
    store.write_run_config(run.key, run.record())
    store.finish(run.key, {"acc": value}, wall_seconds=1.0)


def test_runs_of_another_config_in_the_same_store_are_left_out(tmp_path):
    store = RunStore("toy", tmp_path)
    old, new = TwoRuns(0.1), TwoRuns(0.01)
    for run in old.plan({}):
        finish(store, run, 0.5)
    finish(store, new.plan({})[0], 0.9)
    results = plan_results(new, {"profile": "tiny"}, store)
    assert [r["metrics"]["acc"] for r in results.runs] == [0.9]
    assert results.n_planned == 2 and not results.complete and results.completeness == "1 of 2 runs"
    assert results.root == store.root
    finish(store, new.plan({})[1], 0.7)
    assert plan_results(new, {"profile": "tiny"}, store).complete


def test_a_smoke_profile_is_never_complete(tmp_path):
    store = RunStore("toy", tmp_path)
    study = TwoRuns(0.1)
    for run in study.plan({}):
        finish(store, run, 0.5)
    results = plan_results(study, {"profile": "smoke"}, store)
    assert not results.complete and "smoke profile" in results.completeness


def test_by_seed_pairs_each_runs_seed_with_its_value_and_drops_missing_ones(tmp_path):
    store = RunStore("toy", tmp_path)
    study = TwoRuns(0.1)
    for run, value in zip(study.plan({}), (0.25, 0.75)):
        finish(store, run, value)
    results = plan_results(study, {}, store)
    assert by_seed(results.where("train"), lambda r: r["metrics"]["acc"]) == [(0, 0.25), (1, 0.75)]
    assert by_seed(results.runs, lambda r: r["metrics"].get("missing")) == []
    assert results.where("train", seed=1)[0]["metrics"]["acc"] == 0.75
