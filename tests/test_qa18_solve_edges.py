"""lm.linalg.inv/solve/matrix_power(n < 0) at the edges, against float64 eager torch (qa18,
session 13).

Found: an expression scaled by 0 (``0 * A``, or a 0-dim tensor scale equal to 0) is the zero
matrix, singular, and torch raises ``LinAlgError``; lazymat divided the segments' inverses by
the coefficient and answered ``inf`` entries."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import expressions

import lazymat as lm
from lazymat.coefficient import times

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def squares(draw):
    """A random square expression and its dense float64 twin: a Gram product either way, a
    corner cut, or a product with a square data leaf."""
    X, D = draw(expressions())
    m, n = D.shape[-2:]
    how = draw(st.sampled_from(["gram", "rgram", "cut", "leaf"]))
    if how == "gram":
        return X @ X.mT, D @ D.mT
    if how == "rgram":
        return X.mT @ X, D.mT @ D
    if how == "cut":
        k = min(m, n)
        return X[..., :k, :k], D[..., :k, :k]
    g = torch.Generator().manual_seed(draw(st.integers(0, 99)))
    T = torch.randn(n, m, generator=g, dtype=torch.float64)
    return X @ lm.lazy(T), D @ T


def _outcome(f):
    try:
        out = f()
    except torch.linalg.LinAlgError:
        return None
    return out.to_dense() if isinstance(out, lm.Expr) else out


@SETTINGS
@given(pair=squares(), zero=st.sampled_from([0, 0.0, "tensor"]),
       op=st.sampled_from(["inv", "solve", "solve_right", "power"]))
def test_a_zero_scale_is_singular_as_torch_says(pair, zero, op):
    """Property: ``X * 0`` (a number or a 0-dim tensor) raises torch's LinAlgError, as torch
    does on the dense zero matrix (an empty matrix answers empty, as torch's)."""
    X, D = pair
    c = torch.tensor(0.0, dtype=torch.float64) if zero == "tensor" else zero
    X, D = X * c, D.detach() * c
    n = D.shape[-1]
    B = torch.ones(*D.shape[:-1], 2, dtype=torch.float64)
    calls = {
        "inv": (lambda: lm.linalg.inv(X), lambda: torch.linalg.inv(D)),
        "solve": (lambda: lm.linalg.solve(X, B), lambda: torch.linalg.solve(D, B)),
        "solve_right": (lambda: lm.linalg.solve(X, B.mT, left=False),
                        lambda: torch.linalg.solve(D, B.mT, left=False)),
        "power": (lambda: lm.linalg.matrix_power(X, -2), lambda: torch.linalg.matrix_power(D, -2)),
    }[op]
    ours, theirs = _outcome(calls[0]), _outcome(calls[1])
    if D.numel() == 0 or n == 0:
        assert ours is not None and theirs is not None and ours.shape == theirs.shape
        return
    assert theirs is None and ours is None, ours


@pytest.mark.parametrize("op", ["inv", "solve"])
def test_the_zero_scale_error_names_shape_dtype_and_the_scale(op):
    X = 0 * lm.lazy(torch.randn(3, 3, dtype=torch.float64))
    with pytest.raises(torch.linalg.LinAlgError, match=r"\(3, 3\) float64 expression is scaled by 0"):
        lm.linalg.inv(X) if op == "inv" else lm.linalg.solve(X, torch.ones(3, 1, dtype=torch.float64))


@SETTINGS
@given(pair=st.one_of(squares(), expressions()))
def test_square_segments_multiply_back_to_the_matrix(pair):
    """Property: ``c * S_1 @ ... @ S_j`` is ``X`` (float64 eager torch), every segment square;
    a non-square ``X`` (which has no square segments) raises ValueError naming its shape, as
    ``det`` does (it answered ``(1.0, [])``: the empty product, the identity); a tensor is taken."""
    X, D = pair
    D = D.detach()
    if D.shape[-1] != D.shape[-2]:
        with pytest.raises(ValueError, match=r"square_segments needs a square matrix, got shape"):
            lm.linalg.square_segments(X)
        return
    c, segments = lm.linalg.square_segments(X)
    n = D.shape[-1]
    assert segments and all(s.shape[-2:] == (n, n) for s in segments)
    out = segments[0].to_dense()
    for s in segments[1:]:
        out = out @ s.to_dense()
    out = out * c if isinstance(c, torch.Tensor) else times(out, c)  # (c exact: maybe a Wide)
    scale = max(D.abs().max().item() if D.numel() else 0.0, 1.0)
    torch.testing.assert_close(out.expand(D.shape), D, rtol=1e-9, atol=1e-9 * scale)
    c2, segments2 = lm.linalg.square_segments(D)
    assert len(segments2) == 1 and torch.equal(segments2[0].to_dense(), D)


@settings(max_examples=30, deadline=None)
@given(rcond=st.one_of(st.text(max_size=3), st.complex_numbers(allow_nan=False, min_magnitude=1e-3), st.lists(
    st.floats(0, 1), max_size=2), st.floats(0.01, 0.99), st.just(None)), seed=st.integers(0, 99),
    driver=st.sampled_from(["gelsd", "gelss"]))
def test_lstsq_rcond_is_a_real_number_or_a_named_type_error(rcond, seed, driver):
    """Property: an ``rcond`` that is no real number raises TypeError naming ``rcond`` and its
    type (a string raised "new(): invalid data type 'str'", a complex number "tolerances must be
    real"); one in (0, 1) or None answers torch's rank and solution for gelsd and gelss."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(5, 4, generator=g, dtype=torch.float64)
    B = torch.randn(5, 2, generator=g, dtype=torch.float64)
    X = lm.lazy(A[:, :2]) @ lm.lazy(A[:2]) if seed % 2 else lm.lazy(A)
    D = X.to_dense()
    if not (rcond is None or isinstance(rcond, float)):
        name = type(rcond).__name__
        with pytest.raises(TypeError, match=rf"lstsq: rcond must be a real number or None .*{name}"):
            lm.linalg.lstsq(X, B, rcond=rcond, driver=driver)
        return
    ours = lm.linalg.lstsq(X, B, rcond=rcond, driver=driver)
    theirs = torch.linalg.lstsq(D, B, rcond=rcond, driver=driver)
    S = torch.linalg.svdvals(D)
    cut = (rcond if rcond is not None else 0.0) * S[0]
    if bool(((S - cut).abs() < 1e-6 * S[0]).any()):  # a value at the threshold: either side may count it
        return
    assert torch.equal(ours.rank, theirs.rank)
    torch.testing.assert_close(ours.solution, theirs.solution, rtol=1e-6, atol=1e-6)


@st.composite
def solve_cases(draw):
    """``(X, D, B)``: a product of 1 to 3 square leaves of batch shapes that broadcast (sizes
    1 included), well conditioned, its dense twin, and a right-hand side by torch's rules: a
    1-D vector, a batch of vectors (``X.shape[:-1]``) or a matrix with its own batch."""
    n = draw(st.integers(1, 3))
    batch = tuple(draw(st.lists(st.integers(1, 2), max_size=2)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 999)))
    X = D = None
    for _ in range(draw(st.integers(1, 3))):
        keep = draw(st.integers(0, len(batch)))
        shape = tuple(1 if draw(st.booleans()) else s for s in batch[len(batch) - keep:])
        t = torch.randn(*shape, n, n, generator=g, dtype=torch.float64) + 3 * torch.eye(n).double()
        X, D = (lm.lazy(t), t) if X is None else (X @ lm.lazy(t), D @ t)
    kind = draw(st.sampled_from(["1d", "batch of vectors", "matrix"]))
    if kind == "1d":
        B = torch.randn(n, generator=g, dtype=torch.float64)
    elif kind == "batch of vectors":
        B = torch.randn(*D.shape[:-1], generator=g, dtype=torch.float64)
    else:
        B = torch.randn(*draw(st.sampled_from([(), (1,), batch[-1:]])), n, draw(st.integers(1, 3)),
                        generator=g, dtype=torch.float64)
    return X, D, B


@settings(max_examples=80, deadline=None)
@given(case=solve_cases(), left=st.booleans())
def test_solve_answers_torchs_shape_and_values_for_every_batch(case, left):
    """Property: ``solve(X, B, left=)`` is float64 eager torch's on the dense matrix, shapes
    included, for segments of any batch shapes: a ``(1, 1, 1)`` product with a 1-D ``B``
    answered ``(1,)`` for torch's ``(1, 1)`` (torch read a segment's ``(1, 1)`` right-hand side as
    a batch of vectors). Not ``left``, a vector is a row (torch refuses it): compared with
    torch's solve of the transposed system."""
    X, D, B = case
    if not left and B.ndim > 1 and B.shape != D.shape[:-1]:
        B = B.mT  # (..., k, n) for Y @ X = B
    vector = B.ndim == 1 or B.shape == D.shape[:-1]
    ours = lm.linalg.solve(X, B, left=left)
    expected = torch.linalg.solve(D if left or not vector else D.mT, B, left=left or vector)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)
