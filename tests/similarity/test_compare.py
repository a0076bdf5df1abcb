"""compare_representations: one helper, registry names, the values of the measures themselves."""

import math

import pytest
import torch

from similarity import (
    MEASURES,
    SimilarityInputError,
    UnknownNameError,
    compare_representations,
    linear_cka,
    procrustes_distance,
    rbf_cka,
    rsa_dissimilarity,
    rsa_similarity,
)

N = 24


def reps(seed: int, base: dict | None = None) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {"conv": torch.randn(N, 3, 2, 2, generator=generator), "head": torch.randn(N, 5, generator=generator)}
    return out if base is None else {k: base[k] + 0.5 * v for k, v in out.items()}


A = reps(0)
B = reps(1, base=A)

EXISTING = {  # each registry name and the function a study would call for it today
    "linear_cka": linear_cka,
    "linear_cka_debiased": lambda x, y: linear_cka(x, y, debiased=True),
    "linear_cka_dissimilarity": lambda x, y: 1.0 - linear_cka(x, y),
    "rbf_cka": rbf_cka,
    "rsa_spearman": rsa_similarity,
    "rsa_pearson": lambda x, y: rsa_similarity(x, y, compare="pearson"),
    "rsa_kendall_tau_a": lambda x, y: rsa_similarity(x, y, compare="kendall_tau_a"),
    "rsa_dissimilarity": lambda x, y: rsa_dissimilarity(x, y, rdm_metric="correlation", compare="spearman"),
    "procrustes_distance": procrustes_distance,
}


def test_values_are_those_of_the_existing_functions_layer_by_layer():
    result = compare_representations(A, B, list(EXISTING))
    assert list(result) == ["conv", "head"]
    for layer in A:
        assert list(result[layer]) == list(EXISTING)
        for name, fn in EXISTING.items():
            assert result[layer][name] == fn(A[layer], B[layer]), (layer, name)


def test_every_registry_measure_can_be_asked_for():
    result = compare_representations(A, A, list(MEASURES))
    for name, measure in MEASURES.items():
        identical = 1.0 if measure.higher_is_more_similar else 0.0
        assert result["head"][name] == pytest.approx(identical, abs=1e-6), name


def test_one_name_may_be_a_string_and_the_default_is_linear_cka():
    assert compare_representations(A, B, "rsa_spearman") == {
        layer: {"rsa_spearman": rsa_similarity(A[layer], B[layer])} for layer in A}
    assert compare_representations(A, B) == {layer: {"linear_cka": linear_cka(A[layer], B[layer])} for layer in A}


def test_the_maml_studys_dissimilarities_are_registry_measures():
    """MAML's "rsa" (1 - Spearman of correlation-distance RDMs) and "cka" (1 - linear CKA), bit for bit."""
    values = compare_representations(A, B, ["rsa_dissimilarity", "linear_cka_dissimilarity"])["conv"]
    assert values["rsa_dissimilarity"] == rsa_dissimilarity(A["conv"], B["conv"], rdm_metric="correlation",
                                                            compare="spearman")
    assert values["linear_cka_dissimilarity"] == 1.0 - linear_cka(A["conv"], B["conv"])


def test_unknown_measures_and_mismatched_layers_are_explained():
    with pytest.raises(UnknownNameError, match="Did you mean 'linear_cka'"):
        compare_representations(A, B, ["linear_ckaa"])
    with pytest.raises(SimilarityInputError, match="measures is empty"):
        compare_representations(A, B, [])
    with pytest.raises(SimilarityInputError, match=r"only in a \['head'\].*Did you mean 'heads'"):
        compare_representations(A, {"conv": B["conv"], "heads": B["head"]})
    with pytest.raises(SimilarityInputError, match="non-empty mapping"):
        compare_representations({}, B)
    with pytest.raises(UnknownNameError, match="Did you mean 'nan'"):
        compare_representations(A, B, on_error="nann")


def test_a_pair_a_measure_cannot_compare_raises_or_gives_nan():
    broken = {"conv": torch.full((N, 3), math.nan), "head": B["head"]}  # activations that overflowed
    with pytest.raises(SimilarityInputError, match="NaN"):
        compare_representations(A, broken, ["rsa_spearman"])
    values = compare_representations(A, broken, ["rsa_spearman", "linear_cka"], on_error="nan")
    assert math.isnan(values["conv"]["rsa_spearman"]) and math.isnan(values["conv"]["linear_cka"])
    assert values["head"]["rsa_spearman"] == rsa_similarity(A["head"], B["head"])


def test_an_undefined_value_is_nan_not_an_error():
    constant = {"conv": torch.ones(N, 3), "head": B["head"]}  # no centred variance: CKA is undefined (NaN)
    assert math.isnan(compare_representations(A, constant)["conv"]["linear_cka"])
    assert math.isnan(compare_representations(A, constant, on_error="nan")["conv"]["linear_cka"])
