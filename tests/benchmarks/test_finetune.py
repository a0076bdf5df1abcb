"""The fine-tuning study end to end on the smoke profile: every stage, a few batches, report written."""

import json

import pytest

from benchmarks.finetune import FinetuneStudy
from benchmarks.runner import Launch, resolve_config, run_benchmark
from benchmarks.runstore import RunStore
from benchmarks.wandb_reader import find_offline_runs, read_offline_run


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Run the smoke profile once for every test of this module (it trains ~10 tiny runs)."""
    results = tmp_path_factory.mktemp("finetune_results")
    cfg = resolve_config("finetune", "smoke", [])
    assert run_benchmark("finetune", cfg, Launch(results=str(results))) == 0
    return cfg, RunStore("finetune", results), results


def test_every_planned_run_finished_with_metrics(smoke):
    cfg, store, _ = smoke
    plan = FinetuneStudy().plan(cfg)
    assert {r.stage for r in plan} == {"pretrain", "finetune"}
    for run in plan:
        metrics = store.metrics(run.key)
        assert (0.0 <= metrics["test_acc"] <= 1.0) if run.stage == "finetune" else "source_test_acc" in metrics


def test_the_report_has_findings_accuracy_and_similarity_tables(smoke):
    _, store, _ = smoke
    text = (store.root / "report.md").read_text()
    assert "| finding | verdict | effect (95% CI) | n | detail |" in text
    assert "## Test accuracy" in text and "## Final per-layer linear_cka with the start network" in text
    assert (store.root / "summary.csv").exists()
    assert (store.root / "figures" / "curves_full.png").read_bytes()[:4] == b"\x89PNG"


def test_head_only_and_lower_runs_keep_frozen_layers_bit_identical_and_fully_similar(smoke):
    _, store, _ = smoke
    for run in store.finished_runs("finetune"):
        metrics, mode = run["metrics"], run["params"]["mode"]
        if mode == "head":
            assert metrics["frozen_params_changed"] == 0
            for layer in ("block1", "block2", "block3", "block4"):
                assert metrics[f"linear_cka.start.{layer}"] == pytest.approx(1.0, abs=1e-6)
        if mode == "lower":
            assert metrics["frozen_params_changed"] == 0
            assert metrics["linear_cka.start.block1"] <= 1.0 + 1e-9


def test_pretraining_keeps_weights_through_training(smoke):
    cfg, store, _ = smoke
    (pretrain,) = store.finished_runs("pretrain")
    kept = sorted(p.name for p in (pretrain["dir"] / "weights").glob("epoch*.pt"))
    assert kept == [f"epoch{e:03d}.pt" for e in range(cfg["source"]["epochs"] + 1)]
    assert (pretrain["dir"] / "encoder.pt").exists()


def test_similarity_curves_and_heatmaps_reach_wandb(smoke):
    _, store, _ = smoke
    run = next(r for r in store.finished_runs("finetune") if r["params"]["mode"] == "full")
    (offline,) = find_offline_runs(run["dir"] / "wandb")
    logged = read_offline_run(offline)
    assert logged.group == "finetune" and logged.job_type == "finetune"
    assert logged.config["finetune.head_policy"] == "reinit" and logged.config["params.mode"] == "full"
    curve = logged.series("linear_cka/start/net.head")
    assert len(curve) == 1 + run["config"]["finetune"]["epochs"]  # the start, then every epoch
    assert curve[0] == pytest.approx(1.0, abs=1e-6)
    assert logged.series("linear_cka/random_init/net.block1")
    assert "train/loss_step" in {k for row in logged.history for k in row}
    # media arrive as nested keys: <key>/_type, <key>/path, ...
    assert logged.series("linear_cka/layer_epoch_heatmap/_type") == ["image-file"]
    assert (run["dir"] / "heatmap_linear_cka.png").read_bytes()[:4] == b"\x89PNG"
    for reference in ("start", "random_init"):
        assert logged.series(f"linear_cka/{reference}/layer_epoch_table/_type") == ["table-file"]
    rows = json.loads((run["dir"] / "similarity_linear_cka" / "similarity.json").read_text())["rows"]
    assert {r["reference"] for r in rows} == {"start", "random_init"}


def test_a_second_run_trains_nothing(smoke):
    cfg, store, results = smoke
    stamps = {p: p.stat().st_mtime_ns for p in store.root.glob("*/metrics.json")}
    assert run_benchmark("finetune", cfg, Launch(results=str(results))) == 0
    assert {p: p.stat().st_mtime_ns for p in store.root.glob("*/metrics.json")} == stamps
