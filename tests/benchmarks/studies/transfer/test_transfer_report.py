"""The transfer findings and report follow the numbers: fabricated finished runs of the plan, then reversed."""

from benchmarks.core.findings import Finding
from benchmarks.core.pipeline import decide
from benchmarks.studies.transfer.protocol import CLAIMS
from benchmarks.studies.transfer.study import TransferStudy
from tests.benchmarks.study_tester import fabricated

from .fabricate import fabricate_results, fabricated_cfg


def _findings(results) -> dict[str, Finding]:
    return {f.id: f for f in decide(TransferStudy(), results)}


def test_every_finding_holds_when_the_runs_show_it(tmp_path):
    found = _findings(fabricate_results(True, tmp_path))
    assert list(found) == [c.id for c in CLAIMS]
    assert {f.id: f.verdict for f in found.values() if f.verdict != "holds"} == {}


def test_every_verdict_flips_when_the_numbers_flip(tmp_path):
    found = _findings(fabricate_results(False, tmp_path))
    assert {f.id: f.verdict for f in found.values() if f.verdict != "does not hold"} == {}


def test_the_block_claim_is_a_trend_and_the_speed_claim_reads_the_smallest_block(tmp_path):
    found = _findings(fabricate_results(True, tmp_path))
    shrinks = found["advantage_shrinks"]
    assert shrinks.test.startswith("trend: one-sided t-test on per-seed slopes") and shrinks.n == 3
    assert shrinks.effect > 0  # the advantage rises with log2(block size)
    assert "glyphs b=1 (pixel shuffle): +0.05" in shrinks.detail  # per-block numbers in the report
    assert "glyphs b=1 (pixel shuffle)" in found["pt_trains_faster"].detail
    assert "fmnist" not in found["pt_trains_faster"].detail  # a source at one block size has no small block


def test_each_arm_is_compared_at_its_learning_rate_chosen_on_validation(tmp_path):
    """The fabricated unchosen rates would reverse every block finding: only a validation choice lets them hold."""
    from benchmarks.studies.transfer.results import chosen_lrs

    results = fabricate_results(True, tmp_path)
    assert chosen_lrs(results, "glyphs") == {1: {"pretrained": 0.05, "random": 0.02},
                                             28: {"pretrained": 0.05, "random": 0.02}}
    assert chosen_lrs(results, "fmnist") == {28: {"pretrained": 0.05, "random": 0.02}}  # R-T shared with glyphs


def test_the_learning_rate_choice_uses_validation_means_and_prefers_the_smaller_rate_on_ties():
    from benchmarks.studies.transfer.protocol import choose_lr

    assert choose_lr({0.02: [0.5, 0.7], 0.05: [0.6, 0.65]}) == 0.05
    assert choose_lr({0.05: [0.6], 0.02: [0.6]}) == 0.02


def test_the_random_init_checkpoint_is_reported_apart_and_never_counts(tmp_path):
    """Step 0 (the source's random init) is best on validation in the fabricated runs and would reverse the
    finding; it is excluded, and named in the detail."""
    found = _findings(fabricate_results(True, tmp_path))
    finding = found["earlier_checkpoint_matches"]
    assert finding.verdict == "holds" and "random init (step 0, excluded)" in finding.detail
    assert "earlier step best on validation 2" in finding.detail


def test_pair_findings_count_seeds_not_seed_pairs(tmp_path):
    """Three seeds give three seed pairs; the unit is the seed (mean over the pairs it belongs to): n=3."""
    found = _findings(fabricate_results(True, tmp_path))
    for finding_id in ("cka_pt_above_rt", "l2_pt_below_rt", "no_barrier_pt", "barrier_pt_below_rt"):
        assert found[finding_id].n == 3 and found[finding_id].unit.startswith("seed")


def test_no_barrier_is_an_equivalence_with_the_protocols_margin_and_the_relative_claim_a_paired_difference(tmp_path):
    found = _findings(fabricate_results(True, tmp_path))
    no_barrier = found["no_barrier_pt"]
    assert no_barrier.margin == 0.035 and "not from the paper" in no_barrier.margin_reason
    assert no_barrier.test.startswith("TOST equivalence, margin ±0.035")
    assert found["barrier_pt_below_rt"].margin is None  # the paper's relative claim needs no margin


def test_the_report_is_written_from_fabricated_runs_without_their_files(tmp_path):
    results = fabricate_results(True, tmp_path)
    study = TransferStudy()
    text = study.write_report(results, decide(study, results)).read_text()
    assert text.count("| **holds** |") == len(CLAIMS)
    assert "| glyphs | 1 (pixel shuffle) |" in text and "| fmnist | 28 (intact) |" in text
    assert "| glyphs | 28 (intact) | P-T | 0.05 |" in text  # every rate of the shared grid, the chosen one marked
    assert "μ_i = min over 0 ≤ α ≤ 1, 0 < σ ≤ 1 of α²‖θf_i − θ0_i‖²_F / σ²" in text  # the criticality formula
    assert "random init (reported apart)" in text
    assert "Incomplete" in text  # the smoke profile is never evidence
    assert (tmp_path / "summary.csv").read_text().startswith("source,block size b,")
    assert (tmp_path / "figures" / "glyphs_accuracy.png").exists()


def test_missing_runs_make_findings_inconclusive_not_wrong(tmp_path):
    found = _findings(fabricated("transfer", fabricated_cfg(), [], root=tmp_path))
    assert {f.verdict for f in found.values()} == {"inconclusive"}
    assert all(f.n == 0 and f.detail.startswith("needs") for f in found.values())


def test_train_runs_alone_decide_the_block_findings_and_leave_the_analyses_unmeasured(tmp_path):
    found = _findings(fabricate_results(True, tmp_path, stages=("pretrain", "train")))
    assert found["pt_beats_rt_near"].verdict == found["advantage_shrinks"].verdict == "holds"
    assert found["cka_pt_above_rt"].verdict == "inconclusive" and found["cka_pt_above_rt"].n == 0
