"""One helper for every study: compare two sets of layer representations by registry measure names.

compare_representations(a, b, measures) -> {layer: {measure: value}} calls the registered measure
(``similarity.registry.MEASURES``) on a[layer] and b[layer] for every layer, so the studies share one
route and one set of names: "linear_cka", "linear_cka_debiased", "linear_cka_dissimilarity",
"rbf_cka", "rbf_cka_debiased", "rsa_spearman", "rsa_pearson", "rsa_kendall_tau_a",
"rsa_dissimilarity", "procrustes_distance". Similarities (``*_cka``, ``rsa_spearman/pearson/...``)
are 1 for the same representation, distances (``*_dissimilarity``, ``*_distance``) 0;
``get_measure(name).higher_is_more_similar`` says which.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor

from similarity._inputs import SimilarityInputError, check_choice, did_you_mean
from similarity.registry import get_measure

ON_ERROR = ("raise", "nan")


def _layers(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> list[str]:
    for side, reps in (("a", a), ("b", b)):
        if not isinstance(reps, Mapping) or not reps:
            raise SimilarityInputError(f"{side} must be a non-empty mapping layer name -> [N, ...] tensor, got "
                                       f"{type(reps).__name__}{' (empty)' if isinstance(reps, Mapping) else ''}.")
    only_a, only_b = [k for k in a if k not in b], [k for k in b if k not in a]
    if only_a or only_b:
        hint = did_you_mean(str(only_a[0]), [str(k) for k in b]) if only_a else ""
        raise SimilarityInputError(f"a and b must hold the same layers: only in a {only_a}, only in b {only_b}."
                                   f"{hint} Capture both with the same layer names.")
    return list(a)


def compare_representations(a: Mapping[str, Tensor], b: Mapping[str, Tensor],
                            measures: Sequence[str] | str = ("linear_cka",), *,
                            on_error: str = "raise") -> dict[str, dict[str, float]]:
    """{layer: {measure: measure(a[layer], b[layer])}} for every layer (in the order of ``a``).

    ``a`` and ``b`` map the same layer names to [N, ...] tensors of the same N examples in the same
    order (e.g. two ``analysis.representations.capture_representations`` of one probe set).
    ``measures``: registry names (see ``MEASURES``); one name may be given as a string.
    ``on_error``: "raise", or "nan" to record NaN where a measure cannot compare a pair (it raised
    ``SimilarityInputError``, e.g. a constant representation has no RDM) or gave a non-finite value.
    """
    names = [measures] if isinstance(measures, str) else list(measures)
    if not names:
        raise SimilarityInputError("measures is empty; pass registry names, e.g. ['linear_cka', 'rsa_spearman'].")
    check_choice("on_error", on_error, ON_ERROR)
    registered = {name: get_measure(name) for name in names}
    out: dict[str, dict[str, float]] = {}
    for layer in _layers(a, b):
        values: dict[str, float] = {}
        for name, measure in registered.items():
            try:
                value = float(measure(a[layer], b[layer]))
            except (SimilarityInputError, ZeroDivisionError):
                if on_error == "raise":
                    raise
                value = math.nan
            values[name] = value if math.isfinite(value) or on_error == "raise" else math.nan
        out[layer] = values
    return out
