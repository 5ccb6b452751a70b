"""Plain float64 NumPy CKA, as published (Kornblith et al., 2019, google-research `representation_similarity`).

These are the straightforward formulas of the paper's demo notebook, kept deliberately simple: every
input is cast to float64, Gram matrices are n x n, and the all-pairs helper loops over layer pairs the
way an analysis script would. They are the ground truth for `tests/test_cka.py` and the NumPy peer of
`xlplastic bench analysis`; the fast on-device kernels live in `xlplastic.analysis.cka`.
"""

from __future__ import annotations

import numpy as np


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def gram_linear(x) -> np.ndarray:
    """Linear-kernel Gram matrix x xᵀ (n x n) of an n x d feature matrix."""
    x = _f64(x)
    return x.dot(x.T)


def gram_rbf(x, threshold: float = 1.0) -> np.ndarray:
    """RBF-kernel Gram matrix; bandwidth sigma = threshold * sqrt(median squared distance).

    The median is taken over all n² squared distances (the zero diagonal included), as published.
    """
    x = _f64(x)
    dot_products = x.dot(x.T)
    sq_norms = np.diag(dot_products)
    sq_distances = -2 * dot_products + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold**2 * sq_median_distance))


def center_gram(gram, unbiased: bool = False) -> np.ndarray:
    """Centres a symmetric Gram matrix (H K H); `unbiased` gives the U-statistic centring of Song et al."""
    gram = _f64(gram)
    if not np.allclose(gram, gram.T):
        raise ValueError("Input must be a symmetric matrix.")
    gram = gram.copy()
    if unbiased:
        # Centring for the unbiased HSIC estimator (Song et al., 2007/2012): zero the diagonal, subtract
        # row/column means with the U-statistic normalisation, zero the diagonal again.
        n = gram.shape[0]
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0, dtype=np.float64) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0, dtype=np.float64)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def cka(gram_x, gram_y, debiased: bool = False) -> float:
    """CKA of two n x n Gram matrices (debiased: unbiased HSIC in numerator and normalisers)."""
    gram_x = center_gram(gram_x, unbiased=debiased)
    gram_y = center_gram(gram_y, unbiased=debiased)
    # Frobenius inner product of the centred Grams (= n² HSIC up to a constant that cancels in the ratio).
    scaled_hsic = gram_x.ravel().dot(gram_y.ravel())
    normalization_x = np.linalg.norm(gram_x)
    normalization_y = np.linalg.norm(gram_y)
    return float(scaled_hsic / (normalization_x * normalization_y))


def _debiased_dot_product_similarity_helper(xty, sum_squared_rows_x, sum_squared_rows_y, squared_norm_x, squared_norm_y, n):
    """Unbiased linear HSIC (times a constant) in feature space, from Song et al.'s estimator."""
    return (
        xty
        - n / (n - 2.0) * sum_squared_rows_x.dot(sum_squared_rows_y)
        + squared_norm_x * squared_norm_y / ((n - 1) * (n - 2))
    )


def feature_space_linear_cka(features_x, features_y, debiased: bool = False) -> float:
    """Linear CKA in feature space: ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred features."""
    features_x = _f64(features_x)
    features_y = _f64(features_y)
    features_x = features_x - np.mean(features_x, 0, keepdims=True)
    features_y = features_y - np.mean(features_y, 0, keepdims=True)

    dot_product_similarity = np.linalg.norm(features_x.T.dot(features_y)) ** 2
    normalization_x = np.linalg.norm(features_x.T.dot(features_x))
    normalization_y = np.linalg.norm(features_y.T.dot(features_y))

    if debiased:
        n = features_x.shape[0]
        sum_squared_rows_x = np.einsum("ij,ij->i", features_x, features_x)
        sum_squared_rows_y = np.einsum("ij,ij->i", features_y, features_y)
        squared_norm_x = np.sum(sum_squared_rows_x)
        squared_norm_y = np.sum(sum_squared_rows_y)

        dot_product_similarity = _debiased_dot_product_similarity_helper(
            dot_product_similarity, sum_squared_rows_x, sum_squared_rows_y, squared_norm_x, squared_norm_y, n
        )
        normalization_x = np.sqrt(
            _debiased_dot_product_similarity_helper(
                normalization_x**2, sum_squared_rows_x, sum_squared_rows_x, squared_norm_x, squared_norm_x, n
            )
        )
        normalization_y = np.sqrt(
            _debiased_dot_product_similarity_helper(
                normalization_y**2, sum_squared_rows_y, sum_squared_rows_y, squared_norm_y, squared_norm_y, n
            )
        )

    return float(dot_product_similarity / (normalization_x * normalization_y))


def cka_matrix(xs, ys, kernel: str = "linear", debiased: bool = False, threshold: float = 1.0) -> np.ndarray:
    """All layer pairs, the straightforward way: a loop over (i, j) calling the pairwise function.

    kernel: "linear" (feature space), "linear_gram" (n x n Gram space) or "rbf" (Gram space).
    """
    out = np.zeros((len(xs), len(ys)), dtype=np.float64)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            if kernel == "linear":
                out[i, j] = feature_space_linear_cka(x, y, debiased=debiased)
            elif kernel == "linear_gram":
                out[i, j] = cka(gram_linear(x), gram_linear(y), debiased=debiased)
            elif kernel == "rbf":
                out[i, j] = cka(gram_rbf(x, threshold), gram_rbf(y, threshold), debiased=debiased)
            else:
                raise ValueError(f"unknown kernel {kernel!r}")
    return out
