# SPDX-License-Identifier: Apache-2.0
"""Always-on retries as the engine documents them (lib/conn/conn.c):

- back-off: after each consecutive failed attempt the next one waits about
  1000 ms, then twice as long each time (up to 60000 ms); a connection that
  comes up resets it, so the first failure after it waits about 1000 ms again.
  "About": each delay is jittered by up to 20 % either way (CONN_JITTER_PCT in
  lib/conn/conn.h), so the test accepts [0.8, 1.2] x the nominal delay. The
  bands of consecutive steps do not overlap (1.2 x d < 0.8 x 2d), so a
  schedule that stopped doubling, or was not reset, still fails;
- failover: an attempt that times out moves on to the next gateway of the
  list, and past the last one back to the first.

The engine logs "connecting to HOST:PORT" for every attempt and "reconnecting
in N ms" for every retry it schedules; LogWatcher stamps each line with the
time it appeared, so the test checks the delays as logged and that an attempt
never started before its delay was over (a lower bound only: under load
everything may take longer).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

import charon as charonmod
import m2mvpn_client
import netlab

pytestmark = pytest.mark.skipif(m2mvpn_client.find_binary() is None,
                                reason="M2MVPN_BINARY (tools/m2mvpn) is not built")
PROTECTED = netlab.PROTECTED_ADDRS[0]
SILENT_GW = "198.51.100.99"   # on the link, but nobody there
BLOCK = ("table inet m2i_block {\n chain in {\n  type filter hook input priority 0;\n"
         "  udp dport { 500, 4500 } drop\n }\n}\n")
# One attempt against a silent gateway: 0.5 s + one retransmit of 0.75 s.
FAST_FAIL = {"retransmit_timeout_s": 0.5, "retransmit_base": 1.5, "retransmit_tries": 1}

ATTEMPT = re.compile(r"\[conn\] connecting to (\S+) ")
RETRY = re.compile(r"\[conn\] reconnecting in (\d+) ms")
JITTER = 0.2   # CONN_JITTER_PCT / 100


def assert_schedule(delays: list[int], nominal: list[int], events) -> None:
    """Each logged delay lies within the jitter band of its nominal value."""
    assert len(delays) == len(nominal), (delays, nominal, events)
    for got, base in zip(delays, nominal):
        assert base * (1 - JITTER) <= got <= base * (1 + JITTER), (delays, nominal, events)


class LogWatcher:
    """Follows a growing log file; every complete line with its arrival time."""

    def __init__(self, path: Path):
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "LogWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self.path.exists() and not self._stop.is_set():
            time.sleep(0.01)
        with open(self.path, errors="replace") as f:
            partial = ""
            while not self._stop.is_set():
                chunk = f.read()
                if not chunk:
                    time.sleep(0.01)
                    continue
                now = time.monotonic()
                partial += chunk
                *done, partial = partial.split("\n")
                with self._lock:
                    self.lines.extend((now, line) for line in done)

    def events(self) -> list[tuple[float, str, str]]:
        """(time, "attempt", "HOST:PORT") and (time, "retry", "N") in log order."""
        with self._lock:
            lines = list(self.lines)
        out = []
        for t, line in lines:
            if m := ATTEMPT.search(line):
                out.append((t, "attempt", m.group(1)))
            elif m := RETRY.search(line):
                out.append((t, "retry", m.group(1)))
        return out

    def retries(self) -> list[int]:
        return [int(v) for _, kind, v in self.events() if kind == "retry"]

    def attempts(self) -> list[str]:
        return [v for _, kind, v in self.events() if kind == "attempt"]

    def wait_for(self, what: str, pred, timeout_s: float, client) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            assert time.monotonic() < deadline, f"{what} not seen in {timeout_s}s; " \
                f"events {self.events()}" + client.log_tail(40)
            assert client.proc.poll() is None, "m2mvpn run exited" + client.log_tail(40)
            time.sleep(0.05)


def assert_waited(events: list[tuple[float, str, str]]) -> None:
    """Each attempt after a "reconnecting in N ms" started no earlier than N ms
    after it (minus a little for when the watcher saw each line)."""
    for i, (t, kind, value) in enumerate(events):
        if kind != "retry":
            continue
        nxt = next((e for e in events[i + 1:] if e[1] == "attempt"), None)
        if nxt is None:
            continue
        waited = nxt[0] - t
        assert waited >= 0.8 * int(value) / 1000, (value, waited, events)


def always_on_profile(pki, gateways: list[str]) -> dict:
    prof = m2mvpn_client.make_profile(pki, "psk", gateways[-1], mode="always-on")
    prof["gateways"] = [{"host": g, "port": 500} for g in gateways]
    prof["ike"].update(FAST_FAIL)
    return prof


def test_backoff_doubles_and_resets_after_a_connection(topology, charons, pki, workdir):
    topo = topology("direct")
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    topo.gateway.nft(BLOCK)   # the gateway is silent from the start
    prof = always_on_profile(pki, [topo.gw_addr])
    prof["ike"]["dpd_s"] = 2  # notices the lost gateway later on
    client = m2mvpn_client.M2mvpnClient(topo.client, m2mvpn_client.find_binary(), workdir, prof)
    with LogWatcher(client.log_path) as log:
        client.start()
        try:
            # 1) Consecutive failures: 1000, 2000, 4000, 8000 ms.
            log.wait_for("four retries", lambda: len(log.retries()) >= 4, 60, client)
            assert_schedule(log.retries()[:4], [1000, 2000, 4000, 8000], log.events())
            st = client.status()
            assert st["state"] == "reconnecting" and st["last_error"]["name"] == "TIMEOUT", st
            # 2) The gateway answers again: the next attempt (after the
            #    about 8000 ms) connects.
            topo.gateway.run("nft", "delete", "table", "inet", "m2i_block")
            client.wait_for_state("connected", timeout_s=60)
            assert netlab.ping(topo.client, PROTECTED, count=2) == 2
            n_before = len(log.retries())
            assert n_before == 4, log.events()   # no failure in between
            # 3) It goes silent again: the liveness check fails, and the
            #    first retry waits 1000 ms again, the next one 2000 ms.
            topo.gateway.nft(BLOCK)
            log.wait_for("a retry after the connection", lambda: len(log.retries()) > n_before, 60, client)
            assert_schedule(log.retries()[n_before:n_before + 1], [1000], log.events())
            log.wait_for("the retry after it", lambda: len(log.retries()) > n_before + 1, 30, client)
            assert_schedule(log.retries()[n_before + 1:n_before + 2], [2000], log.events())
            assert_waited(log.events())
            # Every attempt went to the one gateway of the list.
            assert set(log.attempts()) == {f"{topo.gw_addr}:500"}, log.events()
        finally:
            client.stop()


def test_failover_wraps_past_the_last_gateway(topology, charons, pki, workdir):
    """Gateways [A, B]: A never answers, B is silent at first. The attempts go
    A, B, A (past the last gateway back to the first); once B answers, the
    engine connects to B after A has timed out once more."""
    topo = topology("direct")
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    topo.gateway.nft(BLOCK)
    a, b = f"{SILENT_GW}:500", f"{topo.gw_addr}:500"
    prof = always_on_profile(pki, [SILENT_GW, topo.gw_addr])
    client = m2mvpn_client.M2mvpnClient(topo.client, m2mvpn_client.find_binary(), workdir, prof)
    with LogWatcher(client.log_path) as log:
        client.start()
        try:
            log.wait_for("the third attempt", lambda: len(log.attempts()) >= 3, 60, client)
            assert log.attempts()[:3] == [a, b, a], log.events()
            topo.gateway.run("nft", "delete", "table", "inet", "m2i_block")
            st = client.wait_for_state("connected", timeout_s=60)
            assert st["gateway"] == b, st
            attempts = log.attempts()
            # Strictly alternating, starting with A and ending with B.
            assert attempts == [a, b] * (len(attempts) // 2), log.events()
            assert_waited(log.events())
            assert netlab.ping(topo.client, PROTECTED, count=2) == 2
        finally:
            client.stop()
