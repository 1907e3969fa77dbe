"""torch functions called on lazy expressions with their operands by torch's keyword names
(qa18, session 13).

Found: ``torch.linalg.det(A=X)``, ``torch.linalg.solve(A=X, B=Y)``, ``torch.linalg.lstsq(input=X,
b=Y)``, ``torch.matmul(input=X, other=Y)`` and the like raised "det() missing 1 required
positional argument: 'x'" (or "unexpected keyword argument 'A'"): the routes passed torch's
keywords to lazymat's functions, which name their operands otherwise."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

# (torch function, its keywords for the operands (in order), other keywords): torch's own names
CALLS = [
    (torch.linalg.det, ("A",), {}),
    (torch.linalg.slogdet, ("A",), {}),
    (torch.linalg.inv, ("A",), {}),
    (torch.linalg.solve, ("A", "B"), {}),
    (torch.linalg.solve, ("A", "B"), {"left": False}),
    (torch.linalg.lstsq, ("input", "b"), {"driver": "gelsd"}),
    (torch.linalg.svd, ("A",), {"full_matrices": False}),
    (torch.linalg.svdvals, ("A",), {}),
    (torch.linalg.eig, ("input",), {}),
    (torch.linalg.pinv, ("input",), {}),
    (torch.linalg.matrix_power, ("input",), {"n": -2}),
    (torch.linalg.matrix_rank, ("input",), {}),
    (torch.det, ("input",), {}),
    (torch.logdet, ("input",), {}),
    (torch.trace, ("input",), {}),
    (torch.matmul, ("input", "other"), {}),
    (torch.add, ("input", "other"), {"alpha": 2}),
]


def _dense(out):
    if isinstance(out, lm.Expr):
        return out.to_dense()
    if isinstance(out, tuple):
        return tuple(_dense(o) for o in out)
    return out


@settings(max_examples=40, deadline=None)
@given(call=st.sampled_from(CALLS), n=st.integers(1, 4), batch=st.sampled_from([(), (2,)]),
       seed=st.integers(0, 999))
def test_operands_by_keyword_answer_as_by_position(call, n, batch, seed):
    """Property: a routed torch function called with its operands by torch's keyword names
    answers as called positionally, and as torch does on the dense float64 matrices."""
    func, names, options = call
    g = torch.Generator().manual_seed(seed)
    if func is torch.trace:
        batch = ()
    A, C = (torch.randn(*batch, n, n, generator=g, dtype=torch.float64) for _ in range(2))
    X = lm.lazy(A) @ lm.lazy(C + 3 * torch.eye(n, dtype=torch.float64))  # well conditioned
    dense = [X.to_dense()]
    operands = [X]
    if len(names) == 2:
        other = torch.randn(*batch, n, n, generator=g, dtype=torch.float64)
        operands.append(other)
        dense.append(other)
    by_name = _dense(func(**dict(zip(names, operands, strict=True)), **options))
    by_position = _dense(func(*operands, **options))
    expected = func(*dense, **options)
    for a, b, e in zip(*(o if isinstance(o, tuple) else (o,) for o in (by_name, by_position, expected)),
                       strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)  # (logdet of a negative det is NaN)
        if func not in (torch.linalg.svd, torch.linalg.eig):  # (vectors: up to a phase; rank 1e-8 close)
            torch.testing.assert_close(a.to(e.dtype), e, rtol=1e-6, atol=1e-6, equal_nan=True)
