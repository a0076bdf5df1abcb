"""Named measures: MEASURES[name](x, y) -> float, and get_measure(name) with did-you-mean.

Every entry is a Measure, a plain callable that also says whether it is a similarity (higher =
more alike) or a distance (0 = identical); the statistics use that to orient their tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from similarity._inputs import UnknownNameError, did_you_mean
from similarity.cka import linear_cka, rbf_cka
from similarity.distances import procrustes_distance
from similarity.rsa import rsa_dissimilarity, rsa_similarity

SIMILARITY, DISTANCE = "similarity", "distance"


def linear_cka_dissimilarity(x: Tensor, y: Tensor) -> float:
    """1 - linear CKA (biased HSIC): the MAML paper's CKA dissimilarity, 0 for the same representation."""
    return 1.0 - linear_cka(x, y)


@dataclass(frozen=True)
class Measure:
    """A named pairwise measure: call it as measure(x, y) -> float."""

    name: str
    fn: Callable[[Tensor, Tensor], float]
    kind: str  # SIMILARITY or DISTANCE
    description: str

    def __call__(self, x: Tensor, y: Tensor) -> float:
        return self.fn(x, y)

    @property
    def higher_is_more_similar(self) -> bool:
        return self.kind == SIMILARITY


_ALL = (
    Measure("linear_cka", linear_cka, SIMILARITY, "linear CKA, biased HSIC (Kornblith et al. 2019)"),
    Measure("linear_cka_debiased", partial(linear_cka, debiased=True), SIMILARITY,
            "linear CKA, debiased HSIC (Song et al. 2012); ~0 for independent data"),
    Measure("linear_cka_dissimilarity", linear_cka_dissimilarity, DISTANCE,
            "1 - linear CKA (the MAML paper's CKA dissimilarity; 0 = identical)"),
    Measure("rbf_cka", rbf_cka, SIMILARITY, "RBF CKA, bandwidth = median pairwise distance"),
    Measure("rbf_cka_debiased", partial(rbf_cka, debiased=True), SIMILARITY, "RBF CKA with debiased HSIC"),
    Measure("rsa_spearman", rsa_similarity, SIMILARITY, "RSA: 1 - Pearson RDMs compared by Spearman rho"),
    Measure("rsa_pearson", partial(rsa_similarity, compare="pearson"), SIMILARITY,
            "RSA: 1 - Pearson RDMs compared by Pearson r"),
    Measure("rsa_kendall_tau_a", partial(rsa_similarity, compare="kendall_tau_a"), SIMILARITY,
            "RSA: 1 - Pearson RDMs compared by Kendall tau-a"),
    Measure("rsa_dissimilarity", rsa_dissimilarity, DISTANCE,
            "1 - Spearman rho of 1 - Pearson RDMs (the MAML paper's second level; 0 = identical)"),
    Measure("procrustes_distance", procrustes_distance, DISTANCE,
            "orthogonal Procrustes distance of centred, unit-norm representations, in [0, 2]"),
)

MEASURES: dict[str, Measure] = {m.name: m for m in _ALL}


def get_measure(name: str) -> Measure:
    """The registered measure called name; unknown names raise a KeyError suggesting the closest ones."""
    if not isinstance(name, str):
        raise TypeError(f"measure names are strings, not {type(name).__name__}; pass one of {list(MEASURES)}")
    if name not in MEASURES:
        raise UnknownNameError(f"unknown similarity measure {name!r}.{did_you_mean(name, MEASURES)} "
                               f"Known measures: {', '.join(MEASURES)}.")
    return MEASURES[name]
