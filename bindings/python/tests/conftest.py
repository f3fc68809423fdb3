# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the binding tests (helpers live in binding_helpers.py)."""
import pytest

import m2mvpn


@pytest.fixture
def client():
    with m2mvpn.Client() as c:
        yield c
