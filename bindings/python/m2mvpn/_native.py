# SPDX-License-Identifier: Apache-2.0
"""Low-level ctypes view of include/m2mvpn/m2mvpn.h: structs, callback types,
and the prototype of every public call. Most users want m2mvpn.Client."""
import ctypes
import enum
import os
import threading

from ._errors import ERROR_TABLE

# ------------------------------------------------------------------ enums


class State(enum.IntEnum):
    """m2mvpn_state: tunnel states (also "state" in status JSON, lowercase)."""
    IDLE = 0
    CONNECTING = 1
    CONNECTED = 2
    RECONNECTING = 3
    DISCONNECTING = 4


class EventType(enum.IntEnum):
    """m2mvpn_event_type."""
    STATE_CHANGED = 1
    PIN_REQUIRED = 2
    CREDENTIALS_REQUIRED = 3
    ROAMED = 4
    REKEYED = 5
    AUTH_FAILED = 6
    CONFIG_UPDATED = 7
    UPDATE_AVAILABLE = 8
    CERT_RENEWED = 9
    ENROLLED = 10
    DECOMMISSIONED = 11


class LogLevel(enum.IntEnum):
    """enum m2mvpn_log_level."""
    ERROR = 0
    WARNING = 1
    INFO = 2
    DEBUG = 3


# One member per row of the C error table; OK is 0.
ErrorCode = enum.IntEnum("ErrorCode", [("OK", 0)] + [(n, v) for n, v, _ in ERROR_TABLE])
ErrorCode.__doc__ = "m2mvpn_error: 0 or a negative M2MVPN_E_* code (generated from the header)."


def enum_or_int(enum_cls, value):
    """The enum member for value, or the plain int for values a newer library added."""
    try:
        return enum_cls(value)
    except ValueError:
        return int(value)


# ---------------------------------------------------------------- structs


class Event(ctypes.Structure):
    """struct m2mvpn_event (valid only during the callback)."""
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("type", ctypes.c_int),
        ("error", ctypes.c_int),
        ("detail", ctypes.c_char_p),
        ("state", ctypes.c_int),
        ("old_state", ctypes.c_int),
        ("profile", ctypes.c_char_p),
    ]


# void (*on_event)(m2mvpn *h, const m2mvpn_event *ev, void *userdata)
EVENT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(Event), ctypes.c_void_p)
# void (*m2mvpn_log_cb)(m2mvpn *h, int level, const char *subsystem, const char *msg, void *userdata)
LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                                ctypes.c_void_p)


class Callbacks(ctypes.Structure):
    """m2mvpn_callbacks."""
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("on_event", EVENT_CALLBACK),
    ]


class Status(ctypes.Structure):
    """m2mvpn_status. Set struct_size = ctypes.sizeof(Status) before m2mvpn_get_status."""
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("state", ctypes.c_int),
        ("last_error", ctypes.c_int),
        ("profile", ctypes.c_char * 64),
        ("gateway", ctypes.c_char * 64),
        ("virtual_ip", ctypes.c_char * 48),
        ("last_error_text", ctypes.c_char * 256),
        ("bytes_in", ctypes.c_uint64),
        ("bytes_out", ctypes.c_uint64),
        ("packets_in", ctypes.c_uint64),
        ("packets_out", ctypes.c_uint64),
        ("packets_dropped", ctypes.c_uint64),
        ("connected_since", ctypes.c_int64),
        ("ike_algorithms", ctypes.c_char * 96),
        ("esp_algorithms", ctypes.c_char * 96),
        ("dns", (ctypes.c_char * 48) * 4),
        ("spi_in", ctypes.c_uint32),
        ("spi_out", ctypes.c_uint32),
        ("dropped_replay", ctypes.c_uint64),
        ("dropped_integrity", ctypes.c_uint64),
        ("dropped_no_sa", ctypes.c_uint64),
        ("warnings", ctypes.c_char * 256),      # appended after the first 1.0 header
        ("credential_source", ctypes.c_char * 16),
        ("credential", ctypes.c_char * 160),
        ("cert_subject", ctypes.c_char * 256),
        ("cert_not_after", ctypes.c_int64),
        ("reconnects", ctypes.c_uint64),        # appended after warnings
        ("rekeys", ctypes.c_uint64),
        ("roams", ctypes.c_uint64),
        ("last_change", ctypes.c_int64),
        ("last_reason", ctypes.c_char * 128),
    ]


# ------------------------------------------------------------- prototypes

_h = ctypes.c_void_p
_str = ctypes.c_char_p
_int = ctypes.c_int

# name: (restype, argtypes)
PROTOTYPES = {
    "m2mvpn_new": (_int, [ctypes.POINTER(Callbacks), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]),
    "m2mvpn_free": (None, [_h]),
    "m2mvpn_profile_load_file": (_int, [_h, _str]),
    "m2mvpn_profile_load_json": (_int, [_h, _str, ctypes.c_size_t]),
    "m2mvpn_profile_switch": (_int, [_h, _str]),
    "m2mvpn_profile_unload": (_int, [_h, _str]),
    "m2mvpn_connect": (_int, [_h]),
    "m2mvpn_disconnect": (_int, [_h]),
    "m2mvpn_set_credentials": (_int, [_h, _str, ctypes.c_void_p]),
    "m2mvpn_enter_pin": (_int, [_h, ctypes.c_void_p, ctypes.c_size_t]),
    "m2mvpn_get_status": (_int, [_h, ctypes.POINTER(Status)]),
    # char ** out: a void pointer, so the string can be handed back to m2mvpn_string_free.
    "m2mvpn_status_json": (_int, [_h, ctypes.POINTER(ctypes.c_void_p)]),
    "m2mvpn_string_free": (None, [ctypes.c_void_p]),
    "m2mvpn_start": (_int, [_h]),
    "m2mvpn_stop": (_int, [_h]),
    "m2mvpn_get_fd": (_int, [_h]),
    "m2mvpn_get_timeout_ms": (_int, [_h]),
    "m2mvpn_process": (_int, [_h]),
    "m2mvpn_set_log": (_int, [_h, LOG_CALLBACK, _int, ctypes.c_void_p]),
    "m2mvpn_last_error": (_str, [_h]),
    "m2mvpn_strerror": (_str, [_int]),
    "m2mvpn_error_name": (_str, [_int]),
    "m2mvpn_state_name": (_str, [_int]),
    "m2mvpn_event_name": (_str, [_int]),
    "m2mvpn_version": (_str, []),
    "m2mvpn_bind_key": (_int, [_str, _str, _str, ctypes.c_char_p, ctypes.c_size_t]),
    "m2mvpn_set_state_dir": (_int, [_h, _str]),
    "m2mvpn_update_result": (_int, [_h, _str, _int, _str]),
    "m2mvpn_decommission": (_int, [_h]),
}

_loaded = {}
_load_lock = threading.Lock()


def library_path():
    """Where the library is taken from: $M2MVPN_LIB, else the loader's libm2mvpn.so.1."""
    return os.environ.get("M2MVPN_LIB") or "libm2mvpn.so.1"


def load(path=None):
    """Load libm2mvpn (once per path) and declare every public prototype.

    Raises OSError if the library cannot be loaded and AttributeError if it
    lacks a public call (an older library than this binding)."""
    path = path or library_path()
    with _load_lock:
        lib = _loaded.get(path)
        if lib is None:
            lib = ctypes.CDLL(path)
            for name, (restype, argtypes) in PROTOTYPES.items():
                fn = getattr(lib, name)
                fn.restype = restype
                fn.argtypes = argtypes
            _loaded[path] = lib
        return lib
