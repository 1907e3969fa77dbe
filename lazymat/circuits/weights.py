"""Canonical weights read lazily from a state dict, with the layer norms folded in.

:class:`Weights` is a read-only mapping ``name -> tensor`` in TransformerLens form (see
:mod:`lazymat.circuits.layouts`). A tensor is read, converted and folded the first time it
is asked for, so a memory-mapped checkpoint only loads what an analysis touches.

Layer-norm folding (``fold_ln=True``) is exact for the weights and only for them:

- a norm ``y = gamma * (x - mean(x)) / rms(x - mean(x)) + beta`` (RMSNorm: no mean, no beta)
  is read by the weights ``W`` after it; ``gamma`` is folded into them, ``W <- diag(gamma) W``
  (rows of ``W_Q``, ``W_K``, ``W_V``, ``W_in``, ``W_gate`` and ``W_U``).
- for LayerNorm the input is centred, so the part of each reading weight along the all-ones
  direction is never seen: reading weights are centred over ``d_model``.
- ``center_writing`` (LayerNorm only): ``W_E``, ``W_pos``, ``W_O`` and ``W_out`` write into a
  stream that is centred before it is read, so their mean over ``d_model`` is removed.
- ``center_unembed``: softmax ignores a constant added to all logits, so ``W_U`` is centred
  over the vocabulary.
- not folded: the division by ``rms`` (it depends on the input, not linear), ``beta`` and
  every bias (circuits are products of weight matrices; biases are reported as ignored keys).
- post-LN models (BERT): the stream itself is normalised after every residual add, so the
  reading weights of layer ``l`` take the scale of the norm just before them (the embedding
  norm for layer 0) and ``W_U`` that of the last one. A direct path that skips layers also
  passes through the intermediate norms' scales, which are not folded into it.
- a state dict with no norm weights at all (a model without norms, or one whose norms were
  folded already) is taken as it is: nothing is folded or centred, as TransformerLens centres
  only models that have LayerNorm. Centring folded weights again would change nothing; centring
  a norm-free model would change every circuit. ``Circuits.notes`` says which case applied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch

from .layouts import Reading, convert

READS_ATTN = ("W_Q", "W_K", "W_V")
READS_MLP = ("W_in", "W_gate")
WRITES = ("W_E", "W_pos", "W_O", "W_out")
NORMS = ("ln_attn", "ln_mlp", "ln_final", "ln_embed", "ln_out")
WEIGHTS = ("W_E", "W_pos", "W_U", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out")


class WeightTypeError(TypeError):
    """A weight no circuit can be built from: not a tensor, complex, or of another dtype than
    the weights already read. Raised when a circuit first reads it (tensors are read lazily)."""


class LazyWeights(Mapping):
    """A read-only mapping ``name -> tensor`` over ``shapes``: each tensor is made on first
    access by the subclass's ``_make(name)`` and kept (so nothing unused is ever read or drawn)."""

    def __init__(self, shapes: dict[str, tuple]):
        self.shapes = shapes
        self._made: dict[str, torch.Tensor] = {}

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.shapes:
            raise KeyError(f"{name!r}: this model has {', '.join(self.shapes)}")
        if name not in self._made:
            self._made[name] = self._make(name)
        return self._made[name]

    def _make(self, name: str) -> torch.Tensor:
        raise NotImplementedError


class Weights(LazyWeights):
    """Canonical weights of a checked state dict; each converted and folded on first access."""

    def __init__(self, reading: Reading, get: Callable[[str], torch.Tensor], *, fold_ln: bool = True,
                 center_writing: bool = True, center_unembed: bool = True,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype {dtype}: circuit weights need a floating dtype (float32, float64, "
                            "bfloat16, float16)")
        if device is not None:  # an unreachable device is named now, not at a weight's first use
            try:
                torch.empty(0, device=device)
            except (RuntimeError, AssertionError) as e:  # (torch asserts when built without CUDA)
                raise ValueError(f"device {str(device)!r} cannot hold the weights: {e}") from None
        self.reading, self._get = reading, get
        self.fold_ln, self.center_writing, self.center_unembed = fold_ln, center_writing, center_unembed
        self.dtype, self.device = dtype, device
        d, keys = reading.dims, reading.keys
        L, H, Hkv, D, Dh = d.n_layers, d.n_heads, d.n_kv_heads, d.d_model, d.d_head
        shapes = {
            "W_E": (d.d_vocab, D), "W_U": (D, d.d_vocab), "W_Q": (L, H, D, Dh), "W_K": (L, Hkv, D, Dh),
            "W_V": (L, Hkv, D, Dh), "W_O": (L, H, Dh, D),
        }
        if "W_pos" in keys:
            shapes["W_pos"] = (d.n_ctx, D)
        mlp = {"W_in": (L, D, d.d_mlp), "W_gate": (L, D, d.d_mlp), "W_out": (L, d.d_mlp, D)}
        shapes.update({k: s for k, s in mlp.items() if k in keys})
        if "W_U" not in keys and reading.layout.tied is None:
            raise ValueError(f"layout {reading.layout.name!r}: no unembedding found")
        super().__init__(shapes)

    @property
    def has_norms(self) -> bool:
        """Whether the state dict holds norm weights; without them nothing is folded or centred."""
        return any(r in self.reading.keys for r in NORMS)

    @property
    def layernorm(self) -> bool:
        return self.reading.layout.norm == "layernorm" and self.has_norms

    def _raw(self, role: str) -> torch.Tensor | None:
        t = convert(self.reading, role, self._read_real)
        if t is None:
            return None
        return t.to(device=self.device, dtype=self.dtype or (t.dtype if t.dtype.is_floating_point
                                                                     else torch.float32))

    def _read_real(self, key: str) -> torch.Tensor:
        """The tensor of ``key``, refused when complex: the cast to the weights' dtype would drop
        its imaginary part with no more than torch's warning."""
        t = self._get(key)
        if t.dtype.is_complex:
            raise WeightTypeError(f"{key!r} {tuple(t.shape)} is {t.dtype}: circuit weights are real (the "
                                  "analyses compare and rank their values); take .real if that is meant")
        return t

    def _norm_scale(self, reader: str) -> torch.Tensor | None:
        """The scale ``gamma`` of the norm that ``reader`` reads: ``(L, d_model)`` or ``(d_model,)``."""
        if self.reading.layout.post_ln:
            if reader in READS_ATTN:
                emb, out = self._raw("ln_embed"), self._raw("ln_out")
                return torch.cat([emb[None], out[:-1]])
            return self._raw("ln_out")[-1] if reader == "W_U" else self._raw("ln_mlp")
        role = "ln_attn" if reader in READS_ATTN else "ln_mlp" if reader in READS_MLP else "ln_final"
        return self._raw(role)

    def _make(self, name: str) -> torch.Tensor:
        if name == "W_U" and "W_U" not in self.reading.keys:
            t = self._raw(self.reading.layout.tied).mT.clone()
        else:
            t = self._raw(name)
        if not (self.fold_ln and self.has_norms):
            return t
        stored = t.dtype  # a norm scale of another dtype (float32 beside bfloat16 weights, as
        # mixed-precision checkpoints keep norms) is folded in the promoted dtype, then rounded
        # once to the weight's own: the scale must not change which dtype the circuits have
        if name in READS_ATTN + READS_MLP + ("W_U",):
            gamma = self._norm_scale(name)
            if gamma is not None:
                if name in READS_ATTN:
                    t = t * gamma[:, None, :, None]
                elif name in READS_MLP:
                    t = t * gamma[:, :, None]
                else:
                    t = t * gamma[:, None]
            if self.layernorm:  # reading weights: the stream they read is centred
                t = t - t.mean(dim=-2 if name != "W_U" else 0, keepdim=True)
            if name == "W_U" and self.center_unembed:
                t = t - t.mean(dim=-1, keepdim=True)
        elif name in WRITES and self.layernorm and self.center_writing:
            t = t - t.mean(dim=-1, keepdim=True)
        return t.to(stored)

    def describe(self) -> str:
        """One line saying what was folded."""
        if not self.fold_ln:
            return "layer norms not folded"
        if not self.has_norms:
            return "no layer-norm weights in the state dict: weights kept raw, nothing folded or centred"
        what = f"{self.reading.layout.norm} scales folded into the reading weights"
        if self.layernorm:
            what += ", reading weights centred" + (", writing weights centred" if self.center_writing else "")
        return what + (", W_U centred over the vocabulary" if self.center_unembed else "")
