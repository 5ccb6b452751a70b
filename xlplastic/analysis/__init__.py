"""Cross-lingual structure analysis (Conneau, Wu et al., 2020), on device.

For notebooks:

    from xlplastic.analysis import linear_cka, procrustes
    linear_cka(X, Y, debiased=False)   # n x d1, n x d2 (NumPy or JAX) -> scalar
    procrustes(X, Y)                   # orthogonal W minimising ||XW - Y||_F

`cka` (linear / RBF / debiased / exact streaming CKA), `align` (Procrustes, iterative normalisation,
chunked and sharded NN / CSLS retrieval, word translation), `evalsets` (MUSE, Tatoeba, parallel files),
`reps` (per-layer representations of a checkpoint) and `runner` (`xlplastic analyze`).
"""

from xlplastic.analysis.align import (
    csls_knn,
    fit_procrustes_on_dictionary,
    iterative_normalize,
    nearest_neighbors,
    procrustes,
    retrieval_precision,
    translation_precision,
    word_translation,
)
from xlplastic.analysis.cka import cka_init, cka_matrix, cka_result, cka_update, linear_cka, rbf_cka

__all__ = [
    "cka_init", "cka_matrix", "cka_result", "cka_update", "csls_knn", "fit_procrustes_on_dictionary",
    "iterative_normalize", "linear_cka", "nearest_neighbors", "procrustes", "rbf_cka", "retrieval_precision",
    "translation_precision", "word_translation",
]
