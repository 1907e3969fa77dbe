"""Result objects of the circuit analyses: per-head ``[L, H]`` and per-pair ``[L, H, L, H]`` scores.

The numbers are a plain tensor (``.scores``); the object adds readable views: ``.top(n)``
lines, ``.to_dataframe()`` (pandas, when installed) and ``.plot()`` (a matplotlib heatmap
with layer and head labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..indexing import integer_scalar


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


@dataclass
class Scores:
    """``scores`` is ``[L, H]`` (one per head) or ``[L, H, L, H]`` (earlier head, later head)."""

    scores: torch.Tensor
    name: str
    valid: torch.Tensor | None = None  # bool mask of meaningful entries (earlier-to-later pairs)
    notes: list[str] = field(default_factory=list)

    @property
    def pairwise(self) -> bool:
        return self.scores.ndim == 4

    def _values(self, what: str) -> torch.Tensor:
        """The scores on the CPU, for reading, in float32 or float64 (16-bit ones widened, as
        numpy has no bfloat16; float64 ones kept: rounding them would tie and reorder scores
        that differ past float32's digits). Scores on the meta device (the analysis of weights
        that are shapes only) have none, which is said rather than a torch copy error."""
        if self.scores.device.type == "meta":
            raise ValueError(f"{what}: the scores ({self.name}, {tuple(self.scores.shape)}) are on the meta "
                             "device (computed from shape-only weights): there are no values to read; "
                             "load the weights on a real device (device='cpu' or 'cuda')")
        values = self.scores.detach().cpu()
        return values if values.dtype == torch.float64 else values.float()

    def top(self, n: int = 5, largest: bool = True) -> list[str]:
        """The ``n`` strongest heads or pairs (all of them when fewer have a score), one readable
        line each, strongest first; equal scores in head order (the earlier head first). Only
        valid entries with a score count: a NaN (a head whose circuit is zero scores 0 / 0) is
        no score, and ``torch.topk`` would rank it above every number."""
        number = None if isinstance(n, bool) else integer_scalar(n)  # (numpy ints too)
        if number is None or number < 0:
            raise ValueError(f"top: n must be a non-negative int, got {n!r}")
        flat = self._values("top").flatten()
        scored = ~flat.isnan()
        if self.valid is not None:
            scored &= self.valid.cpu().flatten()
        candidates = scored.nonzero().flatten()
        # a stable sort: ties keep head order (torch.topk orders them as it likes)
        order = torch.sort(flat[candidates], descending=largest, stable=True).indices[:number]
        idx = candidates[order].tolist()
        lines = []
        for i in idx:
            coords = torch.unravel_index(torch.tensor(i), self.scores.shape)
            c = [int(x) for x in coords]
            where = (f"{head_name(c[0], c[1])} -> {head_name(c[2], c[3])}" if self.pairwise
                     else head_name(c[0], c[1]))
            lines.append(f"{where}: {flat[i].item():.4f}")
        return lines

    def to_dataframe(self):
        """A long-format pandas DataFrame: one row per head (or pair) with its score."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe needs pandas: pip install pandas") from None
        s = self._values("to_dataframe")
        grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in s.shape], indexing="ij"), -1)
        grid = grid.reshape(-1, s.ndim).numpy()
        cols = ["layer", "head"] if not self.pairwise else ["layer_a", "head_a", "layer_b", "head_b"]
        df = pd.DataFrame(grid, columns=cols)
        df[self.name] = s.flatten().numpy()
        if self.valid is not None:
            df = df[self.valid.cpu().flatten().numpy()].reset_index(drop=True)
        return df

    def plot(self, path: str | None = None, title: str | None = None):
        """A heatmap: layers x heads, or (earlier head) x (later head) with layer blocks marked.
        Saved to ``path`` when given; returns the matplotlib figure."""
        try:
            import matplotlib

            if path is not None:
                matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("plot needs matplotlib: pip install 'lazymat[draw]'") from None
        s = self._values("plot")
        L, H = s.shape[:2]
        if self.pairwise:
            data = s.reshape(L * H, L * H).clone()
            if self.valid is not None:
                data[~self.valid.cpu().reshape(L * H, L * H)] = float("nan")
            fig, ax = plt.subplots(figsize=(9, 8))
        else:
            data = s
            fig, ax = plt.subplots(figsize=(1.0 + 0.5 * H, 1.0 + 0.45 * L))
        im = ax.imshow(data.numpy(), cmap="viridis", interpolation="nearest", aspect="auto")
        fig.colorbar(im, ax=ax, label=self.name)
        if self.pairwise:
            ticks = [i * H + (H - 1) / 2 for i in range(L)]
            ax.set_xticks(ticks, [f"L{i}" for i in range(L)])
            ax.set_yticks(ticks, [f"L{i}" for i in range(L)])
            for b in range(1, L):
                ax.axhline(b * H - 0.5, color="white", lw=0.4)
                ax.axvline(b * H - 0.5, color="white", lw=0.4)
            ax.set_xlabel(f"later head (layer blocks of {H} heads)")
            ax.set_ylabel(f"earlier head (layer blocks of {H} heads)")
        else:
            ax.set_xticks(range(H), [str(h) for h in range(H)])
            ax.set_yticks(range(L), [str(i) for i in range(L)])
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
        ax.set_title(title or self.name)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig

    def __repr__(self) -> str:
        kind = "pairs" if self.pairwise else "heads"
        if self.scores.device.type == "meta":
            shape = tuple(self.scores.shape)
            return f"Scores({self.name}, {kind} {shape} on the meta device: shapes only, no values)"
        lines = self.top(5)
        if not lines:  # (a one-layer model has no earlier-to-later pair)
            return f"Scores({self.name}, {kind} {tuple(self.scores.shape)}; no valid entry has a score)"
        body = "\n  ".join(lines)
        return f"Scores({self.name}, {kind} {tuple(self.scores.shape)}; strongest:\n  {body})"


@dataclass
class Directions:
    """Top singular directions of a circuit, projected onto the vocabulary.

    ``values (k,)`` singular values; ``vocab_scores (k, d_vocab)`` each direction read by a
    vocabulary matrix; ``top_ids (k, top)`` and ``top_tokens`` the tokens scoring highest."""

    name: str
    values: torch.Tensor
    vocab_scores: torch.Tensor
    top_ids: torch.Tensor
    top_tokens: list[list[str]]

    def __repr__(self) -> str:
        lines = [f"Directions({self.name})"]
        for i, (v, toks) in enumerate(zip(self.values.tolist(), self.top_tokens, strict=True)):
            lines.append(f"  {i}: sigma={v:.4g}  " + " ".join(repr(t) for t in toks))
        return "\n".join(lines)
