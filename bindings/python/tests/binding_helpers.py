# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the binding tests.

What the build can do comes from the build configuration, never from asking
the library under test: meson passes its feature words (m2mvpn_features in
lib/meson.build) as $M2MVPN_FEATURES. A test of a feature the build lacks is
marked xfail(strict=True) by needs_feature(): it runs, must fail, and turns
into a failure (XPASS) once the feature works and its word is added.
"""
import json
import os

import pytest

# A valid version-1 profile (DESIGN.md section 4). Mode "manual": it never
# connects by itself. The gateway is local (127.0.0.1, an unused port): a
# connect attempt sends nothing off this machine. No kill switch and only the
# tunnel range in remote_ts, so no host route changes.
PROFILE = {
    "version": 1,
    "name": "rig-a",
    "mode": "manual",
    "gateways": [{"host": "127.0.0.1", "port": 1}],
    "local_id": "dev1.m2m.test",
    "remote_id": "gw.m2m.test",
    "auth": {"method": "psk", "psk": "rig-test-psk-0123456789abcdef0123"},
    "tunnel": {"kill_switch": False, "remote_ts": ["198.18.0.0/15"]},
}

def profiles(*names):
    """A {"profiles": [...]} document with one PROFILE copy per name."""
    out = []
    for n in names:
        p = json.loads(json.dumps(PROFILE))
        p["name"] = n
        out.append(p)
    return {"version": 1, "profiles": out}

def _build_features():
    words = os.environ.get("M2MVPN_FEATURES")
    if words is None:
        raise RuntimeError("M2MVPN_FEATURES is not set: run the tests through `meson test` "
                           "(or set it as tools/tests/meson.build does)")
    return frozenset(words.split())

BUILD_FEATURES = _build_features()

def needs_feature(word, what):
    """Strict expected failure while the build lacks `word` (see above)."""
    return pytest.mark.xfail(word not in BUILD_FEATURES, strict=True,
                             reason="%s: not in this build (%r is not in M2MVPN_FEATURES)" % (what, word))
