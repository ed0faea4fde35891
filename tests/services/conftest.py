"""Make ``tests.services`` importable under pytest's default ``prepend`` import mode.

The repository root is not on ``sys.path`` when pytest runs from ``.venv/bin/pytest`` and ``tests/`` has no
``__init__.py``. Drop this file once ``pyproject.toml`` sets ``pythonpath = ["."]`` under
``[tool.pytest.ini_options]`` (or ``tests/conftest.py`` does the same).
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = str(Path(__file__).resolve().parents[2])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
