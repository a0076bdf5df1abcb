"""The registry: names say similarity or distance; unknown names get a suggestion."""

from __future__ import annotations

import pytest
import torch

from similarity import MEASURES, Measure, SimilarityInputError, UnknownNameError, get_measure


def test_every_measure_is_a_named_callable_that_returns_a_float():
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, measure in MEASURES.items():
        assert isinstance(measure, Measure) and measure.name == name and measure.description
        value = measure(x, x.flip(1) * 2.0)
        assert isinstance(value, float)
        identical = measure(x, x)
        assert identical == pytest.approx(1.0 if measure.higher_is_more_similar else 0.0, abs=1e-9), name


def test_names_say_whether_a_measure_is_a_similarity_or_a_distance():
    for name, measure in MEASURES.items():
        if name.endswith(("_distance", "_dissimilarity")):
            assert measure.kind == "distance" and not measure.higher_is_more_similar
        else:
            assert measure.kind == "similarity" and measure.higher_is_more_similar


def test_get_measure_returns_the_registered_object_and_suggests_close_names():
    assert get_measure("linear_cka") is MEASURES["linear_cka"]
    with pytest.raises(UnknownNameError, match="Did you mean 'linear_cka_debiased'") as info:
        get_measure("linear_cka_debiassed")
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownNameError, match="Known measures: linear_cka"):
        get_measure("zzz")


@pytest.mark.parametrize("name", list(MEASURES))
def test_every_measure_rejects_non_finite_input_naming_the_side(name):
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = x.clone()
    y[3, 2] = float("nan")
    with pytest.raises(SimilarityInputError, match="y contains NaN or infinite values; remove"):
        MEASURES[name](x, y)
