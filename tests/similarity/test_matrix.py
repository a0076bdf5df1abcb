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


def test_gram_reuse_and_feature_space_paths_agree():
    # N=20 with widths on both sides of N: the planner mixes Gram-Gram and feature-space pairs.
    reps = layers(20, {"narrow": 3, "mid": 16, "wide": 200, "wider": 300}, seed=3)
    widths = [t.reshape(20, -1).shape[1] for t in reps.values()]
    pairs = {(a, b) for a in range(4) for b in range(4) if a < b}
    assert _plan_grams(20, widths, pairs, 4) == {2, 3}  # only the wide layers pay for an N x N Gram
    matrix, _, _ = similarity_matrix(reps, reps, "linear_cka_debiased")
    fn = get_measure("linear_cka_debiased")
    loop = torch.tensor([[fn(a, b) for b in reps.values()] for a in reps.values()], dtype=torch.float64)
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
