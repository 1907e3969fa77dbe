"""``explain`` of svd/svdvals under a budget that cuts the batch into equal blocks of several
members reports the whole batch's FLOPs: it charges the QR of a leaf the batch shares once (the
run factorises it once, before its blocks, and every block reads it), the QR counted by
:func:`lazymat.core.qr_flops` (an independent count). It charged the QR once a block: two
blocks of 16 heads of ``W_E W_Q W_K^T W_E^T`` reported 1.73x the whole batch's FLOPs."""

import pytest
import torch

import lazymat as lm
from lazymat import linalg as LA
from lazymat.core import qr_flops


@pytest.mark.parametrize("op, heads", [("svdvals", 16), ("svdvals", 32), ("svd", 16)])
def test_a_shared_leafs_qr_is_charged_once(op, heads):
    g = torch.Generator().manual_seed(heads)
    E = lm.lazy(torch.randn(400, 32, generator=g, dtype=torch.float64))
    Q, K = (lm.lazy(torch.randn(heads, 32, 4, generator=g, dtype=torch.float64)) for _ in range(2))
    X = E @ Q @ K.mT @ E.mT
    whole = lm.explain(X, op, memory_budget=2**40)
    shared = [r for r in whole.rows if r.op.endswith("once for the batch")]
    if op == "svdvals":  # W_E's QR (svd's route here factorises each member's sides instead)
        assert len(shared) == 1 and shared[0].flops == int(qr_flops(400, 32, False))
    fn = getattr(LA, op)
    with pytest.raises(lm.BudgetTooSmall) as err:
        fn(X, memory_budget=1)
    least, most = err.value.minimum, whole.planned.peak_bytes
    for budget in (least + (most - least) * i // 8 for i in (4, 2, 6, 1, 3, 5, 7)):
        X.clear_cache()
        blocked = lm.explain(X, op, memory_budget=budget)
        blocks = blocked.slicing[-1].slices if blocked.slicing else 1
        if 2 <= blocks <= heads // 2 and heads % blocks == 0:  # equal blocks of two heads or more
            break
    else:
        pytest.fail("no budget cut the batch into equal blocks of two heads or more")
    # each row of each block rounds its FLOPs down (by under one), the shared QR's row once
    assert blocked.planned.flops == pytest.approx(whole.planned.flops, abs=blocks * len(whole.rows) + 1)
