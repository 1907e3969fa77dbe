"""Make the pictures of the documentation site under docs/img/.

    python docs/make_figures.py          # from the repository root; about a minute on 2 CPU cores

Three pictures are what the docs' own examples write (the pages are run exactly as the test
suite runs them, in a temporary folder, and the files they save are copied here): the plan of
``svd`` on a GPT-2 small full QK circuit (cost-introspection.md), a singular-value spectrum
and a composition-score heatmap (circuits-tutorial.md). The fourth is a bar chart of the
ratios saved in benchmarks/results/: per machine, the geometric means of a
``python -m benchmarks`` table (``<machine>-suite.md``) where one is saved, else the outputs of
the older single scripts (``<machine>-circuits.txt``, ``<machine>-chains.txt``). The test suite
does not run this script; the PNGs are committed.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
IMG = DOCS / "img"
RESULTS = ROOT / "benchmarks" / "results"

# page -> {file the page's examples write: name under docs/img/}
FROM_EXAMPLES = {
    "cost-introspection.md": {"svd.png": "plan-svd.png"},
    "circuits-tutorial.md": {"spectrum.png": "spectrum.png", "k_composition.png": "k_composition.png"},
}


def figures_from_examples() -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from test_docs_examples import run_page

    for page, files in FROM_EXAMPLES.items():
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                run_page(DOCS / page, with_cuda=False)
            finally:
                os.chdir(cwd)
            for written, name in files.items():
                shutil.copyfile(pathlib.Path(tmp) / written, IMG / name)
                print(f"{page}: {written} -> docs/img/{name}")


def _ratios(path: pathlib.Path) -> dict[str, float]:
    """Peer / lazymat ratios from one saved single-script output (the formats of the former
    bench_circuits.py and bench_chains.py), keyed by a short label."""
    text = path.read_text()
    out = {}
    row = r"^(svd|svdvals|matrix_norm \(fro\)|eigvals)\s+\S+ \S+\s+\S+ \S+\s+([\d.]+)x$"
    for op, ratio in re.findall(row, text, flags=re.M):
        out[f"TL: {op.replace(' (fro)', '')}, one head"] = float(ratio)
    m = re.search(r"^\s+TL FactoredMatrix\s+\S+ \S+\s+([\d.]+)x lazymat's time", text, flags=re.M)
    if m:
        out["TL: copying scores, 144 heads"] = float(m.group(1))
    for peer, ratio in re.findall(r"^\s+(multi_dot|left-right|opt_einsum)\s+([\d.]+)x", text, flags=re.M):
        out[f"chains: {peer} (geo. mean)"] = float(ratio)
    return out


# "- chains: multi_dot / lazymat = 0.91x (0.85-0.97x over 12 cases)", as benchmarks/suite/report.py
# ends its markdown table: per workload and peer, the geometric mean of time / lazymat's time.
SUITE_MEAN = re.compile(r"^- ([\w-]+): (.+?) / lazymat = ([\d.]+)x(?: \(.*over (\d+) cases\))?$", flags=re.M)


def suite_ratios(text: str) -> dict[str, float]:
    """Peer / lazymat ratios from a ``python -m benchmarks --out`` markdown table (its geometric
    means section), keyed ``"workload: peer"``, with ``(geo. mean)`` where it spans cases."""
    return {f"{workload}: {peer}" + (" (geo. mean)" if cases else ""): float(ratio)
            for workload, peer, ratio, cases in SUITE_MEAN.findall(text)}


def machine_ratios(prefix: str) -> dict[str, float]:
    """The ratios saved for one machine (``cpu``, ``h100``): its suite table when there is one
    (it supersedes the single scripts), else the single scripts' outputs; empty if neither."""
    suite = RESULTS / f"{prefix}-suite.md"
    if suite.exists():
        return suite_ratios(suite.read_text())
    return {k: v for name in ("circuits", "chains") if (RESULTS / f"{prefix}-{name}.txt").exists()
            for k, v in _ratios(RESULTS / f"{prefix}-{name}.txt").items()}


def benchmark_chart() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    machines = {"CPU (2 threads)": "cpu", "H100": "h100"}
    data = {m: r for m, p in machines.items() if (r := machine_ratios(p))}
    if not data:
        print("no benchmark results saved: docs/img/benchmark-ratios.png left as it is")
        return
    labels = list(dict.fromkeys(k for d in data.values() for k in d))
    fig, ax = plt.subplots(figsize=(9.5, 0.45 * len(labels) * len(data) + 1.2), layout="constrained")
    height = 0.8 / len(data)
    for i, (machine, ratios) in enumerate(data.items()):
        ys = [j + i * height for j, k in enumerate(labels) if k in ratios]
        xs = [ratios[k] for k in labels if k in ratios]
        bars = ax.barh(ys, xs, height=height, label=machine, color=f"C{i}")
        for bar, x in zip(bars, xs, strict=True):
            ax.text(x * 1.05, bar.get_y() + bar.get_height() / 2, f"{x:.2f}x", va="center", fontsize=8)
    ax.set_yticks([j + height * (len(data) - 1) / 2 for j in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=0.8)
    top = max(x for d in data.values() for x in d.values())
    low = min(x for d in data.values() for x in d.values())
    ax.set_xlim(min(0.3, low / 2), 10 ** math.ceil(math.log10(top * 2)))
    ax.set_xlabel("peer time / lazymat time (above 1: lazymat is faster)")
    fig.suptitle("lazymat vs its peers, float32 (benchmarks/results/)")
    ax.legend(loc="lower right")
    fig.savefig(IMG / "benchmark-ratios.png", dpi=110)
    plt.close(fig)
    print("benchmarks/results -> docs/img/benchmark-ratios.png")


if __name__ == "__main__":
    IMG.mkdir(exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "Agg")
    benchmark_chart()
    figures_from_examples()
