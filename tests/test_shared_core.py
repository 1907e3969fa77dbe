"""The smallest core where work or factors are shared: common factors of the terms of a sum,
a tall leaf shared by a whole batch (replaced by its triangular factor), identical
sub-networks computed once. Every answer against dense torch in float64, with the returned
width checked against the dense rank."""

import torch

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close, randn


def lazies(gen, **shapes):
    """``{name: (lazy, dense)}`` of seeded float64 tensors."""
    out = {}
    for name, shape in shapes.items():
        t = randn(gen, *shape)
        out[name] = (lm.lazy(t, name=name), t)
    return out


def check_spectrum(X, D, rank):
    """svdvals/svd of ``X`` have exactly ``rank`` entries and agree with dense ``D``."""
    S = LA.svdvals(X)
    assert S.shape == (*D.shape[:-2], rank)
    assert torch.equal(torch.linalg.matrix_rank(D), torch.full(D.shape[:-2], rank))
    assert_close(S, torch.linalg.svdvals(D)[..., :rank], rtol=1e-9)
    U, S2, Vh = LA.svd(X)
    assert U.shape[-1] == rank and Vh.shape[-2] == rank
    assert_close(U @ torch.diag_embed(S2) @ Vh, D, rtol=1e-9)
    assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(D), rtol=1e-9)


# ---- sums whose terms share factors -------------------------------------------------------
def test_k_composition_written_expanded_has_the_rank_width(gen):
    """E Q K^T E^T + E Q K^T O^T V^T E^T: the terms share E Q K^T ... E^T, so the core is as
    narrow as the factored form E Q (K^T + K^T O^T V^T) E^T (stacking gave twice the rank)."""
    w = lazies(gen, E=(60, 24), Q=(24, 4), K=(24, 4), O=(4, 24), V=(24, 4))
    (E, e), (Q, q), (K, k), (O, o), (V, v) = (w[n] for n in "EQKOV")
    X = E @ Q @ K.T @ E.T + E @ Q @ K.T @ O.T @ V.T @ E.T
    D = e @ q @ k.T @ e.T + e @ q @ k.T @ o.T @ v.T @ e.T
    L, R = X.factor()
    assert L.shape == (60, 4) and R.shape == (4, 60)
    check_spectrum(X, D, 4)


def test_common_factors_keep_each_terms_coefficient(gen):
    """2 A B C - 0.5 s A B D (s a tensor scalar) = A B (2 C - 0.5 s D), exactly."""
    w = lazies(gen, A=(30, 12), B=(12, 3), C=(3, 25), D=(3, 25))
    (A, a), (B, b), (C, c), (Dm, d) = (w[n] for n in "ABCD")
    s = torch.tensor(1.7, dtype=torch.float64)
    X = 2 * (A @ B @ C) - (A @ B @ Dm) * s * 0.5
    dense = 2 * (a @ b @ c) - 0.5 * s * (a @ b @ d)
    check_spectrum(X, dense, 3)
    assert_close(X.to_dense(), dense)


def test_a_term_that_is_the_common_prefix_itself(gen):
    """A B + A B C D: the common prefix is the whole first term, so one view stays inside
    (A (B + B C D)); no identity is formed and the width is the rank."""
    w = lazies(gen, A=(40, 5), B=(5, 9), C=(9, 2), D=(2, 9))
    (A, a), (B, b), (C, c), (Dm, d) = (w[n] for n in "ABCD")
    X = A @ B + A @ B @ C @ Dm
    check_spectrum(X, a @ b + a @ b @ c @ d, 5)


def test_inner_sum_is_factored_again(gen):
    """A (B C + B D) E + A F G E: the outer sum shares A .. E and its middles are stacked;
    the inner sum, used as a factor, is itself factored to B (C + D) (width 2, not 4)."""
    w = lazies(gen, A=(50, 20), B=(20, 2), C=(2, 20), D=(2, 20), F=(20, 1), G=(1, 20),
               E=(20, 45))
    (A, a), (B, b), (C, c), (Dm, d), (F, f), (G, g), (E, e) = (w[n] for n in "ABCDFGE")
    X = A @ (B @ C + B @ Dm) @ E + A @ F @ G @ E
    check_spectrum(X, a @ (b @ c + b @ d) @ e + a @ f @ g @ e, 3)


def test_batched_terms_with_a_broadcast_common_factor(gen):
    """A B C + A B F over a batch of 3 (A and F unbatched): A B (C + F), width 2 per member."""
    w = lazies(gen, A=(35, 10), B=(3, 10, 2), C=(3, 2, 30), F=(2, 30))
    (A, a), (B, b), (C, c), (F, f) = (w[n] for n in "ABCF")
    X = A @ B @ C + A @ B @ F
    check_spectrum(X, a @ b @ c + a @ b @ f, 2)
