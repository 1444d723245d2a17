"""The AHCL closed-form V update on its own: monotone objective, codes stay in {-1, +1}."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from rsir_train.ahcl.model import code_objective, similarity, update_codes  # noqa: E402

pytestmark = pytest.mark.train


def _problem(seed: int, n: int = 60, m: int = 25, bits: int = 16, classes: int = 4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    sample = np.sort(rng.choice(n, m, replace=False))
    U = np.tanh(rng.normal(size=(m, bits))).astype(np.float32)
    S = similarity(labels[sample], labels)
    V = np.where(rng.random((n, bits)) < 0.5, -1.0, 1.0).astype(np.float32)
    return V, U, S, sample


def test_similarity_is_one_or_minus_r():
    S = similarity(np.array([0, 0, 1]), np.array([0, 1, 1, 1]))
    same = float((np.array([0, 0, 1])[:, None] == np.array([0, 1, 1, 1])[None]).sum())
    r = same / (12 - same)
    assert set(np.unique(S)) == {np.float32(1.0), np.float32(-r)}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("lam", [0.0, 1.0, 200.0])
def test_update_never_increases_objective_and_stays_binary(seed, lam):
    V, U, S, sample = _problem(seed)
    before = code_objective(V, U, S, sample, lam)
    for _ in range(3):  # repeated sweeps keep decreasing (or stay put)
        V = update_codes(V, U, S, sample, lam)
        after = code_objective(V, U, S, sample, lam)
        assert after <= before + 1e-6 * abs(before)
        assert set(np.unique(V)) <= {-1.0, 1.0}
        before = after


def test_update_from_zero_init_gives_binary_codes():
    V, U, S, sample = _problem(0)
    V = update_codes(np.zeros_like(V), U, S, sample, 200.0)
    assert set(np.unique(V)) <= {-1.0, 1.0}


def test_each_column_step_is_the_exact_minimiser():
    """Flipping any single bit after a sweep's last column never lowers the objective."""
    V, U, S, sample = _problem(7, n=20, m=10, bits=8)
    V = update_codes(V, U, S, sample, 5.0)
    k = V.shape[1] - 1
    best = code_objective(V, U, S, sample, 5.0)
    for i in range(V.shape[0]):
        W = V.copy()
        W[i, k] *= -1
        assert code_objective(W, U, S, sample, 5.0) >= best - 1e-6


@pytest.mark.parametrize("seed", range(3))
def test_similarity_product_without_the_matrix(seed):
    from rsir_train.ahcl.model import similarity_t_times

    V, U, S, sample = _problem(seed)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 60)
    S = similarity(labels[sample], labels)
    np.testing.assert_allclose(similarity_t_times(labels[sample], labels, U), S.T @ U.astype(np.float64),
                               rtol=1e-5, atol=1e-5)
    a = update_codes(V, U, S, sample, 200.0)
    b = update_codes(V, U, None, sample, 200.0, StU=similarity_t_times(labels[sample], labels, U))
    assert np.array_equal(a, b)
