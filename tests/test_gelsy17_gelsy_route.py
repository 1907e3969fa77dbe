"""lstsq's gelsy route (gelsy17, session 17): LAPACK's gelsy run on the core ``C = S Vh``. Its
batches (members of different ranks, ``B`` adding batch dims), its gradients, and explain's
report of it (its rows, FLOPs and a peak that bounds what the call allocates). The references
are LAPACK's gelsy on the dense float64 matrix with its pivots zeroed (SciPy), torch's autograd on
the dense matrix where gelsy keeps every column, and numerical differentiation."""

import pytest
import torch
from test_qa19_lstsq_rank import lapack_gelsy

import lazymat as lm
from lazymat.allocated import Allocated
from lazymat.linalg.systems import _formed_route as formed_route


def test_batch_members_of_different_ranks_and_b_batch_dims():
    """Each member's rank and solution are LAPACK's on that member alone (torch's batched gelsy
    reused the first member's pivots for the next: pytorch/pytorch#187411's example, rank 0 for
    the rank-2 member), with ``B`` broadcasting a batch dim of its own."""
    D = torch.zeros(3, 3, 3, dtype=torch.float64)
    D[0] = torch.eye(3, dtype=torch.float64)
    D[1, 0, 1] = D[1, 1, 2] = 1.0  # rank 2
    g = torch.Generator().manual_seed(4)
    D[2] = torch.randn(3, 2, generator=g, dtype=torch.float64) @ torch.tensor([[10.0, 0, 0], [0, 0.5, 0.2]],
                                                                               dtype=torch.float64)
    B = torch.randn(2, 1, 3, 2, generator=g, dtype=torch.float64)
    for rcond in (None, 0.1):
        got = lm.linalg.lstsq(lm.lazy(D[None]), B, rcond=rcond, driver="gelsy")  # X (1, 3, ...)
        assert got.solution.shape == (2, 3, 3, 2) and got.rank.shape == (1, 3)
        for i in range(3):
            rank, _ = lapack_gelsy(D[i], B[0, 0], rcond)
            assert got.rank[0, i].item() == rank
            for j in range(2):
                torch.testing.assert_close(got.solution[j, i], lapack_gelsy(D[i], B[j, 0], rcond)[1])
    assert lm.linalg.lstsq(lm.lazy(D), B[0]).rank.tolist() == [3, 2, 2]


def test_gradient_is_torchs_where_every_column_is_kept():
    """Full column rank: gelsy's answer is the unique least-squares one, and its gradient to the
    factors is torch's autograd through its own lstsq on the dense product."""
    g = torch.Generator().manual_seed(6)
    A = torch.randn(2, 7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    R = torch.randn(4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    got = lm.linalg.lstsq(lm.lazy(A) @ lm.lazy(R), B, driver="gelsy").solution
    want = torch.linalg.lstsq(A @ R, B, driver="gelsy").solution
    torch.testing.assert_close(got, want)
    ours = torch.autograd.grad(got.square().sum(), (A, R))
    theirs = torch.autograd.grad(want.square().sum(), (A, R))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_gradient_of_a_truncated_answer_is_its_derivative():
    """Where gelsy truncates (rank 2 of 4 at ``rcond=0.3``, the values 10, 8, 0.5, 0.2 far from
    the cut, so the rank and pivots hold near the point), the gradient is that of the answer
    returned: numerical differentiation agrees (torch's lstsq backward is ``pinv``'s instead)."""
    g = torch.Generator().manual_seed(8)
    U = torch.linalg.qr(torch.randn(6, 4, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(5, 4, generator=g, dtype=torch.float64))[0]
    L = (U * torch.tensor([10.0, 8.0, 0.5, 0.2], dtype=torch.float64)).requires_grad_()
    R = V.mT.clone().requires_grad_()
    B = torch.randn(6, 2, generator=g, dtype=torch.float64)

    def solution(L, R):
        return lm.linalg.lstsq(lm.lazy(L) @ lm.lazy(R), B, rcond=0.3, driver="gelsy").solution

    assert lm.linalg.lstsq(lm.lazy(L) @ lm.lazy(R), B, rcond=0.3, driver="gelsy").rank.item() == 2
    assert torch.autograd.gradcheck(solution, (L, R), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("m,n,r,batch", [(300, 200, 12, ()), (50, 40, 40, ()), (200, 300, 20, (3,)),
                                         (8, 6, 6, ()), (60, 40, 40, (2,))])
def test_explain_reports_the_gelsy_route(m, n, r, batch):
    """explain's lstsq on the CPU is gelsy's route (the call's default) on the core the call
    takes (the SVD's ``S Vh``, or ``R`` of the formed matrix where the SVD route would form it:
    both kinds among the cases), its peak bounds what the call allocates beside its answer,
    and its FLOPs add the pivoted QR's steps to the SVD route's (``driver="gelsd"``), or on
    the formed matrix are fewer (its QR in place of its SVD); an unknown driver is refused."""
    g = torch.Generator().manual_seed(m + n + r)
    X = lm.lazy(torch.randn(*batch, m, r, generator=g, dtype=torch.float64)) @ lm.lazy(
        torch.randn(r, n, generator=g, dtype=torch.float64))
    B = torch.randn(*batch, m, 2, generator=g, dtype=torch.float64)
    report, svd_route = lm.explain(X, "lstsq", k=2), lm.explain(X, "lstsq", k=2, driver="gelsd")
    assert report.rows[-1].output == (*batch, n, 2) and "gelsy" in report.planned.note
    ops = [row.op for row in report.rows]
    core = "QR of the formed X (C = R), R^-1 (its full-rank bounds)" if formed_route(X) else "C = S Vh"
    assert core in ops and ops.index(core) < len(ops) - 2
    assert ops[-2] == "C in LAPACK's column-pivot order (Householder steps on the host, to the rank)"
    # on S Vh the pivoting adds to the SVD route; on the formed X a QR replaces its SVD
    assert (report.planned.flops < svd_route.planned.flops) == formed_route(X)
    assert lm.explain(X, "lstsq", k=2, driver="gelsy").planned == report.planned
    with Allocated() as counted:
        got = lm.linalg.lstsq(X, B)
    assert counted.peak - got.solution.untyped_storage().nbytes() <= report.planned.peak_bytes
    with pytest.raises(ValueError, match="driver is one of gels, gelsy, gelsd, gelss .* 'gelsx'"):
        lm.explain(X, "lstsq", driver="gelsx")
