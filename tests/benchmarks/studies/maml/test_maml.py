"""The MAML study through the shared study tester: the smoke profile end to end (MAML, ANIL and the control,
every analysis, the report; run once for this class), every finding made to hold and to fail with fabricated
runs, the unit of replication (the seed), and the config errors caught before any training."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.core.errors import UserError
from benchmarks.core.pipeline import decide
from benchmarks.core.runner import resolve_config
from benchmarks.core.runstore import RunStore
from benchmarks.core.wandb_reader import find_offline_runs, read_offline_run
from benchmarks.studies.maml.analyse import probe_set
from benchmarks.studies.maml.plan import analysed_steps
from benchmarks.studies.maml.protocol import CLAIMS, MIN_PROBES
from benchmarks.studies.maml.study import MAMLStudy
from benchmarks.studies.maml.train import analysis_inputs, weight_files
from tests.benchmarks.study_tester import StudyTester

from .fabricate import Pattern, fabricate_results

# What reverses each claim, one at a time (every other part of the fabricated picture still holds).
REVERSED = {
    "feature_reuse": Pattern(late=0.8),  # a body layer changes more than the head in the inner loop
    "early_similarity_from_task": Pattern(control_early=0.3, control_late=0.1),  # the control's early layers move most
    "inner_vs_meta_training": Pattern(between=0.9),  # meta-training moves the representations more
}


class TestMAMLStudy(StudyTester):
    study_name = "maml"
    resume_stage = "meta_train"
    resume_overrides = ("maml.meta_steps=100", "maml.steps_per_epoch=4")

    def fabricate(self, finding_id, holds, tmp_path):
        """Four seeds of MAML, ANIL and control runs; ``holds=False`` reverses only ``finding_id``'s part."""
        return fabricate_results(tmp_path, Pattern() if holds else REVERSED[finding_id])

    @pytest.fixture(scope="class")
    def store(self, smoke):
        _, results = smoke
        return RunStore("maml", results)

    # -- the smoke run -------------------------------------------------------------------------------------
    def test_every_planned_run_finished_with_accuracy_and_a_confidence_interval(self, store):
        cfg = self.smoke_cfg()
        plan = MAMLStudy().plan(cfg)
        assert all(not run.needs for run in plan)  # independent runs: the grid runs them side by side
        assert sorted((r.stage, r.params.get("algorithm")) for r in plan) == [
            ("control", None), ("meta_train", "anil"), ("meta_train", "maml")]
        for run in plan:
            metrics = store.metrics(run.key)
            assert 0.0 <= metrics["test_acc"] <= 1.0 and metrics["test_acc_ci95"] > 0
            accuracies = json.loads((store.run_dir(run.key) / "test_accuracies.json").read_text())["accuracies"]
            expected = cfg["maml"]["test_tasks"] if run.stage == "meta_train" else cfg["control"]["test_tasks"]
            assert len(accuracies) == metrics["test_tasks"] == expected

    def test_weights_are_kept_at_the_analysed_checkpoints(self, store):
        cfg = self.smoke_cfg()
        runs = store.finished_runs("meta_train")
        assert len(runs) == 2
        for run in runs:
            expected = analysed_steps(cfg["maml"]["meta_steps"], cfg["analysis"]["checkpoints"])
            assert sorted(weight_files(run["dir"])) == expected

    def test_analysis_covers_every_checkpoint_task_layer_step_and_measure(self, store):
        analysis_cfg = self.smoke_cfg()["analysis"]
        runs = store.finished_runs()
        assert len(runs) == 3
        layers, measures = 5, len(analysis_cfg["measures"])
        later_steps = [s for s in analysis_cfg["record_steps"] if s > 0]
        for run in runs:
            analysis = json.loads((run["dir"] / "analysis.json").read_text())
            checkpoints = sorted(weight_files(run["dir"]))
            # MAML: every checkpoint (every recorded step at the last, the last step before); ANIL and the
            # fine-tuned control: the final checkpoint only
            earlier = len(checkpoints) - 1 if run["params"].get("algorithm") == "maml" else 0
            assert len(analysis["within"]) == ((len(later_steps) + earlier) * analysis_cfg["tasks"] * layers
                                               * measures)
            assert len(analysis["between"]) == (len(checkpoints) - 1) * layers * measures
            assert len(analysis["from_init"]) == len(checkpoints) * layers * measures

    def test_every_network_is_compared_with_its_own_start(self, store):
        """The first checkpoint vs itself is 0 up to float rounding (the probe set is fixed); the control's own rows
        are "control", its fine-tuned rows "finetuned_control"."""
        for run in store.finished_runs():
            analysis = json.loads((run["dir"] / "analysis.json").read_text())
            first = min(r["checkpoint"] for r in analysis["from_init"])
            assert all(abs(r["value"]) < 1e-6 for r in analysis["from_init"] if r["checkpoint"] == first)
            if run["stage"] == "control":
                assert {r["model"] for r in analysis["within"]} == {"finetuned_control"}
                assert {r["model"] for r in analysis["from_init"] + analysis["between"]} == {"control"}

    def test_anil_body_representations_do_not_move_in_the_inner_loop(self, store):
        (anil,) = [r for r in store.finished_runs("meta_train") if r["params"]["algorithm"] == "anil"]
        rows = json.loads((anil["dir"] / "analysis.json").read_text())["within"]
        body = [r["value"] for r in rows if r["layer"] != "head"]
        head = [r["value"] for r in rows if r["layer"] == "head" and r["measure"] == "rsa_dissimilarity"]
        assert body and max(abs(v) for v in body) < 1e-6
        assert max(head) > 1e-3

    def test_report_has_every_finding_the_accuracy_and_the_figures(self, store):
        text = (store.root / "report.md").read_text()
        for claim in CLAIMS:
            assert f"| {claim.id} |" in text
        assert "docs/protocols/maml.md" in text
        assert "### Meta-test accuracy" in text and "Chance is 0.20" in text
        assert ("| model | accuracy | 95% CI over seeds | seeds | tasks per seed | 95% CI over tasks (per seed) | "
                "published |") in text
        for name in ("glyphs_accuracy.png", "glyphs_inner_rsa_dissimilarity.png",
                     "glyphs_maml_base_rsa_dissimilarity.png", "glyphs_control_base_linear_cka_dissimilarity.png"):
            assert (store.root / "figures" / name).read_bytes()[:4] == b"\x89PNG"
        header = (store.root / "summary.csv").read_text().splitlines()[0]
        assert header.startswith("experiment,model,kind,checkpoint,layer,inner_step,measure,mean")

    def test_one_seed_decides_nothing_and_says_two_seeds_are_needed(self, store):
        findings = json.loads((store.root / "findings.json").read_text())["findings"]
        assert [f["verdict"] for f in findings] == ["inconclusive"] * len(CLAIMS)
        for finding in findings:
            assert finding["unit"].startswith("seed") and finding["n"] <= 1
            assert "fewer than 2 seeds" in finding["detail"], finding

    def test_wandb_has_the_runs_grouped_with_inner_step_curves_and_test_accuracy(self, store):
        (maml,) = [r for r in store.finished_runs("meta_train") if r["params"]["algorithm"] == "maml"]
        (offline,) = find_offline_runs(maml["dir"] / "wandb")
        logged = read_offline_run(offline)
        assert logged.group == "maml" and logged.job_type == "meta_train"
        assert logged.config["params.algorithm"] == "maml"
        steps = logged.series("inner_step")
        assert steps == maml["config"]["analysis"]["record_steps"]
        assert len(logged.series("inner/rsa_dissimilarity/head")) == len(steps)
        assert logged.series("test/acc") == [pytest.approx(store.metrics(maml["key"])["test_acc"])]
        assert {"name": "inner/*", "step_metric": "inner_step"} in logged.metric_definitions

    def test_every_run_keeps_a_checkpoint_to_resume_from(self, store):
        for run in store.finished_runs():
            assert (run["dir"] / "checkpoints" / "last.ckpt").exists(), run["key"]


# -- the unit of replication ---------------------------------------------------------------------------------
def test_the_tasks_of_one_seed_count_once(tmp_path):
    """Many tasks of one meta-trained network are one measurement: n is the number of seeds, not of tasks."""
    study = MAMLStudy()
    one = {f.id: f for f in decide(study, fabricate_results(tmp_path / "one", seeds=(0,)))}
    four = {f.id: f for f in decide(study, fabricate_results(tmp_path / "four", seeds=(0, 1, 2, 3)))}
    for claim in CLAIMS:
        assert (one[claim.id].verdict, one[claim.id].n) == ("inconclusive", 1)
        assert "fewer than 2 seeds" in one[claim.id].detail
        assert (four[claim.id].verdict, four[claim.id].n) == ("holds", 4)


def test_early_similarity_is_inconclusive_when_maml_itself_shows_no_depth_gap(tmp_path):
    """Nothing to explain: MAML's layers near the input change as much as its later ones in the inner loop."""
    pattern = Pattern(early=0.15, late=0.05)
    findings = {f.id: f for f in decide(MAMLStudy(), fabricate_results(tmp_path, pattern))}
    assert findings["early_similarity_from_task"].verdict == "inconclusive"
    assert "MAML itself shows no significant gap" in findings["early_similarity_from_task"].detail


def test_feature_reuse_has_no_absolute_threshold(tmp_path):
    """Body layers that change a lot, but less than the head, still count as feature reuse (an ordering)."""
    findings = {f.id: f for f in decide(MAMLStudy(), fabricate_results(tmp_path, Pattern(late=0.5)))}
    assert findings["feature_reuse"].verdict == "holds" and findings["feature_reuse"].margin is None
    assert "head ÷ most-changed body layer" in findings["feature_reuse"].detail


def test_a_report_of_fabricated_runs_gives_means_over_seeds(tmp_path):
    results = fabricate_results(tmp_path)
    study = MAMLStudy()
    findings = decide(study, results)
    text = study.write_report(results, findings).read_text()
    assert "| maml | 0.5400 |" in text  # mean over 4 seeds of (0.5 + 0.02 seed + task spread 0.01)
    rows = [line for line in (tmp_path / "summary.csv").read_text().splitlines() if ",test_acc," in line]
    assert len(rows) == 3 and all(line.endswith(",4") for line in rows)
    assert math.isclose(float(rows[0].split(",")[7]), 0.54)


# -- config errors, before any training ----------------------------------------------------------------------
@pytest.mark.parametrize(("override", "message"), [
    ("data.source=glyph", 'Did you mean "glyphs"'),
    ("analysis.measures=[rsa_dissimilarity, linear_cka_dissimilarty]", 'Did you mean "linear_cka_dissimilarity"'),
    ("maml.algorithms=[maml, anill]", 'Did you mean "anil"'),
    ("analysis.record_steps=[1, 5]", "must hold 0"),
    ("analysis.measures=[linear_cka_dissimilarity]", "lacks rsa_dissimilarity"),
    ("control.limit_batches=0.5", "control.limit_batches=0.5 is not a whole number"),
])
def test_bad_configs_name_the_problem_and_the_fix(override, message):
    cfg = resolve_config("maml", "smoke", [override])
    with pytest.raises(UserError, match=message):
        MAMLStudy().plan(cfg)


def test_an_inner_lr_set_per_experiment_reaches_every_run_of_that_experiment():
    """What the shadowing error tells the user to do instead of --set maml.inner_lr=0.1 on the paper profile."""
    cfg = resolve_config("maml", "paper", ["experiments.mini_imagenet.maml.inner_lr=0.1"])
    rates = {(r.params["experiment"], r.config["maml"]["inner_lr"], r.config["control"]["inner_lr"])
             for r in MAMLStudy().plan(cfg)}
    assert rates == {("omniglot", 0.1, 0.1), ("mini_imagenet", 0.1, 0.1)}


@pytest.mark.parametrize(("profile", "override", "message"), [
    ("paper", "maml.inner_lr=0.1", "--set maml.inner_lr=0.1 would be ignored: experiments.omniglot.maml.inner_lr, "
                                   "experiments.mini_imagenet.maml.inner_lr override(s) it"),
    ("smoke", "seeds=abc", "seeds='abc' is not a list"),
    ("smoke", "maml.meta_steps=2.5", "maml.meta_steps=2.5 is not a whole number"),
    ("smoke", "maml.meta_steps=abc", "maml.meta_steps='abc' is not a whole number"),
    ("smoke", "seeds=[]", "seeds=[] needs at least 1 item"),
    ("paper", "experiments.omniglot.maml.inner_lr=null", "experiments.omniglot.maml.inner_lr is null"),
])
def test_bad_values_exit_2_with_key_value_and_fix_before_any_training(profile, override, message, tmp_path,
                                                                      capsys, monkeypatch):
    trained = []
    monkeypatch.setattr(MAMLStudy, "execute", lambda self, run, ctx: trained.append(run.key) or {})
    code = main(["maml", "--profile", profile, "--set", override, "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and trained == []
    assert message in err and "Fix:" in err


# -- the paper's protocol ------------------------------------------------------------------------------------
def test_tiny_profile_meta_trains_as_the_papers_omniglot_runs_with_three_seeds():
    """Second order, inner lr 0.1, 5 inner steps in meta-training and 10 at analysis, meta-batch 16, 20 fixed
    probes (Goerttler & Obermayer's public code), and at least 3 seeds (the unit of replication)."""
    cfg = resolve_config("maml", "tiny", [])
    meta, analysis = cfg["maml"], cfg["analysis"]
    assert (meta["first_order"], meta["inner_lr"], meta["inner_steps"], meta["meta_batch_size"]) == (False, 0.1, 5, 16)
    assert max(analysis["record_steps"]) == meta["inner_steps_test"] == 10
    assert analysis["probes"] >= MIN_PROBES and len(cfg["seeds"]) >= 3
    paper = resolve_config("maml", "paper", [])
    assert paper["experiments"]["omniglot"]["maml"] == {"meta_batch_size": 16, "inner_lr": 0.1, "inner_steps": 5,
                                                       "inner_steps_test": 10}
    assert paper["analysis"]["probes"] >= MIN_PROBES


def test_the_probe_set_is_fixed_and_takes_one_image_per_class():
    from torch.utils.data import TensorDataset

    labels = torch.arange(30).remainder(10)
    dataset = TensorDataset(labels.float().reshape(30, 1, 1, 1).expand(30, 1, 2, 2), labels)  # image = its class
    first, again = probe_set(dataset, 6, seed=3), probe_set(dataset, 6, seed=3)
    assert torch.equal(first, again) and first.shape == (6, 1, 2, 2)
    assert len({int(x.flatten()[0]) for x in first}) == 6  # six different classes
    with pytest.raises(ValueError, match="needs 11 classes"):
        probe_set(dataset, 11, seed=3)


def test_the_paper_profile_runs_end_to_end_on_dataset_fixtures(tmp_path):
    """Omniglot and miniImageNet in their on-disk layouts (small fixtures), every stage, the report and findings;
    only the sizes are cut (meta-steps, tasks, ways to the fixtures' class counts)."""
    from tests.datamodules.test_fullscale import write_mini_imagenet, write_omniglot

    data_root = tmp_path / "data"
    write_omniglot(data_root, alphabets=2, characters=60, drawings=2)
    write_mini_imagenet(data_root, classes=20, per_class=3)
    sizes = ["maml.meta_steps=2", "maml.steps_per_epoch=1", "maml.val_tasks=2", "maml.test_tasks=4",
             "analysis.tasks=2", "analysis.checkpoints=2", "control.epochs=1", "control.limit_batches=2",
             "control.batch_size=8", "control.test_tasks=2", "seeds=[0]", "experiments.omniglot.data.ways=5",
             "experiments.omniglot.maml.meta_batch_size=2", "experiments.mini_imagenet.data.queries=1",
             "experiments.mini_imagenet.maml.meta_batch_size=2", "experiments.omniglot.maml.inner_steps=1",
             "experiments.mini_imagenet.maml.inner_steps=1", "experiments.omniglot.maml.inner_steps_test=2",
             "experiments.mini_imagenet.maml.inner_steps_test=2", "analysis.record_steps=[0, 2]"]
    args = ["maml", "--profile", "paper", "--data-root", str(data_root), "--results", str(tmp_path / "results"),
            "--accelerator", "cpu"]
    for override in sizes:
        args += ["--set", override]
    assert main(args) == 0
    root = tmp_path / "results" / "maml"
    findings = json.loads((root / "findings.json").read_text())
    assert len(findings["findings"]) == len(CLAIMS) and findings["complete"] is True
    report = (root / "report.md").read_text()
    assert "## omniglot: omniglot 5-way 1-shot" in report and "## mini_imagenet: mini_imagenet 5-way 1-shot" in report
    assert (root / "figures" / "mini_imagenet_maml_base_rsa_dissimilarity.png").exists()


def test_too_many_probes_for_the_split_name_the_key_and_the_fix():
    """A probe set needs one class per image; the run checks it before training (the class count of a split is
    known only once its data is loaded)."""
    from types import SimpleNamespace

    from torch.utils.data import TensorDataset

    dataset = TensorDataset(torch.zeros(8, 1, 2, 2), torch.arange(8).remainder(4))
    dm = SimpleNamespace(class_datasets={"test": dataset}, analysis_tasks=lambda *args, **kwargs: [])
    analysis = {"tasks": 2, "split": "test", "seed": 0, "probes": 5}
    with pytest.raises(UserError, match="analysis.probes=5 needs 5 classes but the test split has 4") as err:
        analysis_inputs(dm, analysis)
    assert "lower analysis.probes" in str(err.value)
