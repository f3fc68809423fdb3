# SPDX-License-Identifier: Apache-2.0
"""The ctypes Structures have the C compiler's layout of the public structs."""
import ctypes
import json
import os
import subprocess

import pytest

from m2mvpn import _native

PROBE = os.environ.get("M2MVPN_ABI_PROBE")


@pytest.fixture(scope="module")
def layout():
    if not PROBE:
        pytest.skip("M2MVPN_ABI_PROBE not set (run through meson test)")
    return json.loads(subprocess.run([PROBE], check=True, capture_output=True, text=True).stdout)


@pytest.mark.parametrize("cname,pystruct", [
    ("m2mvpn_event", _native.Event),
    ("m2mvpn_callbacks", _native.Callbacks),
    ("m2mvpn_status", _native.Status),
])
def test_struct_layout_matches_c(layout, cname, pystruct):
    c = layout[cname]
    assert ctypes.sizeof(pystruct) == c["size"]
    py_fields = [f[0] for f in pystruct._fields_]
    assert py_fields == list(c["fields"]), "field names or order differ"
    for name, (offset, size) in c["fields"].items():
        field = getattr(pystruct, name)
        assert (field.offset, field.size) == (offset, size), name


def test_every_header_call_is_declared():
    header = os.environ.get("M2MVPN_HEADER")
    if not header:
        pytest.skip("M2MVPN_HEADER not set (run through meson test)")
    import re
    text = open(header, encoding="utf-8").read()
    calls = set(re.findall(r"M2MVPN_API\s+[^;(]*?\b(m2mvpn_[a-z_]+)\s*\(", text))
    assert calls, "no calls found in the header"
    assert calls == set(_native.PROTOTYPES)
