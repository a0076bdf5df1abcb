"""prepare_reference: the values of similarity_matrix, with each reference layer prepared once."""

import pytest
import torch

from similarity import (
    PREPARED_MEASURES,
    PreparedReference,
    SimilarityInputError,
    UnknownNameError,
    get_measure,
    prepare_reference,
    similarity_matrix,
)

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
    prepared = prepare_reference(reference, measure)
    for seed in (1, 2, 3):  # successive snapshots against the same references
        current = layers(seed, base=reference, widths=widths, n=n)
        expected, rows, columns = similarity_matrix(current, reference, measure)
        assert torch.allclose(prepared.matrix(current), expected, rtol=0, atol=1e-12)
    assert rows == columns == list(widths)
    assert all((layer.gram is not None) == grams for layer in prepared._prepared)


def test_any_plan_gives_the_same_values(monkeypatch):
    """Whatever similarity/'s planner picks (here: Gram matrices for the current layers only)."""
    import similarity.prepared as prepared_module

    monkeypatch.setattr(prepared_module, "_plan_grams", lambda n, widths, pairs, itemsize: {0, 1})
    reference, current = layers(0), layers(1, base=layers(0))
    prepared = prepare_reference(reference)
    assert prepared._current_grams == set() and prepared.matrix(current) is not None
    assert prepared._current_grams == {0, 1} and all(layer.gram is None for layer in prepared._prepared)
    expected, _, _ = similarity_matrix(current, reference, "linear_cka")
    # another float32 route than similarity_matrix's (Gram vs feature-space products): float32 rounding
    assert torch.allclose(prepared.matrix(current), expected, rtol=0, atol=1e-6)


def test_references_are_prepared_once_and_kept():
    prepared = prepare_reference(layers(0))
    prepared.matrix(layers(1))
    kept = list(prepared._prepared)
    prepared.matrix(layers(2))
    assert all(a is b for a, b in zip(prepared._prepared, kept))  # not recomputed for the second snapshot


def test_a_layer_compared_with_itself_is_one_and_float64_inputs_stay_float64():
    reference = {k: v.double() for k, v in layers(0).items()}
    values = prepare_reference(reference).matrix(reference)
    assert torch.allclose(values.diagonal(), torch.ones(len(WIDTHS), dtype=torch.float64), atol=1e-12)


def test_a_different_number_of_examples_is_refused_with_the_fix():
    prepared = prepare_reference(layers(0))
    with pytest.raises(SimilarityInputError, match="same probe set"):
        prepared.matrix({"wide": torch.randn(N + 1, 5)})


def test_one_tensor_is_a_reference_of_its_own_and_similarity_gives_the_registry_value():
    reference, current = layers(0), layers(1, base=layers(0))
    for measure in PREPARED_MEASURES:
        prepared = prepare_reference(reference["square"], measure)
        assert isinstance(prepared, PreparedReference) and prepared.names == ["reference"]
        expected = get_measure(measure)(current["square"], reference["square"])
        assert prepared.similarity(current["square"]) == pytest.approx(expected, abs=1e-12)


def test_similarity_with_several_references_needs_a_name():
    reference, current = layers(0), layers(1, base=layers(0))
    prepared = prepare_reference(reference)
    assert prepared.similarity(current["wide"], "wide") == pytest.approx(
        get_measure("linear_cka")(current["wide"], reference["wide"]), abs=1e-12)
    with pytest.raises(SimilarityInputError, match="pass reference="):
        prepared.similarity(current["wide"])
    with pytest.raises(UnknownNameError, match="Did you mean 'wide'"):
        prepared.similarity(current["wide"], "wid")


def test_other_measures_and_empty_references_are_refused():
    with pytest.raises(UnknownNameError, match="Did you mean 'linear_cka'"):
        prepare_reference(layers(0), "linear_ckaa")
    with pytest.raises(UnknownNameError, match="linear_cka_debiased"):
        prepare_reference(layers(0), "rsa_spearman")
    with pytest.raises(SimilarityInputError, match="at least one reference layer"):
        prepare_reference({})
    with pytest.raises(SimilarityInputError, match="same probe set"):
        prepare_reference({"a": torch.randn(5, 2), "b": torch.randn(6, 2)})
    with pytest.raises(SimilarityInputError, match="similarity\\(y\\)"):
        prepare_reference(layers(0)).matrix(torch.randn(N, 3))
