"""``python -m benchmarks [--quick] [--only NAME] [--device cuda] ...``: see ``--help``."""

from benchmarks.suite.cli import main

main()
