"""Layer x layer matrices equal the pairwise measures, whichever shortcut computes them."""

from __future__ import annotations

import pytest
import torch

from similarity import MEASURES, SimilarityInputError, get_measure, similarity_matrix
from similarity.matrix import _plan_grams


def layers(n: int, widths: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    """A toy network's representations: each layer a noisy nonlinear function of the previous one."""
    g = torch.Generator().manual_seed(seed)
    out, h = {}, torch.randn(n, 6, generator=g, dtype=torch.float64)
    for name, width in widths.items():
        h = torch.relu(h @ torch.randn(h.shape[1], width, generator=g, dtype=torch.float64)) + 0.1 * torch.randn(
            n, width, generator=g, dtype=torch.float64)
        out[name] = h.reshape(n, width) if width % 4 else h.reshape(n, 4, width // 4)  # some [N, C, L] layers
    return out


@pytest.mark.parametrize("measure", list(MEASURES))
def test_matrix_equals_the_pairwise_measure_for_every_registered_measure(measure):
    reps_a = layers(24, {"conv1": 8, "conv2": 40, "head": 3}, seed=0)
    reps_b = layers(24, {"conv1": 8, "conv2": 40}, seed=1)
    matrix, rows, cols = similarity_matrix(reps_a, reps_b, measure)
    assert matrix.dtype == torch.float64 and matrix.shape == (3, 2)
    assert rows == ["conv1", "conv2", "head"] and cols == ["conv1", "conv2"]
    fn = get_measure(measure)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            assert float(matrix[i, j]) == pytest.approx(fn(reps_a[r], reps_b[c]), abs=1e-10), (r, c)


def test_a_network_against_itself_has_a_symmetric_matrix_with_unit_diagonal():
    reps = layers(30, {"a": 5, "b": 50, "c": 12}, seed=2)
    matrix, _, _ = similarity_matrix(reps, reps, "linear_cka")
    assert torch.allclose(matrix.diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(matrix, matrix.T, atol=1e-12)


def test_the_planner_gives_grams_to_the_layers_where_they_save_work():
    all_pairs = {(a, b) for a in range(4) for b in range(4) if a < b}
    assert _plan_grams(20, [3, 16, 200, 300], all_pairs, 4) == {0, 1, 2, 3}  # N small: Gram space throughout
    assert _plan_grams(1000, [3, 16, 20, 30], all_pairs, 4) == set()  # N large, D small: feature space
    # a wide layer (D > N) and two narrow ones, the narrowest compared only with a narrow one
    assert _plan_grams(200, [2, 600, 3], {(0, 2), (1, 2)}, 4) == {1, 2}


def test_mixed_gram_and_feature_space_pairs_equal_the_pairwise_measure():
    reps = layers(200, {"n1": 2, "wide": 600}, seed=3)
    other = {"n2": reps["wide"][:, :3] + 0.5}
    for measure in ("linear_cka", "linear_cka_debiased"):
        matrix, _, _ = similarity_matrix(reps, other, measure)
        fn = get_measure(measure)
        loop = torch.tensor([[fn(a, b) for b in other.values()] for a in reps.values()], dtype=torch.float64)
        assert torch.allclose(matrix, loop, atol=1e-10)


def test_a_custom_callable_is_looped():
    reps = layers(10, {"a": 4, "b": 6}, seed=4)
    matrix, _, _ = similarity_matrix(reps, reps, lambda x, y: float(x.shape[1] * 10 + y.reshape(10, -1).shape[1]))
    assert matrix.tolist() == [[44.0, 46.0], [64.0, 66.0]]


def test_layers_must_share_the_examples_and_measures_must_exist():
    with pytest.raises(SimilarityInputError, match="different numbers of examples"):
        similarity_matrix({"a": torch.ones(5, 2)}, {"b": torch.ones(6, 2)})
    with pytest.raises(SimilarityInputError, match="non-empty mapping"):
        similarity_matrix({}, {"b": torch.ones(6, 2)})
    with pytest.raises(KeyError, match="Did you mean 'linear_cka'"):
        similarity_matrix({"a": torch.ones(5, 2)}, {"a": torch.ones(5, 2)}, "linear_cca")
