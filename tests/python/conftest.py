# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the CLI tests (helpers live in cli_helpers.py)."""
import json
import os
import shutil
import tempfile

import pytest

from cli_helpers import PROFILES, Service


@pytest.fixture
def workdir():
    """A private folder (0700) with a short path: unix socket paths are limited to 107 bytes."""
    d = tempfile.mkdtemp(prefix="m2mcli-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def profile_file(workdir):
    path = os.path.join(workdir, "profiles.json")
    with open(path, "w") as f:
        json.dump(PROFILES, f)
    return path


@pytest.fixture
def service(workdir, profile_file):
    svc = Service(workdir, profile_file)
    try:
        yield svc.wait_ready()
    finally:
        svc.kill()
