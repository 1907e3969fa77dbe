"""factorize_model(sequential=True) against sequential=False on random MLPs: how often, and by
how much, the sequential fit ends closer to the original model (end-to-end nmse in float64, on
the fit batch and on a held-out batch of the same distribution). Not a theorem, so measured.

    PYTHONPATH=$PWD python benchmarks/factorize_sequential_fz30.py [--models 40]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from lazymat.factorize import factorize_model


def end_to_end(original: torch.nn.Module, new: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        y = copy.deepcopy(original).double()(x.double())
        y_hat = copy.deepcopy(new).double()(x.double())
    return float(((y - y_hat) ** 2).mean() / y.var())


def random_mlp(seed: int) -> tuple[torch.nn.Sequential, torch.Tensor, torch.Tensor, str]:
    g = torch.Generator().manual_seed(seed)
    depth, width = int(torch.randint(2, 7, (1,), generator=g)), int(torch.randint(8, 49, (1,), generator=g))
    act = (torch.nn.ReLU, torch.nn.Tanh, torch.nn.GELU)[seed % 3]
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), act()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 8))
    n = 8 * width
    fit, held = torch.randn(n, width, generator=g), torch.randn(n, width, generator=g)
    return model, fit, held, f"depth {depth} width {width} {act.__name__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=40)
    parser.add_argument("--ranks", type=float, nargs="+", default=[0.25, 0.5])
    args = parser.parse_args()
    print(f"{args.models} random MLPs (depth 2-6, width 8-48, ReLU/Tanh/GELU, 8 x width samples); "
          f"torch {torch.__version__}")
    for rank in args.ranks:
        fit_ratio, held_ratio, exact = [], [], 0
        for seed in range(args.models):
            model, fit, held, _ = random_mlp(seed)
            seq = factorize_model(model, fit, rank, inplace=False, sequential=True).model
            alone = factorize_model(model, fit, rank, inplace=False, sequential=False).model
            if end_to_end(model, alone, fit) == 0:  # nothing split (no rank saves) or an exact fit
                exact += 1
                continue
            fit_ratio.append(end_to_end(model, seq, fit) / end_to_end(model, alone, fit))
            held_ratio.append(end_to_end(model, seq, held) / end_to_end(model, alone, held))
        for label, ratios in (("fit batch", fit_ratio), ("held-out batch", held_ratio)):
            print(f"rank {rank}, {label}: end-to-end nmse sequential / original-inputs: median "
                  f"{statistics.median(ratios):.3f}, best {min(ratios):.3f}, worst {max(ratios):.3f}; "
                  f"sequential <= original in {sum(r <= 1 for r in ratios)} of {len(ratios)}"
                  f"{f' ({exact} more left unchanged or fitted exactly)' if exact else ''}")


if __name__ == "__main__":
    main()
