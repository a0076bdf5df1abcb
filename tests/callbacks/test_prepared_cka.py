"""PreparedLinearCKA: the values of similarity_matrix, with each reference layer prepared once per fit."""

import pytest
import torch

from callbacks import RepresentationSnapshot, SimilarityTracker
from callbacks.prepared_cka import PreparedLinearCKA
from similarity import SimilarityInputError, similarity_matrix
from tests.callbacks.tiny_callback_models import TinyClassifier, blob_images, loader, make_trainer

N = 40
WIDTHS = {"wide": 3 * N, "square": N, "narrow": 6, "flat": 1}  # similarity/'s planner: Gram matrices
NARROW = {"narrow": 3, "flat": 1}  # at N=200 the planner keeps these in feature space


def layers(seed: int, base: dict | None = None, widths: dict = WIDTHS, n: int = N) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, width in widths.items():
        x = torch.randn(n, width, generator=generator)
        out[name] = x if base is None else base[name] + 0.5 * x  # related to base: CKA well inside (0, 1)
    return out


@pytest.mark.parametrize("measure", ["linear_cka", "linear_cka_debiased"])
@pytest.mark.parametrize(("widths", "n", "grams"), [(WIDTHS, N, True), (NARROW, 200, False)])
def test_values_are_those_of_similarity_matrix_for_every_snapshot(measure, widths, n, grams):
    reference = layers(0, widths=widths, n=n)
    prepared = PreparedLinearCKA(reference, debiased=measure == "linear_cka_debiased")
    for seed in (1, 2, 3):  # successive snapshots against the same references
        current = layers(seed, base=reference, widths=widths, n=n)
        expected, rows, columns = similarity_matrix(current, reference, measure)
        assert torch.allclose(prepared.matrix(current), expected, rtol=0, atol=1e-12)
    assert rows == columns == list(widths)
    assert all((layer.gram is not None) == grams for layer in prepared._prepared)


def test_any_plan_gives_the_same_values(monkeypatch):
    """Whatever similarity/'s planner picks (here: Gram matrices for the current layers only)."""
    import callbacks.prepared_cka as prepared_cka

    monkeypatch.setattr(prepared_cka, "_plan_grams", lambda n, widths, pairs, itemsize: {0, 1})
    reference, current = layers(0), layers(1, base=layers(0))
    prepared = PreparedLinearCKA(reference)
    assert prepared._current_grams == set() and prepared.matrix(current) is not None
    assert prepared._current_grams == {0, 1} and all(layer.gram is None for layer in prepared._prepared)
    expected, _, _ = similarity_matrix(current, reference, "linear_cka")
    # another float32 route than similarity_matrix's (Gram vs feature-space products): float32 rounding
    assert torch.allclose(prepared.matrix(current), expected, rtol=0, atol=1e-6)


def test_references_are_prepared_once_and_kept():
    prepared = PreparedLinearCKA(layers(0))
    prepared.matrix(layers(1))
    kept = list(prepared._prepared)
    prepared.matrix(layers(2))
    assert all(a is b for a, b in zip(prepared._prepared, kept))  # not recomputed for the second snapshot


def test_a_layer_compared_with_itself_is_one_and_float64_inputs_stay_float64():
    reference = {k: v.double() for k, v in layers(0).items()}
    values = PreparedLinearCKA(reference).matrix(reference)
    assert torch.allclose(values.diagonal(), torch.ones(len(WIDTHS), dtype=torch.float64), atol=1e-12)


def test_a_different_number_of_examples_is_refused_with_the_fix():
    prepared = PreparedLinearCKA(layers(0))
    with pytest.raises(SimilarityInputError, match="same probe set"):
        prepared.matrix({"wide": torch.randn(N + 1, 5)})


def test_the_tracker_uses_it_for_linear_cka_and_reports_the_values_of_similarity_matrix(tmp_path):
    snapshot = RepresentationSnapshot(blob_images(30, seed=7), probe_size=30, keep=None, save=False)
    tracker = SimilarityTracker(("start", "random_init"), "linear_cka")
    make_trainer(tmp_path, [snapshot, tracker], epochs=2).fit(TinyClassifier(), loader(32, shuffle=True))
    assert isinstance(tracker._prepared[1], PreparedLinearCKA)
    for snap in snapshot.snapshots:
        for ref, reps in tracker.reference_reps.items():
            expected, _, _ = similarity_matrix({k: v.flatten(1) for k, v in snap.representations.items()},
                                               {k: v.flatten(1) for k, v in reps.items()}, "linear_cka")
            rows = {r["layer"]: r["value"] for r in tracker.rows if r["tag"] == snap.tag and r["reference"] == ref}
            assert list(rows.values()) == pytest.approx(expected.diagonal().tolist(), abs=1e-12)
