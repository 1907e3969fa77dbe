"""The demo on any small checkpoint, heads zeroed at random (qa22, session 17). Found and fixed:
when no head had a copying score (every full OV circuit zero, 0 / 0: a checkpoint whose output
projections are zero-initialised) the demo printed an empty "strongest:" and then died with an
IndexError traceback; on such a model of several layers the empty K-composition was blamed on
"one layer". The property: the demo exits 0, reads the head whose float64 dense copying score is
highest (``sum(eig) / sum(|eig|)`` of ``W_E W_V W_O W_U``, formed here), or says why none."""

import contextlib
import io
import pathlib
import tempfile

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.cli import main


@st.composite
def _checkpoints(draw):
    """TransformerLens-layout float64 weights without norms (read as they are: nothing folded),
    some heads' ``W_O`` zero."""
    L, H, V, D, Dh = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(3, 9)), 6, 2
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    zero = torch.tensor(draw(st.lists(st.booleans(), min_size=L * H, max_size=L * H))).reshape(L, H)
    W_O = r(L, H, Dh, D) * (~zero)[:, :, None, None]
    sd = {"embed.W_E": r(V, D), "unembed.W_U": r(D, V)}
    for i in range(L):
        b = f"blocks.{i}."
        sd |= {b + "attn.W_Q": r(H, D, Dh), b + "attn.W_K": r(H, D, Dh), b + "attn.W_V": r(H, D, Dh),
               b + "attn.W_O": W_O[i], b + "mlp.W_in": r(D, 4), b + "mlp.W_out": r(4, D)}
    return sd


def _dense_copying_scores(sd) -> torch.Tensor:
    L = sum(1 for k in sd if k.endswith("attn.W_O"))
    W_V = torch.stack([sd[f"blocks.{i}.attn.W_V"] for i in range(L)])
    W_O = torch.stack([sd[f"blocks.{i}.attn.W_O"] for i in range(L)])
    full_ov = sd["embed.W_E"] @ W_V @ W_O @ sd["unembed.W_U"]  # (L, H, V, V)
    ev = torch.linalg.eigvals(full_ov)
    return ev.sum(-1).real / ev.abs().sum(-1)  # NaN (0 / 0) for a zero circuit


@settings(max_examples=25, deadline=None)
@given(sd=_checkpoints())
def test_the_demo_reads_the_top_copying_head_of_any_checkpoint_or_says_why_none(sd):
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "model.pt"
        torch.save(sd, path)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            code = main(["demo", "--weights", str(path), "--out", str(pathlib.Path(tmp) / "out")])
    text = printed.getvalue()
    assert code == 0, text
    scores = _dense_copying_scores(sd)
    L, H = scores.shape
    if scores.isnan().all():
        assert "no copying score exists (0 / 0)" in text and "Singular directions" not in text, text
    else:
        layer, head = torch.unravel_index(scores.nan_to_num(nan=-torch.inf).argmax(), scores.shape)
        assert f"Singular directions of L{int(layer)}H{int(head)}'s OV circuit" in text, text
        assert f"Diagonal rank of L{int(layer)}H{int(head)}'s full OV circuit" in text, text
    kcomp = text.split("K-composition of every pair")[1].split("\n")[3]
    earlier_heads_write = not scores[:-1].isnan().all()  # a zero OV circuit composes with nothing
    if L == 1:
        assert "none (one layer" in kcomp, kcomp
    elif earlier_heads_write:
        assert " -> " in kcomp, kcomp
    else:
        assert "none (every earlier-to-later pair scores 0 / 0" in kcomp, kcomp
