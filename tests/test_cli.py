"""The ``lazymat`` command in a subprocess: output and exit codes."""

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.parse import ParseError, parse
from lazymat.presets import PRESETS, preset_symbols

QK = ["W_E @ W_Q @ W_K.T @ W_E.T", "--shape", "W_E=50257x768", "--shape", "W_Q=768x64",
      "--shape", "W_K=768x64"]


def run(*args):
    return subprocess.run([sys.executable, "-m", "lazymat", *args], capture_output=True, text=True,
                          timeout=120)


def test_explain_table():
    out = run("explain", *QK)
    assert out.returncode == 0, out.stderr
    assert "W_E @ W_Q" in out.stdout and "left-to-right" in out.stdout and "3.33e+11" in out.stdout


def test_optimizer_flag():
    out = run("explain", *QK, "--optimize", "left-to-right", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    l2r = 2 * (50257 * 768 * 64 + 50257 * 64 * 768 + 50257 * 768 * 50257)  # ((E Q) K^T) E^T
    assert d["planned"]["flops"] == d["naive"][0]["flops"] == l2r


def test_explain_json_svd_float16():
    out = run("explain", *QK, "--op", "svd", "--dtype", "float16", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["op"] == "svd" and d["dtype"] == "float16" and d["shape"] == [50257, 50257]


def test_preset_llama_and_files(tmp_path):
    dot, png = tmp_path / "x.dot", tmp_path / "x.png"
    out = run("explain", "W_E @ W_Q[0, 3] @ W_K[0, 3].T @ W_E.T", "--preset", "llama-3-8b-like",
              "--op", "svdvals", "--dot", str(dot), "--png", str(png))
    assert out.returncode == 0, out.stderr
    assert "(128256,4096)" in out.stdout
    assert dot.read_text().startswith("digraph")
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, words", [
    (["explain", "W_E @ (W_Q", "--shape", "W_E=4x3", "--shape", "W_Q=3x2"], ["expected ')'", "^"]),
    (["explain", "W_E @ W_X", "--preset", "gpt2-small"], ["W_X"]),
    (["explain", "W_E @ W_Q", "--shape", "W_E=4x3"], ["no shape for W_Q"]),
    (["explain", "W_E @ W_Q", "--shape", "W_E=4x3", "--shape", "W_Q=5x2"], ["(4, 3)", "(5, 2)"]),
    (["explain", "W_E @ W_Q", "--shape", "W_E=4by3"], ["NAME=AxB"]),
    (["explain", "W_E", "--preset", "gpt5"], ["unknown preset"]),
    (["explain", "W_E @ W_E", "--shape", "W_E=4x3", "--op", "trace"], ["(4, 3)"]),
])
def test_bad_input_exit_2(args, words):
    out = run(*args)
    assert out.returncode == 2
    for w in words:
        assert w in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("text, col", [("A @", 3), ("A @@ B", 3), ("A[1:2:3:4]", 7), ("A $ B", 2),
                                       ("(A", 2), ("A * B", 2)])
def test_parse_errors_point_at_column(text, col):
    names = preset_symbols("gpt2-small")
    names = {"A": names["W_E"], "B": names["W_U"]}
    with pytest.raises(ParseError) as info:
        parse(text, names)
    assert info.value.column == col


def test_parser_semantics_match_python():
    import torch

    import lazymat as lm

    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    B = torch.randn(3, 5, generator=g, dtype=torch.float64)
    names = {"A": lm.lazy(A), "B": lm.lazy(B)}
    x = parse("-2 * A[1] @ B / 4 + (A[0].mT).T @ B - A[:, 0:4][1] @ B[0:3, ::1]", names)
    ref = -2 * A[1] @ B / 4 + (A[0].mT).T @ B - A[:, 0:4][1] @ B[0:3, ::1]
    torch.testing.assert_close(x.to_dense(), ref)


def test_presets_have_the_standard_names():
    for name, m in PRESETS.items():
        s = m.shapes()
        for w in ["W_E", "W_U", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"]:
            assert w in s, (name, w)
    llama = PRESETS["llama-3-8b-like"].shapes()
    assert llama["W_E"] == (128256, 4096) and llama["W_Q"] == (32, 32, 4096, 128)
    assert llama["W_K_kv"] == (32, 8, 4096, 128) and llama["W_in"] == (32, 4096, 14336)
    assert "W_pos" in PRESETS["gpt2-small"].shapes() and "W_pos" not in llama


def test_demo_runs(tmp_path):
    out = run("demo", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "Copying scores of every head" in out.stdout and "NOT found" not in out.stdout
    assert out.stdout.count(": found") == 2


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="AB01.:[]()@*/+- ,T", max_size=25))
def test_parser_never_crashes(text):
    """Any input either parses or raises ParseError (never another exception)."""
    import lazymat as lm

    names = {"A": lm.symbol("A", (2, 4, 4)), "B": lm.symbol("B", (4, 4))}
    try:
        out = parse(text, names)
    except ParseError:
        return
    assert lm.is_lazy(out)
