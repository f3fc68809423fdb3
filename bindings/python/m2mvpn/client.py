# SPDX-License-Identifier: Apache-2.0
"""Pythonic wrapper: Client (one m2mvpn handle), events, errors.

The test-rig shape (docs/python.md):

    with m2mvpn.Client() as c:
        c.load_profile("atm.json")
        c.connect()
        c.wait_for_state("connected", timeout=20)
        print(c.status()["virtual_ip"])
        c.disconnect()
"""
from __future__ import annotations

import collections
import ctypes
import dataclasses
import json
import os
import select
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterator, Optional, Tuple, Union

from . import _native
from ._errors import ERROR_TABLE
from ._native import EventType, LogLevel, State, enum_or_int

_NAMES = {value: name for name, value, _ in ERROR_TABLE}
_MESSAGES = {value: msg for _, value, msg in ERROR_TABLE}

# Secrets, names and paths: what a caller may pass for a C string.
StrOrBytes = Union[str, bytes, bytearray, memoryview]
Secret = Union[str, bytes, bytearray]
PathLike = Union[str, "os.PathLike[str]"]
ProfileSource = Union[PathLike, Dict[str, Any]]
EventCallback = Callable[["Client", "Event"], None]
LogCallback = Callable[[LogLevel, str, str], None]

# Events kept for events()/next_event() before the oldest are dropped: a
# rig that never reads them must not grow without bound.
EVENT_QUEUE_MAX = 1024
_POLL_S = 0.05  # how often wait_for_state() looks at the status between events


class M2mvpnError(Exception):
    """A call of libm2mvpn failed.

    code:    the negative M2MVPN_E_* value (an ErrorCode member when known)
    name:    its name without prefix, e.g. "NOPROFILE"
    detail:  m2mvpn_last_error() of the handle right after the failure
    message: the static m2mvpn_strerror() text
    """

    def __init__(self, code: int, name: str, detail: str = "") -> None:
        super().__init__(code, name, detail)
        self.code: int = enum_or_int(_native.ErrorCode, code)
        self.name: str = name
        self.detail: str = detail
        self.message: str = _MESSAGES.get(code, "unknown error")

    def __str__(self) -> str:
        return "%s (%d): %s" % (self.name, int(self.code), self.detail or self.message)

    @classmethod
    def from_code(cls, code: int, detail: str = "") -> "M2mvpnError":
        return cls(code, _NAMES.get(code, "UNKNOWN"), detail)


class StateTimeout(TimeoutError):
    """wait_for_state() gave up: the state was not reached in time.

    wanted:     the state waited for ("connected", ...)
    timeout:    seconds waited
    status:     the last status (dict, as Client.status()) seen
    last_error: its "last_error" member: {"code", "name", "message", "detail"}
    """

    def __init__(self, wanted: str, timeout: float, status: Dict[str, Any]) -> None:
        self.wanted = wanted
        self.timeout = timeout
        self.status = status
        self.last_error: Dict[str, Any] = dict(status.get("last_error") or {})
        err = self.last_error
        why = ("; last error %s: %s" % (err.get("name"), err.get("detail") or err.get("message"))
               if err.get("code") else "; no error reported")
        super().__init__("state %r not reached within %g s: the state is %r%s"
                         % (wanted, timeout, status.get("state"), why))


def _to_bytes(value: Any, what: str, allow_none: bool = False) -> Optional[bytes]:
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


def _secret_buffer(value: Any, what: str, nul_ok: bool) -> Tuple[ctypes.Array, int]:
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


def _state_word(state: Union[str, int]) -> str:
    """"connected" for "connected", State.CONNECTED or 2."""
    if isinstance(state, str):
        word = state.lower()
        if word not in {s.name.lower() for s in State}:
            raise ValueError("unknown state %r (one of: %s)" % (state, ", ".join(s.name.lower() for s in State)))
        return word
    if isinstance(state, int):
        return State(state).name.lower()
    raise TypeError("state must be a str or State, not %s" % type(state).__name__)


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
    time: float = 0.0  # time.monotonic() when it arrived

    @property
    def name(self) -> str:
        """"STATE_CHANGED", "AUTH_FAILED", ... (EventType name)."""
        return self.type.name if isinstance(self.type, EventType) else str(int(self.type))

    @property
    def error_name(self) -> str:
        """"AUTH_LOCAL" for M2MVPN_E_AUTH_LOCAL, "" for no error."""
        return _NAMES.get(self.error, "UNKNOWN") if self.error else ""

    @property
    def state_name(self) -> str:
        """The new state as in status: "idle", "connecting", ..."""
        return self.state.name.lower() if isinstance(self.state, State) else str(int(self.state))


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
    dns: Tuple[str, ...]  # DNS servers the gateway assigned (empty slots left out)
    spi_in: int
    spi_out: int
    dropped_replay: int
    dropped_integrity: int
    dropped_no_sa: int
    credential_source: str
    credential: str
    cert_subject: str
    cert_not_after: int
    struct_size: int
    warnings: str = ""  # what weakens the active profile, "; "-separated (appended)
    reconnects: int = 0  # times the tunnel came up again after a failure or renewal (appended)
    rekeys: int = 0
    roams: int = 0
    last_change: int = 0  # Unix time of the last move of the connection
    last_reason: str = ""  # why it moved


def version(lib: Optional[ctypes.CDLL] = None) -> str:
    """m2mvpn_version(): the library's version string."""
    return (lib or _native.load()).m2mvpn_version().decode()


def strerror(code: int, lib: Optional[ctypes.CDLL] = None) -> str:
    """m2mvpn_strerror(code): the static message of an error code."""
    if not isinstance(code, int):
        raise TypeError("code must be an int")
    return (lib or _native.load()).m2mvpn_strerror(code).decode()


def bind_key(key_path: PathLike, out_path: PathLike, sources: Optional[str] = None,
             lib: Optional[ctypes.CDLL] = None) -> None:
    """m2mvpn_bind_key(): write a copy of the PEM key at key_path bound to
    this machine's fingerprint (sources: "machine-id,mac:eth0", None for the
    library's default) to out_path. Raises M2mvpnError with the reason."""
    lib = lib or _native.load()
    err = ctypes.create_string_buffer(512)
    r = lib.m2mvpn_bind_key(_to_bytes(os.fspath(key_path), "key_path"), _to_bytes(os.fspath(out_path), "out_path"),
                            _to_bytes(sources, "sources", allow_none=True), err, ctypes.sizeof(err))
    if r < 0:
        raise M2mvpnError.from_code(r, err.value.decode("utf-8", "replace"))


def error_name(code: int, lib: Optional[ctypes.CDLL] = None) -> str:
    """m2mvpn_error_name(code): "AUTH_LOCAL" for M2MVPN_E_AUTH_LOCAL, "" for 0."""
    return (lib or _native.load()).m2mvpn_error_name(int(code)).decode()


def state_name(state: int, lib: Optional[ctypes.CDLL] = None) -> str:
    """m2mvpn_state_name(state): "idle", "connecting", ... as in status JSON."""
    return (lib or _native.load()).m2mvpn_state_name(int(state)).decode()


def event_name(event_type: int, lib: Optional[ctypes.CDLL] = None) -> str:
    """m2mvpn_event_name(type): "STATE_CHANGED", "PIN_REQUIRED", ..."""
    return (lib or _native.load()).m2mvpn_event_name(int(event_type)).decode()


class Client:
    """One VPN client instance (an m2mvpn handle).

    Every event is kept in a bounded queue (events(), next_event()) and, if
    on_event(client, event) is given, also passed to it on the engine thread.
    log(level, subsystem, message) receives finished log lines. Both are kept
    referenced for the life of the Client, as ctypes requires.

    The engine: with auto_start (the default) the library's engine thread is
    started by the first connect(), switch_profile(), wait_for_state() or
    event wait, unless the application drives it itself (start(), or
    fileno()/process()/run_once() from its own loop; waits then drive that
    loop themselves).

    Use as a context manager, or call close(). Every failing call raises
    M2mvpnError. Secrets passed in are copied into a ctypes buffer that is
    zeroed after the call; the Python str/bytes you passed cannot be wiped.
    """

    def __init__(self, on_event: Optional[EventCallback] = None, log: Optional[LogCallback] = None,
                 log_level: int = LogLevel.INFO, library: Optional[str] = None, auto_start: bool = True) -> None:
        self._h: Optional[ctypes.c_void_p] = None
        self._lib = _native.load(library)
        self._lock = threading.Lock()
        self._on_event = on_event
        self._auto_start = auto_start
        self._driven: Optional[str] = None  # None, "thread" or "external"
        self._events: Deque[Event] = collections.deque(maxlen=EVENT_QUEUE_MAX)
        self._event_cv = threading.Condition()
        # The C side holds these function pointers: keep them alive.
        self._event_thunk = _native.EVENT_CALLBACK(self._dispatch_event)
        self._log_thunks: list = []  # every log hook ever installed: an old one may still be running
        self._log: Optional[LogCallback] = None
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
    def handle(self) -> ctypes.c_void_p:
        """The raw handle (ctypes.c_void_p) for direct calls through m2mvpn._native."""
        return self._require_open()

    @property
    def closed(self) -> bool:
        return self._h is None

    def close(self) -> None:
        """m2mvpn_free(): stop the engine, tear down, wipe secrets. Idempotent."""
        h, self._h = getattr(self, "_h", None), None
        if h is not None:
            self._lib.m2mvpn_free(h)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.close()
        return False

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing sensible left to do
            pass

    def _require_open(self) -> ctypes.c_void_p:
        if self._h is None:
            raise ValueError("the Client is closed")
        return self._h

    def _check(self, rc: int) -> int:
        if rc < 0:
            raise M2mvpnError.from_code(rc, self._lib.m2mvpn_last_error(self._h).decode("utf-8", "replace"))
        return rc

    @property
    def last_error(self) -> str:
        """m2mvpn_last_error(): detail of the last failed call on this handle."""
        return self._lib.m2mvpn_last_error(self._require_open()).decode("utf-8", "replace")

    # ----------------------------------------------------------- callbacks

    @property
    def on_event(self) -> Optional[EventCallback]:
        return self._on_event

    @on_event.setter
    def on_event(self, fn: Optional[EventCallback]) -> None:
        self._on_event = fn

    def _dispatch_event(self, _h: Any, ev_ptr: Any, _userdata: Any) -> None:
        ev = ev_ptr.contents
        event = Event(
            type=enum_or_int(EventType, ev.type),
            error=ev.error,
            detail=(ev.detail or b"").decode("utf-8", "replace"),
            state=enum_or_int(State, ev.state),
            old_state=enum_or_int(State, ev.old_state),
            profile=(ev.profile or b"").decode("utf-8", "replace"),
            struct_size=ev.struct_size,
            time=time.monotonic(),
        )
        with self._event_cv:
            self._events.append(event)  # the oldest goes when full
            self._event_cv.notify_all()
        fn = self._on_event
        if fn is not None:
            fn(self, event)

    def set_log(self, fn: Optional[LogCallback], level: int = LogLevel.INFO) -> None:
        """m2mvpn_set_log(): fn(level: LogLevel, subsystem: str, message: str), or None to remove."""
        h = self._require_open()
        if fn is None:
            thunk = _native.LOG_CALLBACK()
        else:
            def hook(_h: Any, lvl: int, subsystem: Optional[bytes], msg: Optional[bytes], _userdata: Any) -> None:
                fn(enum_or_int(LogLevel, lvl), (subsystem or b"").decode("utf-8", "replace"),
                   (msg or b"").decode("utf-8", "replace"))
            thunk = _native.LOG_CALLBACK(hook)
        if not isinstance(level, int):
            raise TypeError("level must be an int or LogLevel")
        with self._lock:
            self._log_thunks.append(thunk)
        self._check(self._lib.m2mvpn_set_log(h, thunk, int(level), None))
        self._log = fn

    # ------------------------------------------------------------ profiles

    def load_profile(self, source: ProfileSource) -> None:
        """Load profiles from a file path (str or os.PathLike; relative paths
        inside resolve against its folder) or from a dict (one profile or
        {"profiles": [...]}; relative paths resolve against the working
        directory). Profiles of the same name are replaced."""
        if isinstance(source, dict):
            self.load_profile_json(source)
        elif isinstance(source, (str, os.PathLike)):
            self.load_profile_file(source)
        else:
            raise TypeError("source must be a path or a dict, not %s" % type(source).__name__)

    def load_profile_file(self, path: PathLike) -> None:
        """m2mvpn_profile_load_file()."""
        h = self._require_open()
        self._check(self._lib.m2mvpn_profile_load_file(h, _to_bytes(os.fspath(path), "path")))

    def load_profile_json(self, text: Union[StrOrBytes, Dict[str, Any]]) -> None:
        """m2mvpn_profile_load_json(): JSON text (str, bytes) or a dict (serialised here)."""
        h = self._require_open()
        if isinstance(text, dict):
            text = json.dumps(text)
        data = _to_bytes(text, "json")
        assert data is not None
        self._check(self._lib.m2mvpn_profile_load_json(h, data, len(data)))

    def set_state_dir(self, path: PathLike) -> None:
        """m2mvpn_set_state_dir() (1.2): the folder of a managed device's key,
        certificate and delivered profile; before loading a bootstrap."""
        h = self._require_open()
        self._check(self._lib.m2mvpn_set_state_dir(h, _to_bytes(os.fspath(path), "path")))

    def update_result(self, version: str, ok: bool, details: str | None = None) -> None:
        """m2mvpn_update_result() (1.2): how installing the update `version`
        (handed over by an UPDATE_AVAILABLE event) went; sent to the server."""
        h = self._require_open()
        self._check(self._lib.m2mvpn_update_result(h, _to_bytes(version, "version"), 1 if ok else 0,
                                                   _to_bytes(details, "details") if details else None))

    def decommission(self) -> None:
        """m2mvpn_decommission() (1.3): ask the management server to revoke this
        device's certificate (CMP RR signed with the device key), then stop the
        tunnel and remove the credential. Returns once queued; the outcome is a
        DECOMMISSIONED event (error 0: done; else nothing changed, detail says
        why, or, when the request may have reached the server unanswered, the
        decommissioning is unfinished: detail says to call again). Raises M2mvpnError (STATE) when the device is not enrolled."""
        h = self._require_open()
        self._check(self._lib.m2mvpn_decommission(h))

    def switch_profile(self, name: str) -> None:
        """m2mvpn_profile_switch(): make `name` the active profile (make-before-break
        where the running tunnel allows it; a STATE_CHANGED event says which)."""
        h = self._require_open()
        self._check(self._lib.m2mvpn_profile_switch(h, _to_bytes(name, "name")))
        self._ensure_engine()

    def unload_profile(self, name: str) -> None:
        """m2mvpn_profile_unload(): drop the profile and everything it set up
        on the device (TUN, addresses, routes, kill switch)."""
        h = self._require_open()
        self._check(self._lib.m2mvpn_profile_unload(h, _to_bytes(name, "name")))

    # ----------------------------------------------------------- tunnel

    def connect(self) -> None:
        """m2mvpn_connect(); starts the engine thread first if nothing drives it yet."""
        h = self._require_open()
        self._check(self._lib.m2mvpn_connect(h))
        self._ensure_engine()

    def disconnect(self) -> None:
        """m2mvpn_disconnect()."""
        self._check(self._lib.m2mvpn_disconnect(self._require_open()))

    def set_credentials(self, user: Optional[StrOrBytes], password: Secret) -> None:
        """m2mvpn_set_credentials(); user None keeps the profile's identity.
        password: str, bytes or bytearray."""
        h = self._require_open()
        u = _to_bytes(user, "user", allow_none=True)
        secret, _ = _secret_buffer(password, "password", nul_ok=False)
        try:
            self._check(self._lib.m2mvpn_set_credentials(h, u, secret))
        finally:
            ctypes.memset(secret, 0, ctypes.sizeof(secret))

    def enter_pin(self, pin: Secret) -> None:
        """m2mvpn_enter_pin(): str, bytes or bytearray. The library refuses
        empty, NUL-containing or over-long PINs (INVAL)."""
        h = self._require_open()
        secret, n = _secret_buffer(pin, "pin", nul_ok=True)  # the library judges the bytes
        try:
            self._check(self._lib.m2mvpn_enter_pin(h, secret, n))
        finally:
            ctypes.memset(secret, 0, ctypes.sizeof(secret))

    # ------------------------------------------------------------- status

    def status(self) -> Dict[str, Any]:
        """m2mvpn_status_json() parsed: {"state": "connected", "virtual_ip": ...,
        "last_error": {...}, "counters": {...}, ...} (docs/api/m2mvpn_status_json.md)."""
        return json.loads(self.status_json_text())

    def status_json_text(self) -> str:
        """m2mvpn_status_json() as the library's exact text."""
        h = self._require_open()
        out = ctypes.c_void_p()
        self._check(self._lib.m2mvpn_status_json(h, ctypes.byref(out)))
        try:
            return ctypes.string_at(out.value).decode("utf-8")
        finally:
            self._lib.m2mvpn_string_free(out)

    def status_snapshot(self) -> StatusSnapshot:
        """m2mvpn_get_status() (the fixed-size struct) as a StatusSnapshot."""
        h = self._require_open()
        st = _native.Status()
        st.struct_size = ctypes.sizeof(st)
        self._check(self._lib.m2mvpn_get_status(h, ctypes.byref(st)))

        def text(b: bytes) -> str:
            return b.decode("utf-8", "replace")
        return StatusSnapshot(
            state=enum_or_int(State, st.state), last_error=st.last_error, profile=text(st.profile),
            gateway=text(st.gateway), virtual_ip=text(st.virtual_ip), last_error_text=text(st.last_error_text),
            bytes_in=st.bytes_in, bytes_out=st.bytes_out, packets_in=st.packets_in, packets_out=st.packets_out,
            packets_dropped=st.packets_dropped, connected_since=st.connected_since,
            ike_algorithms=text(st.ike_algorithms), esp_algorithms=text(st.esp_algorithms),
            dns=tuple(text(d.value) for d in st.dns if d.value), spi_in=st.spi_in, spi_out=st.spi_out,
            dropped_replay=st.dropped_replay, dropped_integrity=st.dropped_integrity,
            dropped_no_sa=st.dropped_no_sa, credential_source=text(st.credential_source),
            credential=text(st.credential), cert_subject=text(st.cert_subject),
            cert_not_after=st.cert_not_after, struct_size=st.struct_size, warnings=text(st.warnings),
            reconnects=st.reconnects, rekeys=st.rekeys, roams=st.roams, last_change=st.last_change,
            last_reason=text(st.last_reason))

    def wait_for_state(self, state: Union[str, State], timeout: float) -> Dict[str, Any]:
        """Wait until the tunnel is in `state` ("connected", State.IDLE, ...)
        and return that status. Raises StateTimeout (a TimeoutError carrying
        the last status and its last error) after `timeout` seconds."""
        wanted = _state_word(state)
        if not isinstance(timeout, (int, float)) or timeout < 0:
            raise ValueError("timeout must be a number of seconds >= 0")
        self._ensure_engine()
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if st.get("state") == wanted:
                return st
            left = deadline - time.monotonic()
            if left <= 0:
                raise StateTimeout(wanted, timeout, st)
            self._wait_a_little(min(left, _POLL_S))

    # --------------------------------------------------------------- events

    def next_event(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The oldest event not taken yet, waiting up to `timeout` seconds
        (None: for ever); None if none came. Events arrive whichever way the
        engine is driven; at most EVENT_QUEUE_MAX are kept (oldest dropped)."""
        self._require_open()
        self._ensure_engine()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._event_cv:
                if self._events:
                    return self._events.popleft()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._wait_a_little(_POLL_S if left is None else min(left, _POLL_S))

    def events(self, timeout: Optional[float] = 0.0) -> Iterator[Event]:
        """Iterate over events as they come: each next one is waited for up
        to `timeout` seconds (None: for ever); the iteration ends when none
        came in time. events() with the default 0 yields what is queued now.

            for ev in c.events(timeout=5):
                print(ev.name, ev.state_name, ev.error_name, ev.detail)
        """
        while True:
            ev = self.next_event(timeout)
            if ev is None:
                return
            yield ev

    def clear_events(self) -> None:
        """Forget the events queued so far."""
        with self._event_cv:
            self._events.clear()

    # ------------------------------------------------------- engine drive

    def _ensure_engine(self) -> None:
        if self._auto_start and self._driven is None:
            self.start()

    def _wait_a_little(self, seconds: float) -> None:
        """Let the engine work for up to `seconds`: drive it if we are its
        loop, else sleep until an event or the time is up."""
        if self._driven == "external":
            self.run_once(seconds)
            return
        with self._event_cv:
            self._event_cv.wait(seconds)

    def start(self) -> None:
        """m2mvpn_start(): run the engine on a library thread."""
        self._check(self._lib.m2mvpn_start(self._require_open()))
        self._driven = "thread"

    def stop(self) -> None:
        """m2mvpn_stop()."""
        self._check(self._lib.m2mvpn_stop(self._require_open()))
        self._driven = None

    def fileno(self) -> int:
        """m2mvpn_get_fd(): poll it for POLLIN, then call process()."""
        fd = self._check(self._lib.m2mvpn_get_fd(self._require_open()))
        self._driven = "external"
        return fd

    def timeout_ms(self) -> int:
        """m2mvpn_get_timeout_ms(): milliseconds until process() is due, -1 for no timer."""
        rc = self._lib.m2mvpn_get_timeout_ms(self._require_open())
        # -1 means "no timer" here, not M2MVPN_E_INVAL: this call's errors
        # (BADHANDLE, BUSY) are all below -1.
        return rc if rc >= -1 else self._check(rc)

    def process(self) -> None:
        """m2mvpn_process(): do all pending work without blocking."""
        self._check(self._lib.m2mvpn_process(self._require_open()))
        self._driven = "external"

    def run_once(self, max_wait_s: Optional[float] = None) -> bool:
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
