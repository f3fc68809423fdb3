# SPDX-License-Identifier: Apache-2.0
"""Never collected by the suite itself (not named test_*.py):
test_sanitizer_check.py runs it in a nested pytest through run_pytest.py.

It starts the sanitizer canary (built with ASan+UBSan, like the binaries under
test) inside a netlab namespace, the way the tests start our binaries, with
the action named in $M2MVPN_CANARY_ACTION, and, on purpose, ignores how it
exits: only the run's sanitizer check (conftest.py, sanitizer.py) can make
this run fail.
"""

import os

import netlab


def test_start_the_canary():
    with netlab.Namespace("canary") as ns:
        ns.run(os.environ["M2MVPN_SANITIZER_CANARY"], os.environ["M2MVPN_CANARY_ACTION"],
               check=False)
