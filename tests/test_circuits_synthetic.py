"""The analyses find what ``synthetic`` planted (small shapes here; the demo runs gpt2-small)."""

import pytest
import torch

from lazymat.circuits import Circuits, synthetic
from lazymat.presets import ModelShape

SMALL = ModelShape(d_vocab=3000, d_model=128, n_layers=4, n_heads=8, d_head=32, d_mlp=256, n_ctx=64)


@pytest.fixture(scope="module")
def small():
    return synthetic(SMALL, seed=1)


def test_planted_copying_head_has_the_top_copying_score(small):
    s = small.copying_scores().scores
    layer, head = small.planted["copying"]
    assert s[layer, head] > 0.9
    others = torch.cat([s.flatten()[: layer * 8 + head], s.flatten()[layer * 8 + head + 1:]])
    assert others.abs().max() < 0.5


def test_planted_copying_head_copies_token_to_itself(small):
    rows = range(0, 3000, 7)
    copying = small.diagonal_rank(small.full_OV(*small.planted["copying"]), rows=rows)
    other = small.diagonal_rank(small.full_OV(2, 0), rows=rows)
    assert (copying == 0).float().mean() > 0.9
    assert (other == 0).float().mean() < 0.1


@pytest.mark.parametrize("baseline", [False, True])
def test_k_composition_finds_previous_token_to_induction(small, baseline):
    k = small.composition_scores("K", baseline=baseline)
    prev, ind = small.planted["previous_token"], small.planted["induction"]
    assert k.top(1)[0].startswith(f"L{prev[0]}H{prev[1]} -> L{ind[0]}H{ind[1]}:")
    second = torch.topk(k.scores.flatten(), 2).values[1]
    assert k.scores[prev + ind] > 2 * second
    q = small.composition_scores("Q").scores
    assert q[prev + ind] < 2 * torch.median(q[small.composition_scores("Q").valid])


def test_previous_token_head_attends_to_the_previous_position(small):
    pattern = small.pos_QK(*small.planted["previous_token"]).to_dense()
    assert torch.equal(pattern[1:].argmax(-1), torch.arange(63))


def test_gqa_synthetic_shares_kv_heads_and_still_finds_the_induction_group():
    c = synthetic(ModelShape(500, 64, 3, 8, 8, 32, n_ctx=16, n_kv_heads=2), seed=0)
    assert c.n_kv_heads == 2 and c.W_K().shape == (3, 8, 64, 8)
    k = c.composition_scores("K").scores
    prev, ind = c.planted["previous_token"], c.planted["induction"]
    assert k[prev][1].argmax().item() // 4 == ind[1] // 4  # a head of the induction head's kv group


def test_same_seed_same_weights_and_bad_inputs():
    a, b = synthetic(SMALL, seed=3), synthetic(SMALL, seed=3)
    assert torch.equal(a.weight("W_O").to_dense(), b.weight("W_O").to_dense())
    with pytest.raises(ValueError, match="unknown preset 'gpt5'"):
        Circuits.synthetic("gpt5")
    with pytest.raises(ValueError, match="at least 2 layers|>= 2 layers"):
        synthetic(ModelShape(10, 8, 1, 4, 2, 8))
