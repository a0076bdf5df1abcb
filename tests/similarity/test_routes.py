"""linear_cka_route: the public name of the rule linear_cka uses to pick its products (for the perf suite)."""

from similarity import linear_cka_route
from similarity._blocks import feature_cost, gram_cost


def test_narrow_layers_use_feature_space_and_wide_layers_the_gram_matrices():
    assert linear_cka_route(10_000, 64, 64) == "feature"
    assert linear_cka_route(100, 4096, 4096) == "gram"


def test_it_is_the_rule_of_the_internals():
    for n, dx, dy in ((50, 10, 200), (500, 300, 300), (64, 64, 64), (10, 1, 1000)):
        expected = "feature" if feature_cost(n, dx, dy) <= gram_cost(n, dx, dy) else "gram"
        assert linear_cka_route(n, dx, dy) == expected
