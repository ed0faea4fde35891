"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services.fixtures import DeploymentProcess, running_deployment
from tests.services.fixtures3 import APP3_SPEC


@pytest.fixture(scope="module")
def deployment3() -> Iterator[DeploymentProcess]:
    """tests/services/app3.py behind hypercorn (HTTP/1.1 request-response), one per test module."""
    with running_deployment(APP3_SPEC) as dep:
        yield dep
