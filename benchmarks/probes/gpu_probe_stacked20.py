"""Is factorising both sides of a QK circuit as one stacked batch worth building? (issue 12 item 5)

The full QK ``svd`` on an H100 is bound by its host's CPU: each torch call costs tens of µs there
(``cholesky_ex`` 67-100 µs), and the two sides' CholeskyQR2 are 2 x 6 calls. Stacking the two
``vocab x 64`` sides as one ``(2, vocab, 64)`` batch runs the same FLOPs in half the calls, but
batched kernels may run slower, and forming both sides before factorising holds more memory.
This probe times, interleaved in one process, the hand-written route with the sides
factorised one after the other against the same route stacked (sides formed into one buffer
with ``out=``, no copy), and counts torch calls of each; it checks both give the same singular
values. Run it before building the stacked route into lazymat.

Run: ``python benchmarks/probes/gpu_probe_stacked20.py [vocab ...]`` (``DEV=cpu`` on the CPU).
"""

import collections
import os
import sys

import torch
from _qk19 import cholqr2, median_time, qk_weights
from torch.utils._python_dispatch import TorchDispatchMode

dev = os.environ.get("DEV", "cuda")
vocabs = [int(v) for v in sys.argv[1:]] or [1024, 50257]


def separate(E, Wq, Wk, vectors):
    """Each side formed and factorised before the next (lazymat's order today)."""
    Q1, R1 = cholqr2(E @ Wq, vectors)
    Q2, R2 = cholqr2(E @ Wk, vectors)
    return Q1, Q2, R1 @ R2.mT


def cholqr2_bmm(A, with_q):
    """:func:`cholqr2` of a (b, m, r) batch with ``torch.bmm`` (``@`` on 3-D tensors adds view
    dispatches: expand, reshape, view)."""
    R0, _ = torch.linalg.cholesky_ex(torch.bmm(A.mT, A), upper=True)
    X1 = torch.linalg.solve_triangular(R0, A, upper=True, left=False)
    R1, _ = torch.linalg.cholesky_ex(torch.bmm(X1.mT, X1), upper=True)
    Q = torch.linalg.solve_triangular(R1, X1, upper=True, left=False) if with_q else None
    return Q, torch.bmm(R1, R0)


def stacked(E, Wq, Wk, vectors):
    """Both sides formed into one (2, vocab, r) buffer, then one batched CholeskyQR2."""
    sides = torch.empty(2, E.shape[0], Wq.shape[1], dtype=E.dtype, device=E.device)
    torch.mm(E, Wq, out=sides[0])
    torch.mm(E, Wk, out=sides[1])
    Q, R = cholqr2_bmm(sides, vectors)
    R1, R2 = R.unbind()
    return (None, None, R1 @ R2.mT) if Q is None else (*Q.unbind(), R1 @ R2.mT)


def svd_by(route, vectors):
    def call():
        Q1, Q2, core = route(E, Wq, Wk, vectors)
        core = core.cpu()
        if not vectors:
            return torch.linalg.svdvals(core).to(E.device)
        U, S, Vh = torch.linalg.svd(core, full_matrices=False)
        U, S, Vh = U.to(E.device), S.to(E.device), Vh.to(E.device)
        return Q1 @ U, S, Vh @ Q2.mT
    return call


VIEWS = {"view", "transpose", "t", "as_strided", "slice", "select", "permute", "expand", "unsqueeze", "squeeze",
         "alias", "reshape", "diagonal", "detach", "_unsafe_view", "unbind"}


class Calls(TorchDispatchMode):
    """Torch calls by kind: a compute call is a kernel launch on a GPU, a view only a dispatch."""

    def __init__(self):
        super().__init__()
        self.n = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n["view" if func.__name__.split(".")[0] in VIEWS else "compute"] += 1
        return func(*args, **(kwargs or {}))


print(f"QK circuit sides' CholeskyQR2, one after the other vs stacked, on {dev} "
      f"({torch.cuda.get_device_name() if dev == 'cuda' else 'CPU'})")
for vocab in vocabs:
    E, Wq, Wk = qk_weights(vocab, dev)
    for vectors, name in ((True, "svd"), (False, "svdvals")):
        calls = {"separate": svd_by(separate, vectors), "stacked": svd_by(stacked, vectors)}
        s_sep = calls["separate"]()
        s_stk = calls["stacked"]()
        S_sep, S_stk = (s_sep[1], s_stk[1]) if vectors else (s_sep, s_stk)
        agree = (S_sep - S_stk).abs().max().item() / S_sep.max().item()
        counts = {}
        for k, f in calls.items():
            with Calls() as c:
                f()
            counts[k] = f"{c.n['compute']} compute + {c.n['view']} views"
        times = {k: [] for k in calls}
        for _ in range(5):  # interleaved: a host's drift hits both alike
            for k, f in calls.items():
                times[k].append(median_time(f, dev, repeat=5, warmup=2, min_time=0.05))
        t = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        print(f"  vocab {vocab:6d} {name:8s} separate {t['separate'] * 1e3:7.3f} ms ({counts['separate']} calls)  "
              f"stacked {t['stacked'] * 1e3:7.3f} ms ({counts['stacked']} calls)  "
              f"ratio {t['stacked'] / t['separate']:.3f}  values agree to {agree:.1e}")
