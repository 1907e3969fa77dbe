"""Random weights of a real model's shapes with planted, known structure (no download).

What is planted (head positions in ``Circuits.planted``):

- ``copying``: ``W_O = W_V^T`` (plus a little noise). The embeddings are tied as in GPT-2
  (``W_U = W_E^T``), so the full OV circuit ``W_E W_V W_V^T W_E^T`` is positive
  semi-definite: its eigenvalues are nonnegative and its copying score is near 1.
- ``previous_token``: learned positions carry sinusoids in the first ``d_head`` residual
  dims, and this head's ``W_Q W_K^T`` rotates them by one step, so ``pos_QK`` peaks at the
  previous position in every row.
- ``induction``: its key weights read exactly what the previous-token head writes,
  ``W_K = W_O(previous_token)^T``: high K-composition of that pair.

Every other weight is Gaussian. Each tensor is drawn from its own seeded generator on first
use, so results do not depend on which analyses ran before.
"""

from __future__ import annotations

import numbers
import zlib

import torch

from ..presets import PRESETS, ModelShape
from .model import Circuits
from .weights import LazyWeights


class SyntheticWeights(LazyWeights):
    """Canonical weights of a :class:`ModelShape`, drawn on first access."""

    def __init__(self, shape: ModelShape, seed: int, planted: dict[str, tuple[int, int]]):
        self.model_shape, self.seed, self.planted = shape, seed, planted
        s = shape
        kv = s.n_kv_heads or s.n_heads
        shapes = {
            "W_E": (s.d_vocab, s.d_model), "W_U": (s.d_model, s.d_vocab),
            "W_Q": (s.n_layers, s.n_heads, s.d_model, s.d_head), "W_K": (s.n_layers, kv, s.d_model, s.d_head),
            "W_V": (s.n_layers, kv, s.d_model, s.d_head), "W_O": (s.n_layers, s.n_heads, s.d_head, s.d_model),
            "W_in": (s.n_layers, s.d_model, s.d_mlp), "W_out": (s.n_layers, s.d_mlp, s.d_model),
        }
        if s.n_ctx is not None:
            shapes["W_pos"] = (s.n_ctx, s.d_model)
        super().__init__(shapes)

    def _gaussian(self, name: str, scale: float) -> torch.Tensor:
        # modulo 2**64, as torch reads a negative seed: any int seed draws (one past 64 bits overflowed)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**64)
        return torch.randn(self.shapes[name], generator=g) * scale

    def _kv(self, head: int) -> int:
        s = self.model_shape
        return head // (s.n_heads // (s.n_kv_heads or s.n_heads))

    def _sinusoid_rotation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Frequencies ``(d_head/2,)`` of the positional sinusoids and the one-step rotation
        ``(d_head, d_head)`` taking ``p_i`` (in the first d_head dims) to ``p_{i+1}``."""
        half = self.model_shape.d_head // 2
        freq = torch.linspace(0.2, 3.0, half)
        rot = torch.zeros(2 * half, 2 * half)
        c, s = freq.cos(), freq.sin()
        i = torch.arange(half)
        # p = [cos(w t), sin(w t)] pairs; p_{t+1} = p_t @ rot
        rot[2 * i, 2 * i], rot[2 * i, 2 * i + 1] = c, s
        rot[2 * i + 1, 2 * i], rot[2 * i + 1, 2 * i + 1] = -s, c
        return freq, rot

    def _make(self, name: str) -> torch.Tensor:
        s = self.model_shape
        D, Dh = s.d_model, s.d_head
        if name == "W_U":
            return self["W_E"].mT  # tied embeddings, as in GPT-2
        if name == "W_O":
            t = self._gaussian(name, Dh**-0.5)
            layer, head = self.planted["copying"]
            W_V = self["W_V"][layer, self._kv(head)]
            t[layer, head] = W_V.mT * (D / Dh) ** 0.5 + 0.3 * t[layer, head]
            return t
        if name == "W_K":
            t = self._gaussian(name, D**-0.5)
            layer, head = self.planted["induction"]
            t[layer, self._kv(head)] = self["W_O"][self.planted["previous_token"]].mT * (Dh / D) ** 0.5
            if s.n_ctx is not None:
                layer, head = self.planted["previous_token"]
                _, rot = self._sinusoid_rotation()
                t[layer, self._kv(head)] = 0.0
                # W_Q W_K^T = rot^T on the first d_head dims: p_i rot^T p_j^T = p_i . p_{j+1}
                t[layer, self._kv(head), :Dh] = rot
            return t
        if name == "W_Q":
            t = self._gaussian(name, D**-0.5)
            if s.n_ctx is not None:
                layer, head = self.planted["previous_token"]
                t[layer, head] = 0.0
                t[layer, head, :Dh] = torch.eye(Dh)
            return t
        if name == "W_pos":
            t = self._gaussian(name, 0.02)
            freq, _ = self._sinusoid_rotation()
            angle = torch.arange(s.n_ctx, dtype=torch.float32)[:, None] * freq
            t[:, 0:Dh:2], t[:, 1:Dh:2] = angle.cos(), angle.sin()
            return t
        if name == "W_E":
            return self._gaussian(name, D**-0.5)
        return self._gaussian(name, (self.shapes[name][-2]) ** -0.5)


def planted_heads(shape: ModelShape) -> dict[str, tuple[int, int]]:
    """Where the planted heads sit: previous-token in layer 0, induction in layer 1, copying in
    the middle layer (distinct heads; needs at least 2 layers and 3 heads)."""
    L, H = shape.n_layers, shape.n_heads
    if L < 2 or H < 3:
        raise ValueError(f"synthetic models need >= 2 layers and >= 3 heads, got {L} x {H}")
    kv_group = H // (shape.n_kv_heads or H)
    prev, ind = (0, 3 % H), (1, (7 * kv_group) % H)
    copying = (L // 2, 5 % H)
    if copying[0] == 1 and copying[1] == ind[1]:
        copying = (1, (ind[1] + kv_group) % H)
    return {"previous_token": prev, "induction": ind, "copying": copying}


def _check_sizes(shape: ModelShape) -> None:
    """Refuse sizes no synthetic model has, naming the field, where the model is made (the
    weights are drawn on first use: a bad size would fail later, deep in torch or a scale)."""
    for field, least in (("d_vocab", 0), ("d_model", 1), ("n_layers", 0), ("n_heads", 0), ("d_head", 1),
                         ("d_mlp", 0), ("n_ctx", 0), ("n_kv_heads", 1)):
        value = getattr(shape, field)
        if value is None and field in ("n_ctx", "n_kv_heads"):
            continue
        wanted = f"synthetic models need {field} an int >= {least}" + (
            " or None" if field in ("n_ctx", "n_kv_heads") else "")
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{wanted}, got {value!r} ({type(value).__name__})")
        if value < least:
            raise ValueError(f"{wanted}, got {value!r}")
    if shape.n_kv_heads is not None and shape.n_heads % shape.n_kv_heads:
        raise ValueError(f"synthetic models need n_kv_heads to divide n_heads (heads share key/value "
                         f"heads in groups), got {shape.n_kv_heads} and {shape.n_heads}")
    if shape.d_head % 2:
        raise ValueError(f"synthetic models need an even d_head, got {shape.d_head}")
    if shape.n_ctx is not None and shape.d_model < shape.d_head:
        raise ValueError(f"synthetic models with learned positions need d_model >= d_head (the "
                         f"previous-token head's sinusoids fill the first d_head residual dims), got "
                         f"d_model {shape.d_model}, d_head {shape.d_head}")


def synthetic(preset: str | ModelShape = "gpt2-small", seed: int = 0) -> Circuits:
    """A :class:`Circuits` of random weights with a preset's shapes (or any ``ModelShape``)
    and the planted heads described in this module; ``.planted`` says where they are."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        shape, name = PRESETS[preset], preset
    else:
        shape, name = preset, "custom"
    _check_sizes(shape)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    seed = int(seed)
    planted = planted_heads(shape)
    c = Circuits(SyntheticWeights(shape, seed, planted), name=f"synthetic {name} (seed {seed})",
                 notes="random weights, planted heads: " + ", ".join(
                     f"{k} L{layer}H{head}" for k, (layer, head) in planted.items()))
    c.planted = planted
    return c

