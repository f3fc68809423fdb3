# SPDX-License-Identifier: Apache-2.0
"""The error table: generated from the header, in step with the library."""
import os
import pathlib

import pytest

import m2mvpn
from m2mvpn import _native

HERE = pathlib.Path(__file__).resolve().parent
HEADER = pathlib.Path(os.environ.get("M2MVPN_HEADER", HERE.parents[2] / "include/m2mvpn/m2mvpn.h"))


def _generator():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gen_errors", HERE.parent / "gen_errors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_table_is_generated_from_the_header():
    gen = _generator()
    expected = gen.render(gen.parse_header(HEADER.read_text()))
    actual = (HERE.parent / "m2mvpn" / "_errors.py").read_text()
    assert actual == expected, "run bindings/python/gen_errors.py: _errors.py is out of date"


def test_table_rows_are_distinct_negative_codes():
    values = [v for _, v, _ in m2mvpn.ERROR_TABLE]
    names = [n for n, _, _ in m2mvpn.ERROR_TABLE]
    assert all(v < 0 for v in values)
    assert len(set(values)) == len(values)
    assert len(set(names)) == len(names)
    assert m2mvpn.ErrorCode.NOPROFILE == -9  # a value tests outside the project rely on


@pytest.mark.parametrize("name,value,message", m2mvpn.ERROR_TABLE, ids=[r[0] for r in m2mvpn.ERROR_TABLE])
def test_strerror_of_every_code_matches_the_table(name, value, message):
    assert m2mvpn.strerror(value) == message
    assert m2mvpn.ErrorCode[name] == value


def test_strerror_of_success_and_unknown_codes():
    assert m2mvpn.strerror(0) == "success"
    lowest = min(v for _, v, _ in m2mvpn.ERROR_TABLE)
    assert m2mvpn.strerror(lowest - 1) == "unknown error"
    assert m2mvpn.strerror(1) == "unknown error"
    with pytest.raises(TypeError):
        m2mvpn.strerror("INVAL")


def test_error_object_carries_code_name_and_detail():
    e = m2mvpn.M2mvpnError.from_code(-9, "no profile named 'x' is loaded")
    assert (e.code, e.name, e.detail) == (m2mvpn.ErrorCode.NOPROFILE, "NOPROFILE", "no profile named 'x' is loaded")
    assert e.message == "no such profile"
    assert "NOPROFILE" in str(e) and "'x'" in str(e)
    odd = m2mvpn.M2mvpnError.from_code(-999)
    assert odd.name == "UNKNOWN" and odd.code == -999


def test_library_path_follows_the_environment(monkeypatch):
    monkeypatch.setenv("M2MVPN_LIB", "/nonexistent/libm2mvpn.so.1")
    assert _native.library_path() == "/nonexistent/libm2mvpn.so.1"
    with pytest.raises(OSError):
        _native.load()
    monkeypatch.delenv("M2MVPN_LIB")
    assert _native.library_path() == "libm2mvpn.so.1"


def test_names_of_errors_states_events():
    import m2mvpn
    for code in m2mvpn.ErrorCode:
        if code.value < 0:
            assert m2mvpn.error_name(code) == code.name
    assert m2mvpn.error_name(0) == ""
    assert [m2mvpn.state_name(s) for s in m2mvpn.State] == [s.name.lower() for s in m2mvpn.State]
    assert m2mvpn.event_name(m2mvpn.EventType.PIN_REQUIRED) == "PIN_REQUIRED"
    assert m2mvpn.event_name(4242) == "UNKNOWN"
