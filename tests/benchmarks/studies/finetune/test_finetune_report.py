"""The fine-tuning findings and report from fabricated runs: verdicts follow the numbers, the unit is the
pretraining seed, and bad config values stop the plan before any training."""

import pytest

from benchmarks.core.config import load_profile
from benchmarks.core.errors import UserError
from benchmarks.studies.finetune.analyse import epoch_rows, layers
from benchmarks.studies.finetune.findings import findings
from benchmarks.studies.finetune.protocol import CLAIMS
from benchmarks.studies.finetune.report import write_report
from benchmarks.studies.finetune.study import FinetuneStudy

from .fabricate import MODES, SEEDS, TARGETS, results


def verdicts(planned) -> dict[str, str]:
    return {f.id: f.verdict for f in findings(planned)}


def test_paper_like_numbers_make_every_finding_hold(tmp_path):
    assert verdicts(results(tmp_path)) == {c.id: "holds" for c in CLAIMS}


def test_reversed_numbers_make_every_finding_but_the_equivalence_fail(tmp_path):
    outcome = verdicts(results(tmp_path, reverse=True))
    assert {k: v for k, v in outcome.items() if k != "permuted_kept"} == {
        c.id: "does not hold" for c in CLAIMS if c.id != "permuted_kept"}


def test_the_unit_is_the_pretraining_seed_not_the_run(tmp_path):
    """21 full fine-tuning runs share 5 pretrained networks: every finding has n = 5."""
    for finding in findings(results(tmp_path)):
        assert finding.n == len(SEEDS) and "pretraining seed" in finding.unit, finding


def test_one_seed_cannot_decide_a_finding_however_many_runs_it_has(tmp_path):
    """One pretrained network fine-tuned on 7 targets in 3 modes is still one independent run."""
    for finding in findings(results(tmp_path, seeds=[0])):
        assert finding.verdict == "inconclusive" and finding.n <= 1, finding


def test_a_finding_whose_targets_are_not_planned_is_unmeasured_not_guessed(tmp_path):
    outcome = {f.id: f for f in findings(results(tmp_path, targets=["same", "cross", "random"]))}
    assert outcome["permuted_kept"].verdict == "inconclusive" and outcome["permuted_kept"].n == 0
    assert "no permuted-label target" in outcome["permuted_kept"].detail
    assert outcome["unlearned_with_noise"].n == 0 and "label-noise degrees" in outcome["unlearned_with_noise"].detail


def test_the_permuted_finding_is_tested_with_the_source_head_kept_and_says_so(tmp_path):
    (finding,) = [f for f in findings(results(tmp_path)) if f.id == "permuted_kept"]
    assert finding.n == len(SEEDS) and "head policy `keep`" in finding.detail
    assert "source head kept" in finding.claim


def test_with_reinit_heads_the_permuted_finding_is_unmeasured_because_it_is_fixed_by_construction(tmp_path):
    """A fresh head is exchangeable across classes: the permuted target could only match the reference, so no
    verdict is given, even when the fabricated numbers would make the equivalence fail."""
    for damage in (None, {"permuted": 0.9}):
        (finding,) = [f for f in findings(results(tmp_path, head_policy="reinit", damage=damage))
                      if f.id == "permuted_kept"]
        assert finding.verdict == "inconclusive" and finding.n == 0
        assert "head policy `reinit`" in finding.detail and "fixed by construction" in finding.detail


def test_the_lower_finding_states_that_lower_trains_the_head_too(tmp_path):
    (finding,) = [f for f in findings(results(tmp_path)) if f.id == "lower_beats_head"]
    assert "first 2 body groups and the head" in finding.detail and "head policy `keep`" in finding.detail


def test_the_report_shows_tables_and_findings_from_fabricated_runs(tmp_path):
    planned = results(tmp_path)
    path = write_report(planned, findings(planned), FinetuneStudy.protocol)
    text = path.read_text()
    assert "| id | finding | verdict |" in text and "**holds**" in text and "docs/protocols/finetune.md" in text
    assert "## Test accuracy" in text and "| target | data | head | full | lower |" in text
    assert "| target | mode | block1 | block2 | block3 | block4 | head |" in text
    assert "## Final per-layer rsa_spearman with the start network" in text and "5 pretrained networks" in text
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + len(TARGETS) * len(MODES) * len(SEEDS)
    assert "rsa_spearman.random_init.head" in summary[0].split(",")
    for name in ("final_start.png", "layers_full.png"):
        assert (tmp_path / "figures" / name).read_bytes()[:4] == b"\x89PNG", name


def test_without_runs_every_claim_is_unmeasured(tmp_path):
    planned = results(tmp_path, seeds=[])
    outcome = findings(planned)
    assert [f.id for f in outcome] == [c.id for c in CLAIMS]
    assert {f.verdict for f in outcome} == {"inconclusive"} and {f.n for f in outcome} == {0}


def test_epoch_rows_number_epochs_and_drop_the_start_snapshot_of_a_resumed_fit():
    def row(moment, epoch, step, value):
        return {"moment": moment, "epoch": epoch, "step": step, "reference": "start", "layer": "net.head",
                "value": value, "tag": moment}

    # a first fit over epochs 0-1, interrupted during epoch 2 and resumed from the checkpoint of epoch 1
    rows = [row("fit_start", 0, 0, 1.0), row("epoch", 0, 10, 0.9), row("epoch", 1, 20, 0.8),
            row("epoch", 2, 30, 0.75), row("fit_start", 0, 0, 0.8), row("epoch", 2, 30, 0.7)]
    assert [(r["x"], r["value"]) for r in epoch_rows(rows)] == [(0, 1.0), (1, 0.9), (2, 0.8), (3, 0.7)]


def test_layers_are_listed_in_network_order_even_though_metrics_are_stored_sorted():
    names = ["act1", "layer1", "layer2", "layer3", "layer4", "fc"]
    metrics = {f"linear_cka.start.{n}": 0.5 for n in sorted(names)}
    metrics.update({f"depth.{n}": float(i) for i, n in enumerate(names)})
    run = {"metrics": dict(sorted(metrics.items())), "config": {"similarity": {"measures": ["linear_cka"]}}}
    assert layers([run], "linear_cka") == names


@pytest.mark.parametrize("key, value, match", [
    ("finetune.modes", ["haed"], 'Did you mean "head"'),
    ("finetune.targets", ["crosss"], 'Did you mean "cross"'),
    ("finetune.epochs", -3, r"finetune.epochs=-3 is not a whole number >= 1"),
    ("finetune.epochs", 2.5, r"finetune.epochs=2.5 is not a whole number"),
    ("source.lr", "abc", r"source.lr='abc' is not a number"),
    ("seeds", "abc", r"seeds='abc' is not a list"),
    ("seeds", [], r"seeds=\[\] needs at least 1"),
    ("finetune.from_epoch", 9, r"finetune.from_epoch=9 is not a whole number >= 0 and <= 3"),
    ("finetune.head_policy", "kept", 'Did you mean "keep"'),
    ("finetune.lower_layers", 7, r"lower_layers=7 exceeds conv4's 4 body groups \(block1, block2, block3, block4\)"),
    ("finetune.trainable", ["blok2"], r"trainable\[0\]='blok2' is not one of block1, .*Did you mean \"block2\""),
    ("finetune.limit_batches", 0, r"finetune.limit_batches=0 is not a whole number >= 1"),
    ("similarity.measures", ["linear_ckaa"], 'Did you mean "linear_cka"'),
    ("findings.reference_target", "sme", 'Did you mean "same"'),
    ("model.backbone", "resnet81", 'Did you mean "resnet18"'),
])
def test_a_bad_value_stops_the_plan_naming_key_value_and_fix(key, value, match):
    cfg = load_profile("finetune", "tiny")
    section, _, name = key.rpartition(".")
    (cfg[section] if section else cfg)[name] = value
    with pytest.raises(UserError, match=match) as caught:
        FinetuneStudy().plan(cfg)
    assert "Fix:" in str(caught.value)


def test_bad_target_specs_and_mode_settings_are_refused_before_training():
    cfg = load_profile("finetune", "tiny")
    cfg["targets"]["noise-0.25"]["labels"] = "noisy-0.25"
    with pytest.raises(UserError, match=r"targets.noise-0.25.labels='noisy-0.25'"):
        FinetuneStudy().plan(cfg)
    cfg = load_profile("finetune", "tiny")
    cfg["finetune"]["modes"] = ["groups"]
    with pytest.raises(UserError, match="finetune.trainable"):
        FinetuneStudy().plan(cfg)
    cfg = load_profile("finetune", "tiny")
    cfg["finetune"]["head_policy"] = "keep"
    cfg["targets"]["heldout"]["classes"] = [5, 6, 7]
    with pytest.raises(UserError, match="head_policy=keep, but target heldout has 3 classes"):
        FinetuneStudy().plan(cfg)


def test_a_timm_model_is_cut_into_layer_groups_by_name_when_the_plan_is_made():
    """Any timm model: its groups come from its feature_info (built on the meta device, no weights), so
    lower_layers and trainable are checked against the model's own group names before any training."""
    cfg = load_profile("finetune", "tiny")
    cfg["model"]["backbone"] = "test_resnet"
    cfg["finetune"]["lower_layers"] = 2
    assert len(FinetuneStudy().plan(cfg)) == 5 + 5 * 7 * 3
    cfg["finetune"]["lower_layers"] = 9
    with pytest.raises(UserError, match=r"lower_layers=9 exceeds test_resnet's 5 body groups \(act1, layer1, "):
        FinetuneStudy().plan(cfg)
    cfg["finetune"]["lower_layers"] = 2
    cfg["finetune"]["trainable"] = ["layer5"]
    with pytest.raises(UserError, match='Did you mean "layer'):
        FinetuneStudy().plan(cfg)


def test_the_tiny_plan_is_one_pretraining_run_per_seed_and_every_target_mode_seed():
    cfg = load_profile("finetune", "tiny")
    plan = FinetuneStudy().plan(cfg)
    pretrain = {r.params["seed"]: r.key for r in plan if r.stage == "pretrain"}
    finetune = [r for r in plan if r.stage == "finetune"]
    assert sorted(pretrain) == cfg["seeds"] and len(pretrain) >= 5  # at least 5 pretrained networks
    assert len(finetune) == len(cfg["seeds"]) * len(cfg["finetune"]["targets"]) * len(cfg["finetune"]["modes"])
    assert all(r.needs == (pretrain[r.params["seed"]],) for r in finetune)
