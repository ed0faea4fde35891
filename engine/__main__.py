"""``python -m engine``: the same as the ``capstan`` command (see :mod:`engine.cli.main`)."""

from __future__ import annotations

import sys

from engine.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
