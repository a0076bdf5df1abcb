"""Similarity of representations: exact, streaming and fast CKA, RSA, Procrustes and weight distances.

Functional core (tensors in, python floats out; never imports Lightning):
    linear_cka, rbf_cka, minibatch_cka, rdm, rsa_similarity, rsa_dissimilarity,
    procrustes_distance, weight_l2_distance
Layer x layer matrices: similarity_matrix. Streaming (torchmetrics): LinearCKAAccumulator.
Layer by layer with registry names (the studies' one route): compare_representations.
Fixed references prepared once for repeated linear CKA: prepare_reference -> PreparedReference.
Statistics: bootstrap_ci, permutation_test. Registry: MEASURES, get_measure.
Names ending in _similarity / _cka are similarities (1 = same); names ending in _distance or
_dissimilarity are distances (0 = same).
"""

from similarity._inputs import SimilarityInputError, UnknownNameError
from similarity.accumulators import LinearCKAAccumulator
from similarity.cka import linear_cka, linear_cka_route, minibatch_cka, rbf_cka, rbf_kernel
from similarity.compare import compare_representations
from similarity.distances import procrustes_distance, weight_l2_distance
from similarity.matrix import similarity_matrix
from similarity.prepared import PREPARED_MEASURES, PreparedReference, prepare_reference
from similarity.registry import MEASURES, Measure, get_measure
from similarity.rsa import compare_rdms, rdm, rdm_error_bound, rsa_dissimilarity, rsa_similarity
from similarity.statistics import bootstrap_ci, permutation_test

__all__ = [
    "MEASURES",
    "PREPARED_MEASURES",
    "LinearCKAAccumulator",
    "Measure",
    "PreparedReference",
    "SimilarityInputError",
    "UnknownNameError",
    "bootstrap_ci",
    "compare_rdms",
    "compare_representations",
    "get_measure",
    "linear_cka",
    "linear_cka_route",
    "minibatch_cka",
    "permutation_test",
    "prepare_reference",
    "procrustes_distance",
    "rbf_cka",
    "rbf_kernel",
    "rdm",
    "rdm_error_bound",
    "rsa_dissimilarity",
    "rsa_similarity",
    "similarity_matrix",
    "weight_l2_distance",
]
