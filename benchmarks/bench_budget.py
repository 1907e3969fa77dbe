"""All-pairs K-composition under a memory budget: peak memory, time, predicted vs measured peak.

``lm.linalg.matrix_norm(OV[:, :, None, None] @ QK.mT)`` over every pair of heads (random
weights with a preset's shapes), the route a new user writes. Each configuration runs in a
fresh process: unbudgeted, then under ``--budget``. Memory is the growth of peak RSS over the
run (on the CPU: the peak is reset through ``/proc/self/clear_refs`` just before it; tensors of
these sizes are mmapped by malloc and returned at once, so RSS follows them) or
``torch.cuda.max_memory_allocated`` on a GPU; the prediction is the executor's own
(:func:`lazymat.network.slice_network`). Times are single runs (the work is seconds long).

Run: ``python benchmarks/bench_budget.py`` (gpt2-medium under 2 GiB, ~1 min on 2 cores),
``--quick`` (gpt2-small under 300 MiB, seconds), ``--device cuda --preset gpt2-xl --budget 8GiB``
for the GPU acceptance figure. The last line checks issue 11's acceptance: the budgeted run's
memory growth within the budget (and, on a GPU, its time within 1.3x of the unbudgeted run's);
a full run that misses it exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from lazymat.settings import parse_bytes as lm_parse_bytes

_RUN = r"""
import json, sys, time, torch
import lazymat as lm
from lazymat import linalg as LA
from lazymat.network import slice_network
from lazymat.presets import PRESETS

preset, device, budget = sys.argv[1], sys.argv[2], sys.argv[3]
s = PRESETS[preset]
g = torch.Generator().manual_seed(0)

def w(*shape):
    return (torch.randn(*shape, generator=g) * shape[-2] ** -0.5).to(device)

L, H, D, Dh = s.n_layers, s.n_heads, s.d_model, s.d_head
V, O, Q, K = (lm.lazy(w(L, H, *shape), name=n) for n, shape in
              [("W_V", (D, Dh)), ("W_O", (Dh, D)), ("W_Q", (D, Dh)), ("W_K", (D, Dh))])
OV, QK = V @ O, Q @ K.mT
X = OV[:, :, None, None] @ QK.mT
budget = None if budget == "none" else lm.settings.parse_bytes(budget)
net = LA.norms.fro_route(X)[1]
# the executor's own figure, under the budget it slices to (on a GPU, less cuBLAS's workspace)
cost = slice_network(net, lm.settings.memory_budget(device, budget if budget is not None else 2**62))

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

if device == "cpu":
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
else:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
t = time.perf_counter()
with lm.config(memory_budget=budget if budget is not None else 2**62):
    out = LA.matrix_norm(X)
if device != "cpu":
    torch.cuda.synchronize()
seconds = time.perf_counter() - t
grown = status("VmHWM") - before if device == "cpu" else torch.cuda.max_memory_allocated() - before
print(json.dumps({"seconds": seconds, "measured": grown, "predicted": cost.peak_bytes,
                  "slices": cost.slices,
                  "dims": [[kind, size, dict(cost.blocks)[c]] for c, size, kind in cost.dims],
                  "flops": cost.flops, "unsliced_flops": net.flops, "pairs": out.numel(),
                  "checksum": float(out.double().sum())}))
"""


def run(preset: str, device: str, budget: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _RUN, preset, device, budget],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2-medium")
    ap.add_argument("--budget", default="2GiB")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="gpt2-small under 300 MiB")
    args = ap.parse_args()
    if args.quick:
        args.preset, args.budget = "gpt2-small", "300MiB"
    free = run(args.preset, args.device, "none")
    held = run(args.preset, args.device, args.budget)
    mib = 2**20
    print(f"all-pairs K-composition, {args.preset} shapes ({free['pairs']:,} head pairs), {args.device}; "
          "one run each, fresh processes")
    print(f"{'run':<16} {'slices':>6} {'sliced dims':<24} {'time':>8} {'predicted':>11} {'measured':>10} "
          f"{'meas/pred':>9}")
    for name, r in [("unbudgeted", free), (f"budget {args.budget}", held)]:
        dims = ", ".join(f"{kind} {size}/{block}" for kind, size, block in r["dims"]) or "-"
        print(f"{name:<16} {r['slices']:>6} {dims:<24} {r['seconds']:>7.2f}s "
              f"{r['predicted'] / mib:>8.0f} MiB {r['measured'] / mib:>6.0f} MiB "
              f"{r['measured'] / max(r['predicted'], 1):>9.2f}")
    print(f"budgeted / unbudgeted time: {held['seconds'] / free['seconds']:.2f}x; "
          f"FLOPs added by slicing: {held['flops'] / held['unsliced_flops'] - 1:+.2%}; "
          f"results agree: {abs(held['checksum'] - free['checksum']) <= 1e-4 * abs(free['checksum'])}")
    budget = lm_parse_bytes(args.budget)
    checks = [(f"memory growth {held['measured'] / mib:.0f} MiB <= budget {budget / mib:.0f} MiB",
               held["measured"] <= budget)]
    if args.device != "cpu":
        ratio = held["seconds"] / free["seconds"]
        checks.append((f"budgeted time {ratio:.2f}x <= 1.3x the unbudgeted", ratio <= 1.3))
    print("acceptance: " + "; ".join(f"{text}: {'PASS' if ok else 'FAIL'}" for text, ok in checks))
    if not args.quick and not all(ok for _, ok in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
