"""Test services behind an SDK endpoint that requires request identity.

``restate.app(services, identity_keys=[key])`` with ``key`` (``publickeyv1_...``) from ``$CAPSTAN_TEST_IDENTITY_KEY``:
the SDK answers 401 to every ``/discover`` and ``/invoke`` request that is not signed by the matching private key.

- ``tests.services.signed_app:app`` for hypercorn (the variable is set in the deployment process's environment);
- ``tests.services.signed_app:from_env.app`` for an engine in the test process: the app is built when the engine
  loads it, so each test can use its own key.
"""

from __future__ import annotations

import os
from typing import Any

import restate

from tests.services.app import counter, greeter, steps

IDENTITY_KEY_ENV = "CAPSTAN_TEST_IDENTITY_KEY"


def make_app(identity_key: str) -> Any:
    return restate.app(services=[greeter, counter, steps], identity_keys=[identity_key])


class _FromEnvironment:
    @property
    def app(self) -> Any:
        return make_app(os.environ[IDENTITY_KEY_ENV])


from_env = _FromEnvironment()

if IDENTITY_KEY_ENV in os.environ:
    app = make_app(os.environ[IDENTITY_KEY_ENV])
