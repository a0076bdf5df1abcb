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


def test_every_block_size_is_one_holm_corrected_family_and_the_shrinking_advantage_a_trend(tmp_path):
    found = _findings(fabricate_results(True, tmp_path))
    every = found["pt_beats_rt_every_block"]
    assert every.test.startswith("Holm over 2 one-sided t-tests") and every.n == 3
    assert "smallest at fmnist b=1 (pixel shuffle)" in every.detail
    assert found["advantage_shrinks"].test.startswith("trend: one-sided t-test on per-seed slopes")
    assert found["advantage_shrinks"].effect > 0  # the advantage rises with log2(block size)


def test_pair_findings_count_seeds_not_seed_pairs(tmp_path):
    """Three seeds give three seed pairs; the unit is the seed (mean over the pairs it belongs to): n=3."""
    found = _findings(fabricate_results(True, tmp_path))
    for finding_id in ("cka_pt_above_rt", "l2_pt_below_rt", "no_barrier_pt", "barrier_rt", "barrier_pt_below_rt"):
        assert found[finding_id].n == 3 and found[finding_id].unit.startswith("seed")


def test_the_absolute_barrier_claims_carry_the_protocols_margin_and_its_reason(tmp_path):
    found = _findings(fabricate_results(True, tmp_path))
    for finding_id in ("no_barrier_pt", "barrier_rt"):
        assert found[finding_id].margin == 0.05 and "not from the paper" in found[finding_id].margin_reason
    assert found["barrier_pt_below_rt"].margin is None  # the paper's relative claim needs no margin


def test_the_report_is_written_from_fabricated_runs_without_their_files(tmp_path):
    results = fabricate_results(True, tmp_path)
    study = TransferStudy()
    text = study.write_report(results, decide(study, results)).read_text()
    assert text.count("| **holds** |") == len(CLAIMS)
    assert "| fmnist | 1 (pixel shuffle) |" in text and "| fmnist | 28 (intact) |" in text
    assert "Incomplete" in text  # the smoke profile is never evidence
    assert (tmp_path / "summary.csv").read_text().startswith("source,block size b,")
    assert (tmp_path / "figures" / "fmnist_accuracy.png").exists()


def test_missing_runs_make_findings_inconclusive_not_wrong(tmp_path):
    found = _findings(fabricated("transfer", fabricated_cfg(), [], root=tmp_path))
    assert {f.verdict for f in found.values()} == {"inconclusive"}
    assert all(f.n == 0 and f.detail.startswith("needs") for f in found.values())


def test_train_runs_alone_decide_the_block_findings_and_leave_the_analyses_unmeasured(tmp_path):
    found = _findings(fabricate_results(True, tmp_path, stages=("pretrain", "train")))
    assert found["pt_beats_rt_every_block"].verdict == "holds"
    assert found["cka_pt_above_rt"].verdict == "inconclusive" and found["cka_pt_above_rt"].n == 0
