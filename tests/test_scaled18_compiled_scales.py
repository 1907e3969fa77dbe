"""A product of data leaves with scalars on it (``(A / 8) @ B @ C``, ``(A @ B @ C) / 8``, several,
0-dim tensors, complex ones, negative ones, operands read ``.mT``) runs its structure's compiled
call (``linalg.compiled._compiled``), as the same product without them does, and its answers
are the general path's bit for bit (the scale applied where the general path's evaluation applies
it: a factor for a number below 1 in magnitude, else the product's value), and within rounding of
eager float64 by an independent bound. A scale of 0, inf or NaN, or far from 1 (the form
rescales the factors), is answered by the general path."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import general_path

OPS = {
    "svdvals": lambda x: LA.svdvals(x),
    "svdvals full": lambda x: LA.svdvals(x, full=True),
    "svd": lambda x: LA.svd(x),
    "rank": lambda x: LA.matrix_rank(x),
    "rank atol": lambda x: LA.matrix_rank(x, atol=0.5, rtol=0.0),
    "norm 2": lambda x: LA.matrix_norm(x, 2),
    "norm -2": lambda x: LA.matrix_norm(x, -2),
    "norm nuc": lambda x: LA.matrix_norm(x, "nuc"),
    "norm fro": lambda x: LA.matrix_norm(x),
    "cond": lambda x: LA.cond(x),
    "cond -2": lambda x: LA.cond(x, -2),
    "pinv": lambda x: LA.pinv(x),
    "pinv rtol": lambda x: LA.pinv(x, rtol=0.3),
    "torch svdvals": torch.linalg.svdvals,
    "torch norm 2": lambda x: torch.linalg.matrix_norm(x, 2),
    "eigvals": lambda x: LA.eigvals(x),
    "eigvals full": lambda x: LA.eigvals(x, full=True),
}
DTYPES = (torch.float64, torch.float32, torch.complex128, torch.float16)
# common scales: 1/8, 1/sqrt(d_head), ints, negatives; "t": a 0-dim tensor; "j": a complex number
COEFS = (0.125, 1 / math.sqrt(48), 3.0, -0.5, 2, -7.0, 1e-3, 2.0**20, "t", "j")


@st.composite
def cases(draw, coefs=None):
    """``(op, dtype, dims, flips, wraps, above, batch, seed)``: a chain of 2 to 4 leaves of
    ``dims``, the ``i``-th stored transposed and read ``.mT`` where ``flips[i]``, with the scales
    ``wraps[i]`` on it (from the leaf outward), then ``above`` (scales and ``"mT"``) on the
    product; ``batch``: the first leaf has a batch of 2."""
    coefs = st.sampled_from(COEFS) if coefs is None else coefs
    op = draw(st.sampled_from(sorted(OPS)))
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.integers(2, 4))
    dims = draw(st.lists(st.integers(1, 9), min_size=n + 1, max_size=n + 1))
    if op.startswith("eigvals"):
        dims[-1] = dims[0]
    flips = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    wraps = draw(st.lists(st.lists(coefs, max_size=2), min_size=n, max_size=n))
    above = draw(st.lists(st.one_of(coefs, st.just("mT")), max_size=2))
    if not any(wraps) and not any(w != "mT" for w in above):
        above.append(draw(coefs))  # at least one scale
    batch = not op.startswith("eigvals") and draw(st.integers(0, 3)) == 0
    return op, dtype, dims, flips, wraps, above, batch, draw(st.integers(0, 2**16))


def tensors_of(case):
    _, dtype, dims, flips, _, _, batch, seed = case
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(len(flips)):
        shape = (*((2,) if batch and i == 0 else ()), dims[i], dims[i + 1])
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        if dtype.is_complex:
            t = torch.complex(t, torch.randn(*shape, generator=g, dtype=torch.float64))
        out.append(t.to(dtype))
    return out


def scalar(w, dtype, g):
    if w == "t":  # a 0-dim tensor in the leaves' dtype
        return torch.tensor(float(torch.empty(()).uniform_(0.5, 2, generator=g)), dtype=dtype)
    if w == "j":  # a complex number on a complex product, else a negative one
        return complex(0.5, -1.25) if dtype.is_complex else -0.75
    return w


def build(case, tensors, scaled=True, eager=False):
    """``case``'s expression over fresh leaves (clones: fresh nodes every call); ``scaled=False``:
    the same product without its scales; ``eager``: the same in float64 (complex128) with torch."""
    _, dtype, _, flips, wraps, above, _, seed = case
    g = torch.Generator().manual_seed(seed + 1)
    wide = torch.complex128 if dtype.is_complex else torch.float64
    nodes = []
    for t, flip, ws in zip(tensors, flips, wraps, strict=True):
        x = t.to(wide) if eager else lm.lazy(t.mT.contiguous()).mT if flip else lm.lazy(t.clone())
        for w in ws:
            k = scalar(w, dtype, g)
            if scaled:
                x = (k.to(wide) if eager and isinstance(k, torch.Tensor) else k) * x
        nodes.append(x)
    out = nodes[0]
    for x in nodes[1:]:
        out = out @ x
    for w in above:
        if w == "mT":
            out = out.mT
            continue
        k = scalar(w, dtype, g)
        if scaled:
            out = (k.to(wide) if eager and isinstance(k, torch.Tensor) else k) * out
    return out


def outcome(op, x):
    """``OPS[op](x)`` as tensors, or the type and message of the NonFiniteError it raises (a rank
    of a matrix with an inf or NaN entry): the compiled call and the general path raise alike."""
    try:
        return values(OPS[op](x))
    except LA.NonFiniteError as e:
        return type(e), str(e)


def raised(out) -> bool:
    return isinstance(out, tuple) and isinstance(out[0], type)


def ran_compiled(case, tensors, scaled=True):
    """``(outcome, ran)``: the op on a fresh expression, and whether its compiled call answered
    (it marks the expression read and builds no form on it)."""
    x = build(case, tensors, scaled)
    out = outcome(case[0], x)
    return out, x._cache_dict == {"read": True}


def values(out):
    if isinstance(out, tuple):
        return tuple(values(o) for o in out)
    return out if isinstance(out, torch.Tensor) else out.to_dense()


def same(a, b):
    """Equal bit for bit, NaN where NaN, same dtype and shape (item by item for a tuple); the
    same exception."""
    if raised(a) or raised(b):
        assert a == b
        return
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for p, q in zip(a, b, strict=True):
            same(p, q)
        return
    assert a.dtype == b.dtype and a.shape == b.shape, (a, b)
    assert torch.equal(a.isnan(), b.isnan()), (a, b)
    assert torch.equal(a.nan_to_num(), b.nan_to_num()), (a, b)


def eager_check(case, tensors, got):
    """Within rounding of eager float64: the product's entries differ from eager's by at most
    ``E = 4 eps (inner + n + 4) |c| |A1| ... |An|`` entrywise (eager float64 on magnitudes), so
    by Weyl each singular value by at most ``||E||_F`` plus LAPACK's backward error ``p eps
    ||D||_F`` (and the dtype's smallest normal per entry, for subnormal products): checked for
    the values, the 2- and nuclear norms (``p`` times), Frobenius, and the SVD's product
    ``U S Vh``."""
    op, dtype = case[0], case[1]
    if op not in ("svdvals", "svdvals full", "svd", "norm 2", "norm nuc", "norm fro"):
        return
    D = build(case, tensors, eager=True)
    if not D.abs().max() * max(D.shape[-2:]) < torch.finfo(dtype).max ** 0.5:
        return  # (squares past the dtype's range: torch's own norms are inf there)
    size = build(case, [t.abs() for t in tensors], scaled=False, eager=True)  # |A1| ... |An|
    scale_size = _scale_size(case)
    m, n = D.shape[-2:]
    p = min(m, n)
    inner = sum(case[2]) + len(case[2]) + 4
    eps = torch.finfo(torch.float32 if dtype == torch.float16 else dtype).eps
    if dtype == torch.float16:
        eps = 2.0**-10  # the product rounds in float16
    bound = 4 * eps * inner * scale_size * size.abs().flatten(-2).norm(dim=-1)
    # plus the dtype's smallest normal per entry (values rounded into the subnormals, or to 0)
    bound = bound + 4 * p * eps * D.flatten(-2).norm(dim=-1) + 8 * inner * m * n * torch.finfo(dtype).tiny
    real = torch.float64
    if op == "svd":
        U, S, Vh = got
        back = (U.to(D.dtype) * S.to(D.dtype)[..., None, :]) @ Vh.to(D.dtype)
        err = (back - D).flatten(-2).norm(dim=-1)  # within the kept values' bound plus those cut
        S_ref = torch.linalg.svdvals(D)
        cut = S_ref[..., S.shape[-1]:].square().sum(-1).sqrt()
        assert bool((err <= 4 * p * bound + cut + bound).all()), (err, bound, cut)
        return
    S_ref = torch.linalg.svdvals(D)
    if op.startswith("svdvals"):
        k = got.shape[-1]
        diff = (got.to(real) - S_ref[..., :k]).abs().amax(-1) if k else torch.zeros(S_ref.shape[:-1])
        assert bool((diff <= bound).all()), (got, S_ref, bound)
        return
    want = {"norm 2": S_ref[..., 0] if p else torch.zeros(S_ref.shape[:-1], dtype=real),
            "norm nuc": S_ref.sum(-1), "norm fro": torch.linalg.matrix_norm(D)}[op]
    tol = bound * (p if op == "norm nuc" else 1)
    assert bool(((got.to(real) - want).abs() <= tol).all()), (got, want, tol)


def far(case) -> bool:
    """Whether the numbers among ``case``'s scales multiply to one far from 1 for its dtype
    (``|log2|`` past 64 for float64 and complex128, 32 for float32, 8 for float16), or, on a
    chain of three or more, those on a run of consecutive operands do (the form rescales the
    factors then): read independently of lazymat.coefficient."""
    dtype, wraps, above = case[1], case[4], case[5]
    limit = {torch.float64: 64, torch.complex128: 64, torch.float32: 32, torch.float16: 8}[dtype]

    def log(ws):
        return sum(math.log2(abs(scalar(w, dtype, None))) for w in ws if w not in ("t", "mT"))

    logs = [log(ws) for ws in wraps]
    total = sum(logs) + log(above)
    runs = [abs(sum(logs[i:j])) for i in range(len(logs)) for j in range(i + 1, len(logs) + 1)]
    numbered = sum(any(w != "t" for w in ws) for ws in wraps)
    return abs(total) > limit or len(logs) > 2 and numbered > 1 and max(runs) > limit


def _scale_size(case):
    """The product of the magnitudes of ``case``'s scales (0-dim tensors at most 2)."""
    size = 1.0
    for w in [w for ws in case[4] for w in ws] + [w for w in case[5] if w != "mT"]:
        size *= 2.0 if w == "t" else abs(scalar(w, case[1], None))
    return size


@settings(max_examples=300, deadline=None)
@given(cases())
def test_a_scaled_product_runs_the_compiled_call_and_answers_as_the_general_path(case):
    tensors = tensors_of(case)
    op = case[0]
    outcome(op, build(case, tensors))  # the structure's call compiled
    outcome(op, build(case, tensors, scaled=False))
    got, ran = ran_compiled(case, tensors)
    # the compiled call answers a scaled product wherever it answers the product unscaled
    unscaled_ran = ran_compiled(case, tensors, scaled=False)[1]
    assert ran == (unscaled_ran and not far(case)), (ran, unscaled_ran)
    with general_path():
        want = outcome(op, build(case, tensors))
    same(got, want)
    if not raised(got):
        eager_check(case, tensors, got)


SPECIAL = (0.0, math.inf, math.nan, 1e-300, 2.0**-140, 2.0**100, -1e300)


@settings(max_examples=150, deadline=None)
@given(cases(coefs=st.sampled_from(SPECIAL + (0.125, "t"))))
def test_zero_non_finite_and_far_scales_answer_as_the_general_path(case):
    """0, inf, NaN, and scales far from 1 for the dtype (1e-300 in float64, 2**-140 in float32,
    the form rescales the factors), alone or beside common ones: the general path's answer,
    whichever path gives it (a raise included: the same exception)."""
    tensors = tensors_of(case)
    op = case[0]
    outcome(op, build(case, tensors))  # compiled
    got = outcome(op, build(case, tensors))
    with general_path():
        want = outcome(op, build(case, tensors))
    same(got, want)


@pytest.mark.parametrize("where", ["factor", "product", "middle mT", "several", "tensor", "negative"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_the_attention_scale_keeps_the_compiled_call(where, op):
    """``(A / 8) @ B @ C`` and its kin, 16 x 8 @ 8 x 8 @ 8 x 16 float32 (12 x 12 for eigvals), from
    new tensors each call: the second call runs the compiled call, and answers as the general
    path does."""
    g = torch.Generator().manual_seed(0)
    m, r = (12, 12) if op.startswith("eigvals") else (16, 8)
    A, B, C = torch.randn(m, r, generator=g), torch.randn(r, r, generator=g), torch.randn(r, m, generator=g)

    def built():
        a, b, c = lm.lazy(A.clone()), lm.lazy(B.clone()), lm.lazy(C.clone())
        return {"factor": lambda: (a / 8) @ b @ c,
                "product": lambda: (a @ b @ c) / 8,
                "middle mT": lambda: a @ (lm.lazy(B.mT.contiguous()).mT * 0.25) @ c,
                "several": lambda: (0.5 * a) @ (b * 3.0) @ c / 8,
                "tensor": lambda: (a @ b @ c) * torch.tensor(0.125),
                "negative": lambda: -((a @ b) @ (c * -2.0)).mT}[where]()

    OPS[op](built())
    x = built()
    got = values(OPS[op](x))
    assert x._cache_dict == {"read": True}  # the compiled call answered, no form was built
    with general_path():
        same(got, values(OPS[op](built())))


def test_a_scale_recording_a_gradient_takes_the_general_path():
    """A 0-dim tensor scale that records a gradient: the general path answers, with torch's
    gradient through the scale (d/dc svdvals(c X) = svdvals(X) for c > 0)."""
    g = torch.Generator().manual_seed(1)
    A, B, C = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((16, 8), (8, 8), (8, 16)))

    def built(c):
        return (lm.lazy(A.clone()) @ lm.lazy(B.clone()) @ lm.lazy(C.clone())) * c

    LA.svdvals(built(torch.tensor(0.125, dtype=torch.float64)))  # the structure's call compiled
    c = torch.tensor(0.125, dtype=torch.float64, requires_grad=True)
    x = built(c)
    S = LA.svdvals(x)
    assert x._cache_dict != {"read": True} and S.requires_grad
    S.sum().backward()
    want = torch.linalg.svdvals(A @ B @ C).sum()
    assert torch.allclose(c.grad, want, rtol=1e-10)
    with torch.no_grad():  # no gradient recorded: the compiled call, as for any 0-dim tensor
        y = built(c)
        same(LA.svdvals(y), LA.svdvals(built(c.detach())))
        assert y._cache_dict == {"read": True}


def test_the_call_is_keyed_on_where_the_scale_goes_not_its_value(monkeypatch):
    """Scales below 1 in magnitude share one compiled call (each scales a factor), those of 1 or
    more another (each scales the product), 0-dim tensors a third; a new value compiles nothing."""
    monkeypatch.setattr(LA.compiled, "_CALLS", {})
    g = torch.Generator().manual_seed(2)
    A, B, C = (torch.randn(*s, generator=g) for s in ((16, 8), (8, 8), (8, 16)))

    def call(c):
        x = (c * lm.lazy(A.clone())) @ lm.lazy(B.clone()) @ lm.lazy(C.clone())
        LA.svdvals(x)
        return x._cache_dict == {"read": True}

    counts = []
    for c in (0.125, 0.3, -0.01, 1 / math.sqrt(48), 3.0, -2.0, 1e4, torch.tensor(0.5), torch.tensor(7.0)):
        call(c)
        assert call(c)  # the compiled call answered the second time
        counts.append(len(LA.compiled._CALLS))
    assert counts == [1, 1, 1, 1, 2, 2, 2, 3, 3]
