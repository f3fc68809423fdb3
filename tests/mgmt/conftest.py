# SPDX-License-Identifier: Apache-2.0
import os
import shutil
import tempfile

import pytest

from mgmt_helpers import ADMIN, MGMTD, Mgmtd, make_config, make_pki


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="m2mmgmt-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pki(workdir):
    assert MGMTD and ADMIN, "run through meson (M2MVPN_MGMTD, M2MVPN_ADMIN)"
    make_pki(workdir)
    return workdir


@pytest.fixture
def server(pki):
    srv = Mgmtd(pki, make_config(pki, "sqlite:mgmt.db"))
    yield srv
    srv.stop()
