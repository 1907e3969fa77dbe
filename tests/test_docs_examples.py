"""Every ```python block of docs/*.md runs: per page, in order, in one namespace, in a temp dir.

A block preceded by the line ``<!-- docs-test: cuda -->`` needs a CUDA device: it runs (with the
rest of its page) only in the CUDA test, skipped without a GPU. No other way to skip a block
exists, so an example that stops working fails the suite. Tracebacks name the Markdown file
and line of the failing statement.
"""

import pathlib
import re

import pytest
import torch

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", flags=re.S | re.M)
MARKER = re.compile(r"<!--\s*docs-test:\s*([^>]*?)\s*-->\s*\Z")


def blocks(page: pathlib.Path) -> list[tuple[int, str, bool]]:
    """``(first line, code, needs_cuda)`` of each python block of ``page``."""
    text = page.read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()]
        marker = MARKER.search(before.rstrip())  # a marker is the last thing before the fence
        if marker is not None and marker.group(1) != "cuda":
            raise ValueError(f"{page.name}: unknown docs-test marker {marker.group(1)!r} "
                             "(only 'cuda' exists: every other example must run)")
        line = before.count("\n") + 1  # the fence's line; the code starts on the next
        found.append((line, m.group(1), marker is not None))
    return found


PAGES = sorted(p for p in DOCS.rglob("*.md") if blocks(p))


def run_page(page: pathlib.Path, with_cuda: bool) -> dict:
    namespace: dict = {"__name__": "__docs__"}
    torch.manual_seed(0)
    for line, code, needs_cuda in blocks(page):
        if needs_cuda and not with_cuda:
            continue
        # padded so that a traceback's line number is the Markdown file's
        exec(compile("\n" * line + code, str(page), "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


@pytest.fixture
def in_temp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    yield tmp_path
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_examples_run(page, in_temp_dir):
    run_page(page, with_cuda=False)


CUDA_PAGES = [p for p in PAGES if any(cuda for _, _, cuda in blocks(p))]


@pytest.mark.cuda
@pytest.mark.parametrize("page", CUDA_PAGES, ids=[str(p.relative_to(DOCS)) for p in CUDA_PAGES])
def test_page_examples_run_on_cuda(page, in_temp_dir):
    run_page(page, with_cuda=True)


def test_blocks_and_markers_are_read_as_documented(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# t\n\n```python\nx = 1\n```\n\ntext\n<!-- docs-test: cuda -->\n```python\ny = 2\n```\n"
                    "```bash\nz\n```\n")
    assert blocks(page) == [(3, "x = 1\n", False), (9, "y = 2\n", True)]
    page.write_text("<!-- docs-test: skip -->\n```python\nx = 1\n```\n")
    with pytest.raises(ValueError, match="only 'cuda'"):
        blocks(page)


def test_a_failing_example_points_at_its_markdown_line(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# t\n\n```python\nx = 1\ny = x / 0\n```\n")
    with pytest.raises(ZeroDivisionError) as info:
        run_page(page, with_cuda=False)
    frame = info.traceback[-1]
    assert frame.path == page and frame.lineno + 1 == 5


def test_every_page_is_in_the_site_navigation():
    nav = (DOCS.parent / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*.md"):
        name = str(page.relative_to(DOCS))
        assert f" {name}" in nav, f"{name} is not in mkdocs.yml's nav"


def _hooks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_site_hooks_drop_only_missing_optional_pages(tmp_path):
    hooks = _hooks()
    nav = [{"Home": "index.md"}, {"Concepts": [{"A": "a.md"}, {"Streamed": "reductions.md"}]}]
    assert hooks._without_missing(nav, tmp_path) == [{"Home": "index.md"}, {"Concepts": [{"A": "a.md"}]}]
    (tmp_path / "reductions.md").write_text("# r\n")
    assert hooks._without_missing(nav, tmp_path) == nav


def test_benchmark_page_shows_every_saved_result(tmp_path, monkeypatch):
    hooks = _hooks()
    (tmp_path / "cpu-suite.md").write_text("| a | b |\n| - | - |\n| 1 | 2 |\n")
    (tmp_path / "cpu-x.txt").write_text("line one\n\nline ``` three\n")
    monkeypatch.setattr(hooks, "RESULTS", tmp_path)
    text = hooks.results_markdown()
    assert text.index("| 1 | 2 |") < text.index('??? note "`cpu-x.txt`"')
    assert "    line one\n\n    line ''' three" in text



def test_sphinx_roles_of_docstrings_render_as_code():
    hooks = _hooks()
    html = ("see :func:<code>lazymat.settings.memory_budget</code> and "
            ":py:meth:<code>~lazymat.Report.draw</code>;"
            " a time 12:30:<code>x</code> and :unknown:<code>y</code> stay")
    assert hooks.without_sphinx_roles(html) == (
        "see <code>lazymat.settings.memory_budget</code> and <code>draw</code>;"
        " a time 12:30:<code>x</code> and :unknown:<code>y</code> stay")

def _make_figures():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_figures", DOCS / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_chart_reads_the_suite_tables_geometric_means():
    """The chart's parser against a table written by benchmarks/suite/report.py itself; the
    expected ratios are geometric means computed here from the records."""
    import math

    from benchmarks.suite import report

    per_case = {"multi_dot": [0.8, 0.9, 1.25], "opt_einsum": [2.0, 3.5, 2.5]}
    def impls(i):
        peers = {p: {"median": r[i] * 1e-3, "ratio": r[i]} for p, r in per_case.items()}
        return {"lazymat": {"median": 1e-3, "ratio": 1.0}, **peers}

    records = [{"workload": "chains", "case": f"chain {i}", "floor_s": None, "estimates": {}, "skipped": {},
                "notes": [], "impls": impls(i)} for i in range(3)]
    records.append({"workload": "qk-circuit", "case": "svd", "floor_s": None, "estimates": {}, "notes": [],
                    "skipped": {"dense": "over the memory budget"},
                    "impls": {"lazymat": {"median": 1.0, "ratio": 1.0},
                              "TransformerLens": {"median": 1.5, "ratio": 1.5}}})
    machine = {"gpu": None, "cpu": "test cpu", "torch_threads": 2, "torch": torch.__version__,
               "load_average": None}
    table = report.markdown(records, machine, "python -m benchmarks --only chains", None)

    got = _make_figures().suite_ratios(table)
    expected = {f"chains: {p} (geo. mean)": round(math.exp(sum(map(math.log, r)) / len(r)), 2)
                for p, r in per_case.items()}
    expected["qk-circuit: TransformerLens"] = 1.5
    assert got == expected
