"""mkdocs hooks: the benchmark page shows whatever is in benchmarks/results/, pages that other
work adds (listed in OPTIONAL_PAGES) join the navigation once their file exists, and the Sphinx
roles of docstrings (:func:`x`, which mkdocstrings leaves as text) render as plain code.

Results: ``*-suite.md`` tables (``python -m benchmarks --out`` output, e.g. ``cpu-suite.md``)
are inserted as Markdown, every ``*.txt`` (one script's saved output) as a collapsed code block, at the line
``<!-- benchmark results -->`` of benchmarks.md.
"""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARKER = "<!-- benchmark results -->"
OPTIONAL_PAGES = {"reductions.md"}
# A Sphinx role as mkdocstrings renders it: ":func:" (or ":py:func:") before the <code> of its
# target; "~" before a target means "show only its last component".
SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|attr|data|const|mod|exc|obj):<code>(~?)([^<]*)</code>")


def _without_missing(nav: list, docs_dir: pathlib.Path) -> list:
    kept = []
    for item in nav:
        if isinstance(item, dict):
            (title, value), = item.items()
            if isinstance(value, list):
                kept.append({title: _without_missing(value, docs_dir)})
            elif value in OPTIONAL_PAGES and not (docs_dir / value).exists():
                continue
            else:
                kept.append(item)
        else:
            kept.append(item)
    return kept


def on_config(config, **kwargs):
    config["nav"] = _without_missing(config["nav"], pathlib.Path(config["docs_dir"]))
    return config


def results_markdown() -> str:
    """The saved benchmark results as Markdown: suite tables first, then each script's output."""
    parts = []
    for path in sorted(RESULTS.glob("*-suite.md")):
        parts.append(f"### `{path.name}`\n\n{path.read_text().strip()}\n")
    for path in sorted(RESULTS.glob("*.txt")):
        body = path.read_text().rstrip().replace("```", "'''")
        indented = "\n".join("    " + line if line else "" for line in f"```text\n{body}\n```".splitlines())
        parts.append(f'??? note "`{path.name}`"\n\n{indented}\n')
    return "\n".join(parts) if parts else "No results are saved in `benchmarks/results/` yet."


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if page.file.src_uri == "benchmarks.md":
        return markdown.replace(MARKER, results_markdown())
    return markdown


def without_sphinx_roles(html: str) -> str:
    """``:func:<code>x</code>`` -> ``<code>x</code>`` (``~a.b.x`` -> ``x``)."""
    def code(m: re.Match) -> str:
        target = m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)
        return f"<code>{target}</code>"

    return SPHINX_ROLE.sub(code, html)


def on_page_content(html: str, page, **kwargs) -> str:
    return without_sphinx_roles(html)
