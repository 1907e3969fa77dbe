"""torch.func, torch.vmap and torch.compile over a function that builds and evaluates a lazy
expression (qa14, session 11; docs/linear-algebra.md).

Found: under ``torch.func.jvp``/``jacfwd`` (forward mode: tangents do not set
``requires_grad``) ``svdvals``, the spectral norms, ``svd`` and ``pinv`` failed inside torch
("INTERNAL ASSERT FAILED", "cannot resize variables that has a forward grad") and ``eigvals``
returned wrong tangents; under ``torch.vmap`` ``trace`` failed on a data pointer, ``amax`` and
``topk`` on ``out=``, and the decompositions with messages naming nothing of lazymat."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

LA = lm.linalg
ONES = torch.ones(5, dtype=torch.float64)

# (lazymat on the lazy product, torch on the dense one): scalar functions
OPS = {
    "to_dense": (lambda x: x.to_dense().square().sum(), lambda d: d.square().sum()),
    "svdvals": (lambda x: LA.svdvals(x).sum(), lambda d: torch.linalg.svdvals(d)[:3].sum()),
    "torch.linalg.svdvals": (lambda x: torch.linalg.svdvals(x).sum(),
                             lambda d: torch.linalg.svdvals(d)[:3].sum()),
    "nuc": (lambda x: LA.matrix_norm(x, "nuc"), lambda d: torch.linalg.matrix_norm(d, "nuc")),
    "2": (lambda x: LA.matrix_norm(x, 2), lambda d: torch.linalg.matrix_norm(d, 2)),
    "fro": (lambda x: LA.matrix_norm(x), lambda d: torch.linalg.matrix_norm(d)),
    "trace": (lambda x: LA.trace(x), lambda d: torch.trace(d)),
    "eigvals": (lambda x: (LA.eigvals(x) ** 2).sum().real,
                lambda d: (torch.linalg.eigvals(d) ** 2).sum().real),
    "pinv": (lambda x: (lambda p: p.to_dense() if lm.is_lazy(p) else p)(LA.pinv(x)).square().sum(),
             lambda d: torch.linalg.pinv(d, atol=1e-9).square().sum()),
    "svd": (lambda x: (lambda U, S, Vh: (U * S) @ Vh)(*LA.svd(x)).sum(), lambda d: d.sum()),
    "matvec": (lambda x: (x @ ONES).sum(), lambda d: (d @ ONES).sum()),
    "amax": (lambda x: torch.amax(x), lambda d: torch.amax(d)),
    "topk": (lambda x: torch.topk(x, 2).values.sum(), lambda d: torch.topk(d, 2).values.sum()),
}
TRANSFORMS = {
    "grad": lambda f: torch.func.grad(f),
    "jacrev": lambda f: torch.func.jacrev(f),
    "jvp": lambda f: (lambda a: torch.func.jvp(f, (a,), (torch.cos(a),))[1]),
    "jacfwd": lambda f: torch.func.jacfwd(f),
}


def _factors(seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(5, 3, generator=gen, dtype=torch.float64),
            torch.randn(3, 5, generator=gen, dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), op=st.sampled_from(sorted(OPS)), how=st.sampled_from(sorted(TRANSFORMS)))
def test_derivatives_of_a_lazy_function_are_torchs(seed, op, how):
    """Property: reverse- and forward-mode derivatives (torch.func) of a function building a
    lazy product from its argument equal torch's of the dense function, in float64."""
    A, B = _factors(seed)
    ours, theirs = OPS[op]
    got = TRANSFORMS[how](lambda a: ours(lm.lazy(a) @ lm.lazy(B)))(A)
    want = TRANSFORMS[how](lambda a: theirs(a @ B))(A)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)


def test_forward_mode_outside_torch_func():
    A, B = _factors(1)
    fwd = torch.autograd.forward_ad
    with fwd.dual_level():
        a = fwd.make_dual(A, torch.ones_like(A))
        got = fwd.unpack_dual(LA.svdvals(lm.lazy(a) @ lm.lazy(B))).tangent
        want = fwd.unpack_dual(torch.linalg.svdvals(a @ B)[:3]).tangent
    torch.testing.assert_close(got, want)


VMAPPED = ["to_dense", "fro", "trace", "matvec", "amax", "topk"]


@pytest.mark.parametrize("op", VMAPPED)
def test_vmap_answers_what_it_can(op):
    ours, theirs = OPS[op]
    A = torch.randn(4, 5, 3, dtype=torch.float64)
    _, B = _factors(2)
    got = torch.vmap(lambda a: ours(lm.lazy(a) @ lm.lazy(B)))(A)
    want = torch.vmap(lambda a: theirs(a @ B))(A)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("op", sorted(set(OPS) - set(VMAPPED)))
@pytest.mark.parametrize("nested", [False, True])
def test_vmap_of_a_decomposition_says_why_not(op, nested):
    ours, _ = OPS[op]
    A = torch.randn(4, 5, 3, dtype=torch.float64)
    _, B = _factors(3)

    def f(a):
        return ours(lm.lazy(a) @ lm.lazy(B))

    with pytest.raises(RuntimeError, match="under torch.vmap: .* leading dim of the leaves"):
        torch.vmap(torch.func.grad(f) if nested else f)(A)


def test_torch_compile_gives_the_eager_answers():
    """Graph breaks around lazymat's Python objects: the answers are the eager ones."""
    A, B = _factors(4)

    def f(a, b):
        x = lm.lazy(a) @ lm.lazy(b)
        return x.to_dense().sum() + LA.svdvals(x).sum()

    compiled = torch.compile(f, backend="eager")
    for scale in (1.0, 2.0):
        want = (scale * A @ B).sum() + torch.linalg.svdvals(scale * A @ B)[:3].sum()
        torch.testing.assert_close(compiled(scale * A, B), want)
