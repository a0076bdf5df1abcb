"""The what-is-transferred study through the shared study tester: the smoke profile end to end (every stage
and analysis, a few batches; run once for this class), and every finding made to hold and to fail."""

import json

import pytest

from benchmarks.core.runstore import RunStore
from benchmarks.core.training import kept_weights
from benchmarks.core.wandb_reader import find_offline_runs, read_offline_run
from benchmarks.studies.transfer.protocol import STAGES
from tests.benchmarks.study_tester import StudyTester

from .fabricate import fabricate_results


def _logged(run: dict):
    (offline,) = find_offline_runs(run["dir"] / "wandb")
    return read_offline_run(offline)


class TestTransferStudy(StudyTester):
    study_name = "transfer"
    resume_stage = "train"  # the first R-T run (it needs no other run)
    resume_overrides = ("sources.glyphs.train.epochs=20",)

    def fabricate(self, finding_id, holds, tmp_path):
        """The plan's runs with numbers under which every finding holds, or every finding is reversed."""
        return fabricate_results(holds, tmp_path)

    @pytest.fixture(scope="class")
    def store(self, smoke):
        _, results = smoke
        return RunStore("transfer", results)

    def test_every_stage_of_the_plan_finished_with_metrics(self, store):
        plan = self.study.plan(self.smoke_cfg())
        assert list(dict.fromkeys(r.stage for r in plan)) == list(STAGES)
        for run in plan:
            metrics = store.metrics(run.key)
            if run.stage in ("train", "checkpoint"):
                assert 0.0 <= metrics["test_acc"] <= 1.0 and 0.0 <= metrics["speed_train_acc"] <= 1.0

    def test_train_runs_cover_both_arms_every_block_size_rate_and_seed(self, store):
        cfg = self.smoke_cfg()
        seen = {(r["params"]["source"], r["params"]["init"], r["params"]["block"], r["params"]["lr"],
                 r["params"]["seed"]) for r in store.finished_runs("train")}
        rates, seeds = cfg["sources"]["glyphs"]["train"]["lrs"], cfg["seeds"]
        expected = {("glyphs", arm, b, lr, s) for arm in ("pretrained", "random") for b in (1, 28) for lr in rates
                    for s in seeds} | {("fmnist", "pretrained", 28, lr, s) for lr in rates for s in seeds}
        assert seen == expected  # R-T runs are shared: kept once, under glyphs
        for run in store.finished_runs("train"):
            assert (run["dir"] / "init.pt").exists() and (run["dir"] / "final.pt").exists()
            assert run["metrics"]["lr"] == run["params"]["lr"]
            history = json.loads((run["dir"] / "history.json").read_text())
            epochs = cfg["sources"]["glyphs"]["train"]["epochs"]
            assert [row["epoch"] for row in history] == list(range(1, epochs + 1))

    def test_pretraining_keeps_its_checkpoints_and_scores_them(self, store):
        runs = {r["params"]["source"]: r for r in store.finished_runs("pretrain")}
        assert set(runs) == {"glyphs", "fmnist"}
        steps = sorted(kept_weights(runs["glyphs"]["dir"] / "weights"))
        assert steps == [0, 2, 4]  # the random init, half of the 4 smoke steps, and the end
        assert all(0.0 <= runs["glyphs"]["metrics"][f"source_acc@{s}"] <= 1.0 for s in steps)
        assert runs["glyphs"]["metrics"]["source_classes"] == 50  # glyph characters of the disjoint alphabets
        assert sorted(kept_weights(runs["fmnist"]["dir"] / "weights")) == [4]

    def test_pairs_give_cka_distances_and_barriers_for_each_pair_kind_with_bn_recomputed(self, store):
        (pairs,) = store.finished_runs("pairs")
        metrics = pairs["metrics"]
        for kind in ("PT-PT", "PT-RT", "RT-RT"):
            assert 0.0 <= metrics[f"cka/{kind}/0-1/block1"] <= 1.0 + 1e-9
            assert metrics[f"l2/{kind}/0-1/total"] > 0.0 and f"l2_buffers/{kind}/0-1" in metrics
            assert metrics[f"loss_barrier/{kind}/0-1"] >= 0.0
            curve = json.loads((pairs["dir"] / "interp" / kind / "0-1.json").read_text())
            assert curve["bn_recomputed"] is True and curve["lambdas"] == [0.0, 0.5, 1.0]
        logged = _logged(pairs)
        assert logged.group == "transfer" and logged.job_type == "pairs"
        assert len(logged.series("interp/RT-RT/0-1/loss")) == 3
        assert len(logged.series("cka/PT-PT")) == 5  # one value per layer group of conv4
        assert {"name": "interp/RT-RT/0-1/loss", "step_metric": "interp/RT-RT/0-1/lambda"} in logged.metric_definitions
        assert {metrics["lr/pretrained"], metrics["lr/random"]} <= {0.02, 0.05}

    def test_criticality_runs_measure_every_module_against_their_own_start(self, store):
        runs = store.finished_runs("criticality")
        assert {(r["params"]["init"], r["params"]["seed"]) for r in runs} == {
            (a, s) for a in ("pretrained", "random") for s in (0, 1)}
        for run in runs:
            assert [run["metrics"][f"depth/{m}"] for m in ("block1", "block2", "block3", "block4", "head")] == [
                0, 1, 2, 3, 4]
            assert run["metrics"]["lr"] in (0.02, 0.05)
            crit = json.loads((run["dir"] / "crit.json").read_text())
            assert crit["bound"] == "absolute" and crit["noise"] == "absolute" and crit["bn_recomputed"] is True
            assert crit["search"] == "bisect"

    def test_training_curves_and_test_accuracy_reach_wandb(self, store):
        run = next(r for r in store.finished_runs("train") if r["params"]["block"] == 1)
        logged = _logged(run)
        assert logged.job_type == "train" and logged.config["params.block"] == 1
        assert len(logged.series("train/acc")) == 2 and logged.series("test/acc")
        assert logged.summary["final/speed_train_acc"] == pytest.approx(run["metrics"]["speed_train_acc"])

    def test_report_has_findings_every_analysis_and_figures(self, store):
        text = (store.root / "report.md").read_text()
        assert "| id | finding | verdict |" in text and "docs/protocols/transfer.md" in text
        for section in ("Block shuffle", "Feature similarity", "Performance barriers", "Module criticality",
                        "pretraining checkpoints"):
            assert section in text
        assert "recomputed at every λ" in text
        assert "Learning rates: the same grid for both arms" in text
        for name in ("accuracy", "speed", "cka", "interpolation", "criticality", "checkpoints"):
            assert (store.root / "figures" / f"glyphs_{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert text.count("# What is being transferred?") == 1  # written once, by the core, after the runs
