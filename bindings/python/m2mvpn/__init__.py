# SPDX-License-Identifier: Apache-2.0
"""Python binding of libm2mvpn (ctypes), for test rigs and scripts.

The library is loaded from $M2MVPN_LIB if set, else as libm2mvpn.so.1 through
the normal dynamic loader. See docs/python.md.
"""
from ._errors import ERROR_TABLE
from ._native import ErrorCode, EventType, LogLevel, State, library_path
from .client import (Client, Event, M2mvpnError, StatusSnapshot, bind_key, error_name, event_name,
                     state_name, strerror, version)

__all__ = [
    "bind_key", "error_name", "event_name", "state_name",
    "Client", "Event", "StatusSnapshot", "M2mvpnError", "ErrorCode", "EventType", "LogLevel", "State",
    "ERROR_TABLE", "strerror", "version", "library_path",
]
