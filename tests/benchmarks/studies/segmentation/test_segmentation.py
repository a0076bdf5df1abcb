"""The segmentation transfer study: its plan and config checks, a smoke run end to end, and verdicts that
follow the numbers (every claim made to hold and to fail with fabricated runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.core.errors import UserError
from benchmarks.core.pipeline import decide
from benchmarks.core.runner import resolve_config
from benchmarks.core.runstore import RunStore
from benchmarks.core.wandb_reader import find_offline_runs, read_offline_run
from benchmarks.studies.segmentation.analyse import decoder_effect, epochs_to_fraction
from benchmarks.studies.segmentation.plan import variants
from benchmarks.studies.segmentation.protocol import CLAIMS, DICE_MARGIN, variant_name
from benchmarks.studies.segmentation.report import write_report
from benchmarks.studies.segmentation.study import SegmentationStudy
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
    assert len(fractions) >= 2 and len(seeds) >= 3
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
    ("data.kind=oxford_pet", "data.kind"),
    ("threads=0", "threads"),
    ("limit_batches=-1", "limit_batches"),
    ("source_tasks.contrastive.tasks=[denoize]", 'Did you mean "denoise"'),
    ("source_tasks.classification.temperature=0.5", "source_tasks.classification"),
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


def test_margins_are_fixed_by_the_protocol_not_the_profile():
    """The equivalence margin has a reason and is not a profile setting a run could tune."""
    by_id = {c.id: c for c in CLAIMS}
    assert by_id["a"].margin == DICE_MARGIN and by_id["a"].margin_reason
    assert by_id["c"].margin == DICE_MARGIN and by_id["c"].margin_reason
    with pytest.raises(UserError, match="findings"):
        resolve_config("segmentation", "tiny", ["findings.margin=0.5"])


def test_epochs_to_95_percent_of_the_final_value():
    assert epochs_to_fraction([0.1, 0.5, 0.9, 0.8, 0.84]) == 3  # 0.95 * 0.84 = 0.798
    assert epochs_to_fraction([0.2, 0.4]) == 2
    assert epochs_to_fraction([]) is None


# ----------------------------------------------------------------------------------------------- fabricated runs

VARIANTS = [variant_name(e, "random") for e in ("random", "classification", "segmentation", "reconstruction",
                                                 "contrastive")]
VARIANTS += [variant_name(e, "transferred") for e in ("segmentation", "reconstruction", "contrastive")]
FRACTIONS = (0.25, 1.0)
SEEDS = (0, 1, 2)


def paper_like(v: str, fraction: float) -> float:
    """Decoder irrelevant; seg/recon >> classification, most at the low fraction; contrastive competitive."""
    base = {"random": 0.5, "classification": 0.55, "segmentation": 0.7, "reconstruction": 0.68,
            "contrastive": 0.72}[v.split("/")[0]]
    return base + (0.1 if fraction == 1.0 else 0.0) - (0.05 if fraction == 1.0 and base > 0.6 else 0.0)


def opposite(v: str, fraction: float) -> float:
    """Transferred decoders help; classification wins, least at the high fraction; contrastive far behind."""
    base = {"random": 0.5, "classification": 0.75, "segmentation": 0.6, "reconstruction": 0.6,
            "contrastive": 0.5}[v.split("/")[0]]
    return base + (0.1 if "transferred" in v else 0.0) - (0.1 if fraction == 1.0 and base > 0.7 else 0.0)


def target_rows(dice_of, tmp_path: Path | None = None) -> list[dict]:
    """One finished target run per variant x fraction x seed, with a little seed-dependent noise."""
    rows = []
    for fraction in FRACTIONS:
        for seed in SEEDS:
            for v in VARIANTS:
                noise = 0.004 * seed * (1 if "seg" in v else -1) + 0.001 * ((seed * 7 + len(v)) % 3)
                dice = dice_of(v, fraction) + noise
                run_dir = tmp_path / f"{v.replace('/', '-')}_{fraction}_{seed}" if tmp_path else None
                rows.append(row("target", {"variant": v, "fraction": fraction, "seed": seed},
                                {"test_dice": dice, "test_iou": dice / 2, "epochs_to_95": 5.0 - seed,
                                 "wall_seconds": 1.0}, run_dir=run_dir))
    return rows


class TestSegmentationStudy(StudyTester):
    study_name = "segmentation"

    def fabricate(self, finding_id: str, holds: bool, tmp_path: Path):
        cfg = resolve_config("segmentation", "tiny", [])
        return fabricated("segmentation", cfg, target_rows(paper_like if holds else opposite), tmp_path)

    def test_the_opposite_world_leaves_no_claim_standing(self, tmp_path):
        """With paper-like numbers all four hold; with the opposite numbers none does."""
        study = self.study
        holds = {f.id: f.verdict for f in decide(study, self.fabricate("a", True, tmp_path))}
        assert holds == {"a": "holds", "b": "holds", "b'": "holds", "c": "holds"}
        flipped = {f.id: f.verdict for f in decide(study, self.fabricate("a", False, tmp_path))}
        assert flipped == {c.id: "does not hold" for c in CLAIMS}

    def test_the_seed_is_the_unit_of_finding_a(self, tmp_path):
        """3 sources x 2 fractions x 3 seeds are averaged within each seed first: n = 3, not 18."""
        results = self.fabricate("a", True, tmp_path)
        (finding,) = [f for f in decide(self.study, results) if f.id == "a"]
        assert finding.n == len(SEEDS) and finding.unit.startswith("seed")
        assert finding.test.startswith("TOST") and finding.margin == DICE_MARGIN
        assert len(decoder_effect(results.stage("target"))) == len(SEEDS)

    def test_an_undecided_finding_says_how_many_seeds_would_decide(self, tmp_path):
        """Decoder differences spread around the margin: inconclusive, with an MDE."""
        rows = target_rows(lambda v, fraction: 0.6)
        for r in rows:  # per seed, transferred − random = +0.05, −0.02, +0.015: mean inside the margin, wide CI
            if "transferred" in r["params"]["variant"]:
                r["metrics"]["test_dice"] += {0: 0.05, 1: -0.02, 2: 0.015}[r["params"]["seed"]]
        results = fabricated("segmentation", resolve_config("segmentation", "tiny", []), rows, tmp_path)
        (finding,) = [f for f in decide(self.study, results) if f.id == "a"]
        assert finding.verdict == "inconclusive" and finding.mde is not None and finding.mde > 0

    def test_missing_arms_leave_a_claim_unmeasured_not_decided(self, tmp_path):
        rows = [r for r in target_rows(paper_like) if "transferred" not in r["params"]["variant"]
                and r["params"]["fraction"] == 1.0]
        results = fabricated("segmentation", resolve_config("segmentation", "tiny", []), rows, tmp_path)
        verdicts = {f.id: (f.verdict, f.test) for f in decide(self.study, results)}
        assert verdicts["a"] == ("inconclusive", "not tested")
        assert verdicts["b'"] == ("inconclusive", "not tested")  # one label fraction only
        assert verdicts["b"][0] == "holds"

    def test_the_report_shows_verdicts_units_and_tables(self, tmp_path):
        cfg = resolve_config("segmentation", "tiny", [])
        results = fabricated("segmentation", cfg, target_rows(opposite, tmp_path), tmp_path)
        report = write_report(results, decide(self.study, results)).read_text()
        assert "**does not hold**" in report and "classification/random" in report
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
            else:
                assert (store.run_dir(run.key) / "parts.pt").exists()
        report = (store.root / "report.md").read_text()
        assert "## Findings" in report and "| id | finding | verdict |" in report
        assert "a transferred decoder" in report
        for png in ("final_dice.png", "learning_curves.png", "encoder_cka.png"):
            assert (store.root / "figures" / png).read_bytes()[:4] == b"\x89PNG"
        assert (store.root / "summary.csv").read_text().startswith("variant,label_fraction,dice_mean")
        ids = [f["id"] for f in json.loads((store.root / "findings.json").read_text())["findings"]]
        assert ids == [c.id for c in CLAIMS]

    def test_the_frozen_encoder_control_leaves_the_encoder_unchanged(self, smoke):
        _, results = smoke
        store = RunStore("segmentation", results)
        (control,) = [r for r in store.finished_runs("target") if r["params"]["variant"].endswith("frozen-encoder")]
        assert all(v == pytest.approx(1.0, abs=1e-6) for k, v in control["metrics"].items() if k.startswith("cka/"))

    def test_train_loss_and_validation_dice_reach_wandb(self, smoke):
        _, results = smoke
        store = RunStore("segmentation", results)
        run = next(r for r in store.finished_runs("target") if r["params"]["variant"] == "segmentation/transferred")
        (offline,) = find_offline_runs(run["dir"] / "wandb")
        logged = read_offline_run(offline)
        assert logged.group == "segmentation" and logged.job_type == "target"
        assert logged.config["params.variant"] == "segmentation/transferred"
        epochs = run["config"]["target"]["epochs"]
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
