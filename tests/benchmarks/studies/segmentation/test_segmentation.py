"""The segmentation transfer study: its plan and config checks, a smoke run end to end, and verdicts that
follow the numbers (every claim made to hold and to fail with fabricated runs)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.core.errors import UserError
from benchmarks.core.pipeline import decide
from benchmarks.core.runner import resolve_config
from benchmarks.core.runstore import RunStore
from benchmarks.core.wandb_reader import find_offline_runs, read_offline_run
from benchmarks.studies.segmentation.analyse import decoder_effect, speed_effect, steps_to
from benchmarks.studies.segmentation.plan import variants
from benchmarks.studies.segmentation.protocol import CLAIMS, DICE_MARGIN, PLATEAU_EPOCHS, variant_name
from benchmarks.studies.segmentation.report import classification_check, write_report
from benchmarks.studies.segmentation.study import SegmentationStudy
from benchmarks.studies.segmentation.train import plateau_change
from tests.benchmarks.study_tester import REPO, StudyTester, fabricated, row

# ----------------------------------------------------------------------------------------------- plan


def test_tiny_plan_covers_every_encoder_source_decoder_fraction_and_seed():
    cfg = resolve_config("segmentation", "tiny", [])
    plan = SegmentationStudy().plan(cfg)
    sources = [r for r in plan if r.stage == "source"]
    targets = [r for r in plan if r.stage == "target"]
    assert sorted(r.params["task"] for r in sources) == ["classification", "contrastive", "reconstruction",
                                                         "segmentation"]
    names = {v["variant"] for v in variants(cfg)}
    assert names == {"random/random", "imagenet/random", "classification/random", "segmentation/random",
                     "segmentation/transferred", "reconstruction/random", "reconstruction/transferred",
                     "contrastive/random", "contrastive/transferred", "random/random/frozen-encoder"}
    fractions, seeds = cfg["target"]["label_fractions"], cfg["seeds"]
    assert len(fractions) >= 2 and len(seeds) >= 5
    assert len(targets) == len(names) * len(fractions) * len(seeds)
    keys = [r.key for r in plan]
    assert len(set(keys)) == len(keys)
    by_key = {r.key: r for r in sources}
    for run in targets:  # every transferred part comes from a source run planned before it
        encoder = run.config["init"]["encoder"]
        if encoder in ("random", "imagenet"):
            assert run.needs == ()
        else:
            assert by_key[run.needs[0]].params["task"] == encoder
            assert keys.index(run.needs[0]) < keys.index(run.key)


def test_source_runs_are_cached_across_target_settings():
    base = SegmentationStudy().plan(resolve_config("segmentation", "tiny", []))
    changed = SegmentationStudy().plan(resolve_config("segmentation", "tiny", ["target.epochs=3", "seeds=[5]"]))
    assert [r.key for r in base if r.stage == "source"] == [r.key for r in changed if r.stage == "source"]
    assert not {r.key for r in base if r.stage == "target"} & {r.key for r in changed if r.stage == "target"}
    contrastive_only = SegmentationStudy().plan(
        resolve_config("segmentation", "tiny", ["source_tasks.contrastive.temperature=0.5"]))
    moved = {r.params["task"] for r, s in zip(base, contrastive_only) if r.stage == "source" and r.key != s.key}
    assert moved == {"contrastive"}


def test_bad_grid_names_get_a_suggestion():
    cfg = resolve_config("segmentation", "tiny", ["grid.encoder_sources=[imagenett]"])
    with pytest.raises(UserError, match='Did you mean "imagenet"'):
        SegmentationStudy().plan(cfg)
    with pytest.raises(UserError, match="label fraction"):
        SegmentationStudy().plan(resolve_config("segmentation", "tiny", ["target.label_fractions=[0, 1]"]))
    with pytest.raises(UserError, match="min_steps_per_epoch"):
        SegmentationStudy().plan(resolve_config("segmentation", "tiny", ["target.min_steps_per_epoch=-1"]))


@pytest.mark.parametrize(("override", "named"), [
    ("seeds=abc", "seeds"),
    ("seeds=[]", "seeds"),
    ("seeds=[0, 0]", "repeats a seed"),
    ("target.epochs=2.5", "target.epochs"),
    ("target.epochs=-3", "target.epochs"),
    ("source.lr=abc", "source.lr"),
    ("target.label_fractions=0.5", "target.label_fractions"),
    ("grid.controls=[frozen_random_encodr]", 'Did you mean "frozen_random_encoder"'),
    ("grid.transfer_decoder=maybe", "grid.transfer_decoder"),
    ("data.kind=oxford_pets", 'Did you mean "oxford_pet"'),
    ("data.kind=oxford_pet", "oxford-iiit-pet"),  # no data root with the dataset: says where it looked
    ("threads=0", "threads"),
    ("limit_batches=-1", "limit_batches"),
    ("source_tasks.contrastive.tasks=[denoize]", 'Did you mean "denoise"'),
    ("source_tasks.classification.temperature=0.5", "source_tasks.classification"),
    ("source_tasks.classification.epochs=4", "source_tasks.classification"),  # one budget rule for every source
    ("source_tasks.reconstruction.mask_ratio=1.5", "mask_ratio"),
    ("source_tasks.reconstruction.patch_size=0", "patch_size"),
    ("target.patience=0", "target.patience"),
    ("source.patience=1.5", "source.patience"),
    ("target.frozen_norms=evl", 'Did you mean "eval"'),
])
def test_every_bad_value_is_an_error_naming_the_key_before_any_training(override, named):
    """Checked once in plan(): a one-paragraph UserError with the key (or the suggestion) and a fix."""
    key = override.split("=")[0]
    try:
        cfg = resolve_config("segmentation", "tiny", [override])
    except UserError as err:  # an override of a key the profile lacks is refused even earlier
        assert key.split(".")[-1] in str(err)
        return
    with pytest.raises(UserError, match="Fix:") as err:
        SegmentationStudy().plan(cfg)
    assert named in str(err.value)


def test_the_paper_profile_runs_on_oxford_pet_from_a_data_root(tmp_path, monkeypatch):
    """data.kind=oxford_pet: the target domain is read from disk (torchvision layout); the plan checks the data
    root before any training, and a target run trains and tests on it end to end."""
    from tests.datamodules.test_fullscale import write_oxford_pet

    monkeypatch.delenv("DATA_ROOT", raising=False)
    write_oxford_pet(tmp_path / "data", per_split=12)
    overrides = ["data.kind=oxford_pet", "target.n_val=4", "target.n_test=6", "grid.encoder_sources=[random]",
                 "grid.transfer_decoder=false", "grid.controls=[]"]
    cfg = resolve_config("segmentation", "smoke", overrides, data_root=str(tmp_path / "data"))
    plan = SegmentationStudy().plan(cfg)
    assert {r.stage for r in plan} == {"target"} and plan[0].config["data_root"] == str(tmp_path / "data")
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "segmentation", "--profile", "smoke",
                           *(a for o in overrides for a in ("--set", o)), "--data-root", str(tmp_path / "data"),
                           "--results", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = RunStore("segmentation", out).finished_runs("target")
    assert 0.0 <= run["metrics"]["test_dice"] <= 1.0 and run["metrics"]["n_test_images"] == 6


def test_the_tiny_profile_pins_the_threads_so_jobs_and_load_cannot_change_its_numbers():
    # a run's floats depend on its intra-op thread count; "auto" would let JOBS or a busy CPU choose it
    assert isinstance(resolve_config("segmentation", "tiny", [])["threads"], int)


def test_margins_are_fixed_by_the_protocol_not_the_profile():
    """The equivalence margin has a reason and is not a profile setting a run could tune."""
    by_id = {c.id: c for c in CLAIMS}
    for claim_id in ("a", "a.segmentation", "a.reconstruction", "a.contrastive", "c", "c.classification",
                     "c.segmentation"):
        assert by_id[claim_id].margin == DICE_MARGIN and by_id[claim_id].margin_reason
    with pytest.raises(UserError, match="findings"):
        resolve_config("segmentation", "tiny", ["findings.margin=0.5"])


def test_every_finding_has_a_pooled_and_a_per_source_verdict():
    ids = [c.id for c in CLAIMS]
    assert ids == ["a", "a.segmentation", "a.reconstruction", "a.contrastive", "a'", "b", "b.segmentation",
                   "b.reconstruction", "b'", "c", "c.classification", "c.segmentation"]


def test_steps_to_a_threshold_count_a_run_that_never_reaches_it_as_its_budget(tmp_path):
    """Speed is measured against a threshold common to the arms, not against each run's own final value."""
    run = row("target", {"variant": "x", "fraction": 1.0, "seed": 0}, {"max_steps": 40.0}, run_dir=tmp_path)
    history = [{"epoch": e, "step": 4 * (e + 1), "val/dice": d} for e, d in enumerate([0.1, 0.5, 0.9, 0.8])]
    (tmp_path / "curves.json").write_text(json.dumps({"history": history}))
    assert steps_to(run, 0.5) == 8 and steps_to(run, 0.85) == 12
    assert steps_to(run, 0.95) == 40  # never reached: censored at the budget


def test_the_plateau_check_is_the_last_epochs_gain_over_the_best_before():
    rising = [0.1 * i for i in range(10)]
    assert plateau_change(rising, 5) == pytest.approx(0.5)
    assert plateau_change([0.5, 0.7, 0.69, 0.7, 0.7, 0.7, 0.7, 0.7], 5) == 0.0  # flat: nothing gained
    assert plateau_change([0.3, 0.2, 0.2, 0.2, 0.2, 0.2], 5, higher_is_better=False) == pytest.approx(0.1)
    assert math.isnan(plateau_change([0.5] * PLATEAU_EPOCHS, PLATEAU_EPOCHS))  # too short to tell


@pytest.mark.parametrize(("val_acc", "train_acc", "says"), [
    (0.11, 0.69, "near chance**: validation accuracy 0.110"),  # over-fits its scenes
    (0.12, 0.13, "did not learn its classes"),
    (0.62, 0.80, "above chance: validation accuracy 0.620"),
])
def test_the_report_says_whether_the_classification_source_learned_its_classes(val_acc, train_acc, says):
    source = {"params": {"task": "classification"}, "metrics": {"best_val_acc": val_acc, "train/acc": train_acc}}
    assert says in "".join(classification_check([source]))


# ----------------------------------------------------------------------------------------------- fabricated runs

VARIANTS = [variant_name(e, "random") for e in ("random", "classification", "segmentation", "reconstruction",
                                                 "contrastive")]
VARIANTS += [variant_name(e, "transferred") for e in ("segmentation", "reconstruction", "contrastive")]
FRACTIONS = (0.25, 1.0)
SEEDS = (0, 1, 2, 3, 4)
EPOCHS, STEPS_PER_EPOCH = 30, 4


def paper_like(v: str, fraction: float) -> tuple[float, float]:
    """(converged Dice, epochs to get there). Decoder irrelevant for Dice but faster; seg/recon >> classification,
    most at the low fraction; contrastive competitive."""
    base = {"random": 0.5, "classification": 0.55, "segmentation": 0.7, "reconstruction": 0.68,
            "contrastive": 0.72}[v.split("/")[0]]
    dice = base + (0.1 if fraction == 1.0 else 0.0) - (0.05 if fraction == 1.0 and base > 0.6 else 0.0)
    return dice, 3.0 if "transferred" in v else 10.0


def opposite(v: str, fraction: float) -> tuple[float, float]:
    """Transferred decoders end higher but get there later; classification wins, least at the high fraction;
    contrastive far behind."""
    base = {"random": 0.5, "classification": 0.75, "segmentation": 0.6, "reconstruction": 0.6,
            "contrastive": 0.5}[v.split("/")[0]]
    dice = base + (0.1 if "transferred" in v else 0.0) - (0.1 if fraction == 1.0 and base > 0.7 else 0.0)
    return dice, 12.0 if "transferred" in v else 4.0


def target_rows(world, tmp_path: Path | None = None) -> list[dict]:
    """One finished target run per variant x fraction x seed, with a little seed-dependent noise; with
    ``tmp_path`` each run also gets a validation curve (curves.json) that rises linearly to its Dice."""
    rows = []
    for fraction in FRACTIONS:
        for seed in SEEDS:
            for v in VARIANTS:
                dice, rise = world(v, fraction)
                noise = 0.004 * seed * (1 if "seg" in v else -1) + 0.001 * ((seed * 7 + len(v)) % 3)
                dice += noise
                rise += seed % 2 if "transferred" in v else 0  # so that step differences vary over seeds
                run_dir = tmp_path / f"{v.replace('/', '-')}_{fraction}_{seed}" if tmp_path else None
                metrics = {"test_dice": dice, "test_iou": dice / 2, "best_val_dice": dice, "wall_seconds": 1.0,
                           "max_steps": float(EPOCHS * STEPS_PER_EPOCH), "epochs_run": float(EPOCHS),
                           "max_epochs": float(EPOCHS), "plateau_change": 0.0, "test_image_dice_sd": 0.15,
                           "test_dice_se": 0.15 / 16}
                if run_dir is not None:
                    run_dir.mkdir(parents=True, exist_ok=True)
                    history = [{"epoch": e, "step": STEPS_PER_EPOCH * (e + 1),
                                "val/dice": dice * min(1.0, (e + 1) / rise)} for e in range(EPOCHS)]
                    (run_dir / "curves.json").write_text(json.dumps({"history": history, "cka": {}}))
                rows.append(row("target", {"variant": v, "fraction": fraction, "seed": seed}, metrics,
                                run_dir=run_dir))
    return rows


class TestSegmentationStudy(StudyTester):
    study_name = "segmentation"
    resume_stage = "target"  # the first random-encoder run (it needs no source run)
    resume_overrides = ("target.epochs=6", "target.patience=6", "checkpoint_every=1")

    def fabricate(self, finding_id: str, holds: bool, tmp_path: Path):
        cfg = resolve_config("segmentation", "tiny", [])
        return fabricated("segmentation", cfg, target_rows(paper_like if holds else opposite, tmp_path), tmp_path)

    def test_the_opposite_world_leaves_no_claim_standing(self, tmp_path):
        """With paper-like numbers every claim holds; with the opposite numbers none does."""
        study = self.study
        holds = {f.id: f.verdict for f in decide(study, self.fabricate("a", True, tmp_path / "paper"))}
        assert holds == {c.id: "holds" for c in CLAIMS}
        flipped = {f.id: f.verdict for f in decide(study, self.fabricate("a", False, tmp_path / "opposite"))}
        assert flipped == {c.id: "does not hold" for c in CLAIMS}

    def test_the_seed_is_the_unit_of_finding_a(self, tmp_path):
        """3 sources x 2 fractions x 5 seeds are averaged within each seed first: n = 5, not 30."""
        results = self.fabricate("a", True, tmp_path)
        by_id = {f.id: f for f in decide(self.study, results)}
        assert by_id["a"].n == len(SEEDS) and by_id["a"].unit.startswith("seed")
        assert by_id["a"].test.startswith("TOST") and by_id["a"].margin == DICE_MARGIN
        assert by_id["a'"].n == len(SEEDS) and by_id["a'"].effect < 0  # transferred: fewer steps
        assert len(decoder_effect(results.stage("target"))) == len(SEEDS)
        assert len(speed_effect(results.stage("target"))) == len(SEEDS)

    def test_an_arm_that_ends_lower_is_not_counted_as_slower(self, tmp_path):
        """(a') uses 95% of the lower arm's converged Dice. The transferred arm ends 0.1 lower but rises as fast:
        against the higher arm's level it would never arrive and count as its whole budget (~100 steps slower);
        against the common reachable level it is at most two validation epochs behind."""
        def world(v: str, fraction: float) -> tuple[float, float]:
            return (0.6 if "transferred" in v else 0.7), 6.0

        results = fabricated("segmentation", resolve_config("segmentation", "tiny", []), target_rows(world, tmp_path),
                             tmp_path)
        (speed,) = [f for f in decide(self.study, results) if f.id == "a'"]
        assert 0 <= speed.effect <= 2 * STEPS_PER_EPOCH

    def test_an_undecided_finding_says_how_many_seeds_would_decide(self, tmp_path):
        """Decoder differences spread around the margin: inconclusive, with an MDE."""
        rows = target_rows(lambda v, fraction: (0.6, 5.0))
        for r in rows:  # per seed transferred − random spread around +0.01: mean inside the margin, wide CI
            if "transferred" in r["params"]["variant"]:
                r["metrics"]["test_dice"] += {0: 0.05, 1: -0.02, 2: 0.015, 3: -0.03, 4: 0.04}[r["params"]["seed"]]
        results = fabricated("segmentation", resolve_config("segmentation", "tiny", []), rows, tmp_path)
        (finding,) = [f for f in decide(self.study, results) if f.id == "a"]
        assert finding.verdict == "inconclusive" and finding.mde is not None and finding.mde > 0

    def test_missing_arms_leave_a_claim_unmeasured_not_decided(self, tmp_path):
        rows = [r for r in target_rows(paper_like) if "transferred" not in r["params"]["variant"]
                and r["params"]["fraction"] == 1.0]
        results = fabricated("segmentation", resolve_config("segmentation", "tiny", []), rows, tmp_path)
        verdicts = {f.id: (f.verdict, f.test) for f in decide(self.study, results)}
        for claim_id in ("a", "a.segmentation", "a'", "b'"):  # no transferred decoder; one label fraction only
            assert verdicts[claim_id] == ("inconclusive", "not tested")
        assert verdicts["b"][0] == "holds" and verdicts["b.reconstruction"][0] == "holds"

    def test_the_report_shows_verdicts_units_and_tables(self, tmp_path):
        cfg = resolve_config("segmentation", "tiny", [])
        results = fabricated("segmentation", cfg, target_rows(opposite, tmp_path), tmp_path)
        report = write_report(results, decide(self.study, results)).read_text()
        assert "**does not hold**" in report and "classification/random" in report
        assert "The paper's claims and the outcome here" in report and "randomly initialized decoders" in report
        assert "Plateau check" in report and "Evaluation noise" in report and "frozen_norms: eval" in report
        assert "what this profile trims relative to the paper profile" in report
        for png in ("final_dice.png", "learning_curves.png", "time_to_threshold.png"):
            assert (tmp_path / "figures" / png).read_bytes()[:4] == b"\x89PNG"
        assert "seed (independent training run)" in report and "docs/protocols/segmentation.md" in report
        assert str(REPO) not in report  # no absolute machine path
        assert (tmp_path / "summary.csv").read_text().startswith("variant,label_fraction,dice_mean")

    # -- on the smoke run (the base class's ``smoke`` fixture runs it once for the whole class) ---------------
    def test_every_planned_run_finished_and_the_report_has_findings(self, smoke):
        _, results = smoke
        store = RunStore("segmentation", results)
        plan = SegmentationStudy().plan(self.smoke_cfg())
        assert {r.stage for r in plan} == {"source", "target"}
        for run in plan:
            metrics = store.metrics(run.key)
            if run.stage == "target":
                assert 0.0 <= metrics["test_dice"] <= 1.0 and 0.0 <= metrics["test_iou"] <= 1.0
                assert {f"cka/stage{i}" for i in range(1, 6)} <= set(metrics)
                assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"] <= run.config["target"]["epochs"]
                assert metrics["best_val_dice"] >= metrics["final_val_dice"]
                assert metrics["n_test_images"] > 0 and metrics["test_image_dice_sd"] >= 0
                assert (store.checkpoint_dir(run.key) / "best.pt").exists()
            else:
                assert (store.run_dir(run.key) / "parts.pt").exists()
                assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"] and "best_val_loss" in metrics
        report = (store.root / "report.md").read_text()
        assert "## Findings" in report and "| id | finding | verdict |" in report
        assert "a transferred decoder" in report
        for png in ("final_dice.png", "learning_curves.png", "time_to_threshold.png", "encoder_cka.png"):
            assert (store.root / "figures" / png).read_bytes()[:4] == b"\x89PNG"
        assert (store.root / "summary.csv").read_text().startswith("variant,label_fraction,dice_mean")
        ids = [f["id"] for f in json.loads((store.root / "findings.json").read_text())["findings"]]
        assert ids == [c.id for c in CLAIMS]

    def test_the_frozen_encoder_control_leaves_the_encoder_unchanged(self, smoke):
        _, results = smoke
        store = RunStore("segmentation", results)
        (control,) = [r for r in store.finished_runs("target") if r["params"]["variant"].endswith("frozen-encoder")]
        assert all(v == pytest.approx(1.0, abs=1e-6) for k, v in control["metrics"].items() if k.startswith("cka/"))
        assert control["metrics"]["frozen_norms_eval"] == 1.0  # the BatchNorm policy is recorded with the run
        assert control["config"]["target"]["frozen_norms"] == "eval"

    def test_train_loss_and_validation_dice_reach_wandb(self, smoke):
        _, results = smoke
        store = RunStore("segmentation", results)
        run = next(r for r in store.finished_runs("target") if r["params"]["variant"] == "segmentation/transferred")
        (offline,) = find_offline_runs(run["dir"] / "wandb")
        logged = read_offline_run(offline)
        assert logged.group == "segmentation" and logged.job_type == "target"
        assert logged.config["params.variant"] == "segmentation/transferred"
        epochs = int(run["metrics"]["epochs_run"])
        assert len(logged.series("val/dice")) == epochs and len(logged.series("train/loss")) == epochs
        assert logged.series("test/dice") and len(logged.series("cka/encoder_before_vs_after")) == 5
        curves = json.loads((run["dir"] / "curves.json").read_text())["history"]
        assert [row["val/dice"] for row in curves] == pytest.approx(logged.series("val/dice"))


def test_a_report_of_an_empty_plan_says_every_claim_is_unmeasured(tmp_path):
    cfg = resolve_config("segmentation", "tiny", [])
    results = fabricated("segmentation", cfg, [], tmp_path)
    findings = decide(SegmentationStudy(), results)
    assert [f.test for f in findings] == ["not tested"] * len(CLAIMS)
    assert write_report(results, findings).exists()
