"""The segmentation transfer study: its plan, a smoke run end to end, and verdicts that follow the numbers."""

from __future__ import annotations

import json

import pytest
import yaml

from benchmarks.errors import UserError
from benchmarks.runner import Launch, resolve_config, run_benchmark
from benchmarks.runstore import RunStore, atomic_write_json
from benchmarks.segmentation import (
    SegmentationStudy,
    compute_findings,
    epochs_to_fraction,
    variant_name,
    variants,
    write_report,
)
from benchmarks.wandb_reader import find_offline_runs, read_offline_run

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


def test_epochs_to_95_percent_of_the_final_value():
    assert epochs_to_fraction([0.1, 0.5, 0.9, 0.8, 0.84]) == 3  # 0.95 * 0.84 = 0.798
    assert epochs_to_fraction([0.2, 0.4]) == 2
    assert epochs_to_fraction([]) is None


# ----------------------------------------------------------------------------------------------- smoke run


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Run the smoke profile once (every stage, a few batches per run) for the tests below."""
    results = tmp_path_factory.mktemp("segmentation_results")
    cfg = resolve_config("segmentation", "smoke", [])
    assert run_benchmark("segmentation", cfg, Launch(results=str(results))) == 0
    return cfg, RunStore("segmentation", results), results


def test_every_planned_run_finished_and_the_report_has_findings(smoke):
    cfg, store, _ = smoke
    plan = SegmentationStudy().plan(cfg)
    assert {r.stage for r in plan} == {"source", "target"}
    for run in plan:
        metrics = store.metrics(run.key)
        if run.stage == "target":
            assert 0.0 <= metrics["test_dice"] <= 1.0 and 0.0 <= metrics["test_iou"] <= 1.0
            assert {f"cka/stage{i}" for i in range(1, 6)} <= set(metrics)
        else:
            assert (store.run_dir(run.key) / "parts.pt").exists()
    report = (store.root / "report.md").read_text()
    assert "## Findings" in report and "| finding | verdict |" in report
    assert "(a) a transferred decoder" in report
    for png in ("final_dice.png", "learning_curves.png", "encoder_cka.png"):
        assert (store.root / "figures" / png).read_bytes()[:4] == b"\x89PNG"
    assert (store.root / "summary.csv").read_text().startswith("variant,label_fraction,dice_mean")


def test_the_frozen_encoder_control_leaves_the_encoder_unchanged(smoke):
    _, store, _ = smoke
    (control,) = [r for r in store.finished_runs("target") if r["params"]["variant"].endswith("frozen-encoder")]
    assert all(v == pytest.approx(1.0, abs=1e-6) for k, v in control["metrics"].items() if k.startswith("cka/"))


def test_train_loss_and_validation_dice_reach_wandb(smoke):
    _, store, _ = smoke
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


def test_a_second_run_trains_nothing(smoke):
    cfg, store, results = smoke
    stamps = {p: p.stat().st_mtime_ns for p in store.root.glob("*/metrics.json")}
    assert run_benchmark("segmentation", cfg, Launch(results=str(results))) == 0
    assert {p: p.stat().st_mtime_ns for p in store.root.glob("*/metrics.json")} == stamps


# ----------------------------------------------------------------------------------------------- verdicts


def _fabricate(store: RunStore, variant: str, fraction: float, seed: int, dice: float, epochs: float = 5.0):
    run_dir = store.run_dir(f"target__{variant.replace('/', '-')}_{fraction}_{seed}")
    run_dir.mkdir(parents=True)
    (run_dir / "run.yaml").write_text(yaml.safe_dump(
        {"stage": "target", "params": {"variant": variant, "fraction": fraction, "seed": seed}, "config": {}}))
    atomic_write_json(run_dir / "metrics.json", {"test_dice": dice, "test_iou": dice / 2,
                                                 "epochs_to_95": epochs, "wall_seconds": 1.0})


def _store_with(tmp_path, name: str, dice_of) -> RunStore:
    store = RunStore("segmentation", tmp_path / name)
    names = [variant_name(e, "random") for e in ("random", "classification", "segmentation", "reconstruction",
                                                  "contrastive")]
    names += [variant_name(e, "transferred") for e in ("segmentation", "reconstruction", "contrastive")]
    for fraction in (0.25, 1.0):
        for seed in range(3):
            for v in names:
                _fabricate(store, v, fraction, seed, dice_of(v, fraction) + 0.004 * seed * (1 if "seg" in v else -1))
    return store


def _verdicts(cfg: dict, store: RunStore) -> dict[str, str]:
    return {f.claim[:4]: f.verdict for f in compute_findings(cfg, store.finished_runs("target"))}


def test_verdicts_follow_the_numbers(tmp_path):
    cfg = resolve_config("segmentation", "smoke", [])

    def paper_like(v: str, fraction: float) -> float:  # decoder irrelevant; seg/recon >> classification
        base = {"random": 0.5, "classification": 0.55, "segmentation": 0.7, "reconstruction": 0.68,
                "contrastive": 0.72}[v.split("/")[0]]
        return base + (0.1 if fraction == 1.0 else 0.0) - (0.05 if fraction == 1.0 and base > 0.6 else 0.0)

    def opposite(v: str, fraction: float) -> float:  # transferred decoders help; classification wins
        base = {"random": 0.5, "classification": 0.75, "segmentation": 0.6, "reconstruction": 0.6,
                "contrastive": 0.5}[v.split("/")[0]]
        return base + (0.1 if "transferred" in v else 0.0)

    holds = _verdicts(cfg, _store_with(tmp_path, "a", paper_like))
    assert holds == {"(a) ": "holds", "(b) ": "holds", "(b')": "holds", "(c) ": "holds"}
    flipped = _verdicts(cfg, _store_with(tmp_path, "b", opposite))
    assert flipped == {"(a) ": "does not hold", "(b) ": "does not hold", "(b')": "inconclusive",
                       "(c) ": "does not hold"}
    report = write_report(cfg, RunStore("segmentation", tmp_path / "b")).read_text()
    assert "**does not hold**" in report and "classification/random" in report
