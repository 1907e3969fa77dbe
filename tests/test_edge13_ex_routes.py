"""``torch.linalg.inv_ex`` and ``torch.linalg.solve_ex`` on lazy expressions route to
``lm.linalg.inv``/``solve`` with torch's return types (edge13, session 13; docs/linear-algebra.md).

Found: both raised "not supported" on an expression."""

import pytest
import torch
from torch.testing import assert_close

import lazymat as lm


def _expressions(gen):
    def t(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    A, B, C, W, V = t(3, 5, 5), t(5, 5), t(5, 5), t(5, 8), t(8, 5)
    return [(lm.lazy(A) @ lm.lazy(B), A @ B),                       # two square segments: lazy inverse
            (lm.lazy(W) @ lm.lazy(V), W @ V),                       # one segment through wider dims
            (lm.lazy(A) + lm.lazy(B) @ lm.lazy(C), A + B @ C),      # a sum, formed
            (2.5 * lm.lazy(B), 2.5 * B)]


@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("check_errors", [False, True])
def test_inv_ex_answers_torchs_named_tuple(case, check_errors):
    x, dense = _expressions(torch.Generator().manual_seed(case))[case]
    got = torch.linalg.inv_ex(x, check_errors=check_errors)
    want = torch.linalg.inv_ex(dense)
    assert type(got) is torch.return_types.linalg_inv_ex
    inverse = got.inverse.to_dense() if isinstance(got.inverse, lm.Expr) else got.inverse
    assert_close(inverse, want.inverse, rtol=1e-8, atol=1e-10)
    assert got.info.dtype == torch.int32 and torch.equal(got.info, want.info)


@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("left", [True, False])
@pytest.mark.parametrize("vector", [False, True])
def test_solve_ex_answers_torchs_named_tuple(case, left, vector):
    gen = torch.Generator().manual_seed(10 + case)
    x, dense = _expressions(gen)[case]
    B = torch.randn(*((5,) if vector else (2, 1, 5, 3) if left else (2, 1, 3, 5)), generator=gen,
                    dtype=torch.float64)
    got = torch.linalg.solve_ex(x, B, left=left, check_errors=True)
    # (a vector with left=False is a row, y @ X = b: torch refuses it, X^T y = b is its answer)
    row = vector and not left
    want = torch.linalg.solve_ex(dense.mT, B) if row else torch.linalg.solve_ex(dense, B, left=left)
    assert type(got) is torch.return_types.linalg_solve_ex
    assert_close(got.result, want.result, rtol=1e-8, atol=1e-10)
    assert got.info.dtype == torch.int32 and torch.equal(got.info, want.info)


@pytest.mark.parametrize("ex", ["inv_ex", "solve_ex"])
def test_a_singular_expression_raises_even_without_check_errors(ex):
    """A documented difference: torch answers ``info > 0`` there; lazymat raises as ``inv``."""
    L, R = torch.randn(4, 2, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    x = lm.lazy(L) @ lm.lazy(R)  # structural rank 2 < 4
    args = (x,) if ex == "inv_ex" else (x, torch.randn(4, 1, dtype=torch.float64))
    with pytest.raises(torch.linalg.LinAlgError, match="structural rank 2"):
        getattr(torch.linalg, ex)(*args, check_errors=False)
    with pytest.raises(torch.linalg.LinAlgError):  # singular by its values: torch's error
        getattr(torch.linalg, ex)(lm.lazy(torch.zeros(4, 4, dtype=torch.float64)), *args[1:])
