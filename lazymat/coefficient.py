"""Number coefficients that never leave the float range: folded exactly, applied in range.

The canonical form folds every Python-number multiplier of a term into one coefficient
(``X * 1e200 * 1e200`` is ``1e400 * X``). Multiplied as floats, such a product overflows to inf
(or underflows to 0 or a subnormal) where torch's multiplications one at a time stay finite.
So a product that leaves the float64 normal range is kept exactly as a :class:`Wide` number,
``mantissa * 2**exponent``, and :func:`times` applies a coefficient to a tensor in steps that
each stay in the range of the type torch multiplies in (float64 for 64-bit dtypes, float32 for
the others): a first multiplication by the mantissa scaled as far as it goes, then powers of
two, all in one direction, so an intermediate overflows or underflows only when the answer
does. A coefficient in range is one ordinary multiplication, as before. Scales written on
several factors of a product fold with :func:`chain_fold`, which keeps how far from 1 the
product over a run of them goes (they can cancel in the coefficient, not in a sub-product).

Example::

    >>> import torch
    >>> k = fold(1e200, 1e200)
    >>> k
    Wide(0.8533668389533203, 1329)
    >>> times(torch.tensor([1e-300], dtype=torch.float64), k)
    tensor([1.0000e+100], dtype=torch.float64)
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["Wide", "chain_fold", "far", "far_exponent", "fold", "log_magnitude", "magnitude", "number",
           "power", "power_of_two", "reciprocal", "shrinks", "steps", "times"]

_MIN_EXP, _MAX_EXP = -1021, 1024  # frexp exponents of normal float64 numbers (mantissa in [0.5, 1))
_LIMIT = {True: 1020, False: 124}  # the largest |j| with m * 2**j normal (0.5 <= m < 1): float64, float32
_RANGE = {w: (2.0**-limit, 2.0**limit) for w, limit in _LIMIT.items()}  # one multiplication, in range
_WIDE_TYPES = (torch.float64, torch.complex128)  # multiplied in float64; every other dtype in float32


class Wide:
    """``mantissa * 2**exponent`` for a coefficient outside the float64 normal range; the
    mantissa a float or complex whose larger part is in ``[0.5, 1)``. Immutable. ``reach``
    (0 unless set, :func:`chain_fold`): the largest ``|log2|`` of the product of the scalars
    written on a run of a product's factors, set only where it is far for the product's dtype;
    such a coefficient is a Wide in range too, so that :func:`far` reads it."""

    __slots__ = ("mantissa", "exponent", "reach")

    def __init__(self, mantissa: float | complex, exponent: int, reach: int = 0):
        self.mantissa, self.exponent, self.reach = mantissa, exponent, reach

    def __repr__(self) -> str:
        return f"Wide({self.mantissa!r}, {self.exponent}{f', reach={self.reach}' if self.reach else ''})"

    def __eq__(self, other: Any) -> bool:
        return type(other) is Wide and (self.mantissa, self.exponent, self.reach) == \
            (other.mantissa, other.exponent, other.reach)

    def __hash__(self) -> int:
        return hash((Wide, self.mantissa, self.exponent, self.reach))


def _size(x: float | complex) -> float:
    """The larger part's magnitude (the one frexp's exponent is read from)."""
    return max(abs(x.real), abs(x.imag)) if isinstance(x, complex) else abs(x)


def _ldexp(x: float | complex, e: int) -> float | complex:
    """``x * 2**e`` by parts; inf (signed) where it overflows, as float arithmetic answers."""
    if isinstance(x, complex):
        return complex(_ldexp(x.real, e), _ldexp(x.imag, e))
    try:
        return math.ldexp(x, e)
    except OverflowError:
        return math.copysign(math.inf, x)


def _split(x: Any) -> tuple[float | complex, int]:
    """``(m, e)`` with ``x == m * 2**e`` exactly, ``m``'s larger part in ``[0.5, 1)``."""
    if type(x) is Wide:
        return x.mantissa, x.exponent
    if isinstance(x, complex):
        e = math.frexp(_size(x))[1]
        return _ldexp(x, -e), e
    return math.frexp(x)


def _made(m: float | complex, e: int) -> Any:
    """``m * 2**e`` as a Python number when it is a normal float64 (or complex), else a Wide."""
    shift = math.frexp(_size(m))[1]
    m, e = _ldexp(m, -shift), e + shift
    if _MIN_EXP <= e <= _MAX_EXP:
        return _ldexp(m, e)
    return Wide(m, e)


def _special(x: Any) -> bool:
    """Zero, inf or NaN: a number the float product already answers for exactly."""
    return type(x) is not Wide and (x == 0 or not math.isfinite(_size(x)))


def fold(a: Any, b: Any) -> Any:
    """``a * b`` for coefficients (Python numbers or :class:`Wide`), exact in range: a Python
    number when the product is a normal float64 (or zero, inf, NaN from such a factor), else
    a Wide. The common case, two numbers with a normal product, is one multiplication."""
    if type(a) is not Wide and type(b) is not Wide:
        p = a * b
        if type(p) is float and 2.2250738585072014e-308 <= abs(p) <= 1.7976931348623157e308:
            return p  # (a normal product: neither factor is zero, inf or NaN; no call on the way)
        if isinstance(p, int) or _special(a) or _special(b):
            return p
        size = _size(p)
        if 2.2250738585072014e-308 <= size <= 1.7976931348623157e308:
            return p
    elif _special(a) or _special(b):  # a Wide times zero, inf or NaN: its mantissa's product
        return (a.mantissa if type(a) is Wide else a) * (b.mantissa if type(b) is Wide else b)
    (ma, ea), (mb, eb) = _split(a), _split(b)
    out = _made(ma * mb, ea + eb)
    reach = max(_reach(a), _reach(b))
    return _reaching(out, reach) if reach else out


def _reach(k: Any) -> int:
    return k.reach if type(k) is Wide else 0


def _reaching(k: Any, reach: int) -> Any:
    """``k`` marked with ``reach`` (a Wide, in range or not); zero, inf and NaN unmarked."""
    if _special(k):
        return k
    m, e = _split(k)
    return Wide(m, e, max(reach, _reach(k)))


def chain_fold(coefs: list, factors: int, dtype: torch.dtype) -> Any:
    """The product of the coefficients written on a product's consecutive factors (each a number
    or a :class:`Wide`; a factor without one left out, as 1), exact as :func:`fold`, and marked
    with their ``reach`` where it is far for ``dtype``, the product's own (past its
    :func:`far_exponent`): the largest ``|log2|`` of the product of a run of them (each run's
    product is what eager applies to a sub-product that the folded coefficient leaves unscaled),
    or of a reach folded in. ``(2**900 A) @ B @ (2**-900 C)`` folds to 1, but ``A @ B`` is formed
    ``2**900`` away from what eager forms, so the term is rescaled (:func:`far`) as one with a
    far coefficient is. A reach not far for ``dtype`` is not kept (a reach folded in from a
    narrower part, widened, is dropped): the coefficient is then a plain number, applied as any
    other (``(A / 8) @ B @ (C / 64)`` in float64 folds to ``1 / 512``, no Wide, no extra pass).
    ``factors``: how many the product has; of two, every run short of the whole is one factor,
    read as the user gave it, so nothing is measured, nor for one coefficient (the common case)."""
    coef: Any = 1.0
    for k in coefs:
        coef = fold(coef, k)
    limit = far_exponent(dtype)
    if factors < 3 or len(coefs) < 2 and type(coef) is not Wide:
        return _unmarked(coef) if _reach(coef) and _reach(coef) <= limit else coef
    low = high = at = 0.0
    reach = 0
    for k in coefs:
        if _special(k):
            return coef
        at += log_magnitude(k) / math.log(2.0)
        low, high = min(low, at), max(high, at)
        reach = max(reach, _reach(k))
    reach = max(reach, math.ceil(high - low))
    return _reaching(_unmarked(coef), reach) if reach > limit else _unmarked(coef)


def _unmarked(k: Any) -> Any:
    """``k`` without a reach: a Python number where it is one in range, else a Wide."""
    return _made(k.mantissa, k.exponent) if type(k) is Wide and k.reach else k


def reciprocal(d: Any) -> Any:
    """``1 / d`` for a nonzero number, exact in range as :func:`fold` (``1 / 1e-310`` is a
    Wide, not inf)."""
    if _special(d):
        return 1 / d
    m, e = _split(d)
    return _made(1 / m, -e)


def magnitude(k: Any) -> Any:
    """``|k|`` for a coefficient, exact as :func:`fold` (a Wide stays one past the range)."""
    if type(k) is not Wide:
        return abs(k)
    return _made(abs(k.mantissa), k.exponent)


def power(k: Any, n: int) -> Any:
    """``k**n`` for a coefficient and an integer ``n >= 0``, exact as :func:`fold` (by squaring:
    ``det(c X) = c**n det X`` with ``c = 1e100`` and ``n = 4`` is a Wide, not inf). A reach
    (:func:`chain_fold`) is not kept: it concerns the products, not the number."""
    k = _unmarked(k)
    out: Any = 1.0
    while n:
        if n & 1:
            out = fold(out, k)
        n >>= 1
        if n:
            k = fold(k, k)
    return out


def log_magnitude(k: Any) -> float:
    """``log |k|`` as a float, finite for every nonzero finite coefficient, a Wide included
    (``log |m| + e log 2``); ``-inf`` for 0, inf or NaN for those."""
    if type(k) is Wide:
        return math.log(abs(k.mantissa)) + k.exponent * math.log(2.0)
    size = abs(k)
    return -math.inf if size == 0 else math.log(size) if math.isfinite(size) else size


def shrinks(k: Any) -> bool:
    """Whether ``k`` is a nonzero finite coefficient of magnitude below 1 (a Wide included): one
    that a product's value could overflow before, where the product of a factor ``k`` scaled
    does not (``(1e-300 * A) @ B`` with ``1e200`` entries is ``4e100``, ``A @ B`` is inf). The
    executor applies such a coefficient to a factor before the products
    (:func:`lazymat.plan.scaled_operand`), any other to the product's value."""
    if type(k) is Wide:  # (a Wide in range, marked with a reach, may be 0.5 * 2**0)
        return k.exponent <= 0
    return 0 < abs(k) < 1


# |log2 k| past which a coefficient is far from 1 (by real dtype; another: half its exponent range)
_FAR = {torch.float64: 64, torch.float32: 32, torch.bfloat16: 32, torch.float16: 8}
_NEAR: dict = {}  # dtype -> the magnitudes of coefficients not far from 1 in it, (2**-limit, 2**limit)


def far_exponent(dtype: torch.dtype) -> float:
    """The ``|log2 |k||`` past which a coefficient ``k`` is far from 1 for ``dtype`` (:func:`far`):
    float64 64, float32 and bfloat16 32, float16 8 (complex dtypes as their real parts)."""
    real = dtype.to_real() if dtype.is_complex else dtype
    limit = _FAR.get(real)
    return math.log2(torch.finfo(real).max) / 2 if limit is None else limit


def far(k: Any, dtype: torch.dtype) -> bool:
    """Whether ``k`` (a number or a Wide) is far from 1 for ``dtype``: ``|log2 |k||`` above
    :func:`far_exponent` (0, inf and NaN are not). Applied before or after the products, a
    coefficient changes their magnitudes by at most its own factor, so one within ``2**64`` of 1
    over- or underflows a float64 product only where the expression as written comes within
    ``2**64`` of the range's edges (past ``1e289`` or ``1e-289``); one farther (``1e-300``) is
    applied to a term from its factors rescaled (:func:`lazymat.execute.rescaled`). The common
    coefficients (1, 1/8, 1/sqrt(d_head), in float16 too) are not far. A Wide marked with a
    ``reach`` (:func:`chain_fold`) is far where that reach is: a sub-product then differs from
    eager's by as much."""
    near = _NEAR.get(dtype)
    if near is None:
        limit = far_exponent(dtype)
        near = _NEAR[dtype] = (2.0**-limit, 2.0**limit)
    if type(k) is not Wide:  # (one comparison for a number, on every scaled product's path)
        size = abs(k)
        return not (near[0] <= size <= near[1] or size == 0 or not math.isfinite(size))
    return k.reach > far_exponent(dtype) or abs(log_magnitude(k)) > far_exponent(dtype) * math.log(2.0)


def power_of_two(e: int) -> Any:
    """``2**e`` exactly, as a float in the float64 normal range, else a Wide."""
    return _made(0.5, e + 1)


def number(k: Any) -> float | complex:
    """``k`` as a Python number: a Wide overflows to inf or underflows to 0 (what a float
    product would have given), for readers that need a float."""
    return _ldexp(k.mantissa, k.exponent) if type(k) is Wide else k


def steps(k: Any, wide: bool) -> list[float | complex]:
    """Python numbers whose product, taken left to right on a tensor multiplied in float64
    (``wide``) or float32, is ``k`` with every partial product between the tensor and its
    answer: the mantissa scaled as far as the range allows, then powers of two, in one
    direction. One number when ``k`` is in that range (or zero, inf, NaN)."""
    limit = _LIMIT[wide]
    if type(k) is not Wide and (_special(k) or _RANGE[wide][0] <= _size(k) <= _RANGE[wide][1]):
        return [k]
    m, e = _split(k)
    first = max(-limit, min(limit, e))
    out = [_ldexp(m, first)]
    e -= first
    while e:
        step = max(-limit, min(limit, e))
        out.append(2.0**step)
        e -= step
    return out


def times(x: torch.Tensor, k: Any, tensors: tuple = ()) -> torch.Tensor:
    """``x * tensors[0] * ... * k`` for 0-dim ``tensors`` and a coefficient ``k`` (a Python
    number or a :class:`Wide`): finite wherever the exact product is in ``x``'s range
    (:func:`steps`; with tensors, :func:`_times_tensors`), whatever order the user wrote the
    multipliers in. One multiplication when there is one multiplier in range (the common case);
    after the first, the steps write into the new tensor (no third full-size tensor at once),
    unless one promotes its dtype."""
    wide = x.dtype in _WIDE_TYPES
    if not tensors and type(k) is float and _RANGE[wide][0] <= abs(k) <= _RANGE[wide][1]:
        return x * k
    if k == 1 and len(tensors) == 1:  # one tensor alone: torch's own product (inf parts and all)
        return x * tensors[0]
    if any(t.is_floating_point() or t.is_complex() for t in tensors):
        return _times_tensors(x, k, tensors)
    out = None
    for s in (*tensors, *(() if k == 1 else steps(k, wide))):
        out = _step(x if out is None else out, s, out is None)
    return x if out is None else out


def _step(out: torch.Tensor, s: Any, first: bool) -> torch.Tensor:
    """``out * s``, in place after the first step unless ``s`` promotes the dtype."""
    if first or torch.result_type(out, s) is not out.dtype:
        return out * s
    return out.mul_(s)


# A finite answer of a finite x is at most this many in-range steps of a power of two away from it
# (float64: |exponent| <= 2098 against steps of 1020; float32: 277 against 124)
_POWER_STEPS = 3


def _times_tensors(x: torch.Tensor, k: Any, tensors: tuple) -> torch.Tensor:
    """:func:`times` with floating 0-dim ``tensors``: each split as ``t = m 2**e`` (``m = t 2**-e``,
    exact, carries ``t``'s gradient), ``k`` as its mantissa and exponent, then ``x`` times the
    mantissas (each of size in [0.5, 1), or 0, inf, NaN), then ``2**E`` for the summed exponent
    ``E`` in steps within the range, all in one direction. Applying the tensors' values first
    (``X * 1e-300 * t`` with ``t = 1e300`` and ``1e10`` entries) overflowed where torch's order,
    and the answer, stay finite. On the CPU the exponents are read (free: no device to wait
    for), so only one 0-dim tensor is made at a time (``plan.coefficient_bytes`` counts two);
    elsewhere, or under a ``torch.func`` transform, they are found on the device
    (:func:`_device_exponents`), no value read back."""
    if torch._C._are_functorch_transforms_active() or not all(t.device.type == "cpu" for t in tensors):
        return _device_exponents(x, k, tensors)  # (torch.vmap cannot read a value back)
    wide = x.dtype in _WIDE_TYPES
    m, total = (k, 0) if k == 1 or _special(k) else _split(k)
    out = None
    for t in tensors:
        if t.is_floating_point() or t.is_complex():
            v = t.detach().item()
            if not _special(v):
                e = math.frexp(_size(v))[1]
                t, total = t * _ldexp(1.0, -e), total + e
        out = _step(x if out is None else out, t, out is None)
    if m != 1:
        out = _step(out, m, False)
    limit = _LIMIT[wide]
    while total:
        step = max(-limit, min(limit, total))
        out, total = _step(out, 2.0**step, False), total - step
    return out


def _device_exponents(x: torch.Tensor, k: Any, tensors: tuple) -> torch.Tensor:
    """:func:`_times_tensors` with the exponents found on the tensors' device (``frexp`` of
    ``|t|``, held apart from autograd) and the summed power applied in :data:`_POWER_STEPS`
    steps: no value read back, a few more 0-dim tensors than the plan counts."""
    wide = x.dtype in _WIDE_TYPES
    m, e = (k, 0) if k == 1 or _special(k) else _split(k)
    out, total = None, e
    for t in tensors:
        if t.is_floating_point() or t.is_complex():
            size = t.detach().abs()
            exponent = torch.frexp(torch.where(torch.isfinite(size) & (size > 0), size, 1.0)).exponent
            t = t * torch.pow(torch.full((), 2.0, dtype=size.dtype, device=t.device), -exponent)
            total = exponent + total
        out = _step(x if out is None else out, t, out is None)
    if m != 1:
        out = _step(out, m, False)
    if isinstance(total, int):
        return out
    limit = _LIMIT[wide]
    two = torch.full((), 2.0, dtype=out.real.dtype, device=out.device)
    for _ in range(_POWER_STEPS):
        step = total.clamp(-limit, limit)
        out = _step(out, torch.pow(two, step.to(two.dtype)), False)
        total = total - step
    return out
