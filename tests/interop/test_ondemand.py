# SPDX-License-Identifier: Apache-2.0
"""On-demand mode (docs/guide.md, lib/conn/conn.h): with "mode": "on-demand"
the TUN, the routes of the protected network and the kill switch are in
place from the start and no IKE SA exists; the first packet for the protected
network starts the connection and is held meanwhile, then sent through the
tunnel (so the very first ping is answered); after tunnel.on_demand_idle_s
without traffic the tunnel closes, and the next packet brings it up again.
A capture on the client's underlay shows no plaintext for the protected
network throughout (after showing that it would see a leak: the control in
test_killswitch.leak_test_network).
"""

from __future__ import annotations

import time

import netlab
import m2mvpn_client
from test_killswitch import (MARKER, PROTECTED, TUNNEL_FILTER, assert_kill_switch_routes,
                             assert_no_leak, binary_or_skip, kill_switch_profile,
                             leak_test_network)

IDLE_S = 4

# One ICMP echo request; its reply (same id and sequence, same payload) is
# awaited up to argv[2] seconds, time enough for the connection to come up.
# Prints the seconds it took, or -1.
_ONE_PING = r"""
import os, select, socket, struct, sys, time
dst, wait = sys.argv[1], float(sys.argv[2])
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, payload = os.getpid() & 0xffff, b"m2m-on-demand-first-packet"
hdr = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
start = time.monotonic()
s.sendto(struct.pack("!BBHHH", 8, 0, csum(hdr + payload), ident, 1) + payload, (dst, 0))
took = -1
while time.monotonic() - start < wait:
    if not select.select([s], [], [], wait - (time.monotonic() - start))[0]:
        break
    data, addr = s.recvfrom(65535)
    ihl = (data[0] & 0x0f) * 4
    t, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
    if t == 0 and (rid, rseq) == (ident, 1) and addr[0] == dst and data[ihl + 8:] == payload:
        took = time.monotonic() - start
        break
print(took)
"""


def first_ping(ns: netlab.Namespace, addr: str, wait_s: float = 15) -> float:
    proc = ns.run(netlab.PYTHON, "-c", _ONE_PING, addr, str(wait_s), timeout=wait_s + 10)
    return float(proc.stdout.strip())


def wait_no_sa(gw, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while gw.list_sas():
        assert time.monotonic() < deadline, "the gateway kept the SA"
        time.sleep(0.1)


def test_on_demand_first_packet_idle_close_and_again(topology, charons, pki, workdir):
    binary = binary_or_skip()
    topo, gw = leak_test_network(topology, charons, pki, workdir)
    profile = kill_switch_profile(pki, topo.gw_addr, mode="on-demand")
    profile["tunnel"]["on_demand_idle_s"] = IDLE_S
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        with netlab.Capture(topo.client, "eth0", workdir / "ondemand.pcap", marker=MARKER) as cap:
            # Armed: routes and kill switch in place, no SA, nothing sent.
            time.sleep(1)
            st = client.status()
            assert st["state"] == "idle" and st["child_sa"] is None, st
            assert not gw.list_sas()
            assert_kill_switch_routes(topo.client)

            # The first packet starts the connection and is itself answered.
            took = first_ping(topo.client, PROTECTED)
            assert took >= 0, "the first ping was not answered" + client.log_tail(40)
            st = client.wait_for_state("connected", timeout_s=10)
            assert st["transitions"]["last_reason"].startswith("CHILD SA"), st
            gw.wait_for_sa("psk", "net")
            assert netlab.ping(topo.client, PROTECTED, count=2) == 2

            # Idle: closed after IDLE_S without traffic, armed again.
            st = client.wait_for_state("idle", timeout_s=IDLE_S + 20)
            assert st["last_error"]["code"] == 0, st
            assert st["transitions"]["last_reason"] == f"no traffic for {IDLE_S} s", st
            wait_no_sa(gw)
            assert_kill_switch_routes(topo.client)

            # And the next packet brings it up again.
            assert first_ping(topo.client, PROTECTED) >= 0, client.log_tail(40)
            st = client.wait_for_state("connected", timeout_s=10)
        assert_no_leak(cap)
        assert cap.read(TUNNEL_FILTER), "the capture saw no tunnel traffic: it cannot have seen a leak"
