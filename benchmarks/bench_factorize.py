"""Data-aware low-rank factorization of one linear layer: lazymat.factorize vs Composer's
``factorize_matrix`` (when ``mosaicml`` is installed), time and true nmse side by side.

``python benchmarks/bench_factorize.py [--size 4096] [--samples 2] [--device cuda]``:
a ``size x size`` layer with a bias, ``samples * size`` correlated inputs, rank 0.25.
Composer is loaded from its ``factorize_core`` module only (``pip install --no-deps mosaicml``).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
from _harness import device_name, fmt_time, sync

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lazymat as lm  # noqa: E402
from lazymat.factorize import factorize_matrix  # noqa: E402


def load_composer_core():
    spec = importlib.util.find_spec("composer")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = next(iter(spec.submodule_search_locations))
    module_spec = importlib.util.spec_from_file_location(
        "composer_factorize_core", f"{root}/algorithms/factorize/factorize_core.py"
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def true_nmse(Y, X, Wa, Wb, bias) -> float:
    Y_hat = X @ Wa if Wb is None else (X @ Wa) @ Wb
    if bias is not None:
        Y_hat = Y_hat + bias
    return float(((Y - Y_hat) ** 2).mean() / Y.var())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=2, help="inputs per input feature")
    parser.add_argument("--rank", type=float, default=0.25)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    dev, d = args.device, args.size
    g = torch.Generator().manual_seed(0)
    # activations with a decaying spectrum (as real ones have), a dense layer and a bias
    mix = torch.randn(d, d, generator=g) * torch.logspace(0, -2, d)[:, None]
    X = (torch.randn(args.samples * d, d, generator=g) @ mix).to(dev)
    W = (torch.randn(d, d, generator=g) / d**0.5).to(dev)
    bias = torch.randn(d, generator=g).to(dev)
    Y = X @ W + bias

    routes = {"lazymat": lambda: factorize_matrix(X, Y, W, bias=bias, rank=args.rank)}
    core = load_composer_core()
    if core is not None:
        routes["composer"] = lambda: core.factorize_matrix(X, Y, W, bias=bias, rank=args.rank)
    times: dict[str, list[float]] = {name: [] for name in routes}
    results = {}
    for _ in range(args.repeat):  # round-robin, so drifts hit both routes alike
        for name, fn in routes.items():
            sync(dev)
            t = time.perf_counter()
            results[name] = fn()
            sync(dev)
            times[name].append(time.perf_counter() - t)

    k = results["lazymat"].rank
    print(f"{d}x{d} layer + bias, {X.shape[0]} inputs, rank {args.rank} -> {k}, float32, "
          f"{device_name(dev)}, median of {args.repeat}")
    print(f"{'route':<26} {'time':>10} {'true nmse':>10} {'reported':>10}")
    for name, sol in results.items():
        print(f"{name:<26} {fmt_time(statistics.median(times[name])):>10} "
              f"{true_nmse(Y, X, sol.Wa, sol.Wb, sol.bias):>10.4f} {sol.nmse:>10.4f}")
    best = lm.linalg.truncate(lm.lazy(W), k)  # data-free best rank k: ignores the inputs
    print(f"{'truncated SVD (data-free)':<26} {'':>10} "
          f"{true_nmse(Y, X, best.to_dense(), None, bias):>10.4f}")
    if "composer" in results:
        ratio = statistics.median(times["composer"]) / statistics.median(times["lazymat"])
        print(f"composer time / lazymat time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
