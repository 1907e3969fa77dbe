"""State-dict layouts: which key holds which weight, and how to turn it into TransformerLens form.

Every layout is read into the same canonical weights (TransformerLens names and row-vector
conventions, ``x @ W``): ``W_E (d_vocab, d_model)``, ``W_pos (n_ctx, d_model)`` where
positions are learned, ``W_U (d_model, d_vocab)``, per layer ``W_Q (n_heads, d_model,
d_head)``, ``W_K``/``W_V (n_kv_heads, d_model, d_head)`` (fewer heads with grouped-query
attention), ``W_O (n_heads, d_head, d_model)``, ``W_in``/``W_gate (d_model, d_mlp)``,
``W_out (d_mlp, d_model)``, stacked over layers; and the layer-norm scales that precede each
reading weight (``ln_attn``, ``ln_mlp`` per layer, ``ln_final``), for folding.

A layout is checked on key names and shapes alone (a memory-mapped file is not read): every
expected key must be there with the shape the model's dimensions imply, and every other key
must be one the layout knows it does not use (biases, masks, pooler, ...), reported in
``ignored``; anything else is an error naming the key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

LAYOUTS = ("transformer_lens", "hf_gpt2", "hf_bert", "hf_llama")


class LayoutError(ValueError):
    """A state dict that does not fit the layout: names the key and the shapes expected."""


@dataclass(frozen=True)
class Dims:
    """The dimensions of a model, read off its weight shapes (and ``n_heads`` where fused)."""

    d_vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int | None
    n_ctx: int | None
    source: dict[str, str] = field(default_factory=dict, compare=False)  # dim -> key it was read from

    def describe(self, key: Callable[[str], str] = str) -> str:
        """``d_model=12 (from 'embed.W_E'), ...``: the dims and the keys they were read from."""
        names = [n for n in ("d_vocab", "d_model", "n_heads", "n_kv_heads", "d_head", "d_mlp", "n_ctx")
                 if getattr(self, n) is not None]
        where = {n: f" (from {key(k)!r})" for n, k in self.source.items()}
        return ", ".join(f"{n}={getattr(self, n)}{where.get(n, '')}" for n in names)


@dataclass(frozen=True)
class Role:
    """One canonical weight: its key template, the stored shape, and the conversion."""

    key: str  # with "{l}" for per-layer weights
    shape: Callable[[Dims], tuple[int, ...]]
    convert: Callable[[torch.Tensor, Dims], torch.Tensor]
    optional: bool = False


def _same(t: torch.Tensor, d: Dims) -> torch.Tensor:
    return t


def _T(t: torch.Tensor, d: Dims) -> torch.Tensor:
    return t.mT


def _heads_in(n: Callable[[Dims], int]):
    """``(d_model, n * d_head)`` (columns grouped by head) -> ``(n, d_model, d_head)``."""
    return lambda t, d: t.reshape(d.d_model, n(d), d.d_head).permute(1, 0, 2)


def _heads_out(t: torch.Tensor, d: Dims) -> torch.Tensor:
    """``(n_heads * d_head, d_model)`` (rows grouped by head) -> ``(n_heads, d_head, d_model)``."""
    return t.reshape(d.n_heads, d.d_head, d.d_model)


def _nn_linear_heads_in(n: Callable[[Dims], int]):
    return lambda t, d: _heads_in(n)(t.mT, d)


def _gpt2_qkv(i: int):
    return lambda t, d: _heads_in(lambda d: d.n_heads)(t[:, i * d.d_model:(i + 1) * d.d_model], d)


def _H(d: Dims) -> int:
    return d.n_heads


def _Hkv(d: Dims) -> int:
    return d.n_kv_heads


@dataclass(frozen=True)
class Layout:
    """Keys of one family of checkpoints (after its optional prefix is stripped)."""

    name: str
    marker: str  # a key only this layout has
    prefixes: tuple[str, ...]
    roles: dict[str, Role]
    ignore: tuple[str, ...]  # regexes of keys known and deliberately unused
    norm: str  # "layernorm" (centres, then scales) or "rmsnorm" (scales only)
    post_ln: bool = False  # layer norm after each residual add (BERT) instead of before each block
    needs_n_heads: bool = True
    tied: str | None = None  # canonical weight whose transpose is W_U when W_U's key is absent
    notes: str = ""
    dims: Callable[[dict[str, tuple], int | None], Dims] = field(default=None)  # type: ignore[assignment]


def _layer_count(keys: list[str], template: str) -> int:
    pattern = re.compile(re.escape(template).replace(r"\{l\}", r"(\d+)") + "$")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _need(shapes: dict[str, tuple], key: str, *dims: str, optional: bool = False) -> tuple | None:
    """The shape of ``key``, which must have one entry per named dim (e.g. "d_vocab", "d_model")."""
    what = f"({', '.join(dims)})"
    if key not in shapes:
        if optional:
            return None
        raise LayoutError(f"missing key {key!r} (expected shape {what})")
    if len(shapes[key]) != len(dims):
        raise LayoutError(f"key {key!r} has shape {shapes[key]}, expected {len(dims)} dims {what}")
    return shapes[key]


def _split_heads(width: int, n_heads: int | None, key: str, part: str = "") -> tuple[int, int]:
    """``(n_heads, d_head)`` of the weight ``key`` whose ``width`` columns (``part``: of which
    block of them, for a fused Q, K, V) hold the heads side by side."""
    width_of = f"width {width}{part}"
    if n_heads is None:
        raise LayoutError(f"{key!r} fuses the heads ({width_of}): pass n_heads= (or load from a "
                          "directory with a config.json naming it)")
    if n_heads <= 0 or width % n_heads:
        raise LayoutError(f"{key!r} has {width_of}, not divisible into n_heads={n_heads} heads")
    return n_heads, width // n_heads


# ---- the four layouts ----------------------------------------------------------------------
def _grouped_kv(shapes: dict[str, tuple]) -> bool:
    """TransformerLens keeps grouped-query K/V weights as ``_W_K``/``_W_V`` (in any layer)."""
    return any(re.fullmatch(r"blocks\.\d+\.attn\._W_[KV]", k) for k in shapes)


def _tl_dims(shapes: dict[str, tuple], n_heads: int | None) -> Dims:
    V, D = _need(shapes, "embed.W_E", "d_vocab", "d_model")
    H, _, Dh = _need(shapes, "blocks.0.attn.W_Q", "n_heads", "d_model", "d_head")
    kv = "blocks.0.attn._W_K" if _grouped_kv(shapes) else "blocks.0.attn.W_K"
    Hkv = _need(shapes, kv, "n_kv_heads", "d_model", "d_head")[0]
    w_in = _need(shapes, "blocks.0.mlp.W_in", "d_model", "d_mlp", optional=True)
    pos = _need(shapes, "pos_embed.W_pos", "n_ctx", "d_model", optional=True)
    source = {"d_vocab": "embed.W_E", "d_model": "embed.W_E", "n_heads": "blocks.0.attn.W_Q",
              "d_head": "blocks.0.attn.W_Q", "n_kv_heads": kv, "d_mlp": "blocks.0.mlp.W_in",
              "n_ctx": "pos_embed.W_pos"}
    return Dims(V, D, 0, H, Hkv, Dh, w_in and w_in[1], pos and pos[0], source)


TRANSFORMER_LENS = Layout(
    name="transformer_lens", marker="embed.W_E", prefixes=(), needs_n_heads=False, norm="layernorm",
    dims=_tl_dims,
    roles={
        "W_E": Role("embed.W_E", lambda d: (d.d_vocab, d.d_model), _same),
        "W_pos": Role("pos_embed.W_pos", lambda d: (d.n_ctx, d.d_model), _same, optional=True),
        "W_U": Role("unembed.W_U", lambda d: (d.d_model, d.d_vocab), _same),
        "W_Q": Role("blocks.{l}.attn.W_Q", lambda d: (d.n_heads, d.d_model, d.d_head), _same),
        "W_K": Role("blocks.{l}.attn.W_K", lambda d: (d.n_kv_heads, d.d_model, d.d_head), _same),
        "W_V": Role("blocks.{l}.attn.W_V", lambda d: (d.n_kv_heads, d.d_model, d.d_head), _same),
        "W_O": Role("blocks.{l}.attn.W_O", lambda d: (d.n_heads, d.d_head, d.d_model), _same),
        "W_in": Role("blocks.{l}.mlp.W_in", lambda d: (d.d_model, d.d_mlp), _same, optional=True),
        "W_gate": Role("blocks.{l}.mlp.W_gate", lambda d: (d.d_model, d.d_mlp), _same, optional=True),
        "W_out": Role("blocks.{l}.mlp.W_out", lambda d: (d.d_mlp, d.d_model), _same, optional=True),
        "ln_attn": Role("blocks.{l}.ln1.w", lambda d: (d.d_model,), _same, optional=True),
        "ln_mlp": Role("blocks.{l}.ln2.w", lambda d: (d.d_model,), _same, optional=True),
        "ln_final": Role("ln_final.w", lambda d: (d.d_model,), _same, optional=True),
    },
    ignore=(r"blocks\.\d+\.attn\._?b_[QKVO]", r"blocks\.\d+\.mlp\.b_(in|out|gate)", r"unembed\.b_U",
            r"blocks\.\d+\.ln[12]\.b", r"ln_final\.b", r"blocks\.\d+\.attn\.(IGNORE|mask)",
            r"blocks\.\d+\.attn\.rotary_(sin|cos)"),
)


def _gpt2_dims(shapes: dict[str, tuple], n_heads: int | None) -> Dims:
    V, D = _need(shapes, "wte.weight", "d_vocab", "d_model")
    H, Dh = _split_heads(D, n_heads, "h.0.attn.c_attn.weight", " for each of Q, K and V")
    d_mlp = _need(shapes, "h.0.mlp.c_fc.weight", "d_model", "d_mlp")[1]
    pos = _need(shapes, "wpe.weight", "n_ctx", "d_model", optional=True)
    source = {"d_vocab": "wte.weight", "d_model": "wte.weight", "d_head": "wte.weight",
              "d_mlp": "h.0.mlp.c_fc.weight", "n_ctx": "wpe.weight"}
    return Dims(V, D, 0, H, H, Dh, d_mlp, pos and pos[0], source)


HF_GPT2 = Layout(
    name="hf_gpt2", marker="wte.weight", prefixes=("transformer.",), norm="layernorm", dims=_gpt2_dims,
    tied="W_E", notes="Conv1D weights are stored (in, out); the fused c_attn holds Q, K, V side by side.",
    roles={
        "W_E": Role("wte.weight", lambda d: (d.d_vocab, d.d_model), _same),
        "W_pos": Role("wpe.weight", lambda d: (d.n_ctx, d.d_model), _same, optional=True),
        "W_U": Role("lm_head.weight", lambda d: (d.d_vocab, d.d_model), _T, optional=True),
        "W_Q": Role("h.{l}.attn.c_attn.weight", lambda d: (d.d_model, 3 * d.d_model), _gpt2_qkv(0)),
        "W_K": Role("h.{l}.attn.c_attn.weight", lambda d: (d.d_model, 3 * d.d_model), _gpt2_qkv(1)),
        "W_V": Role("h.{l}.attn.c_attn.weight", lambda d: (d.d_model, 3 * d.d_model), _gpt2_qkv(2)),
        "W_O": Role("h.{l}.attn.c_proj.weight", lambda d: (d.d_model, d.d_model), _heads_out),
        "W_in": Role("h.{l}.mlp.c_fc.weight", lambda d: (d.d_model, d.d_mlp), _same),
        "W_out": Role("h.{l}.mlp.c_proj.weight", lambda d: (d.d_mlp, d.d_model), _same),
        "ln_attn": Role("h.{l}.ln_1.weight", lambda d: (d.d_model,), _same),
        "ln_mlp": Role("h.{l}.ln_2.weight", lambda d: (d.d_model,), _same),
        "ln_final": Role("ln_f.weight", lambda d: (d.d_model,), _same),
    },
    ignore=(r"h\.\d+\.attn\.c_attn\.bias", r"h\.\d+\.attn\.c_proj\.bias", r"h\.\d+\.mlp\.c_(fc|proj)\.bias",
            r"h\.\d+\.ln_[12]\.bias", r"ln_f\.bias", r"h\.\d+\.attn\.(bias|masked_bias)"),
)


def _bert_dims(shapes: dict[str, tuple], n_heads: int | None) -> Dims:
    V, D = _need(shapes, "embeddings.word_embeddings.weight", "d_vocab", "d_model")
    q = "encoder.layer.0.attention.self.query.weight"
    H, Dh = _split_heads(_need(shapes, q, "n_heads * d_head", "d_model")[0], n_heads, q)
    mlp = "encoder.layer.0.intermediate.dense.weight"
    d_mlp = _need(shapes, mlp, "d_mlp", "d_model")[0]
    pos = _need(shapes, "embeddings.position_embeddings.weight", "n_ctx", "d_model", optional=True)
    source = {"d_vocab": "embeddings.word_embeddings.weight", "d_model": "embeddings.word_embeddings.weight",
              "d_head": q, "d_mlp": mlp, "n_ctx": "embeddings.position_embeddings.weight"}
    return Dims(V, D, 0, H, H, Dh, d_mlp, pos and pos[0], source)


_ENC = "encoder.layer.{l}."
HF_BERT = Layout(
    name="hf_bert", marker="embeddings.word_embeddings.weight", prefixes=("bert.",), norm="layernorm",
    post_ln=True, dims=_bert_dims, tied="W_E",
    notes="nn.Linear weights are stored (out, in); the word embeddings are the unembedding.",
    roles={
        "W_E": Role("embeddings.word_embeddings.weight", lambda d: (d.d_vocab, d.d_model), _same),
        "W_pos": Role("embeddings.position_embeddings.weight", lambda d: (d.n_ctx, d.d_model), _same,
                      optional=True),
        "W_Q": Role(_ENC + "attention.self.query.weight", lambda d: (d.n_heads * d.d_head, d.d_model),
                    _nn_linear_heads_in(_H)),
        "W_K": Role(_ENC + "attention.self.key.weight", lambda d: (d.n_heads * d.d_head, d.d_model),
                    _nn_linear_heads_in(_H)),
        "W_V": Role(_ENC + "attention.self.value.weight", lambda d: (d.n_heads * d.d_head, d.d_model),
                    _nn_linear_heads_in(_H)),
        "W_O": Role(_ENC + "attention.output.dense.weight", lambda d: (d.d_model, d.n_heads * d.d_head),
                    lambda t, d: _heads_out(t.mT, d)),
        "W_in": Role(_ENC + "intermediate.dense.weight", lambda d: (d.d_mlp, d.d_model), _T),
        "W_out": Role(_ENC + "output.dense.weight", lambda d: (d.d_model, d.d_mlp), _T),
        # post-LN: the stream read by layer l is the output of the norm before it
        "ln_embed": Role("embeddings.LayerNorm.weight", lambda d: (d.d_model,), _same),
        "ln_mlp": Role(_ENC + "attention.output.LayerNorm.weight", lambda d: (d.d_model,), _same),
        "ln_out": Role(_ENC + "output.LayerNorm.weight", lambda d: (d.d_model,), _same),
    },
    ignore=(r"embeddings\.token_type_embeddings\.weight", r"embeddings\.position_ids",
            r"embeddings\.LayerNorm\.bias", r"encoder\.layer\.\d+\..*\.bias", r"pooler\..*", r"cls\..*"),
)


def _llama_dims(shapes: dict[str, tuple], n_heads: int | None) -> Dims:
    V, D = _need(shapes, "model.embed_tokens.weight", "d_vocab", "d_model")
    q, k = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    H, Dh = _split_heads(_need(shapes, q, "n_heads * d_head", "d_model")[0], n_heads, q)
    rows = _need(shapes, k, "n_kv_heads * d_head", "d_model")[0]
    if rows % Dh:
        raise LayoutError(f"key {k!r} has {rows} rows: not a whole number of key/value heads of d_head={Dh}")
    mlp = "model.layers.0.mlp.up_proj.weight"
    d_mlp = _need(shapes, mlp, "d_mlp", "d_model")[0]
    source = {"d_vocab": "model.embed_tokens.weight", "d_model": "model.embed_tokens.weight", "d_head": q,
              "n_kv_heads": k, "d_mlp": mlp}
    return Dims(V, D, 0, H, rows // Dh, Dh, d_mlp, None, source)


_LL = "model.layers.{l}."
HF_LLAMA = Layout(
    name="hf_llama", marker="model.embed_tokens.weight", prefixes=(), norm="rmsnorm", dims=_llama_dims,
    tied="W_E", notes="RMSNorm (scales, no centring); rotary positions are not part of the weights.",
    roles={
        "W_E": Role("model.embed_tokens.weight", lambda d: (d.d_vocab, d.d_model), _same),
        "W_U": Role("lm_head.weight", lambda d: (d.d_vocab, d.d_model), _T, optional=True),
        "W_Q": Role(_LL + "self_attn.q_proj.weight", lambda d: (d.n_heads * d.d_head, d.d_model),
                    _nn_linear_heads_in(_H)),
        "W_K": Role(_LL + "self_attn.k_proj.weight", lambda d: (d.n_kv_heads * d.d_head, d.d_model),
                    _nn_linear_heads_in(_Hkv)),
        "W_V": Role(_LL + "self_attn.v_proj.weight", lambda d: (d.n_kv_heads * d.d_head, d.d_model),
                    _nn_linear_heads_in(_Hkv)),
        "W_O": Role(_LL + "self_attn.o_proj.weight", lambda d: (d.d_model, d.n_heads * d.d_head),
                    lambda t, d: _heads_out(t.mT, d)),
        "W_in": Role(_LL + "mlp.up_proj.weight", lambda d: (d.d_mlp, d.d_model), _T),
        "W_gate": Role(_LL + "mlp.gate_proj.weight", lambda d: (d.d_mlp, d.d_model), _T),
        "W_out": Role(_LL + "mlp.down_proj.weight", lambda d: (d.d_model, d.d_mlp), _T),
        "ln_attn": Role(_LL + "input_layernorm.weight", lambda d: (d.d_model,), _same),
        "ln_mlp": Role(_LL + "post_attention_layernorm.weight", lambda d: (d.d_model,), _same),
        "ln_final": Role("model.norm.weight", lambda d: (d.d_model,), _same),
    },
    ignore=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"model\.rotary_emb\.inv_freq",
            r"model\.layers\.\d+\.self_attn\.[qkvo]_proj\.bias"),
)

BY_NAME = {x.name: x for x in (TRANSFORMER_LENS, HF_GPT2, HF_BERT, HF_LLAMA)}


# ---- reading a state dict against a layout ------------------------------------------------
def _strip(key: str, layout: Layout) -> str:
    for p in layout.prefixes:
        if key.startswith(p):
            return key[len(p):]
    return key


def guess(keys: list[str]) -> str:
    """The layout whose marker key is present (after its optional prefix)."""
    for layout in BY_NAME.values():
        if any(_strip(k, layout) == layout.marker for k in keys):
            return layout.name
    sample = ", ".join(sorted(keys)[:6])
    raise LayoutError(f"cannot tell the layout from the keys ({len(keys)} keys, e.g. {sample}); pass "
                      f"layout= one of {', '.join(LAYOUTS)}")


@dataclass
class Reading:
    """A state dict checked against a layout: dims, where each weight lives, what was ignored."""

    layout: Layout
    dims: Dims
    keys: dict[str, list[str]]  # canonical role -> original keys (one, or one per layer)
    ignored: list[str]
    shapes: dict[str, tuple] = field(default_factory=dict, repr=False)  # what was checked
    n_heads: int | None = None

    def __reduce__(self):
        # layouts hold conversion functions, some of them closures: a reading pickles as the
        # check that made it, which rebuilds the same reading from the shapes
        return check, (self.shapes, self.layout.name, self.n_heads)


def check(shapes: dict[str, tuple], layout_name: str, n_heads: int | None = None) -> Reading:
    """Check every key and shape of a state dict (given as ``key -> shape``) against a layout."""
    if layout_name not in BY_NAME:
        raise LayoutError(f"unknown layout {layout_name!r}; choose one of {', '.join(LAYOUTS)}")
    layout = BY_NAME[layout_name]
    original = {}
    for k in shapes:
        original.setdefault(_strip(k, layout), k)
    stripped = {_strip(k, layout): tuple(s) for k, s in shapes.items()}
    prefix = next((p for p in layout.prefixes if any(k.startswith(p) for k in shapes)), "")
    if layout.marker not in stripped:
        raise LayoutError(f"layout {layout.name!r} expects key {prefix + layout.marker!r}, which is missing")
    marker_key = original[layout.marker]
    prefix = marker_key[: len(marker_key) - len(layout.marker)]
    try:
        d = layout.dims(stripped, n_heads)
    except LayoutError as e:  # the dims readers name keys without the prefix: name them in full
        named = re.sub(r"'([\w.]+)'", lambda m: repr(original.get(m.group(1), prefix + m.group(1))), str(e))
        raise LayoutError(f"layout {layout.name!r}: {named}") from None
    if n_heads is not None and not layout.needs_n_heads and n_heads != d.n_heads:  # (not ignored)
        key = original.get(d.source["n_heads"], prefix + d.source["n_heads"])
        raise LayoutError(f"layout {layout.name!r}: n_heads={n_heads} was given, but {key!r} "
                          f"{shapes[key]} holds {d.n_heads} heads")
    if layout.name == "transformer_lens" and _grouped_kv(stripped):
        roles = dict(layout.roles)
        for r in ("W_K", "W_V"):
            roles[r] = Role(roles[r].key.replace(".W_", "._W_"), roles[r].shape, roles[r].convert)
        layout = Layout(**{**layout.__dict__, "roles": roles})
    # the layer count is read off every per-layer weight, so that a layer missing one key is
    # reported as that missing key (not as the layer's other keys being unknown)
    per_layer = [spec.key for spec in layout.roles.values() if "{l}" in spec.key]
    n_layers = max(_layer_count(list(stripped), template) for template in per_layer)
    if n_layers == 0:
        raise LayoutError(f"layout {layout.name!r}: no attention layers found")
    d = dataclasses.replace(d, n_layers=n_layers)
    kv_key = prefix + layout.roles["W_K"].key.format(l=0)
    if d.n_kv_heads <= 0 or d.n_heads % d.n_kv_heads:
        raise LayoutError(f"layout {layout.name!r}: key {kv_key!r} has {d.n_kv_heads} key/value heads, "
                          f"which do not divide the n_heads={d.n_heads} query heads; the model's dims: "
                          f"{d.describe(lambda k: original.get(k, prefix + k))}")
    used: dict[str, list[str]] = {}
    for role, spec in layout.roles.items():
        per_layer = "{l}" in spec.key
        names = [spec.key.format(l=i) for i in range(d.n_layers)] if per_layer else [spec.key]
        present = [n in stripped for n in names]
        if not any(present) and spec.optional:
            continue
        if not all(present):
            missing = names[present.index(False)]
            raise LayoutError(f"layout {layout.name!r}: missing key {prefix + missing!r} "
                              f"(expected shape {spec.shape(d)}) for {role}")
        for n in names:
            if stripped[n] != spec.shape(d):
                read = d.describe(lambda k: original.get(k, prefix + k))
                raise LayoutError(f"key {original[n]!r} has shape {stripped[n]}, expected {spec.shape(d)} "
                                  f"for {role}, from the model's dims {read}")
        used[role] = [original[n] for n in names]
    known = {k for names in used.values() for k in names}
    ignore = re.compile("|".join(f"(?:{p})" for p in layout.ignore))
    ignored, unknown = [], []
    for k in shapes:
        if k in known:
            continue
        (ignored if ignore.fullmatch(_strip(k, layout)) else unknown).append(k)
    if unknown:
        unknown.sort()
        more = " ..." if len(unknown) > 5 else ""
        raise LayoutError(f"layout {layout.name!r} does not know key(s) {', '.join(unknown[:5])}{more} "
                          f"(the first has shape {tuple(shapes[unknown[0]])}); nothing is skipped "
                          "silently: remove them or pick another layout")
    return Reading(layout, d, used, sorted(ignored), dict(shapes), n_heads)


def convert(reading: Reading, role: str, get: Callable[[str], torch.Tensor]) -> torch.Tensor | None:
    """The canonical tensor ``role`` (stacked over layers where per-layer), or None if absent."""
    if role not in reading.keys:
        return None
    spec = reading.layout.roles[role]
    parts = [spec.convert(get(k), reading.dims) for k in reading.keys[role]]
    return torch.stack(parts) if "{l}" in spec.key else parts[0]
