"""Operations one QK call runs, by the device of their first tensor argument (issue 12 items 2, 5):
lazymat's compiled ``svd``, ``svdvals`` and Frobenius norm, and the hand-written routes, counted
with a ``TorchDispatchMode`` (views included: each is a host dispatch; a compute operation on the
GPU is also a launch). Caches cleared before each call, plans warm.

Run: ``python benchmarks/probes/gpu_probe_ops19.py [vocab]`` (``DEV=cpu`` runs it on the CPU).
"""

import collections
import os
import sys

import torch
from _qk19 import hand_svd, qk_weights
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm
from lazymat import linalg as LA

dev = os.environ.get("DEV", "cuda")
vocab = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
VIEWS = {"view", "transpose", "t", "as_strided", "slice", "select", "permute", "expand", "unsqueeze", "squeeze",
         "_reshape_alias", "alias", "reshape", "diagonal", "detach", "_unsafe_view", "split", "unbind", "narrow"}


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        where = "none" if first is None else first.device.type
        kind = "view" if func.__name__.split(".")[0] in VIEWS else "compute"
        self.ops[(where, kind)] += 1
        return func(*args, **(kwargs or {}))


E, Wq, Wk = qk_weights(vocab, dev)
X = lm.lazy(E) @ lm.lazy(Wq) @ lm.lazy(Wk).mT @ lm.lazy(E).mT




def hand_fro():
    L, RH = E @ Wq, E @ Wk
    return ((L.mT @ L) * (RH.mT @ RH)).sum().sqrt()


def fresh(op):
    def f():
        X.clear_cache()
        return op(X)
    return f


calls = {"lazymat svd": fresh(LA.svd), "hand svd": lambda: hand_svd(E, Wq, Wk), "lazymat svdvals": fresh(LA.svdvals),
         "lazymat fro": fresh(LA.matrix_norm), "hand fro": hand_fro}
print(f"QK circuit, vocab {vocab}, on {dev}: torch operations per call by device (compute / views)")
for name, f in calls.items():
    f()
    with Count() as c:
        f()
    row = "  ".join(f"{where} {c.ops[(where, 'compute')]:3d} / {c.ops[(where, 'view')]:3d}"
                    for where in ("cuda", "cpu", "none") if c.ops[(where, "compute")] or c.ops[(where, "view")])
    print(f"  {name:16} {row}")
