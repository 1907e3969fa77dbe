"""``python -m lazymat``: the ``lazymat`` command (see :mod:`lazymat.cli`)."""

from .cli import main

raise SystemExit(main())
