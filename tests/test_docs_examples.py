"""Every ```python block of README.md and docs/*.md runs: per page, in order, in one namespace,
in a temp dir, and what it prints is checked against the output the page claims.

A block preceded by the line ``<!-- docs-test: cuda -->`` needs a CUDA device: it runs (with the
rest of its page) only in the CUDA test, skipped without a GPU. No other way to skip a block
exists, so an example that stops working fails the suite. Tracebacks name the Markdown file
and line of the failing statement.

Claimed outputs, in two forms (nothing else on a page is read as one):

- ``print(x)  # -> text``: a comment starting with ``->`` claims what that statement prints;
- a ```text block right after a python block (blank lines between at most) claims all that
  the python block prints; ```text is kept for that (a text block elsewhere fails the suite).

A claim is compared with what was printed as doctest's ELLIPSIS would, with two differences:
any run of whitespace matches any run (so columns may be re-aligned and long lines wrapped),
and a number matches the printed number that it rounds (``0.044`` claims ``0.04404``, ``1.31e9``
claims ``1.3107e+09``, an integer claims itself; neither ``0.0440`` claims ``0.044``, no more
digits than were printed, nor ``3`` claims ``3.5``, a tie). ``...`` stands for any text.
A claim of a statement that prints nothing fails, so a claim is never left unchecked.
"""

import ast
import contextlib
import io
import pathlib
import re
import sys
import tokenize
from typing import NamedTuple

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*\n(?:[ \t]*\n)*(?:```text[ \t]*\n(.*?)^```)?",
                   flags=re.S | re.M)
MARKER = re.compile(r"<!--\s*docs-test:\s*([^>]*?)\s*-->\s*\Z")


class Block(NamedTuple):
    """One python block: the line of its fence, its code, whether it needs CUDA, and the output the
    page claims for it (the ```text block after it, or None) with that block's fence line."""

    line: int
    code: str
    needs_cuda: bool
    output: str | None = None
    output_line: int = 0


def blocks(page: pathlib.Path) -> list[Block]:
    """The python blocks of ``page``, in order."""
    text = page.read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()]
        marker = MARKER.search(before.rstrip())  # a marker is the last thing before the fence
        if marker is not None and marker.group(1) != "cuda":
            raise ValueError(f"{page.name}: unknown docs-test marker {marker.group(1)!r} "
                             "(only 'cuda' exists: every other example must run)")
        line = before.count("\n") + 1  # the fence's line; the code starts on the next
        output_line = text[: m.start(2)].count("\n") if m.group(2) is not None else 0
        found.append(Block(line, m.group(1), marker is not None, m.group(2), output_line))
    return found


ROOT = DOCS.parent
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if blocks(p))]


# ---- claimed outputs ----------------------------------------------------------------------------

NUMBER = r"[-+]?(?:\d+(?:\.(?!\.\.)\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
PIECE = re.compile(rf"(?P<dots>\.\.\.)|(?P<space>\s+)|(?P<number>{NUMBER})|(?P<text>.)", flags=re.S)


def _half_unit(number: str) -> float:
    """Half a unit in the last written digit of ``number``: the rounding it carries."""
    mantissa, _, exponent = number.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 0.5 * 10.0 ** (int(exponent or 0) - decimals)


def mismatch(claimed: str, printed: str) -> str | None:
    """Why ``printed`` is not what ``claimed`` says (None when it is): see the module docstring."""
    pattern, numbers = [], []
    for piece in PIECE.finditer(claimed.strip()):
        if piece["dots"]:
            pattern.append(".*?")
        elif piece["space"]:
            pattern.append(r"\s+")
        elif piece["number"]:
            pattern.append(f"({NUMBER})")
            numbers.append(piece["number"])
        else:
            pattern.append(re.escape(piece["text"]))
    found = re.fullmatch("".join(pattern), printed.strip(), flags=re.S)
    if found is None:
        return "the text differs"
    for want, got in zip(numbers, found.groups(), strict=True):
        rounding = _half_unit(want)
        if rounding < _half_unit(got) or abs(float(want) - float(got)) >= rounding * (1 - 1e-9):
            return f"the number {want} is {got}"
    return None


def inline_claims(code: str, first_line: int) -> list[tuple[int, int, int, str]]:
    """``(comment line, statement's first line, statement's last line, claimed text)`` of each
    ``# -> ...`` comment in ``code``, line numbers in the page (``first_line`` is the fence's)."""
    simple = [node for node in ast.walk(ast.parse(code)) if isinstance(node, ast.stmt)
              and not any(isinstance(getattr(node, f, None), list) for f in ("body", "handlers"))]
    claims = []
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        if token.type != tokenize.COMMENT or not re.match(r"#\s*->", token.string):
            continue
        row = token.start[0]
        owners = [s for s in simple if s.lineno <= row <= s.end_lineno]
        if not owners:
            raise ValueError(f"line {first_line + row}: a claimed output {token.string!r} "
                             "follows no statement on its line")
        stmt = owners[-1]
        text = re.sub(r"^#\s*->", "", token.string).strip()
        claims.append((first_line + row, first_line + stmt.lineno, first_line + stmt.end_lineno, text))
    return claims


class _Printed(io.TextIOBase):
    """stdout while a block runs: each write kept with the page line of the doc code that made it
    (the innermost frame of ``filename`` on the stack)."""

    def __init__(self, filename: str):
        self.filename, self.writes, self.echo = filename, [], sys.stdout

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename != self.filename:
            frame = frame.f_back
        self.writes.append((frame.f_lineno if frame is not None else 0, text))
        return self.echo.write(text)  # still shown, as pytest shows a failing test's output

    def between(self, first: int, last: int) -> str:
        return "".join(text for line, text in self.writes if first <= line <= last)


def check_claims(page: pathlib.Path, block: Block, printed: _Printed) -> None:
    """Raise AssertionError naming the page, line, claimed and printed text of the first claim of
    ``block`` that its output does not bear out."""
    claims = inline_claims(block.code, block.line)
    if block.output is not None:
        claims.append((block.output_line, 0, 10**9, block.output))
    for line, first, last, claimed in claims:
        actual = printed.between(first, last)
        why = "it printed nothing" if not actual.strip() else mismatch(claimed, actual)
        if why is not None:
            raise AssertionError(f"{page}:{line}: the printed output is not the claimed one ({why})\n"
                                 f"--- claimed:\n{claimed.rstrip()}\n--- printed:\n{actual.rstrip()}")


def run_page(page: pathlib.Path, with_cuda: bool) -> dict:
    namespace: dict = {"__name__": "__docs__"}
    torch.manual_seed(0)
    for block in blocks(page):
        if block.needs_cuda and not with_cuda:
            continue
        printed = _Printed(str(page))
        with contextlib.redirect_stdout(printed):
            # padded so that a traceback's line number is the Markdown file's
            exec(compile("\n" * block.line + block.code, str(page), "exec"), namespace)  # noqa: S102 - our docs
        check_claims(page, block, printed)
    return namespace


@pytest.fixture
def in_temp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    yield tmp_path
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_examples_run(page, in_temp_dir):
    run_page(page, with_cuda=False)


CUDA_PAGES = [p for p in PAGES if any(b.needs_cuda for b in blocks(p))]


@pytest.mark.cuda
@pytest.mark.parametrize("page", CUDA_PAGES, ids=[str(p.relative_to(ROOT)) for p in CUDA_PAGES])
def test_page_examples_run_on_cuda(page, in_temp_dir):
    run_page(page, with_cuda=True)


def test_blocks_and_markers_are_read_as_documented(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# t\n\n```python\nx = 1\n```\n\ntext\n<!-- docs-test: cuda -->\n```python\ny = 2\n```\n"
                    "```bash\nz\n```\n")
    assert blocks(page) == [(3, "x = 1\n", False, None, 0), (9, "y = 2\n", True, None, 0)]
    page.write_text("```python\nprint(1)\n```\n\n```text\n1\n```\n```python\nx\n```\ntext\n```text\n2\n```\n")
    assert blocks(page) == [(1, "print(1)\n", False, "1\n", 5), (8, "x\n", False, None, 0)]
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


@pytest.mark.parametrize(("claimed", "printed"), [
    ("tensor([12, 12, 12])", "tensor([12, 12, 12])\n"),
    ("['L6H5: 0.9999', 'L8H6: 0.0440', ...]", "['L6H5: 0.9999', 'L8H6: 0.0440', 'L3H1: 0.0312']"),
    ("1.31e9 FLOPs", "1.3107e+09 FLOPs"),                  # rounded in the claim
    ("nmse 0.19", "nmse 0.193"),
    ("a  b\n   c", "a b c"),                               # whitespace re-aligned, lines wrapped
    ("x ... y", "x\n1\n2\ny"),                             # '...' spans lines
    ("torch.Size([64])", "torch.Size([64])"),
])
def test_a_claim_matches_what_it_rounds_or_elides(claimed, printed):
    assert mismatch(claimed, printed) is None


@pytest.mark.parametrize(("claimed", "printed", "why"), [
    ("tensor([12, 12, 12])", "tensor([12, 12, 11])", "the number 12 is 11"),   # integers exactly
    ("torch.Size([64])", "torch.Size([63])", "the number 64 is 63"),
    ("nmse 0.193", "nmse 0.194", "the number 0.193 is 0.194"),
    ("nmse 0.193", "nmse 0.19", "the number 0.193 is 0.19"),    # printed coarser than claimed
    ("1.31e9", "1.32e+09", "the number 1.31e9 is 1.32e+09"),
    ("3 MiB", "3.5 MiB", "the number 3 is 3.5"),                # a tie is no rounding to trust
    ("torch.float32", "torch.float64", "the number 32 is 64"),
    ("a b", "ab", "the text differs"),                           # a space is claimed
    ("x ... y", "x 1 z", "the text differs"),
    ("L6H5: 0.9999", "L6H5: 0.9999 and more", "the text differs"),  # the whole output is claimed
])
def test_a_claim_fails_on_other_text_or_values(claimed, printed, why):
    assert mismatch(claimed, printed) == why


def test_claims_are_checked_and_name_the_markdown_line(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# t\n\n```python\nx = 0.25\nprint(x)  # -> 0.25\nprint(2 * x)  # -> 0.25\n```\n")
    with pytest.raises(AssertionError, match=r"p\.md:6: .*the number 0\.25 is 0\.5") as info:
        run_page(page, with_cuda=False)
    assert "--- claimed:\n0.25\n--- printed:\n0.5" in str(info.value)

    page.write_text("```python\nfor k in range(2):\n    print(k,\n          k)  # -> 1 1\n```\n")
    with pytest.raises(AssertionError, match=r"p\.md:4: .*text differs"):  # both iterations printed
        run_page(page, with_cuda=False)

    page.write_text("```python\nx = 1  # -> 1\n```\n")  # a claim of a silent statement
    with pytest.raises(AssertionError, match="printed nothing"):
        run_page(page, with_cuda=False)

    page.write_text("```python\nx = 1\n```\n\n```text\n1\n```\n")  # a block that prints nothing
    with pytest.raises(AssertionError, match=r"p\.md:5: .*printed nothing"):
        run_page(page, with_cuda=False)

    page.write_text("```python\nif True:  # -> x\n    pass\n```\n")
    with pytest.raises(ValueError, match="follows no statement"):
        run_page(page, with_cuda=False)

    page.write_text("```python\nprint('a')  # prose, no claim\nprint(1)\n```\n\n```text\na\n1\n```\n"
                    "```python\nprint('# -> in a string')\n```\n")
    run_page(page, with_cuda=False)


def test_every_text_block_is_a_checked_output():
    for page in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        fences = len(re.findall(r"^```text", page.read_text(), flags=re.M))
        assert fences == sum(b.output is not None for b in blocks(page)), (
            f"{page}: a ```text block that follows no python block: it would not be checked "
            "(show a command or a diagram in a plain ``` block)")


def test_pages_claim_outputs_in_both_forms():
    """Both claim forms are in use, so a reader that found none would fail here."""
    inline = sum(len(inline_claims(b.code, b.line)) for page in PAGES for b in blocks(page))
    text = sum(b.output is not None for page in PAGES for b in blocks(page))
    assert inline >= 20 and text >= 10, (inline, text)


@settings(max_examples=300, deadline=None)
@given(st.floats(-1e6, 1e6, allow_nan=False), st.integers(0, 6), st.integers(0, 4), st.sampled_from("fe"))
def test_a_number_claims_what_it_rounds_and_nothing_a_unit_off(x, printed_digits, fewer, style):
    """Printed with ``printed_digits``, ``x`` is claimed by itself rounded to as many digits or
    fewer (Python's own rounding of the printed text), and not by that claim one unit off."""
    claimed_digits = max(printed_digits - fewer, 0)
    printed = f"{x:.{printed_digits}{style}}"
    claimed = f"{float(printed):.{claimed_digits}{style}}"
    mantissa, _, exponent = claimed.partition("e")
    unit = 10.0 ** (int(exponent or 0) - claimed_digits)  # of the claim's last digit
    assume(abs(abs(float(printed) - float(claimed)) - unit / 2) > unit * 1e-6)  # a tie rounds either way
    assert mismatch(f"x = {claimed};", f"x = {printed};") is None
    last = 10.0 ** -claimed_digits
    off = f"{float(mantissa) + last:.{claimed_digits}f}" + (f"e{exponent}" if exponent else "")
    assert mismatch(f"x = {off};", f"x = {printed};") is not None
