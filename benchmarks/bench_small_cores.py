"""Where small dense decompositions run fastest: on the GPU, or round-tripped through the
CPU (DESIGN principle 8; sets ``lazymat.linalg.SMALL_CORE``).

Run on a machine with a GPU: ``python benchmarks/bench_small_cores.py``.
"""

from __future__ import annotations

import torch
from _harness import compare, device_name, fmt_time


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to compare")
        return
    dev = "cuda"
    g = torch.Generator().manual_seed(1)
    ops = {
        "eigvals": torch.linalg.eigvals,
        "svdvals": torch.linalg.svdvals,
        "svd": lambda c: torch.linalg.svd(c, full_matrices=False),
        "qr": torch.linalg.qr,
    }
    print(f"float32 cores on {device_name(dev)}: GPU time / CPU round-trip time (<1: GPU wins)")
    print(f"{'batch':>5} {'r':>5} " + " ".join(f"{k:>22}" for k in ops))
    for batch in (1, 144):
        for r in (16, 64, 128, 256, 512, 1024):
            if batch * r * r > 144 * 256 * 256:
                continue
            cores = torch.randn(batch, r, r, generator=g).to(dev)
            cells = []
            for fn in ops.values():
                def cpu(fn=fn, cores=cores):
                    out = fn(cores.cpu())
                    return [o.to(dev) for o in out] if isinstance(out, tuple) else out.to(dev)

                fns = {"gpu": lambda fn=fn, cores=cores: fn(cores), "cpu": cpu}
                t = compare(fns, dev, rounds=3, min_time=0)
                cells.append(f"{fmt_time(t['gpu'])}/{fmt_time(t['cpu'])} {t['gpu'] / t['cpu']:.2f}")
            print(f"{batch:>5} {r:>5} " + " ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
