"""``lazymat demo --weights`` on checkpoints a researcher has (qa31, session 21).

Found and fixed: a checkpoint whose weights differ in dtype (a float16 embedding beside float32
heads) or hold a complex weight printed a Python traceback from deep in the analyses, where the
command promises one line and exit code 2, and the line said "pass dtype= to
Circuits.from_state_dict/load", a keyword the command had no flag for. Such weights now raise
:class:`lazymat.circuits.WeightTypeError` (a ``TypeError``), which the demo reports in one line
naming the weight, and ``--dtype`` casts every weight of ``--weights`` to one dtype. A
checkpoint of fused heads with no ``config.json`` beside it was refused with "pass n_heads=",
and one whose layout cannot be told with "pass layout=": keywords of ``Circuits.load``, where
the command's flags are ``--n-heads`` and ``--layout``.
"""

import contextlib
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.circuits import Circuits
from lazymat.cli import main

from circuit_models import as_hf_bert, as_hf_gpt2, as_hf_llama, as_transformer_lens, canonical

WEIGHTS = ("embed.W_E", "unembed.W_U", "attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O")  # (every layer's)
REAL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _small() -> dict[str, torch.Tensor]:
    return as_transformer_lens(canonical(V=9, D=5, L=2, H=2, Dh=2, d_mlp=6, n_ctx=None))


@settings(max_examples=12, deadline=None)
@given(weight=st.sampled_from(WEIGHTS), dtypes=st.permutations(REAL).map(lambda p: p[:2]))
def test_weights_of_two_dtypes_are_one_line_naming_both_and_dtype_casts_them(tmp_path_factory, weight,
                                                                             dtypes):
    folder = tmp_path_factory.mktemp("mixed")
    sd = {k: v.to(dtypes[1] if k.endswith(weight) else dtypes[0]) for k, v in _small().items()}
    torch.save(sd, folder / "model.pt")
    argv = ["demo", "--weights", str(folder / "model.pt"), "--out", str(folder / "png")]
    code, _, err = _run(argv)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "differ in dtype" in err and "--dtype" in err
    assert all(str(d) in err for d in dtypes), err
    code, out, err = _run([*argv, "--dtype", "float64"])
    assert code == 0 and not err, err
    assert "strongest" in out


@settings(max_examples=6, deadline=None)
@given(layer=st.integers(0, 1), which=st.sampled_from(["query", "key", "value"]))
def test_a_complex_weight_is_one_line_naming_its_key(tmp_path_factory, layer, which):
    folder = tmp_path_factory.mktemp("complex")
    sd = {k: v.float() for k, v in as_hf_bert(canonical(V=9, D=4, L=2, H=2, Dh=2, d_mlp=6)).items()}
    key = f"bert.encoder.layer.{layer}.attention.self.{which}.weight"
    sd[key] = sd[key].to(torch.complex64)
    torch.save(sd, folder / "model.pt")
    code, _, err = _run(["demo", "--weights", str(folder / "model.pt"), "--n-heads", "2",
                         "--out", str(folder / "png")])
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert key in err and "complex64" in err


def test_weight_type_errors_are_type_errors_for_library_callers():
    from lazymat.circuits import WeightTypeError

    sd = {k: v.float() for k, v in _small().items()}
    sd["embed.W_E"] = sd["embed.W_E"].half()
    c = Circuits.from_state_dict(sd)
    with pytest.raises(TypeError, match="differ in dtype"):
        c.copying_scores()
    assert issubclass(WeightTypeError, TypeError)


@pytest.mark.parametrize("source", [["--model", "synthetic"], ["--model", "minilm"]])
def test_dtype_applies_to_weights_only(source):
    code, _, err = _run(["demo", *source, "--dtype", "float32"])
    assert code == 2 and "--dtype applies to --weights" in err


FUSED = {"hf_gpt2": as_hf_gpt2, "hf_bert": as_hf_bert, "hf_llama": as_hf_llama}


@settings(max_examples=9, deadline=None)
@given(layout=st.sampled_from(sorted(FUSED)), heads=st.sampled_from([2, 3]))
def test_a_loader_error_asks_for_the_commands_flags(tmp_path_factory, layout, heads):
    folder = tmp_path_factory.mktemp("fused")
    w = canonical(V=9, D=6, L=2, H=heads, Dh=6 // heads, d_mlp=6, n_ctx=4 if layout != "hf_llama" else None,
                  gated=layout == "hf_llama")
    torch.save(FUSED[layout](w), folder / "model.pt")
    argv = ["demo", "--weights", str(folder / "model.pt"), "--out", str(folder / "png")]
    code, _, err = _run(argv)
    assert code == 2 and "pass --n-heads" in err and "n_heads=" not in err, err
    assert _run([*argv, "--n-heads", str(heads)])[0] == 0
    torch.save({}, folder / "empty.pt")
    code, _, err = _run(["demo", "--weights", str(folder / "empty.pt"), "--out", str(folder / "png")])
    assert code == 2 and "pass --layout" in err and "layout=" not in err, err


UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


@settings(max_examples=8, deadline=None)
@given(dtype=st.sampled_from(REAL), vocab=st.integers(5, 60))
def test_the_costed_block_of_logits_says_the_size_of_its_result(tmp_path_factory, dtype, vocab):
    """explain's peaks leave out the result of to_dense: the demo's diagonal-rank line read
    'peak 12.5 MiB' for a block of 1006 x 50257 float32 logits (193 MiB)."""
    folder = tmp_path_factory.mktemp("block")
    sd = {k: v.to(dtype) for k, v in as_transformer_lens(canonical(V=vocab, D=5, L=2, H=2, Dh=2, d_mlp=6,
                                                                   n_ctx=None)).items()}
    torch.save(sd, folder / "model.pt")
    code, out, err = _run(["demo", "--weights", str(folder / "model.pt"), "--out", str(folder / "png")])
    assert code == 0, err
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  cost: to_dense of"))
    rows = int(lines[at].rsplit("shape (", 1)[1].split(",")[0])
    size, unit = lines[at + 1].rsplit("each besides the ", 1)[1].removesuffix(" result").split()
    want = rows * vocab * max(dtype.itemsize, 4)  # (16-bit weights are read in float32)
    assert abs(float(size) * UNITS[unit] - want) <= 0.005 * want, (size, unit, want)
