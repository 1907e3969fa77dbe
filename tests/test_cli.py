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


# ---- the command never tracebacks: one line on stderr and exit code 2 -----------------------
SMALL = ["--shape", "W_E=4x3", "--shape", "W_Q=3x2"]


@pytest.mark.parametrize("args, words", [
    (["explain", "W_E[" + "9" * 5000 + "]", *SMALL], ["5000 digits"]),
    (["explain", "(" * 3000 + "W_E" + ")" * 3000, *SMALL], ["nested deeper"]),
    (["explain", "W_E @ W_Q", *SMALL, "--png", "picture.txt"], [".png", "picture.txt"]),
    (["explain", "W_E @ W_Q", *SMALL, "--shape", "W_X=" + "9" * 30 + "x3"], ["NAME=AxB"]),
    (["explain", "W_E @ W_W", "--preset", "gpt2-small"], ["no shape for W_W", "did you mean"]),
    (["explain", "W_E", "--preset", "gpt2-smal"], ["did you mean gpt2-small"]),
    (["presets", "gpt2-smal"], ["did you mean gpt2-small"]),
    (["explain", "W_E @ W_Q", *SMALL, "--op", "qr"], ["invalid choice"]),
    (["explain", "-W_E", *SMALL], ["leading space", "after '--'"]),
    (["explain", "A @ A", "--shape", "A=" + "x".join(["9" * 18] * 22)], ["too large to cost"]),
    (["explain", "W_E @ W_Q", *SMALL, "--op", "topk"], ["--op topk needs --k"]),  # named as the flag, not k=
    (["explain", "W_E @@ W_Q", *SMALL], ["expected a name", "column 6"]),
    (["demo", "--bogus"], ["unrecognized arguments: --bogus", "see lazymat demo -h"]),  # the
    (["explain", "W_E", *SMALL, "--bogus"], ["see lazymat explain -h"]),  # subcommand's help
    (["presets", "gpt2-small", "extra"], ["unrecognized arguments: extra", "see lazymat presets -h"]),
    (["--bogus"], ["unrecognized arguments: --bogus", "see lazymat -h"]),
])
def test_bad_input_one_line_exit_2(args, words):
    out = run(*args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    for w in words:
        assert w in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) <= 3, lines  # one line (a syntax error adds the text and a caret)


@pytest.mark.parametrize("flag, name", [("--dot", "x.dot"), ("--png", "x.png")])
def test_output_into_missing_folder(tmp_path, flag, name):
    target = tmp_path / "no" / "such" / name
    out = run("explain", "W_E @ W_Q", *SMALL, flag, str(target))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "does not exist" in out.stderr and out.stdout == ""  # refused before any work
    assert not target.exists()


def test_png_without_matplotlib(tmp_path):
    argv = ["explain", "W_E @ W_Q", *SMALL, "--png", str(tmp_path / "x.png")]
    code = ("import sys; sys.modules['matplotlib'] = None\n"  # makes `import matplotlib` fail
            f"from lazymat.cli import main\nraise SystemExit(main({argv!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "pip install 'lazymat[draw]'" in out.stderr


def test_closed_pipe_is_not_an_error():
    # `lazymat ... | head -1`: the reader goes away before the report is printed
    p = subprocess.Popen([sys.executable, "-m", "lazymat", "presets", "gpt2-small"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_negated_expression_after_double_dash():
    out = run("explain", *SMALL, "--", "-W_E @ W_Q")
    assert out.returncode == 0, out.stderr
    assert "(4,2)" in out.stdout


def test_scientific_notation_is_a_number():
    out = run("explain", "W_E * 1e-3 @ W_Q + 2.5E+2 * W_E @ W_Q", *SMALL, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["shape"] == [4, 2]


def test_parser_scales_by_scientific_numbers():
    import torch

    import lazymat as lm

    A = torch.randn(3, 4, dtype=torch.float64)
    x = parse("A * 1e-3 - 2.5E+2 * A / 1e1", {"A": lm.lazy(A)})
    torch.testing.assert_close(x.to_dense(), A * 1e-3 - 2.5e2 * A / 1e1)


def test_unknown_name_suggests_nearest():
    names = preset_symbols("gpt2-small")
    with pytest.raises(ParseError, match="did you mean W_Q"):
        parse("W_E @ W_QQ", names)


def test_presets_listing():
    out = run("presets")
    assert out.returncode == 0, out.stderr
    assert all(name in out.stdout for name in PRESETS)
    out = run("presets", "llama-3-8b-like")
    assert out.returncode == 0, out.stderr
    shapes = dict(line.split() for line in out.stdout.splitlines())
    want = PRESETS["llama-3-8b-like"].shapes()
    assert shapes == {k: "x".join(map(str, v)) for k, v in want.items()}


def test_version_from_metadata():
    from importlib import metadata

    out = run("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"lazymat {metadata.version('lazymat')}"


def test_dot_is_the_report_steps(tmp_path):
    dot = tmp_path / "qk.dot"
    out = run("explain", *QK, "--op", "svd", "--dot", str(dot))
    assert out.returncode == 0, out.stderr
    text = dot.read_text()
    # R = W_K^T W_E^T is formed as R^H = W_E @ W_K, the tall form its QR reads
    assert text.startswith("digraph") and "QR of R^H" in text and "R^H: W_E @ W_K" in text


_FUZZ_ATOM = st.sampled_from(["A", "B", "A[0]", "A[1:3]", "B.T", "2", "1e-3", "A[..., 0:2, :]", "A[None]",
                              "B[::2]", "A[-1]", "0"])
_FUZZ_EXPR = st.recursive(_FUZZ_ATOM, lambda e: st.one_of(
    st.tuples(e, st.sampled_from([" @ ", " + ", " - ", " * ", " / "]), e).map("".join),
    e.map(lambda s: f"({s})"), e.map(lambda s: f"-{s}"), e.map(lambda s: f"({s}).mT")), max_leaves=8)
_FUZZ_TEXT = st.one_of(st.text(alphabet="AB W_EQ019e.:[]()@*/+-,T", max_size=30), _FUZZ_EXPR)
_FUZZ_ARG = st.one_of(
    st.sampled_from(["--op", "--dtype", "--optimize", "--shape", "--preset", "--json", "--png", "--dot",
                     "svd", "trace", "eig", "float16", "dp", "gpt2-small", "A=2x3", "B=3x3", "W_E=0x2",
                     "A=2x3x3", "nope", "--version", "-h", "A=" + "x".join(["9" * 18] * 22)]),
    st.text(max_size=8))


@settings(max_examples=150, deadline=None)
@given(text=_FUZZ_TEXT, extra=st.lists(_FUZZ_ARG, max_size=5),
       op=st.sampled_from(["to_dense", "svd", "svdvals", "eigvals", "eig", "matrix_norm", "trace",
                           "diagonal", "matvec"]))
def test_cli_fuzz_never_tracebacks(text, extra, op):
    """Random expressions and flags: exit code 0 or 2, never an exception."""
    from lazymat.cli import main

    extra = [a for a in extra if a not in ("--png", "--dot")]  # files: covered above
    code = main(["explain", text, "--shape", "A=2x3x3", "--shape", "B=3x3", "--op", op, *extra])
    assert code in (0, 2)


# ---- package: metadata, public names, a light import ----------------------------------------
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_package_metadata():
    import tomllib

    import lazymat

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    meta = project["project"]
    assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "Typing :: Typed" in meta["classifiers"]
    assert (ROOT / "lazymat" / "py.typed").exists()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["lazymat"]
    assert meta["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lazymat.__version__"}
    assert lazymat.__version__.count(".") == 2


@pytest.mark.parametrize("name", ["cli", "parse", "presets", "explain", "plan", "network", "execute",
                                  "settings", "graph"])
def test_public_modules_declare_all(name):
    import importlib

    module = importlib.import_module(f"lazymat.{name}")
    assert module.__all__, name
    for public in module.__all__:
        assert hasattr(module, public), (name, public)


def test_import_is_light():
    """``import lazymat`` loads neither the command, the networkx lens, matplotlib nor html."""
    code = ("import sys, lazymat; heavy = ['lazymat.cli', 'lazymat.graph', 'lazymat.parse', "
            "'lazymat.presets', 'networkx', 'matplotlib', 'html']; "
            "print(' '.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
