# SPDX-License-Identifier: Apache-2.0
"""Python binding of libm2mvpn (ctypes), for test rigs and scripts.

    with m2mvpn.Client() as c:
        c.load_profile("atm.json")
        c.connect()
        c.wait_for_state("connected", timeout=20)
        print(c.status()["virtual_ip"])
        c.disconnect()

The library is loaded from $M2MVPN_LIB if set, else as libm2mvpn.so.1 through
the normal dynamic loader. See docs/python.md.
"""
from ._errors import ERROR_TABLE
from ._native import ErrorCode, EventType, LogLevel, State, library_path
from .client import (EVENT_QUEUE_MAX, Client, Event, M2mvpnError, StateTimeout, StatusSnapshot, bind_key,
                     error_name, event_name, state_name, strerror, version)

# The binding's own version (pyproject.toml); version() is the library's.
__version__ = "1.0.0"

__all__ = [
    "bind_key", "error_name", "event_name", "state_name",
    "Client", "Event", "StatusSnapshot", "M2mvpnError", "StateTimeout", "ErrorCode", "EventType", "LogLevel",
    "State", "ERROR_TABLE", "EVENT_QUEUE_MAX", "strerror", "version", "library_path", "__version__",
]
