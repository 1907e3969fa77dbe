"""qa27: the lazymat command on names a preset lacks."""

import contextlib
import io

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lazymat.circuits.model import circuit_names
from lazymat.cli import main
from lazymat.presets import PRESETS, preset_symbols


def _names(preset):
    names = preset_symbols(preset, torch.float32)
    return set(names) | set(circuit_names(names))


NAMES = {p: _names(p) for p in PRESETS}
EVERY = sorted(set().union(*NAMES.values()))


@settings(max_examples=40, deadline=None)
@given(preset=st.sampled_from(sorted(PRESETS)), name=st.sampled_from(EVERY))
def test_a_name_the_preset_lacks_is_said_to_be_missing_from_it(preset, name):
    """``lazymat explain pos_QK --preset llama-3-8b-like`` answered "give --shape pos_QK=AxB or a
    --preset" (one was given) and ``W_pos`` was offered ``did you mean W_out?``."""
    assume(name not in NAMES[preset])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["explain", name, "--preset", preset])
    assert code == 2
    others = [p for p in PRESETS if name in NAMES[p]]
    want = (f"lazymat: error: no shape for {name}: the preset {preset} has no {name} (it is defined by "
            f"{', '.join(others)}); give --shape {name}=AxB")
    assert err.getvalue().strip() == want


@pytest.mark.parametrize("argv", [["explain", "W_X", "--preset", "gpt2-small"],
                                  ["explain", "B", "--shape", "A=2x2"]])
def test_a_name_no_preset_defines_is_offered_a_look_alike(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lazymat: error: no shape for {argv[1]}")
    assert ("the preset gpt2-small has no W_X; give --shape W_X=AxB" in err) == ("--preset" in argv)
    assert ("or a --preset (" in err) == ("--preset" not in argv)


@pytest.mark.parametrize("out", ["", "x/", "a b", "  "])
def test_an_empty_out_is_refused_before_any_work(tmp_path_factory, monkeypatch, out):
    """``lazymat demo --out ""`` (an unset shell variable) wrote the heatmaps into the working
    directory, pathlib reading '' as '.'."""
    pytest.importorskip("matplotlib")
    from lazymat.demo import _heatmap_folder

    folder = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(folder)
    if out:
        assert _heatmap_folder(out).resolve() == (folder / out).resolve()
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["demo", "--out", out]) == 2
    want = "lazymat: error: --out '' names no folder; give one for the heatmap PNGs (e.g. --out .)"
    assert err.getvalue().strip() == want
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_the_demo_costs_what_its_analyses_run(tmp_path, dtype):
    """The analyses of 16-bit weights run in float32; the demo costed the 16-bit expressions."""
    from circuit_models import as_transformer_lens, canonical

    sd = {k: v.to(dtype) for k, v in as_transformer_lens(canonical(V=9, D=5, L=2, H=2, Dh=2, d_mlp=6,
                                                                   n_ctx=None)).items()}
    torch.save(sd, tmp_path / "model.pt")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["demo", "--weights", str(tmp_path / "model.pt"), "--out", str(tmp_path / "png")]) == 0
    costs = [line for line in out.getvalue().splitlines() if line.startswith("  cost: ")]
    assert len(costs) == 4
    assert all(("to(float32)" in line) == (dtype != torch.float32) for line in costs), costs
