"""Analyses against dense float64 formulas on tiny models (every matrix small enough to form)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.circuits import Circuits, diagonal_rank, random_baseline
from lazymat.settings import BudgetTooSmall

from circuit_models import canonical


def model(Hkv=None, seed=0):
    w = canonical(V=30, D=10, L=3, H=4, Hkv=Hkv, Dh=3, d_mlp=14, n_ctx=7, seed=seed)
    keep = ("W_E", "W_U", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_pos")
    return Circuits({k: w[k] for k in keep}), w


def per_head(w, name, H):
    return w[name].repeat_interleave(H // w[name].shape[1], dim=1)


@pytest.mark.parametrize("Hkv", [None, 2])
@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_composition_scores_match_dense_pairwise_formula(kind, Hkv):
    c, w = model(Hkv)
    K, V = per_head(w, "W_K", 4), per_head(w, "W_V", 4)
    OV = V @ w["W_O"]
    QK = w["W_Q"] @ K.mT
    B = {"Q": QK, "K": QK.mT, "V": OV}[kind]
    got = c.composition_scores(kind).scores
    assert got.shape == (3, 4, 3, 4)
    for la in range(3):
        for ha in range(4):
            for lb in range(3):
                for hb in range(4):
                    a, b = OV[la, ha], B[lb, hb]
                    want = (a @ b).norm() / (a.norm() * b.norm()) if la < lb else torch.tensor(0.0)
                    torch.testing.assert_close(got[la, ha, lb, hb], want.to(got.dtype))


def test_baseline_is_the_mean_score_of_random_factors_and_is_subtracted_on_valid_pairs():
    c, _ = model()
    raw, corrected = c.composition_scores("K"), c.composition_scores("K", baseline=True, samples=64)
    b = random_baseline(c, "K", samples=64)
    torch.testing.assert_close(corrected.scores[raw.valid], raw.scores[raw.valid] - b)
    assert (corrected.scores[~raw.valid] == 0).all()
    g = torch.Generator().manual_seed(99)  # independent Monte-Carlo estimate, dense
    A = torch.randn(400, 10, 3, generator=g, dtype=torch.float64) @ torch.randn(400, 3, 10, generator=g,
                                                                                 dtype=torch.float64)
    B = torch.randn(400, 10, 3, generator=g, dtype=torch.float64) @ torch.randn(400, 3, 10, generator=g,
                                                                                 dtype=torch.float64)
    dense = ((A @ B.mT).norm(dim=(-2, -1)) / (A.norm(dim=(-2, -1)) * B.norm(dim=(-2, -1)))).mean().item()
    assert abs(b - dense) < 0.03


@pytest.mark.parametrize("Hkv", [None, 2])
def test_copying_scores_match_dense_eigenvalues(Hkv):
    c, w = model(Hkv)
    full = w["W_E"] @ per_head(w, "W_V", 4) @ w["W_O"] @ w["W_U"]
    ev = torch.linalg.eigvals(full)
    want = ev.sum(-1).real / ev.abs().sum(-1)
    torch.testing.assert_close(c.copying_scores().scores, want)


@pytest.mark.parametrize("kind", ["OV", "QK", "w_in", "w_out"])
def test_singular_directions_match_dense_svd_read_in_the_vocabulary(kind):
    c, w = model()
    X = {"OV": w["W_V"][1, 2] @ w["W_O"][1, 2], "QK": w["W_Q"][1, 2] @ w["W_K"][1, 2].mT,
         "w_in": w["W_in"][1].mT, "w_out": w["W_out"][1]}[kind]
    reader = w["W_E"].mT if kind == "QK" else w["W_U"]
    _, S, Vh = torch.linalg.svd(X)
    d = c.singular_directions(kind, 1, 2 if kind in ("OV", "QK") else None, k=3, top=4)
    torch.testing.assert_close(d.values, S[:3])
    want = Vh[:3] @ reader
    sign = torch.where(want.gather(-1, want.abs().argmax(-1, keepdim=True)) < 0, -1.0, 1.0)
    torch.testing.assert_close(d.vocab_scores, want * sign)
    assert d.top_ids.tolist() == torch.topk(want * sign, 4).indices.tolist()
    assert d.top_tokens[0][0] == str(d.top_ids[0, 0].item())


def test_circuits_and_paths_match_dense_products():
    c, w = model()
    OV = w["W_V"] @ w["W_O"]
    torch.testing.assert_close(c.full_QK(2, 1).to_dense(),
                               w["W_E"] @ w["W_Q"][2, 1] @ w["W_K"][2, 1].mT @ w["W_E"].mT)
    torch.testing.assert_close(c.direct_path().to_dense(), w["W_E"] @ w["W_U"])
    torch.testing.assert_close(c.path([(0, 3, "OV"), (2, 1, "OV")]).to_dense(),
                               w["W_E"] @ OV[0, 3] @ OV[2, 1] @ w["W_U"])
    torch.testing.assert_close(c.path([(0, 3, "OV"), (1, 0, "QK")]).to_dense(),
                               w["W_E"] @ OV[0, 3] @ w["W_Q"][1, 0] @ w["W_K"][1, 0].mT @ w["W_E"].mT)
    torch.testing.assert_close(c.OV([0, 2], [1, 3]).to_dense(), OV[[0, 2]][:, [1, 3]])
    torch.testing.assert_close(c.w_in(1).to_dense(), w["W_in"][1].mT)
    torch.testing.assert_close(c.w_out().to_dense(), w["W_out"])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), r=st.integers(1, 4), batch=st.sampled_from([(), (2,), (2, 3)]),
       block=st.integers(1, 3000), subset=st.booleans(), seed=st.integers(0, 1000))
def test_diagonal_rank_matches_dense_for_any_blocking(n, r, batch, block, subset, seed):
    """Property: streamed in blocks of any size (down to one row) and on any subset of rows,
    the rank of each diagonal entry within its row equals the dense count."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, n, r, generator=g, dtype=torch.float64)
    B = torch.randn(r, n, generator=g, dtype=torch.float64)
    x = lm.lazy(A) @ lm.lazy(B)
    rows = sorted(set(torch.randint(0, n, (5,), generator=g).tolist())) if subset else list(range(n))
    dense = (A @ B)[..., rows, :]
    diag = dense[..., torch.arange(len(rows)), rows]
    want = (dense > diag[..., None]).sum(-1)
    row_bytes = math.prod(batch) * n * (8 + 1)  # float64 entries and a bool mask
    if block < row_bytes:  # not even one row fits: refused before anything runs
        with pytest.raises(BudgetTooSmall, match="diagonal_rank"):
            diagonal_rank(x, rows=rows if subset else None, memory_budget=block)
        return
    try:
        got = diagonal_rank(x, rows=rows if subset else None, memory_budget=block)
    except BudgetTooSmall as e:  # a row fits, but not with what forming it holds (a gathered row)
        assert row_bytes < e.minimum and block < e.minimum
        got = diagonal_rank(x, rows=rows if subset else None, memory_budget=e.minimum)  # passed back, it runs
    assert torch.equal(got, want)


def test_scores_views():
    c, _ = model()
    s = c.composition_scores("V")
    lines = s.top(3)
    assert len(lines) == 3 and "->" in lines[0]
    flat = torch.where(s.valid, s.scores, -1).flatten()
    assert lines[0].endswith(f"{flat.max().item():.4f}")
    heads = c.copying_scores()
    assert heads.top(1)[0].startswith("L") and len(heads.top(100)) == 12


def test_scores_dataframe_and_plot(tmp_path):
    c, _ = model()
    s = c.composition_scores("K")
    pd = pytest.importorskip("pandas")
    df = s.to_dataframe()
    assert isinstance(df, pd.DataFrame) and len(df) == int(s.valid.sum())


def test_scores_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    c, _ = model()
    for s, name in ((c.composition_scores("K"), "k.png"), (c.copying_scores(), "copy.png")):
        s.plot(tmp_path / name)
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_errors_name_the_bad_value():
    c, _ = model()
    with pytest.raises(ValueError, match="composition kind 'X'"):
        c.composition_scores("X")
    with pytest.raises(ValueError, match="needs a head"):
        c.singular_directions("OV", 0)
    with pytest.raises(IndexError, match="layer 3 out of range for 3 layers"):
        c.OV(3, 0)
    with pytest.raises(IndexError, match="head 9 out of range for 4 heads"):
        c.QK(0, [1, 9])
    with pytest.raises(ValueError, match=r"square matrix, got shape \(4, 10, 3\)"):
        diagonal_rank(c.W_Q(0))
    w = model()[1]
    attn = {k: w[k] for k in ("W_E", "W_U", "W_Q", "W_K", "W_V", "W_O")}
    with pytest.raises(ValueError, match="no learned positional"):
        Circuits(attn).pos_QK()
    with pytest.raises(ValueError, match=r"W_O has shape \(3, 4, 3, 9\), expected \(3, 4, 3, 10\)"):
        Circuits(attn | {"W_O": torch.zeros(3, 4, 3, 9)})


@pytest.mark.cuda
def test_analyses_run_on_cuda_and_match_the_cpu():
    c, w = model()
    keep = ("W_E", "W_U", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_pos")
    g = Circuits({k: w[k].cuda() for k in keep})
    for kind in "QKV":
        torch.testing.assert_close(g.composition_scores(kind).scores.cpu(), c.composition_scores(kind).scores)
    torch.testing.assert_close(g.copying_scores().scores.cpu(), c.copying_scores().scores)
    assert torch.equal(g.diagonal_rank(g.full_OV()).cpu(), c.diagonal_rank(c.full_OV()))
    torch.testing.assert_close(g.singular_directions("OV", 1, 2).vocab_scores.cpu(),
                               c.singular_directions("OV", 1, 2).vocab_scores)


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 3), H=st.integers(1, 3), group=st.integers(1, 2), D=st.integers(1, 6),
       Dh=st.integers(1, 4), kind=st.sampled_from(["Q", "K", "V"]), seed=st.integers(0, 1000))
def test_composition_scores_property_any_dims(L, H, group, D, Dh, kind, seed):
    """Property: for any dims (grouped-query included), every earlier-to-later score equals
    ||W_A W_B||_F / (||W_A||_F ||W_B||_F) written with einsum over the raw factors."""
    g = torch.Generator().manual_seed(seed)
    Hq = H * group

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    w = {"W_E": r(5, D), "W_U": r(D, 5), "W_Q": r(L, Hq, D, Dh), "W_K": r(L, H, D, Dh), "W_V": r(L, H, D, Dh),
         "W_O": r(L, Hq, Dh, D)}
    got = Circuits(w).composition_scores(kind).scores
    Kq, Vq = w["W_K"].repeat_interleave(group, 1), w["W_V"].repeat_interleave(group, 1)
    A = torch.einsum("lhdk,lhke->lhde", Vq, w["W_O"])
    QK = torch.einsum("lhdk,lhek->lhde", w["W_Q"], Kq)
    B = {"Q": QK, "K": QK.transpose(-2, -1), "V": A}[kind]
    AB = torch.einsum("abde,cfeg->abcfdg", A, B)
    want = AB.square().sum((-2, -1)).sqrt() / torch.einsum("ab,cf->abcf", A.square().sum((-2, -1)).sqrt(),
                                                           B.square().sum((-2, -1)).sqrt())
    later = torch.arange(L)[:, None, None, None] < torch.arange(L)[None, None, :, None]
    want = torch.where(later, want.nan_to_num(), 0.0)
    torch.testing.assert_close(got.nan_to_num(), want, rtol=1e-7, atol=1e-9)
