"""The MAML study end to end on the smoke profile: MAML, ANIL and the control, every analysis, the report."""

from __future__ import annotations

import json

import pytest

from benchmarks.errors import UserError
from benchmarks.maml import MAMLStudy, analysed_steps, weight_files
from benchmarks.runner import Launch, resolve_config, run_benchmark
from benchmarks.runstore import RunStore
from benchmarks.wandb_reader import find_offline_runs, read_offline_run

VERDICTS = ("holds", "does not hold", "inconclusive")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Run the smoke profile once for every test of this module (3 tiny runs, a few meta-steps each)."""
    results = tmp_path_factory.mktemp("maml_results")
    cfg = resolve_config("maml", "smoke", [])
    assert run_benchmark("maml", cfg, Launch(results=str(results))) == 0
    return cfg, RunStore("maml", results), results


def test_every_planned_run_finished_with_accuracy_and_a_confidence_interval(smoke):
    cfg, store, _ = smoke
    plan = MAMLStudy().plan(cfg)
    assert sorted((r.stage, r.params.get("algorithm")) for r in plan) == [
        ("control", None), ("meta_train", "anil"), ("meta_train", "maml")]
    for run in plan:
        metrics = store.metrics(run.key)
        assert 0.0 <= metrics["test_acc"] <= 1.0 and metrics["test_acc_ci95"] > 0
        accuracies = json.loads((store.run_dir(run.key) / "test_accuracies.json").read_text())["accuracies"]
        expected = cfg["maml"]["test_tasks"] if run.stage == "meta_train" else cfg["control"]["test_tasks"]
        assert len(accuracies) == metrics["test_tasks"] == expected


def test_weights_are_kept_at_the_analysed_checkpoints(smoke):
    cfg, store, _ = smoke
    for run in store.finished_runs("meta_train"):
        expected = analysed_steps(cfg["maml"]["meta_steps"], cfg["analysis"]["checkpoints"])
        assert sorted(weight_files(run["dir"])) == expected


def test_analysis_covers_every_checkpoint_task_layer_step_and_measure(smoke):
    cfg, store, _ = smoke
    analysis_cfg = cfg["analysis"]
    for run in store.finished_runs():
        analysis = json.loads((run["dir"] / "analysis.json").read_text())
        checkpoints = sorted(weight_files(run["dir"]))
        later_steps = [s for s in analysis_cfg["record_steps"] if s > 0]
        assert len(analysis["within"]) == (len(checkpoints) * analysis_cfg["tasks"] * 5 * len(later_steps)
                                           * len(analysis_cfg["measures"]))
        assert len(analysis["between"]) == ((len(checkpoints) - 1) * analysis_cfg["tasks"] * 5
                                            * len(analysis_cfg["measures"]))


def test_anil_body_representations_do_not_move_in_the_inner_loop(smoke):
    _, store, _ = smoke
    (anil,) = [r for r in store.finished_runs("meta_train") if r["params"]["algorithm"] == "anil"]
    rows = json.loads((anil["dir"] / "analysis.json").read_text())["within"]
    body = [r["value"] for r in rows if r["layer"] != "head"]
    head = [r["value"] for r in rows if r["layer"] == "head" and r["measure"] == "rsa"]
    assert body and max(abs(v) for v in body) < 1e-6
    assert max(head) > 1e-3


def test_report_has_findings_with_computed_verdicts_accuracy_and_figures(smoke):
    _, store, _ = smoke
    text = (store.root / "report.md").read_text()
    assert "| finding | verdict | effect (95% CI) | n | detail |" in text
    findings = [line for line in text.splitlines() if line.startswith("| Feature reuse")
                or line.startswith("| The similarity rise") or line.startswith("| Inner-loop steps")]
    assert len(findings) == 3
    assert all(any(f"**{v}**" in line for v in VERDICTS) for line in findings)
    assert "### Meta-test accuracy" in text and "Chance is 0.20" in text
    for name in ("glyphs_accuracy.png", "glyphs_inner_rsa.png", "glyphs_training_rsa.png",
                 "glyphs_inner_vs_training_cka.png"):
        assert (store.root / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    header = (store.root / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("experiment,model,kind,checkpoint,layer,inner_step,measure,mean")


def test_wandb_has_the_runs_grouped_with_inner_step_curves_and_test_accuracy(smoke):
    _, store, _ = smoke
    (maml,) = [r for r in store.finished_runs("meta_train") if r["params"]["algorithm"] == "maml"]
    (offline,) = find_offline_runs(maml["dir"] / "wandb")
    logged = read_offline_run(offline)
    assert logged.group == "maml" and logged.job_type == "meta_train"
    assert logged.config["params.algorithm"] == "maml"
    steps = logged.series("inner_step")
    assert steps == maml["config"]["analysis"]["record_steps"]
    assert len(logged.series("inner/rsa/head")) == len(steps)
    assert logged.series("test/acc") == [pytest.approx(store.metrics(maml["key"])["test_acc"])]
    assert {"name": "inner/*", "step_metric": "inner_step"} in logged.metric_definitions


def test_a_second_invocation_redoes_nothing(smoke, monkeypatch):
    cfg, store, results = smoke
    executed = []
    monkeypatch.setattr(MAMLStudy, "execute", lambda self, run, ctx: executed.append(run.key) or {})
    assert run_benchmark("maml", cfg, Launch(results=str(results))) == 0
    assert executed == []


@pytest.mark.parametrize(("override", "message"), [
    ("data.source=glyph", 'Did you mean "glyphs"'),
    ("analysis.measures=[rsa, ckaa]", 'Did you mean "cka"'),
    ("maml.algorithms=[maml, anill]", 'Did you mean "anil"'),
    ("analysis.record_steps=[1, 5]", "must hold 0"),
])
def test_bad_configs_name_the_problem_and_the_fix(override, message):
    cfg = resolve_config("maml", "smoke", [override])
    with pytest.raises(UserError, match=message):
        MAMLStudy().plan(cfg)


def test_every_run_keeps_a_checkpoint_to_resume_from(smoke):
    _, store, _ = smoke
    for run in store.finished_runs():
        assert (run["dir"] / "checkpoints" / "last.ckpt").exists(), run["key"]
