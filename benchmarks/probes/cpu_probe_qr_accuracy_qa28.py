"""Accuracy of the CPU's ``qr="auto"`` rule where it is weakest (qa28): tall factors of 4096 and
6000 rows (the rule's CholeskyQR rows) whose product ``L @ R`` has singular values spread over
1..1e-12, the spread put in ``L``, in ``R`` or split between them, each side rotated by a random
orthonormal ``W`` so that no Gram matrix is diagonal; float64, complex128, float32, complex64;
under ``qr="auto"``, ``"householder"`` and ``"cholesky"``. Against the known singular values
(float64 on the exact spectrum):

- ``values``: the largest error of the values ``lm.linalg.svdvals`` keeps (its default
  tolerance cuts those below ``eps * max(m, n) * s_1``, as ``torch.linalg.matrix_rank``),
  relative to ``s_1``; ``kept``: how many of the 64;
- ``svd``: the largest entry of ``U diag(S) Vh - X`` (float64), and ``U``'s departure from
  orthonormality.

Run: ``PYTHONPATH=$PWD python benchmarks/probes/cpu_probe_qr_accuracy_qa28.py``
"""
import itertools

import torch

import lazymat as lm


def orthonormal(m, r, dtype, gen):
    wide = torch.complex128 if dtype.is_complex else torch.float64
    return torch.linalg.qr(torch.randn(m, r, dtype=wide, generator=gen))[0]


def factors(m, n, r, dtype, where, gen):
    """``L (m x r)``, ``R (r x n)`` with ``L @ R = U diag(s) V^H``, ``s`` 1..1e-12."""
    s = torch.logspace(0, -12, r, dtype=torch.float64)
    U, V, W = orthonormal(m, r, dtype, gen), orthonormal(n, r, dtype, gen), orthonormal(r, r, dtype, gen)
    if where == "left":
        L, R = (U * s) @ W.mH, W @ V.mH
    elif where == "right":
        L, R = U @ W.mH, W @ (s[:, None] * V.mH)
    else:
        L, R = (U * s.sqrt()) @ W.mH, W @ (s.sqrt()[:, None] * V.mH)
    return L.to(dtype), R.to(dtype), s


def main():
    gen = torch.Generator().manual_seed(1)
    dtypes = [torch.float64, torch.complex128, torch.float32, torch.complex64]
    for dtype, m, where in itertools.product(dtypes, [4096, 6000], ["left", "right", "both"]):
        L, R, s = factors(m, 300, 64, dtype, where, gen)
        wide = torch.complex128 if dtype.is_complex else torch.float64
        X = L.to(wide) @ R.to(wide)
        row = []
        for route in ["auto", "householder", "cholesky"]:
            with lm.config(qr=route):
                x = lm.lazy(L) @ lm.lazy(R)
                S = lm.linalg.svdvals(x)
                x.clear_cache()
                U, S2, Vh = lm.linalg.svd(x)
                x.clear_cache()
            k = S.shape[-1]
            err = (S.to(torch.float64) - s[:k]).abs().max().item()
            rec = ((U.to(wide) * S2.to(wide)) @ Vh.to(wide) - X).abs().max().item()
            orth = (U.mH.to(wide) @ U.to(wide) - torch.eye(U.shape[-1], dtype=wide)).abs().max().item()
            row.append(f"{route} values {err:.1e} kept {k} svd {rec:.1e} orth {orth:.1e}")
        print(f"{str(dtype)[6:]:10s} {m} {where:5s} | " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
