"""The fine-tuning study through the shared study tester: the smoke profile end to end (every stage, a few
batches; run once for this class), every finding made to hold and to fail, and the report reading only the
runs of the current plan when another setting's runs share the store."""

import csv
import json
import shutil

import pytest

from benchmarks.core.runstore import RunStore
from benchmarks.core.wandb_reader import find_offline_runs, read_offline_run
from benchmarks.studies.finetune.analyse import layers
from tests.benchmarks.study_tester import StudyTester, run_make

from .fabricate import for_finding


class TestFinetuneStudy(StudyTester):
    study_name = "finetune"
    resume_stage = "pretrain"
    resume_overrides = ("source.epochs=30", "source.limit_batches=4")

    def fabricate(self, finding_id, holds, tmp_path):
        """Paper-like runs (every finding holds), or runs where this finding is reversed."""
        return for_finding(finding_id, holds, tmp_path)

    @pytest.fixture(scope="class")
    def store(self, smoke):
        _, results = smoke
        return RunStore("finetune", results)

    def test_every_planned_run_finished_with_metrics(self, store):
        plan = self.study.plan(self.smoke_cfg())
        assert {r.stage for r in plan} == {"pretrain", "finetune"}
        for run in plan:
            metrics = store.metrics(run.key)
            assert (0.0 <= metrics["test_acc"] <= 1.0) if run.stage == "finetune" else "source_test_acc" in metrics

    def test_the_report_has_findings_accuracy_and_similarity_tables(self, store):
        text = (store.root / "report.md").read_text()
        assert "| id | finding | verdict | effect (95% CI) | test | unit | n |" in text
        assert "docs/protocols/finetune.md" in text
        assert "## Test accuracy" in text and "## Final per-layer linear_cka with the start network" in text
        assert "## Final per-layer rsa_spearman with the random_init network" in text  # RSA beside CKA
        assert (store.root / "summary.csv").exists()
        for name in ("curves_full.png", "curves_full_rsa_spearman.png", "layers_full.png"):
            assert (store.root / "figures" / name).read_bytes()[:4] == b"\x89PNG", name

    def test_head_only_and_lower_runs_keep_frozen_layers_bit_identical_and_fully_similar(self, store):
        runs = store.finished_runs("finetune")
        assert {r["params"]["mode"] for r in runs} >= {"head", "lower"}
        for run in runs:
            metrics, mode = run["metrics"], run["params"]["mode"]
            if mode == "head":
                assert metrics["frozen_params_changed"] == 0
                for layer in ("block1", "block2", "block3", "block4"):
                    assert metrics[f"linear_cka.start.{layer}"] == pytest.approx(1.0, abs=1e-6)
            if mode == "lower":  # block1, block2 and the head train; block3 and block4 stay bit-identical
                assert metrics["frozen_params_changed"] == 0 and metrics["trainable_groups"] == 3

    def test_pretraining_keeps_weights_through_training(self, store):
        (pretrain,) = store.finished_runs("pretrain")
        kept = sorted(p.name for p in (pretrain["dir"] / "weights").glob("epoch*.pt"))
        assert kept == [f"epoch{e:03d}.pt" for e in range(self.smoke_cfg()["source"]["epochs"] + 1)]
        assert (pretrain["dir"] / "encoder.pt").exists()

    def test_similarity_curves_and_heatmaps_reach_wandb(self, store):
        run = next(r for r in store.finished_runs("finetune") if r["params"]["mode"] == "full")
        (offline,) = find_offline_runs(run["dir"] / "wandb")
        logged = read_offline_run(offline)
        assert logged.group == "finetune" and logged.job_type == "finetune"
        assert logged.config["finetune.head_policy"] == "keep" and logged.config["params.mode"] == "full"
        curve = logged.series("linear_cka/start/net.head")
        assert len(curve) == 1 + run["config"]["finetune"]["epochs"]  # the start, then every epoch
        assert curve[0] == pytest.approx(1.0, abs=1e-6)
        assert logged.series("linear_cka/random_init/net.block1")
        assert "train/loss_step" in {k for row in logged.history for k in row}
        # media arrive as nested keys: <key>._type, <key>.path, ...
        assert logged.series("linear_cka/layer_epoch_heatmap._type") == ["image-file"]
        assert (run["dir"] / "heatmap_linear_cka.png").read_bytes()[:4] == b"\x89PNG"
        for reference in ("start", "random_init"):
            assert logged.series(f"linear_cka/{reference}/layer_epoch_table._type") == ["table-file"]
        rows = json.loads((run["dir"] / "similarity_linear_cka" / "similarity.json").read_text())["rows"]
        assert {r["reference"] for r in rows} == {"start", "random_init"}

    def test_a_changed_learning_rate_in_the_same_store_is_reported_alone(self, smoke, tmp_path):
        """The issue's reproduction: smoke, then smoke with --set finetune.lr=0.01 into the same results.

        The store then holds both settings' fine-tuning runs (the pretraining run is shared: its key does
        not depend on finetune.lr); the second report must count one run per target x mode x seed."""
        _, first = smoke
        results = tmp_path / "results"
        shutil.copytree(first, results)
        done = run_make("finetune", results, "--set", "finetune.lr=0.01")
        assert done.returncode == 0, done.stderr[-3000:]
        store = RunStore("finetune", results)
        planned = self.study.plan(self.smoke_cfg())
        assert len(store.finished_runs()) == 2 * len(planned) - 1  # the old and the new fine-tuning runs
        data = json.loads((store.root / "findings.json").read_text())
        assert data["completeness"].startswith(f"{len(planned)} of {len(planned)} runs")
        with open(store.root / "summary.csv") as handle:
            cells = [(r["target"], r["mode"], r["seed"]) for r in csv.DictReader(handle)]
        assert len(cells) == len(set(cells)) == sum(r.stage == "finetune" for r in planned)
        report = (store.root / "report.md").read_text()
        assert f"from {len(planned)} of {len(planned)} runs" in report
        count_table = report.split("`n` = runs (= seeds) per cell.")[1].split("##")[0]
        rows = [line for line in count_table.splitlines() if line.startswith("|")][2:]  # past header, separator
        counts = [cell.strip() for line in rows for cell in line.strip("|").split("|")[1:]]
        assert counts and set(counts) == {"1"}


TIMM_ARGS = ("--set", "model.backbone=test_resnet", "--set", "finetune.targets=[same,cross]",
             "--set", "finetune.modes=[head,lower]", "--set", "findings.shift_order=[same,cross]")


def test_a_timm_model_runs_end_to_end_with_its_layers_found_by_name(tmp_path):
    """timm's tiny test_resnet through the same command: layer groups come from its feature_info by name
    (act1 = the stem, layer1..layer4, fc = the classifier), similarity is tracked per group, modes freeze
    the right groups, and the report is written."""
    done = run_make("finetune", tmp_path, *TIMM_ARGS)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    store = RunStore("finetune", tmp_path)
    runs = store.finished_runs("finetune")
    assert {(r["params"]["target"], r["params"]["mode"]) for r in runs} == {
        (t, m) for t in ("same", "cross") for m in ("head", "lower")}
    names = ["act1", "layer1", "layer2", "layer3", "layer4", "fc"]
    for run in runs:
        metrics = run["metrics"]
        assert layers([run], "linear_cka") == layers([run], "rsa_spearman") == names
        assert metrics["frozen_params_changed"] == 0
        if run["params"]["mode"] == "head":  # the whole body is frozen: its representations do not move
            assert metrics["trainable_groups"] == 1
            for layer in names[:-1]:
                assert metrics[f"linear_cka.start.{layer}"] == pytest.approx(1.0, abs=1e-6), layer
        else:  # lower_layers=2: the stem, layer1 and the classifier train
            assert metrics["trainable_groups"] == 3
    report = (store.root / "report.md").read_text()
    assert "| target | mode | act1 | layer1 | layer2 | layer3 | layer4 | fc |" in report
