# SPDX-License-Identifier: Apache-2.0
"""Roaming with MOBIKE (RFC 4555): our client <-> a strongSwan gateway.

What a user checks:
- the client's underlay address goes away in the middle of a long TCP
  transfer through the tunnel and another one comes up on a second uplink:
  the transfer completes intact, the gateway lists the same IKE SA at the
  new address, the client reports ROAMED and counts the roam, and the
  underlay never carries plaintext for the protected network meanwhile;
- the NAT in front of the client changes its mapping (another public
  address): the client notices in its liveness check, the gateway follows
  and traffic continues;
- a gateway without MOBIKE: the client reconnects at once over the new
  path and traffic recovers.
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

import charon as charonmod
import m2mvpn_client
import netlab

pytestmark = pytest.mark.needs_m2mvpn

PROTECTED = netlab.PROTECTED_ADDRS[0]
UPLINK0, UPLINK1 = netlab.CLIENT_UPLINKS
# An IP packet with an inside address on the underlay: plaintext for the
# protected network, or a tunnel packet sent from the virtual IP. (ARP is
# left out: in the first milliseconds after the address goes, before the
# client unbinds its socket from that link, the kernel may ask the link for
# the gateway with the virtual IP as sender; no data leaves that way.)
LEAK_FILTER = "ip and net 198.18.0.0/15"
TUNNEL_FILTER = "udp port 4500"
CONTROL_ADDR = "198.18.99.1"            # + 0 / 1: where the control packets go
_CONTROL_SEND = ("import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                 ".sendto(b'control', (sys.argv[1], 9))")

# The server in the gateway's protected network sends `total` random bytes,
# paced (so the transfer lasts long enough for the move to fall inside it),
# and prints their SHA-256; the client prints what it received.
_PACED = r"""
import hashlib, os, socket, sys, time
role, addr, port, total, rate, timeout = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                          int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
h = hashlib.sha256()
n = 0
if role == "serve":
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(1)
    ls.settimeout(timeout)
    print("ready", flush=True)
    s, _ = ls.accept()
    s.settimeout(timeout)
    chunk = 16384
    t0 = time.monotonic()
    while n < total:
        data = os.urandom(min(chunk, total - n))
        s.sendall(data)
        h.update(data)
        n += len(data)
        ahead = n / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
else:
    s = socket.create_connection((addr, port), timeout=timeout)
    s.settimeout(timeout)
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        h.update(b)
        n += len(b)
s.close()
print(n, h.hexdigest(), flush=True)
"""


class PacedTransfer:
    """A TCP download through the tunnel in the background: server in the
    gateway's namespace (on the protected address), client in the client's."""

    def __init__(self, topo, total: int, rate: int, port: int = 40100, timeout_s: float = 60):
        self.timeout_s = timeout_s
        self.srv = topo.gateway.popen([netlab.PYTHON, "-c", _PACED, "serve", PROTECTED, str(port), str(total),
                                       str(rate), str(timeout_s)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.srv.stdout.readline().strip() == "ready", self.srv.stderr.read()
        self.cl = topo.client.popen([netlab.PYTHON, "-c", _PACED, "fetch", PROTECTED, str(port), str(total),
                                     str(rate), str(timeout_s)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> tuple[tuple[int, str], tuple[int, str]]:
        """((bytes sent, SHA-256), (bytes received, SHA-256))."""
        try:
            cl_out, cl_err = self.cl.communicate(timeout=self.timeout_s + 10)
            srv_out, srv_err = self.srv.communicate(timeout=self.timeout_s + 10)
        finally:
            for p in (self.cl, self.srv):
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert self.cl.returncode == 0, f"client side of the transfer failed: {cl_err}"
        assert self.srv.returncode == 0, f"server side of the transfer failed: {srv_err}"
        sent, received = srv_out.split(), cl_out.split()
        return (int(sent[0]), sent[1]), (int(received[0]), received[1])


def binary_or_skip():
    binary = m2mvpn_client.find_binary()
    if binary is None:
        pytest.skip("tools/m2mvpn not built (set M2MVPN_BINARY): our client is not tested")
    return binary


def roaming_setup(topology, charons, pki, workdir, *, gw_mobike: bool = True):
    """The multihomed client with only its first uplink (eth0) addressed:
    the second one (eth1) is cabled but has no address yet. A kill switch
    profile, connected."""
    binary = binary_or_skip()
    topo = topology("multihomed")
    topo.client.ip("addr", "flush", "dev", UPLINK1[0])    # its default route goes with it
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"], mobike=gw_mobike), name="gw")
    prof = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr, kill_switch=True)
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, binary, workdir / "c")
    client.connect()
    client.wait_for_state("connected")
    sa = gw.wait_for_sa("psk", "net")
    assert sa["remote-host"] == UPLINK0[1], sa
    assert netlab.ping(topo.client, PROTECTED, count=2) == 2
    return topo, gw, client, sa


def move_to_second_uplink(topo) -> None:
    """eth0 loses its address (and its routes), then eth1 gets one and a
    default route: the device moved from one network to another."""
    cl_if, cl_addr, rt_addr, _ = UPLINK0
    topo.client.ip("addr", "del", f"{cl_addr}/26", "dev", cl_if)
    time.sleep(0.3)
    cl_if, cl_addr, rt_addr, _ = UPLINK1
    topo.client.ip("addr", "add", f"{cl_addr}/26", "dev", cl_if)
    topo.client.ip("route", "add", "default", "via", rt_addr, "dev", cl_if, "metric", "200")


def wait_for_remote_host(gw, host: str, timeout_s: float = 20) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        sas = [s for s in gw.list_sas() if s.get("name") == "psk" and s.get("state") == "ESTABLISHED"]
        if sas and sas[0].get("remote-host") == host:
            return sas[0]
        assert time.monotonic() < deadline, f"gateway SAs not at {host}: {sas}" + gw.log_tail()
        time.sleep(0.2)


def test_tcp_transfer_survives_the_move(topology, charons, pki, workdir):
    topo, gw, client, before = roaming_setup(topology, charons, pki, workdir)
    caps = [netlab.Capture(topo.router, rt_if, workdir / f"{rt_if}.pcap").start()
            for rt_if in (UPLINK0[3], UPLINK1[3])]
    try:
        # The control: an inside address on each uplink is seen by the
        # capture and its filter (sent by the router, towards the client).
        for k, (_, _, _, rt_if) in enumerate((UPLINK0, UPLINK1)):
            topo.router.ip("route", "add", f"{CONTROL_ADDR}{k}/32", "dev", rt_if)
            topo.router.ip("neigh", "add", f"{CONTROL_ADDR}{k}", "lladdr", "02:00:00:00:00:99", "dev", rt_if)
            topo.router.run(netlab.PYTHON, "-c", _CONTROL_SEND, f"{CONTROL_ADDR}{k}")
        # 6 MB at 1 MB/s: the move falls well inside it.
        xfer = PacedTransfer(topo, total=6_000_000, rate=1_000_000)
        time.sleep(1.5)
        move_to_second_uplink(topo)
        sent, received = xfer.result()
        time.sleep(0.5)   # what is still on its way reaches the captures
    finally:
        for cap in caps:
            cap.stop()
    assert sent[0] == 6_000_000 and received == sent, (sent, received, client.log_tail(80))
    after = wait_for_remote_host(gw, UPLINK1[1])
    for key in ("uniqueid", "initiator-spi", "responder-spi"):
        assert after[key] == before[key], key       # the same IKE SA, moved
    st = client.status()
    log = client.log_path.read_text()
    assert st["state"] == "connected", (st, log[-6000:])
    assert st["transitions"]["roams"] >= 1, (st, log[-6000:])
    assert st["transitions"]["reconnects"] == 0, (st, log[-6000:])
    assert "event ROAMED" in log, log
    assert "up -> roaming" in log and "roaming -> up" in log, log
    # No plaintext for the protected network on either uplink, and the
    # captures were not blind: each saw the tunnel.
    for cap in caps:
        seen = cap.read(LEAK_FILTER)
        leaks = [p for p in seen if CONTROL_ADDR not in p]
        assert len(seen) > len(leaks), f"the control packet is not in the {cap.ifname} capture"
        assert not leaks, f"plaintext on {cap.ifname}:\n" + "\n".join(leaks[:20])
        assert cap.read(TUNNEL_FILTER), f"no tunnel traffic on {cap.ifname}: the capture is blind"
    # The old uplink has no address left: the tunnel runs over the new one.
    assert any(UPLINK1[1] in p for p in caps[1].read(TUNNEL_FILTER))
    client.stop()


def test_gateway_without_mobike_reconnects_at_once(topology, charons, pki, workdir):
    topo, gw, client, before = roaming_setup(topology, charons, pki, workdir, gw_mobike=False)
    assert "does not support MOBIKE" in client.log_path.read_text()
    t0 = time.monotonic()
    move_to_second_uplink(topo)
    while netlab.ping(topo.client, PROTECTED, count=1, timeout_s=1) != 1:
        assert time.monotonic() - t0 < 30, "no traffic 30 s after the move" + client.log_tail(80)
    after = wait_for_remote_host(gw, UPLINK1[1])
    assert after["initiator-spi"] != before["initiator-spi"]   # a new IKE SA
    st = client.wait_for_state("connected")
    assert st["transitions"]["reconnects"] >= 1, st
    assert st["transitions"]["roams"] == 0, st
    log = client.log_path.read_text()
    assert "the gateway has no MOBIKE" in log, log
    assert "event ROAMED" not in log, log
    client.stop()


# NAT in front of the client without connection tracking, so that its
# mapping can be changed at once: the router rewrites the client's address
# to a public one on the way out, and back on the way in. The gateway reaches
# both public addresses through the router.
NAT_PUBLIC = ("198.51.100.3", "198.51.100.4")


def stateless_nat(public: str) -> str:
    return f"""
table ip m2i_snat {{
    chain raw {{
        type filter hook prerouting priority -300; policy accept;
        notrack
        iifname "cl0" ip saddr {netlab.CLIENT_ADDR_ROUTED} ip saddr set {public}
        iifname "gw0" ip daddr {public} ip daddr set {netlab.CLIENT_ADDR_ROUTED}
    }}
}}
"""


def test_nat_mapping_change(topology, charons, pki, workdir):
    binary = binary_or_skip()
    topo = topology("routed")
    for public in NAT_PUBLIC:
        topo.gateway.add_route(f"{public}/32", via=netlab.ROUTER_GW_SIDE)
    topo.router.nft(stateless_nat(NAT_PUBLIC[0]))
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    prof = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr, kill_switch=True)
    prof["ike"]["dpd_s"] = 2
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, binary, workdir / "c")
    client.connect()
    client.wait_for_state("connected")
    before = gw.wait_for_sa("psk", "net")
    assert before["remote-host"] == NAT_PUBLIC[0], before
    assert netlab.ping(topo.client, PROTECTED, count=2) == 2
    flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=12)
    time.sleep(2)
    # The NAT's mapping changes: another public address from now on.
    topo.router.run("nft", "delete", "table", "ip", "m2i_snat")
    topo.router.nft(stateless_nat(NAT_PUBLIC[1]))
    after = wait_for_remote_host(gw, NAT_PUBLIC[1], timeout_s=15)
    assert after["initiator-spi"] == before["initiator-spi"]   # the same IKE SA
    res = flood.result()
    assert netlab.ping(topo.client, PROTECTED, count=3) == 3
    st = client.status()
    assert st["state"] == "connected" and st["transitions"]["roams"] >= 1, st
    assert "NAT mapping" in client.log_path.read_text()
    # traffic went on: most of the flood was answered
    assert res["lost"] < res["sent"] / 2, res
    client.stop()


# Gateway failover (RFC 4555 §3.5): the gateway has a second address on its
# underlay and announces it (ADDITIONAL_IP4_ADDRESS in IKE_AUTH); the first
# one stops answering.
GW_ADDR_B = "198.51.100.5"


def drop_address(addr: str) -> str:
    """The gateway's side: nothing in or out on one of its addresses."""
    return f"""
table inet m2i_fo {{
    chain in {{
        type filter hook input priority -10; policy accept;
        ip daddr {addr} udp dport {{ 500, 4500 }} drop
    }}
    chain out {{
        type filter hook output priority -10; policy accept;
        ip saddr {addr} udp sport {{ 500, 4500 }} drop
    }}
}}
"""


def test_gateway_failover_to_its_other_address(topology, charons, pki, workdir):
    binary = binary_or_skip()
    topo = topology("direct")
    topo.gateway.add_addr("eth0", f"{GW_ADDR_B}/24")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    prof = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr, kill_switch=True)
    prof["ike"].update({"dpd_s": 2, "retransmit_timeout_s": 0.5, "retransmit_base": 1.5, "retransmit_tries": 2})
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, binary, workdir / "c")
    client.connect()
    client.wait_for_state("connected")
    before = gw.wait_for_sa("psk", "net")
    assert before["local-host"] == topo.gw_addr, before
    log = client.log_path.read_text()
    # the gateway's list arrived (authenticated IKE_AUTH answer)
    assert "supports MOBIKE" in log and "other address" in log, log
    assert netlab.ping(topo.client, PROTECTED, count=2) == 2
    # Address A stops answering: the client must move to B by itself.
    topo.gateway.nft(drop_address(topo.gw_addr))
    t0 = time.monotonic()
    time.sleep(0.5)
    while netlab.ping(topo.client, PROTECTED, count=1, timeout_s=1) != 1:
        assert time.monotonic() - t0 < 40, "no traffic 40 s after the gateway's address went silent" + \
            client.log_tail(80) + gw.log_tail(40)
    gap = time.monotonic() - t0
    print(f"failover: traffic again {gap:.1f} s after the gateway's first address went silent")
    assert netlab.ping(topo.client, PROTECTED, count=3) == 3
    deadline = time.monotonic() + 10
    while True:
        sas = [s for s in gw.list_sas() if s.get("name") == "psk" and s.get("state") == "ESTABLISHED"]
        if sas and sas[0].get("local-host") == GW_ADDR_B:
            after = sas[0]
            break
        assert time.monotonic() < deadline, f"gateway SA not at {GW_ADDR_B}: {sas}" + gw.log_tail()
        time.sleep(0.2)
    for key in ("uniqueid", "initiator-spi", "responder-spi"):
        assert after[key] == before[key], key       # the same IKE SA, moved
    assert len(gw.list_sas()) == 1
    st = client.status()
    log = client.log_path.read_text()
    assert st["state"] == "connected", (st, log[-6000:])
    assert st["transitions"]["roams"] >= 1, (st, log[-6000:])
    assert st["transitions"]["reconnects"] == 0, (st, log[-6000:])
    roamed = [line for line in log.splitlines() if "event ROAMED" in line]
    assert roamed and any(GW_ADDR_B in line for line in roamed), log[-6000:]
    assert not any("NAT" in line for line in roamed), roamed    # there is none here
    client.stop()
