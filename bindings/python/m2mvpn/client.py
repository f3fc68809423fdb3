# SPDX-License-Identifier: Apache-2.0
"""Pythonic wrapper: Client (one m2mvpn handle), events, errors."""
import ctypes
import dataclasses
import json
import os
import select
import threading

from . import _native
from ._errors import ERROR_TABLE
from ._native import EventType, LogLevel, State, enum_or_int

_NAMES = {value: name for name, value, _ in ERROR_TABLE}
_MESSAGES = {value: msg for _, value, msg in ERROR_TABLE}


class M2mvpnError(Exception):
    """A call of libm2mvpn failed.

    code:    the negative M2MVPN_E_* value (an ErrorCode member when known)
    name:    its name without prefix, e.g. "NOPROFILE"
    detail:  m2mvpn_last_error() of the handle right after the failure
    message: the static m2mvpn_strerror() text
    """

    def __init__(self, code, name, detail=""):
        super().__init__(code, name, detail)
        self.code = enum_or_int(_native.ErrorCode, code)
        self.name = name
        self.detail = detail
        self.message = _MESSAGES.get(code, "unknown error")

    def __str__(self):
        return "%s (%d): %s" % (self.name, int(self.code), self.detail or self.message)

    @classmethod
    def from_code(cls, code, detail=""):
        return cls(code, _NAMES.get(code, "UNKNOWN"), detail)


def _to_bytes(value, what, allow_none=False):
    """str/bytes -> bytes for a C string; refuses what C would silently cut."""
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        value = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
    else:
        raise TypeError("%s must be str or bytes, not %s" % (what, type(value).__name__))
    if b"\0" in value:
        raise ValueError("%s contains a NUL byte" % what)
    return value


def _secret_buffer(value, what, nul_ok):
    """A zero-terminated ctypes copy of a secret; the caller zeroes it after use.
    A bytearray is copied straight into the buffer (no immutable copy that
    could not be wiped); a str has to be encoded first."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError("%s must be str, bytes or bytearray, not %s" % (what, type(value).__name__))
    if not nul_ok and b"\0" in value:
        raise ValueError("%s contains a NUL byte" % what)
    n = len(value)
    buf = ctypes.create_string_buffer(n + 1)
    if n:
        src = (ctypes.c_char * n).from_buffer(value) if isinstance(value, bytearray) else value
        ctypes.memmove(buf, src, n)
    return buf, n


@dataclasses.dataclass(frozen=True)
class Event:
    """A copy of one m2mvpn_event, safe to keep after the callback."""
    type: EventType
    error: int
    detail: str
    state: State
    old_state: State
    profile: str
    struct_size: int


@dataclasses.dataclass(frozen=True)
class StatusSnapshot:
    """m2mvpn_get_status() as Python values."""
    state: State
    last_error: int
    profile: str
    gateway: str
    virtual_ip: str
    last_error_text: str
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    packets_dropped: int
    connected_since: int
    ike_algorithms: str
    esp_algorithms: str
    dns: tuple          # DNS servers the gateway assigned (empty slots left out)
    spi_in: int
    spi_out: int
    dropped_replay: int
    dropped_integrity: int
    dropped_no_sa: int
    struct_size: int


def version(lib=None):
    """m2mvpn_version(): the library's version string."""
    return (lib or _native.load()).m2mvpn_version().decode()


def strerror(code, lib=None):
    """m2mvpn_strerror(code): the static message of an error code."""
    if not isinstance(code, int):
        raise TypeError("code must be an int")
    return (lib or _native.load()).m2mvpn_strerror(code).decode()


def bind_key(key_path, out_path, sources=None, lib=None):
    """m2mvpn_bind_key(): write a copy of the PEM key at key_path bound to
    this machine's fingerprint (sources: "machine-id,mac:eth0", None for the
    library's default) to out_path. Raises M2mvpnError with the reason."""
    lib = lib or _native.load()
    err = ctypes.create_string_buffer(512)
    r = lib.m2mvpn_bind_key(_to_bytes(key_path, "key_path"), _to_bytes(out_path, "out_path"),
                            _to_bytes(sources, "sources", allow_none=True), err, ctypes.sizeof(err))
    if r < 0:
        raise M2mvpnError.from_code(r, err.value.decode("utf-8", "replace"))


def error_name(code, lib=None):
    """m2mvpn_error_name(code): "AUTH_LOCAL" for M2MVPN_E_AUTH_LOCAL, "" for 0."""
    return (lib or _native.load()).m2mvpn_error_name(int(code)).decode()


def state_name(state, lib=None):
    """m2mvpn_state_name(state): "idle", "connecting", ... as in status JSON."""
    return (lib or _native.load()).m2mvpn_state_name(int(state)).decode()


def event_name(event_type, lib=None):
    """m2mvpn_event_name(type): "STATE_CHANGED", "PIN_REQUIRED", ..."""
    return (lib or _native.load()).m2mvpn_event_name(int(event_type)).decode()


class Client:
    """One VPN client instance (an m2mvpn handle).

    on_event(client, event): called with an Event on the engine thread (or
    inside process()). log(level, subsystem, message): finished log lines.
    Both are kept referenced for the life of the Client, as ctypes requires.
    Use as a context manager, or call close(). Every failing call raises
    M2mvpnError. Secrets passed in are copied into a ctypes buffer that is
    zeroed after the call; the Python str/bytes you passed cannot be wiped.
    """

    def __init__(self, on_event=None, log=None, log_level=LogLevel.INFO, library=None):
        self._lib = _native.load(library)
        self._lock = threading.Lock()
        self._on_event = on_event
        # The C side holds these function pointers: keep them alive.
        self._event_thunk = _native.EVENT_CALLBACK(self._dispatch_event)
        self._log_thunks = []  # every log hook ever installed: an old one may still be running
        self._log = None
        cbs = _native.Callbacks(ctypes.sizeof(_native.Callbacks), self._event_thunk)
        handle = ctypes.c_void_p()
        rc = self._lib.m2mvpn_new(ctypes.byref(cbs), None, ctypes.byref(handle))
        if rc < 0:
            raise M2mvpnError.from_code(rc, "m2mvpn_new failed")
        self._h = handle
        if log is not None:
            self.set_log(log, log_level)

    # -------------------------------------------------------------- basics

    @property
    def handle(self):
        """The raw handle (ctypes.c_void_p) for direct calls through m2mvpn._native."""
        self._require_open()
        return self._h

    @property
    def closed(self):
        return self._h is None

    def close(self):
        """m2mvpn_free(): stop the engine, tear down, wipe secrets. Idempotent."""
        h, self._h = getattr(self, "_h", None), None
        if h is not None:
            self._lib.m2mvpn_free(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing sensible left to do
            pass

    def _require_open(self):
        if self._h is None:
            raise ValueError("the Client is closed")

    def _check(self, rc):
        if rc < 0:
            raise M2mvpnError.from_code(rc, self._lib.m2mvpn_last_error(self._h).decode("utf-8", "replace"))
        return rc

    @property
    def last_error(self):
        """m2mvpn_last_error(): detail of the last failed call on this handle."""
        self._require_open()
        return self._lib.m2mvpn_last_error(self._h).decode("utf-8", "replace")

    # ----------------------------------------------------------- callbacks

    @property
    def on_event(self):
        return self._on_event

    @on_event.setter
    def on_event(self, fn):
        self._on_event = fn

    def _dispatch_event(self, _h, ev_ptr, _userdata):
        fn = self._on_event
        if fn is None:
            return
        ev = ev_ptr.contents
        event = Event(
            type=enum_or_int(EventType, ev.type),
            error=ev.error,
            detail=(ev.detail or b"").decode("utf-8", "replace"),
            state=enum_or_int(State, ev.state),
            old_state=enum_or_int(State, ev.old_state),
            profile=(ev.profile or b"").decode("utf-8", "replace"),
            struct_size=ev.struct_size,
        )
        fn(self, event)

    def set_log(self, fn, level=LogLevel.INFO):
        """m2mvpn_set_log(): fn(level: LogLevel, subsystem: str, message: str), or None to remove."""
        self._require_open()
        if fn is None:
            thunk = _native.LOG_CALLBACK()
        else:
            def hook(_h, lvl, subsystem, msg, _userdata):
                fn(enum_or_int(LogLevel, lvl), (subsystem or b"").decode("utf-8", "replace"),
                   (msg or b"").decode("utf-8", "replace"))
            thunk = _native.LOG_CALLBACK(hook)
        if not isinstance(level, int):
            raise TypeError("level must be an int or LogLevel")
        with self._lock:
            self._log_thunks.append(thunk)
        self._check(self._lib.m2mvpn_set_log(self._h, thunk, int(level), None))
        self._log = fn

    # ------------------------------------------------------------ profiles

    def load_profile_file(self, path):
        """m2mvpn_profile_load_file()."""
        self._require_open()
        self._check(self._lib.m2mvpn_profile_load_file(self._h, _to_bytes(os.fspath(path), "path")))

    def load_profile_json(self, text):
        """m2mvpn_profile_load_json(): text is str, bytes, or a dict (serialised here)."""
        self._require_open()
        if isinstance(text, dict):
            text = json.dumps(text)
        data = _to_bytes(text, "json")
        self._check(self._lib.m2mvpn_profile_load_json(self._h, data, len(data)))

    def switch(self, name):
        """m2mvpn_profile_switch()."""
        self._require_open()
        self._check(self._lib.m2mvpn_profile_switch(self._h, _to_bytes(name, "name")))

    def unload_profile(self, name):
        """m2mvpn_profile_unload(): drop the profile and everything it set up
        on the device (TUN, addresses, routes, kill switch)."""
        self._require_open()
        self._check(self._lib.m2mvpn_profile_unload(self._h, _to_bytes(name, "name")))

    # ----------------------------------------------------------- tunnel

    def connect(self):
        """m2mvpn_connect()."""
        self._require_open()
        self._check(self._lib.m2mvpn_connect(self._h))

    def disconnect(self):
        """m2mvpn_disconnect()."""
        self._require_open()
        self._check(self._lib.m2mvpn_disconnect(self._h))

    def set_credentials(self, user, password):
        """m2mvpn_set_credentials(); user None keeps the profile's identity.
        password: str, bytes or bytearray."""
        self._require_open()
        u = _to_bytes(user, "user", allow_none=True)
        secret, _ = _secret_buffer(password, "password", nul_ok=False)
        try:
            self._check(self._lib.m2mvpn_set_credentials(self._h, u, secret))
        finally:
            ctypes.memset(secret, 0, ctypes.sizeof(secret))

    def enter_pin(self, pin):
        """m2mvpn_enter_pin(): str, bytes or bytearray. The library refuses
        empty, NUL-containing or over-long PINs (INVAL)."""
        self._require_open()
        secret, n = _secret_buffer(pin, "pin", nul_ok=True)  # the library judges the bytes
        try:
            self._check(self._lib.m2mvpn_enter_pin(self._h, secret, n))
        finally:
            ctypes.memset(secret, 0, ctypes.sizeof(secret))

    # ------------------------------------------------------------- status

    def status(self):
        """m2mvpn_get_status() as a StatusSnapshot."""
        self._require_open()
        st = _native.Status()
        st.struct_size = ctypes.sizeof(st)
        self._check(self._lib.m2mvpn_get_status(self._h, ctypes.byref(st)))
        text = lambda b: b.decode("utf-8", "replace")  # noqa: E731
        return StatusSnapshot(
            state=enum_or_int(State, st.state), last_error=st.last_error, profile=text(st.profile),
            gateway=text(st.gateway), virtual_ip=text(st.virtual_ip), last_error_text=text(st.last_error_text),
            bytes_in=st.bytes_in, bytes_out=st.bytes_out, packets_in=st.packets_in, packets_out=st.packets_out,
            packets_dropped=st.packets_dropped, connected_since=st.connected_since,
            ike_algorithms=text(st.ike_algorithms), esp_algorithms=text(st.esp_algorithms),
            dns=tuple(text(d.value) for d in st.dns if d.value), spi_in=st.spi_in, spi_out=st.spi_out,
            dropped_replay=st.dropped_replay, dropped_integrity=st.dropped_integrity,
            dropped_no_sa=st.dropped_no_sa, struct_size=st.struct_size)

    def status_json_text(self):
        """m2mvpn_status_json() as the library's exact text."""
        self._require_open()
        out = ctypes.c_void_p()
        self._check(self._lib.m2mvpn_status_json(self._h, ctypes.byref(out)))
        try:
            return ctypes.string_at(out.value).decode("utf-8")
        finally:
            self._lib.m2mvpn_string_free(out)

    def status_json(self):
        """m2mvpn_status_json() parsed into a dict."""
        return json.loads(self.status_json_text())

    # ------------------------------------------------------- engine drive

    def start(self):
        """m2mvpn_start(): run the engine on a library thread."""
        self._require_open()
        self._check(self._lib.m2mvpn_start(self._h))

    def stop(self):
        """m2mvpn_stop()."""
        self._require_open()
        self._check(self._lib.m2mvpn_stop(self._h))

    def fileno(self):
        """m2mvpn_get_fd(): poll it for POLLIN, then call process()."""
        self._require_open()
        return self._check(self._lib.m2mvpn_get_fd(self._h))

    def timeout_ms(self):
        """m2mvpn_get_timeout_ms(): milliseconds until process() is due, -1 for no timer."""
        self._require_open()
        rc = self._lib.m2mvpn_get_timeout_ms(self._h)
        # -1 means "no timer" here, not M2MVPN_E_INVAL: this call's errors
        # (BADHANDLE, BUSY) are all below -1.
        return rc if rc >= -1 else self._check(rc)

    def process(self):
        """m2mvpn_process(): do all pending work without blocking."""
        self._require_open()
        self._check(self._lib.m2mvpn_process(self._h))

    def run_once(self, max_wait_s=None):
        """One round of an external loop: wait for the fd or the engine's
        timer (at most max_wait_s seconds), then process(). Returns whether
        the fd was readable."""
        fd = self.fileno()
        t = self.timeout_ms()
        wait = None if t < 0 else t / 1000.0
        if max_wait_s is not None:
            wait = max_wait_s if wait is None else min(wait, max_wait_s)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        ready = bool(poller.poll(None if wait is None else int(wait * 1000)))
        self.process()
        return ready
