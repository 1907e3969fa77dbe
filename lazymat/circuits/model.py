"""``Circuits``: a transformer's weights as lazy leaves, and its circuits as lazy expressions.

Conventions are TransformerLens's: row vectors (``x @ W``), ``W_Q (layer, head, d_model,
d_head)`` and so on (see :mod:`lazymat.circuits.layouts`). Each weight becomes one lazy leaf,
made once per ``Circuits`` object, so what the engine caches on a leaf (``W_U @ W_E`` shared
by every head, a leaf's QR) is reused across heads and across analyses.

``layer`` and ``head`` arguments accept an int, a sequence of ints, a slice, or None for all
(:mod:`lazymat.circuits.selection`); the batch dims of a circuit are ``(layer, head)`` with the
int ones dropped, as in torch indexing.
Grouped-query attention: ``W_K``/``W_V`` keep their ``n_kv_heads`` heads; each query head
reads its shared key/value head through lazy indexing of the leaf, never a copy.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

import lazymat as lm

from . import analyses, layouts, selection, sources
from .selection import Index
from .weights import WEIGHTS, Weights, WeightTypeError

REQUIRED = ("W_E", "W_U", "W_Q", "W_K", "W_V", "W_O")
# the dims of each canonical weight, checked before any size is read from its shape
DIMS = {"W_E": "(d_vocab, d_model)", "W_pos": "(n_ctx, d_model)", "W_U": "(d_model, d_vocab)",
        "W_Q": "(n_layers, n_heads, d_model, d_head)", "W_K": "(n_layers, n_kv_heads, d_model, d_head)",
        "W_V": "(n_layers, n_kv_heads, d_model, d_head)", "W_O": "(n_layers, n_heads, d_head, d_model)",
        "W_in": "(n_layers, d_model, d_mlp)", "W_gate": "(n_layers, d_model, d_mlp)",
        "W_out": "(n_layers, d_mlp, d_model)"}


class Circuits:
    """Lazy circuits of one model. Build with :meth:`from_state_dict`, :meth:`load`,
    :meth:`from_model` or :meth:`synthetic`, or directly from canonical tensors."""

    def __init__(self, weights: Mapping[str, torch.Tensor], vocab: Sequence[str] | None = None,
                 name: str = "model", notes: str = "", ignored: Sequence[str] = ()):
        shapes = getattr(weights, "shapes", None) or {k: tuple(v.shape) for k, v in weights.items()}
        missing = [k for k in REQUIRED if k not in shapes]
        extra = [k for k in shapes if k not in WEIGHTS]
        if missing or extra:
            found = [f"{what} {', '.join(keys)}" for what, keys in (("missing", missing), ("unknown", extra))
                     if keys]
            raise ValueError(f"weights {'; '.join(found)}; expected {', '.join(WEIGHTS)}")
        self._weights, self.shapes, self.name, self.notes = weights, dict(shapes), name, notes
        self.ignored_keys = list(ignored)
        for k, s in shapes.items():  # (a 3-d W_E would fail to unpack below, naming nothing)
            if len(s) != DIMS[k].count(",") + 1:
                raise ValueError(f"{k} has shape {tuple(s)}, expected {DIMS[k]}")
        V, D = shapes["W_E"]
        L, H, _, Dh = shapes["W_Q"]
        Hkv = shapes["W_K"][1]
        expect = {"W_U": (D, V), "W_Q": (L, H, D, Dh), "W_K": (L, Hkv, D, Dh), "W_V": (L, Hkv, D, Dh),
                  "W_O": (L, H, Dh, D)}
        if "W_pos" in shapes:
            expect["W_pos"] = (shapes["W_pos"][0], D)
        if "W_in" in shapes:
            d_mlp = shapes["W_in"][-1]
            expect.update(W_in=(L, D, d_mlp), W_out=(L, d_mlp, D))
            if "W_gate" in shapes:
                expect["W_gate"] = (L, D, d_mlp)
        if Hkv <= 0 or H % Hkv:
            raise ValueError(f"W_K has shape {shapes['W_K']}: its {Hkv} key/value heads do not divide the "
                             f"{H} query heads of W_Q {shapes['W_Q']}")
        for k, s in expect.items():
            if tuple(shapes.get(k, s)) != s:
                raise ValueError(f"{k} has shape {tuple(shapes.get(k, ()))}, expected {s} (d_vocab={V}, "
                                 f"d_model={D}, n_layers={L}, n_heads={H} in groups of {Hkv} kv heads, "
                                 f"d_head={Dh})")
        self.d_vocab, self.d_model, self.n_layers, self.n_heads, self.d_head = V, D, L, H, Dh
        self.n_kv_heads = Hkv
        if vocab is not None and len(vocab) != V:
            raise ValueError(f"vocabulary has {len(vocab)} tokens, W_E has d_vocab={V}")
        self.vocab = list(vocab) if vocab is not None else None
        self._leaves: dict[str, lm.Expr] = {}
        self.planted: dict[str, tuple[int, int]] = {}  # synthetic models: where the planted heads are

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], layout: str | None = None, *,
                        n_heads: int | None = None, fold_ln: bool = True, center_writing: bool = True,
                        center_unembed: bool = True, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None, vocab: Sequence[str] | None = None,
                        name: str = "model") -> Circuits:
        """Read a state dict in one of :data:`layouts.LAYOUTS` (guessed from the keys when None).

        ``n_heads`` is needed where heads are fused (``hf_gpt2``, ``hf_bert``, ``hf_llama``).
        Layer norms are folded as :mod:`lazymat.circuits.weights` describes."""
        return cls._from_source(sources.from_mapping(sd), layout, n_heads=n_heads, fold_ln=fold_ln,
                                center_writing=center_writing, center_unembed=center_unembed,
                                dtype=dtype, device=device, vocab=vocab, name=name)

    @classmethod
    def _from_source(cls, source: sources.Source, layout: str | None, *, n_heads, fold_ln, center_writing,
                     center_unembed, dtype, device, vocab, name) -> Circuits:
        shapes, get = source
        reading = layouts.check(shapes, layout or layouts.guess(list(shapes)), n_heads)
        w = Weights(reading, get, fold_ln=fold_ln, center_writing=center_writing,
                    center_unembed=center_unembed, dtype=dtype, device=device)
        return cls(w, vocab=vocab, name=name, notes=f"layout {reading.layout.name}; {w.describe()}",
                   ignored=reading.ignored)

    @classmethod
    def load(cls, path: str | pathlib.Path, layout: str | None = None, *, n_heads: int | None = None,
             fold_ln: bool = True, center_writing: bool = True, center_unembed: bool = True,
             dtype: torch.dtype | None = None, device: torch.device | str | None = None,
             vocab: Sequence[str] | None = None, name: str | None = None) -> Circuits:
        """A local ``.safetensors`` (memory-mapped: only the tensors used are read) or
        ``.pt``/``.bin`` state dict, or a directory holding one. ``n_heads`` and the vocabulary
        are read from ``config.json`` and ``vocab.txt`` next to the file when not given (an
        ``n_heads`` given that disagrees with ``config.json`` is a ``LayoutError``). A
        ``vocab.txt`` shorter than the embedding (rows padded to a round size, as some models
        have) names the tokens it has, the others go by their id; a longer one is refused."""
        source, file = sources.open_path(path)
        configured = sources.config_n_heads(file, strict=n_heads is None)
        if n_heads is None:
            n_heads = configured
        elif configured is not None and n_heads != configured:  # (the heads would be cut wrongly)
            raise layouts.LayoutError(
                f"n_heads={n_heads} was given, but {file.parent / 'config.json'} says {configured} heads: "
                "the fused weights would be split into heads of the wrong width; leave n_heads out "
                "to use the config's, or fix config.json")
        c = cls._from_source(source, layout, n_heads=n_heads,
                             fold_ln=fold_ln, center_writing=center_writing,
                             center_unembed=center_unembed, dtype=dtype, device=device,
                             vocab=vocab, name=name or file.parent.name or file.stem)
        if vocab is None:
            c._read_vocab_file(sources.read_vocab(file), file.parent / "vocab.txt")
        return c

    def _read_vocab_file(self, tokens: list[str] | None, path: pathlib.Path) -> None:
        """Tokens found next to the weights, fitted to ``d_vocab``: padded embedding rows (more
        rows than tokens) are named by their id; a file with more tokens than rows is no
        vocabulary of this model and raises, naming it."""
        if tokens is None:
            return
        if len(tokens) > self.d_vocab:
            raise ValueError(f"{path} has {len(tokens)} tokens, more than the {self.d_vocab} rows of W_E: "
                             "it is not this model's vocabulary; pass vocab= to load (a list of "
                             f"{self.d_vocab} strings)")
        if len(tokens) < self.d_vocab:
            self.notes += (f"; {path.name} names {len(tokens)} of the {self.d_vocab} tokens (padded "
                           "embedding rows go by their id)")
            tokens = tokens + [str(i) for i in range(len(tokens), self.d_vocab)]
        self.vocab = tokens

    @classmethod
    def from_model(cls, model: Any, vocab: Sequence[str] | None = None, name: str = "model") -> Circuits:
        """Duck-typed on TransformerLens-style attributes (``model.W_E``, ``model.W_Q``, ...),
        taken as they are (TransformerLens has usually folded the layer norms already).
        Grouped-query models: ``blocks[l].attn._W_K``/``_W_V`` are used when present."""
        w = {}
        for k in WEIGHTS:
            t = getattr(model, k, None)
            if t is not None:
                w[k] = t.detach()
        blocks = getattr(model, "blocks", None)
        if blocks is not None and hasattr(blocks[0].attn, "_W_K"):
            w["W_K"] = torch.stack([b.attn._W_K for b in blocks]).detach()
            w["W_V"] = torch.stack([b.attn._W_V for b in blocks]).detach()
        missing = [k for k in REQUIRED if k not in w]
        if missing:
            raise TypeError(f"{type(model).__name__} has no attribute(s) {', '.join(missing)}: from_model "
                            "needs TransformerLens-style weights (W_E, W_U, W_Q, W_K, W_V, W_O)")
        return cls(w, vocab=vocab, name=name, notes="weights taken as the model exposes them")

    @classmethod
    def synthetic(cls, preset: str = "gpt2-small", seed: int = 0) -> Circuits:
        """Random weights of a preset's shapes with planted heads (:mod:`lazymat.circuits.synthetic`)."""
        from .synthetic import synthetic

        return synthetic(preset, seed)

    # ---- leaves -------------------------------------------------------------------------------
    def weight(self, name: str) -> lm.Expr:
        """The lazy leaf of a canonical weight (made once; the tensor is read on first use)."""
        if name not in self._leaves:
            if name not in self.shapes:
                raise KeyError(f"{self.name} has no {name}; it has {', '.join(self.shapes)}")
            tensor = self._weights[name]
            if not isinstance(tensor, (torch.Tensor, lm.Expr)):  # (symbols for the lazymat command)
                raise WeightTypeError(
                    f"{self.name}'s {name} is a {type(tensor).__name__}, not a torch.Tensor")
            if not tensor.dtype.is_floating_point:  # (complex: singular_directions failed in torch)
                raise WeightTypeError(
                    f"{self.name}'s {name} {tuple(tensor.shape)} is {tensor.dtype}: circuit weights are real "
                    "floating tensors (the analyses compare and rank values)")
            other = next(iter(self._leaves.values()), None)
            if other is not None and tensor.dtype != other.dtype:  # here, not deep in a product
                raise WeightTypeError(
                    f"{self.name}'s weights differ in dtype: {name} is {tensor.dtype}, {other.name} "
                    f"{other.dtype}; pass dtype= to Circuits.from_state_dict/load, or cast them to one")
            if isinstance(tensor, torch.Tensor):
                _check_finite(tensor, name, self.name)
            self._leaves[name] = lm.lazy(tensor, name=name)
        return self._leaves[name]

    def _per_query_head(self, name: str) -> lm.Expr:
        leaf = self.weight(name)
        if self.n_kv_heads == self.n_heads:
            return leaf
        group = self.n_heads // self.n_kv_heads
        return leaf[:, [h // group for h in range(self.n_heads)]]

    def _heads(self, x: lm.Expr, layer: Index, head: Index) -> lm.Expr:
        layer = selection.key(layer, self.n_layers, "layer")
        head = selection.key(head, self.n_heads, "head")
        if isinstance(layer, int):
            return x[layer][head]
        return x[layer][:, head]

    @property
    def W_E(self) -> lm.Expr:
        """The token embedding ``(d_vocab, d_model)``."""
        return self.weight("W_E")

    @property
    def W_U(self) -> lm.Expr:
        """The unembedding ``(d_model, d_vocab)``."""
        return self.weight("W_U")

    @property
    def W_pos(self) -> lm.Expr:
        """The learned positional embedding ``(n_ctx, d_model)``; a model without one raises."""
        if "W_pos" not in self.shapes:
            raise ValueError(f"{self.name} has no learned positional embedding (W_pos): no pos_QK")
        return self.weight("W_pos")

    def W_Q(self, layer: Index = None, head: Index = None) -> lm.Expr:
        """Query weights ``(..., d_model, d_head)``, all heads or those of ``layer``/``head``."""
        return self._heads(self.weight("W_Q"), layer, head)

    def W_K(self, layer: Index = None, head: Index = None) -> lm.Expr:
        """Key weights per query head (shared heads are indexed, not copied)."""
        return self._heads(self._per_query_head("W_K"), layer, head)

    def W_V(self, layer: Index = None, head: Index = None) -> lm.Expr:
        """Value weights per query head ``(..., d_model, d_head)`` (shared heads are indexed, not
        copied)."""
        return self._heads(self._per_query_head("W_V"), layer, head)

    def W_O(self, layer: Index = None, head: Index = None) -> lm.Expr:
        """Output weights ``(..., d_head, d_model)``, all heads or those of ``layer``/``head``."""
        return self._heads(self.weight("W_O"), layer, head)

    # ---- circuits -----------------------------------------------------------------------------
    def QK(self, layer: Index = None, head: Index = None) -> lm.Expr:
        """``W_Q W_K^T (..., d_model, d_model)``: query residual direction x key direction."""
        return self.W_Q(layer, head) @ self.W_K(layer, head).mT

    def OV(self, layer: Index = None, head: Index = None) -> lm.Expr:
        """``W_V W_O (..., d_model, d_model)``: what a head writes for what it attends to."""
        return self.W_V(layer, head) @ self.W_O(layer, head)

    def full_QK(self, layer: Index = None, head: Index = None) -> lm.Expr:
        """``W_E W_Q W_K^T W_E^T (..., d_vocab, d_vocab)``: query token x key token."""
        return self.W_E @ self.QK(layer, head) @ self.W_E.mT

    def full_OV(self, layer: Index = None, head: Index = None) -> lm.Expr:
        """``W_E W_V W_O W_U (..., d_vocab, d_vocab)``: attended token x logit of the output token."""
        return self.W_E @ self.OV(layer, head) @ self.W_U

    def pos_QK(self, layer: Index = None, head: Index = None) -> lm.Expr:
        """``W_pos W_Q W_K^T W_pos^T (..., n_ctx, n_ctx)``: query position x key position."""
        return self.W_pos @ self.QK(layer, head) @ self.W_pos.mT

    def direct_path(self) -> lm.Expr:
        """``W_E W_U (d_vocab, d_vocab)``: the logits of the residual stream's direct path."""
        return self.W_E @ self.W_U

    def w_in(self, layer: Index = None) -> lm.Expr:
        """MLP input directions ``W_in^T (..., d_mlp, d_model)``: one row per neuron."""
        return self._mlp("W_in", layer).mT

    def w_out(self, layer: Index = None) -> lm.Expr:
        """MLP output directions ``W_out (..., d_mlp, d_model)``: one row per neuron."""
        return self._mlp("W_out", layer)

    def _mlp(self, name: str, layer: Index) -> lm.Expr:
        if name not in self.shapes:
            raise ValueError(f"{self.name} has no MLP weights ({name})")
        return self.weight(name)[selection.key(layer, self.n_layers, "layer")]

    def path(self, steps: Sequence[tuple[int, int, str]]) -> lm.Expr:
        """A virtual path through heads, token to token: ``[(0, 4, "OV"), (1, 7, "OV")]`` is
        ``W_E W_OV^{0.4} W_OV^{1.7} W_U``. A last step ``"QK"`` ends on the key tokens instead:
        ``W_E W_OV ... W_QK W_E^T`` (the query reads the earlier heads' output). Each step's
        layer comes after the one before it: a head reads only what earlier layers wrote (a
        path back or within a layer is no circuit of the model, and is refused)."""
        if not steps:
            raise ValueError("path needs at least one (layer, head, kind) step")
        x, previous = self.W_E, None
        for i, step in enumerate(steps):
            if (isinstance(step, (str, bytes)) or not isinstance(step, Sequence) or len(step) != 3
                    or step[2] not in ("OV", "QK") or (step[2] == "QK" and i != len(steps) - 1)):
                raise ValueError(f"path step {step!r}: expected (layer, head, 'OV'), or (layer, head, 'QK') "
                                 "as the last step")
            layer, head, kind = step
            layer = selection.one(layer, self.n_layers, "layer")
            head = selection.one(head, self.n_heads, "head")
            if previous is not None and layer <= previous[0]:
                raise ValueError(f"path step {step!r} is in layer {layer}, not after the layer {previous[0]} "
                                 f"of the step before it {previous[1]!r}: a head reads only what heads of "
                                 "earlier layers wrote, so the layers of a path must increase")
            previous = (layer, step)
            x = x @ (self.OV(layer, head) if kind == "OV" else self.QK(layer, head))
        return x @ (self.W_E.mT if steps[-1][2] == "QK" else self.W_U)

    # ---- analyses (see lazymat.circuits.analyses) --------------------------------------------
    def composition_scores(self, kind: str = "K", baseline: bool = False, **kw: Any) -> analyses.Scores:
        """Q-, K- or V-composition of every pair of heads (:func:`analyses.composition_scores`)."""
        return analyses.composition_scores(self, kind, baseline=baseline, **kw)

    def copying_scores(self) -> analyses.Scores:
        """Copying score of every head's full OV circuit (:func:`analyses.copying_scores`)."""
        return analyses.copying_scores(self)

    def singular_directions(self, kind: str, layer: int, head: int | None = None, k: int = 10,
                            top: int = 10) -> analyses.Directions:
        """Top singular directions of a circuit, read in the vocabulary
        (:func:`analyses.singular_directions`)."""
        return analyses.singular_directions(self, kind, layer, head, k=k, top=top)

    def diagonal_rank(self, expr: lm.Expr, **kw: Any) -> torch.Tensor:
        """How many entries of each row beat its diagonal, streamed (:func:`analyses.diagonal_rank`)."""
        return analyses.diagonal_rank(expr, **kw)

    def token(self, i: int) -> str:
        """The token string of id ``i`` (its id as text when no vocabulary is known)."""
        i = selection.one(i, self.d_vocab, "token id")
        return self.vocab[i] if self.vocab is not None else str(i)

    def __repr__(self) -> str:
        return (f"Circuits({self.name!r}: d_vocab={self.d_vocab}, d_model={self.d_model}, "
                f"n_layers={self.n_layers}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"d_head={self.d_head}{'; ' + self.notes if self.notes else ''})")


def _check_finite(t: torch.Tensor, name: str, model: str) -> None:
    """Refuse a weight holding an inf or NaN entry, naming where (once, on the weight's first
    use): every circuit through it would be NaN, and an analysis would rank the other heads
    as if nothing were wrong (a NaN score is no score, :meth:`Scores.top`)."""
    # a finite sum means finite entries (a NaN or inf makes it NaN or inf): one pass, no mask; a
    # sum that overflows from finite entries is checked entry by entry
    if t.device.type == "meta" or bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all()):
        return
    at = tuple(int(i) for i in (~torch.isfinite(t)).nonzero()[0])
    raise lm.linalg.NonFiniteError(
        f"{model}'s {name} {tuple(t.shape)} holds {t[at].item()} at index {at} (as read, after any "
        "layer-norm folding and centring, which spread a non-finite entry): every circuit through it "
        "would be NaN; check the weights with torch.isfinite")


def circuit_names(weights: Mapping[str, lm.Expr]) -> dict[str, lm.Expr]:
    """The circuits of a model as named expressions over all layers and heads (``full_OV``,
    ``QK``, ...), for ``lazymat explain "full_OV[3, 5]" --preset gpt2-small``. ``weights``
    are shape-only symbols named as in :mod:`lazymat.presets` (``W_K_kv``/``W_V_kv`` are the
    shared key/value heads of grouped-query presets)."""
    w = {k: v for k, v in weights.items() if k in WEIGHTS}
    for k in ("W_K", "W_V"):
        if f"{k}_kv" in weights:
            w[k] = weights[f"{k}_kv"]
    c = Circuits(w, name="symbols")
    out = {"QK": c.QK(), "OV": c.OV(), "full_QK": c.full_QK(), "full_OV": c.full_OV(),
           "direct_path": c.direct_path()}
    if "W_pos" in w:
        out["pos_QK"] = c.pos_QK()
    if "W_in" in w:
        out.update(w_in=c.w_in(), w_out=c.w_out())
    return out
