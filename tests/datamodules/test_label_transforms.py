"""Relabelled targets are what they claim: measured agreement of the new labels with the true ones."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from datamodules.label_transforms import (
    NoisyLabels,
    PermutedLabels,
    dataset_labels,
    derangement,
    expected_agreement,
    label_agreement,
    parse_label_spec,
    relabel,
)

K = 5


def balanced(n: int = 5000, k: int = K) -> TensorDataset:
    """n examples, labels cycling 0..k-1; the input remembers its index so we can check it is untouched."""
    return TensorDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n) % k)


def test_a_derangement_moves_every_class_and_is_fixed_by_its_seed():
    for seed in range(20):
        perm = derangement(K, seed)
        assert sorted(perm.tolist()) == list(range(K))
        assert not np.any(perm == np.arange(K))
    assert derangement(K, 3).tolist() == derangement(K, 3).tolist()


def test_permuted_labels_agree_with_no_true_label_yet_keep_the_task_learnable():
    data = balanced()
    permuted = PermutedLabels(data, K, seed=1)
    assert permuted.agreement() == 0.0
    # a bijection between classes: every true class maps to exactly one new label, and vice versa
    pairs = {(int(t), int(y)) for t, y in zip(permuted.true_labels, permuted.labels)}
    assert len(pairs) == K and len({y for _, y in pairs}) == K
    assert all(permuted.permutation[t] == y for t, y in pairs)


def test_an_explicit_permutation_is_used_as_given_and_checked():
    permuted = PermutedLabels(balanced(10), K, permutation=[0, 1, 2, 4, 3])
    assert permuted.agreement() == pytest.approx(0.6)
    with pytest.raises(ValueError, match="not a permutation.*Fix"):
        PermutedLabels(balanced(10), K, permutation=[0, 0, 1, 2, 3])


@pytest.mark.parametrize("noise", [0.0, 0.25, 0.5, 1.0])
def test_noisy_labels_agree_with_the_truth_as_often_as_the_noise_rate_says(noise):
    noisy = NoisyLabels(balanced(), K, noise, seed=0)
    expected = expected_agreement(noise, K)
    tolerance = 4 * math.sqrt(max(expected * (1 - expected), 1e-12) / len(noisy))  # 4 standard errors
    assert abs(noisy.agreement() - expected) <= tolerance + 1e-12
    assert label_agreement(noisy.labels, noisy.true_labels) == noisy.agreement()


def test_random_labels_carry_no_information_about_the_class():
    noisy = NoisyLabels(balanced(), K, 1.0, seed=0)
    counts = torch.zeros(K, K)
    for t, y in zip(noisy.true_labels, noisy.labels):
        counts[t, y] += 1
    rows = counts / counts.sum(1, keepdim=True)
    assert torch.all((rows - 1 / K).abs() < 0.05)  # every class is spread evenly over all labels


def test_noisy_labels_stay_fixed_per_example_and_depend_on_the_seed():
    data = balanced()
    first, again, other = NoisyLabels(data, K, 0.5, seed=3), NoisyLabels(data, K, 0.5, seed=3), NoisyLabels(
        data, K, 0.5, seed=4)
    assert torch.equal(first.labels, again.labels)
    assert not torch.equal(first.labels, other.labels)
    assert [int(first[i][1]) for i in range(50)] == [int(first[i][1]) for i in range(50)]


def test_wrappers_change_labels_only():
    data = balanced(100)
    for wrapped in (PermutedLabels(data, K), NoisyLabels(data, K, 1.0)):
        for i in (0, 17, 99):
            assert torch.equal(wrapped[i][0], data[i][0])
            assert int(wrapped[i][1]) == int(wrapped.labels[i])


def test_label_specs_build_the_right_wrapper():
    data = balanced(200)
    assert relabel(data, "clean", K) is data
    assert isinstance(relabel(data, "permuted", K), PermutedLabels)
    noisy = relabel(data, "noise-0.25", K)
    assert isinstance(noisy, NoisyLabels) and noisy.noise == 0.25
    assert relabel(data, "random", K).noise == 1.0
    assert parse_label_spec("noise-.5") == ("noise", 0.5)


@pytest.mark.parametrize("spec", ["nosie-0.2", "noise-1.5", "shuffled"])
def test_bad_label_specs_name_the_problem_and_the_fix(spec):
    with pytest.raises(ValueError, match="Fix"):
        parse_label_spec(spec)


def test_a_typo_gets_a_suggestion():
    with pytest.raises(ValueError, match='Did you mean "permuted"'):
        parse_label_spec("permutted")


def test_labels_are_found_in_tensor_datasets_subsets_and_attributes():
    data = balanced(20)
    assert dataset_labels(data).tolist() == [i % K for i in range(20)]
    assert dataset_labels(Subset(data, [3, 4, 9])).tolist() == [3, 4, 4]

    class WithTargets(torch.utils.data.Dataset):
        targets = [1, 0, 1]

        def __len__(self):
            return 3

    assert dataset_labels(WithTargets()).tolist() == [1, 0, 1]


def test_a_class_count_that_does_not_cover_the_labels_is_refused():
    with pytest.raises(ValueError, match="num_classes=3.*Fix"):
        NoisyLabels(balanced(20), 3, 0.5)
