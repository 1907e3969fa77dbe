"""Where weights come from: a state dict in memory, a safetensors file (memory-mapped), a .pt file.

A source is ``(shapes, get)``: the shape of every key, known without reading any tensor, and a
function reading one tensor. Layouts are checked on the shapes; tensors are read on demand.
"""

from __future__ import annotations

import json
import pathlib
import pickle
from collections.abc import Callable, Mapping

import torch

from .weights import WeightTypeError

Source = tuple[dict[str, tuple[int, ...]], Callable[[str], torch.Tensor]]


def from_mapping(sd: Mapping[str, torch.Tensor]) -> Source:
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightTypeError(
            f"state dict values must be tensors; {bad[0]!r} is a {type(sd[bad[0]]).__name__}")
    return {k: tuple(v.shape) for k, v in sd.items()}, sd.__getitem__


def open_safetensors(path: pathlib.Path) -> Source:
    """Keys and shapes from the header; each tensor is read (memory-mapped) when asked for."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise ImportError(f"reading {path} needs safetensors: pip install 'lazymat[real]'") from None
    from safetensors import SafetensorError

    try:
        handle = safe_open(str(path), framework="pt")
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file: {_first_line(e)}") from e
    return shapes, SafetensorsReader(path, handle)


class SafetensorsReader:
    """Reads one tensor of a safetensors file (memory-mapped) by key. Pickles as its path, so
    that a ``Circuits`` loaded lazily can go to another process; the file is reopened there."""

    def __init__(self, path: pathlib.Path, handle=None):
        self.path, self._handle = path, handle

    def __call__(self, key: str) -> torch.Tensor:
        if self._handle is None:
            from safetensors import safe_open

            self._handle = safe_open(str(self.path), framework="pt")
        return self._handle.get_tensor(key)

    def __getstate__(self) -> dict:
        return {"path": self.path, "_handle": None}


def open_torch(path: pathlib.Path) -> Source:
    """A ``torch.save``d state dict (or a dict with one under ``"state_dict"``), memory-mapped.
    A file torch cannot read, or that holds anything else, is a ValueError naming the path."""
    try:
        sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as e:  # what torch.load raises on bad bytes
        raise ValueError(f"{path} is not a readable PyTorch file: {_first_line(e)}") from e
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not a state dict")
    try:
        return from_mapping(sd)
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def open_path(path: str | pathlib.Path) -> tuple[Source, pathlib.Path]:
    """Open a weights file, or the weights file of a model directory; returns the file used."""
    p = pathlib.Path(path)
    if p.is_dir():
        found = [p / n for n in ("model.safetensors", "pytorch_model.bin", "model.pt") if (p / n).exists()]
        if not found:
            raise FileNotFoundError(f"{p} holds no model.safetensors, pytorch_model.bin or model.pt")
        p = found[0]
    if not p.exists():
        raise FileNotFoundError(f"no weights file at {p}")
    if p.suffix == ".safetensors":
        return open_safetensors(p), p
    if p.suffix in (".pt", ".pth", ".bin"):
        return open_torch(p), p
    raise ValueError(f"{p}: expected a .safetensors, .pt, .pth or .bin file")


def config_n_heads(weights_file: pathlib.Path, strict: bool = True) -> int | None:
    """``n_heads`` from a Hugging Face ``config.json`` next to the weights, if there is one. A
    file that is not JSON raises (``strict``) or counts as none (``n_heads`` was given)."""
    cfg = weights_file.parent / "config.json"
    if not cfg.exists():
        return None
    try:
        data = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        if not strict:
            return None
        raise ValueError(f"{cfg} is not valid JSON ({e}); fix it, or pass n_heads= to skip it") from None
    if not isinstance(data, dict):
        return None
    for key in ("num_attention_heads", "n_head", "n_heads"):
        if isinstance(data.get(key), int):
            return data[key]
    return None


def read_vocab(weights_file: pathlib.Path) -> list[str] | None:
    """Token strings from a ``vocab.txt`` (one per line, BERT's WordPiece) next to the weights."""
    vocab = weights_file.parent / "vocab.txt"
    if not vocab.exists():
        return None
    lines = vocab.read_text(encoding="utf-8").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines
