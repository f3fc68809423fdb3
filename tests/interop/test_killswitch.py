# SPDX-License-Identifier: Apache-2.0
"""Kill switch (DESIGN.md 8, lib/esp/esp.h "Kill switch"): with
tunnel.kill_switch on, no plaintext for the protected network leaves the
client's underlay in any state: after the profile is loaded and before the
first connect, after a disconnect, while the gateway is gone and the client
reconnects, and after `m2mvpn run` was killed with SIGKILL.

How leaks are seen: tcpdump on the client's underlay interface (eth0) while
the client sends UDP, TCP and ICMP to the protected addresses; any captured
packet with an address in 198.18.0.0/15 (outside the tunnel everything is
ESP in UDP between the 198.51.100.x underlay addresses) is plaintext that
left the device. The client gets a default route via the gateway, as a real
device has, so a leak has somewhere to go and the gateway (which has the
protected addresses on its lo) would even answer it: each test first shows
that without the client such traffic does leave and is captured, so the
capture and its filter can see a leak.

The kill switch is policy, not route metrics: our routes sit in a routing
table of our own that a rule consults before the main table, and (where the
build has libnftables) an nftables table drops protected traffic leaving by
any other interface. So routes others add to the main table cannot take
protected traffic: a more specific route via the underlay gateway (a DHCP
server's option 121 routes, TunnelVision CVE-2024-3661) or a LAN that
overlaps the protected network (TunnelCrack "LocalNet"), added before the
profile loads, while idle or while connected. Those tests capture on the far
side of the underlay (the gateway's eth0).
"""

from __future__ import annotations

import glob
import json
import os
import select
import signal
import subprocess
import time

import pytest

import charon as charonmod
import m2mvpn_client
import netlab

pytestmark = pytest.mark.needs_m2mvpn

TUN = "m2m0"
PROTECTED = netlab.PROTECTED_ADDRS[0]
LEAK_FILTER = "net 198.18.0.0/15"      # an inside address on the underlay
TUNNEL_FILTER = "udp port 4500"        # ESP in UDP and IKE after NAT-T
TCP_SINK_PORT = 40003
# Where Capture sends its end-of-capture marker: the gateway's underlay
# address, discard port (nothing listens; only the capture has to see it).
MARKER = (netlab.GW_ADDR, 9)
FAST = {"retransmit_timeout_s": 0.5, "retransmit_tries": 1, "retransmit_base": 1.5}

# Sends to the protected addresses until its stdin closes: a UDP datagram to
# each every 10 ms, and a TCP stream to the gateway's sink if one was opened
# ("tcp" argument; it is connected before "ready" is printed). Send errors
# (no route, no buffer space) are counted, never fatal. Prints
# "<udp sent> <errors> <tcp bytes>" at the end.
_TRAFFIC = r"""
import os, select, socket, sys, time
port, tcp_port, with_tcp = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "tcp"
targets = sys.argv[4:]
tcp = None
if with_tcp:
    tcp = socket.create_connection((targets[0], tcp_port), timeout=5)
    tcp.setblocking(False)
udp = socket.socket(socket.AF_INET6 if ":" in targets[0] else socket.AF_INET, socket.SOCK_DGRAM)
udp.setblocking(False)
print("ready", flush=True)
sent = errors = tcp_bytes = 0
chunk = b"m2m-kill-switch-probe" * 700
while True:
    if select.select([sys.stdin], [], [], 0.01)[0] and not os.read(sys.stdin.fileno(), 100):
        break
    for t in targets:
        try:
            udp.sendto(b"m2m-kill-switch-probe", (t, port))
            sent += 1
        except OSError:
            errors += 1
    if tcp is not None:
        try:
            tcp_bytes += tcp.send(chunk)
        except BlockingIOError:
            pass
        except OSError:
            errors += 1
print(sent, errors, tcp_bytes, flush=True)
"""

_TCP_SINK = r"""
import socket, sys
ls = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2])))
ls.listen(4)
print("ready", flush=True)
while True:
    c, _ = ls.accept()
    try:
        while c.recv(1 << 16):
            pass
    except OSError:
        pass
    c.close()
"""


def binary_or_skip():
    binary = m2mvpn_client.find_binary()
    if binary is None:
        pytest.skip("tools/m2mvpn not built (set M2MVPN_BINARY): our client is not tested")
    return binary


NO_ROUTE_ERRORS = ("Network is unreachable", "No route to host", "Invalid argument",
                   "Operation not permitted")


def ping_replies(ns: netlab.Namespace, addr: str, **kwargs) -> int:
    """netlab.ping, with a send refused by routing (no route, a blackhole or
    prohibit route, a firewall) counted as no reply."""
    try:
        return netlab.ping(ns, addr, **kwargs)
    except netlab.CommandError as exc:
        if any(e in exc.stderr for e in NO_ROUTE_ERRORS):
            return 0
        raise


class Traffic:
    """_TRAFFIC running in a namespace; stop() returns (udp sent, errors, tcp bytes)."""

    def __init__(self, ns: netlab.Namespace, *, tcp: bool = False,
                 targets=netlab.PROTECTED_ADDRS):
        self.proc = ns.popen([netlab.PYTHON, "-c", _TRAFFIC, "40002", str(TCP_SINK_PORT),
                              "tcp" if tcp else "udp", *targets],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"traffic generator did not start: {line!r} "
                               f"{self.proc.communicate()[1]}")

    def stop(self) -> tuple[int, int, int]:
        out, err = self.proc.communicate(timeout=10)   # closes its stdin first
        if self.proc.returncode != 0:
            raise RuntimeError(f"traffic generator failed: {err}")
        sent, errors, tcp_bytes = (int(x) for x in out.split())
        return sent, errors, tcp_bytes


def leak_test_network(topology, charons, pki, workdir, *, start_gateway: bool = True):
    """Direct topology, a default route on the client via the gateway, a PSK
    gateway (unless start_gateway is false: no charon, nothing answers IKE);
    proves that plaintext to the protected net would leave eth0 and be
    captured (the control). Returns (topology, gateway charon or None)."""
    topo = topology("direct")
    topo.client.add_route("default", via=topo.gw_addr)
    gw = None
    if start_gateway:
        gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    with netlab.Capture(topo.client, "eth0", workdir / "control.pcap", marker=MARKER) as cap:
        assert netlab.ping(topo.client, PROTECTED, count=1) == 1
        traffic = Traffic(topo.client)
        assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS[1], count=1) == 1
        sent, _, _ = traffic.stop()
    assert sent > 0
    control = cap.read(LEAK_FILTER)
    assert any("ICMP echo request" in p for p in control), control
    assert any(".40002: UDP" in p for p in control), control
    return topo, gw


def kill_switch_profile(pki, gw_addr: str, **kwargs) -> dict:
    profile = m2mvpn_client.make_profile(pki, "psk", gw_addr, kill_switch=True, **kwargs)
    profile["ike"].update(FAST)
    return profile


def assert_no_leak(cap: netlab.Capture) -> None:
    leaks = cap.read(LEAK_FILTER)
    assert not leaks, f"{len(leaks)} plaintext packets for the protected net left eth0:\n" \
        + "\n".join(leaks[:20])


# Whether the build has the nftables layer (meson sets it from the build;
# by hand the default is the full build, with it).
NFTABLES_BUILT = os.environ.get("M2MVPN_NFTABLES", "1") != "0"
NFT_TABLE = f"m2mvpn_{TUN}"
RULE_PRIORITY = 1000


def our_rules(ns: netlab.Namespace) -> list[dict]:
    """The policy rules that send unmarked traffic to a table of ours."""
    return [r for r in ns.ip_json("rule", "show")
            if r.get("priority") == RULE_PRIORITY and "not" in r and r.get("fwmark")]


def our_table(ns: netlab.Namespace) -> str:
    rules = our_rules(ns)
    assert len(rules) == 1, ns.ip_json("rule", "show")
    return rules[0]["table"]


def nft_tables(ns: netlab.Namespace) -> list[str]:
    return ns.run("nft", "list", "tables").stdout.split()


def assert_kill_switch_routes(ns: netlab.Namespace) -> None:
    """TUN route and blackhole in our table, the rule, the nftables table."""
    table = our_table(ns)
    routes = ns.ip_json("-4", "route", "show", "table", table, netlab.PROTECTED_NET)
    assert any(r.get("dev") == TUN for r in routes), routes
    assert any(r.get("type") == "blackhole" for r in routes), routes
    main = ns.ip_json("-4", "route", "show", "table", "main", netlab.PROTECTED_NET)
    assert not [r for r in main if r.get("dev") == TUN or r.get("type") == "blackhole"], main
    if NFTABLES_BUILT:
        assert NFT_TABLE in nft_tables(ns), nft_tables(ns)


def assert_kill_switch_gone(ns: netlab.Namespace) -> None:
    assert not our_rules(ns), ns.ip_json("rule", "show")
    assert not ns.ip_json("-4", "route", "show", "table", "all", netlab.PROTECTED_NET)
    assert NFT_TABLE not in nft_tables(ns), nft_tables(ns)


def route_dev(ns: netlab.Namespace, addr: str) -> str:
    """The interface `ip route get` picks for addr ("" when unroutable)."""
    got = ns.run("ip", "-j", "route", "get", addr, check=False)
    if got.returncode != 0:
        return ""
    return json.loads(got.stdout)[0].get("dev", "")


# One UDP datagram to each address (port 40002); send errors are ignored.
_PROBE = r"""
import socket, sys
for a in sys.argv[2:]:
    s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_DGRAM)
    if sys.argv[1]:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
    for _ in range(3):
        try:
            s.sendto(b"m2m-kill-switch-probe", (a, 40002))
        except OSError:
            pass
"""


def send_probes(ns: netlab.Namespace, addrs, bind_to: str = "") -> None:
    ns.run(netlab.PYTHON, "-c", _PROBE, bind_to, *addrs)


def underlay_ready(topo) -> None:
    """Both ends know each other's link-layer address, so no probe of a
    control waits for ARP while the capture is already stopping."""
    assert netlab.ping(topo.client, topo.gw_addr, count=1) == 1
    assert netlab.ping(topo.gateway, topo.client_addr, count=1) == 1


def probed(cap: netlab.Capture, addrs) -> set[str]:
    """Which of addrs the capture saw a probe datagram to."""
    seen = set()
    for line in cap.read("udp port 40002"):
        for a in addrs:
            if f"> {a}.40002:" in line:
                seen.add(a)
    return seen


# -- the tests ----------------------------------------------------------------------

def test_no_plaintext_before_first_connect(topology, charons, pki, workdir):
    """Profile loaded (manual mode, kill switch on), never connected: traffic
    for the protected net must not leave in plaintext."""
    binary = binary_or_skip()
    topo, _gw = leak_test_network(topology, charons, pki, workdir)
    profile = kill_switch_profile(pki, topo.gw_addr)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        assert client.status()["state"] == "idle"
        assert_kill_switch_routes(topo.client)   # in place from the load on
        with netlab.Capture(topo.client, "eth0", workdir / "before.pcap", marker=MARKER) as cap:
            traffic = Traffic(topo.client)
            replies = ping_replies(topo.client, PROTECTED, count=2, timeout_s=3)
            sent, errors, _ = traffic.stop()
        assert sent + errors > 0   # it tried
        assert_no_leak(cap)
        assert replies == 0, "the protected address answered in plaintext"


def test_no_plaintext_while_first_connect_fails(topology, charons, pki, workdir):
    """Always-on profile (kill switch on) at boot while the gateway does not
    answer IKE: the client keeps trying and nothing for the protected net
    leaves in plaintext meanwhile."""
    binary = binary_or_skip()
    topo, _ = leak_test_network(topology, charons, pki, workdir, start_gateway=False)
    profile = kill_switch_profile(pki, topo.gw_addr, mode="always-on")
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        st = client.wait_for_state("reconnecting", timeout_s=10)
        assert st["last_error"]["code"] != 0, st
        with netlab.Capture(topo.client, "eth0", workdir / "boot.pcap", marker=MARKER) as cap:
            traffic = Traffic(topo.client)
            replies = ping_replies(topo.client, PROTECTED, count=2, timeout_s=3)
            sent, errors, _ = traffic.stop()
        assert client.status()["state"] in ("reconnecting", "connecting")
        assert sent + errors > 0   # it tried
        assert_no_leak(cap)
        assert replies == 0, "the protected address answered in plaintext"


def test_no_plaintext_after_disconnect(topology, charons, pki, workdir):
    """Connected, then `m2mvpn disconnect`: the routes stay in the TUN and
    nothing for the protected net leaves in plaintext."""
    binary = binary_or_skip()
    topo, gw = leak_test_network(topology, charons, pki, workdir)
    profile = kill_switch_profile(pki, topo.gw_addr)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        client.wait_for_state("connected")
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2   # through the tunnel
        client.disconnect()
        client.wait_for_state("idle")
        deadline = time.monotonic() + 10
        while gw.list_sas():
            assert time.monotonic() < deadline, "gateway kept the SA after disconnect"
            time.sleep(0.1)
        assert_kill_switch_routes(topo.client)
        with netlab.Capture(topo.client, "eth0", workdir / "after.pcap", marker=MARKER) as cap:
            traffic = Traffic(topo.client)
            replies = ping_replies(topo.client, PROTECTED, count=2, timeout_s=3)
            sent, errors, _ = traffic.stop()
        assert sent + errors > 0   # it tried
        assert_no_leak(cap)
        assert replies == 0


def test_no_plaintext_while_gateway_is_down(topology, charons, pki, workdir):
    """Always-on, connected, a TCP stream and UDP running through the tunnel;
    the gateway's charon stops: while the client reconnects, the capture on
    its underlay shows the tunnel (UDP/4500) and no plaintext; when the
    gateway is back the client reconnects and traffic flows again."""
    binary = binary_or_skip()
    topo, gw = leak_test_network(topology, charons, pki, workdir)
    profile = kill_switch_profile(pki, topo.gw_addr, mode="always-on")
    profile["ike"]["dpd_s"] = 2
    sink = topo.gateway.popen([netlab.PYTHON, "-c", _TCP_SINK, PROTECTED, str(TCP_SINK_PORT)],
                              stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.wait_for_state("connected")        # always-on: connects by itself
        with netlab.Capture(topo.client, "eth0", workdir / "outage.pcap", marker=MARKER) as cap:
            traffic = Traffic(topo.client, tcp=True)
            # A short transfer through the tunnel, checked end to end.
            sent, received = netlab.tcp_transfer(topo.client, topo.gateway, PROTECTED,
                                                 5_000_000)
            assert received == sent
            gw.stop()
            st = client.wait_for_state("reconnecting", timeout_s=15)
            assert st["last_error"]["code"] != 0, st
            # The gateway is gone: nothing answers, through the tunnel or around it.
            assert ping_replies(topo.client, PROTECTED, count=3, timeout_s=4) == 0
            assert client.status()["state"] in ("reconnecting", "connecting"), client.status()
            assert_kill_switch_routes(topo.client)
            gw2 = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw2")
            client.wait_for_state("connected", timeout_s=30)
            gw2.wait_for_sa("psk", "net")
            assert netlab.ping(topo.client, PROTECTED, count=2) == 2
            udp_sent, _, tcp_bytes = traffic.stop()
        assert udp_sent > 100 and tcp_bytes > 0, (udp_sent, tcp_bytes)
        assert_no_leak(cap)
        tunnel = cap.read(TUNNEL_FILTER)
        assert len(tunnel) > 100, "the capture saw no tunnel traffic: it cannot have seen a leak"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
def test_no_plaintext_after_engine_is_killed(topology, charons, pki, workdir, sig):
    """`kill -9` of a connected `m2mvpn run` (a crash), or SIGTERM (a service
    manager stopping it): the persistent TUN, its routes and the blackholes
    stay, and protected traffic does not leave in plaintext. A new
    `m2mvpn run` takes the TUN over and connects again."""
    binary = binary_or_skip()
    topo, gw = leak_test_network(topology, charons, pki, workdir)
    profile = kill_switch_profile(pki, topo.gw_addr)
    client = m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile)
    with client:
        client.connect()
        client.wait_for_state("connected")
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
        client.proc.send_signal(sig)
        code = client.proc.wait(timeout=10)
        assert code == (-9 if sig == signal.SIGKILL else 0), code
    if sig == signal.SIGTERM:
        # An orderly stop says goodbye to the gateway (IKE DELETE).
        deadline = time.monotonic() + 10
        while gw.list_sas():
            assert time.monotonic() < deadline, "gateway kept the SA after SIGTERM"
            time.sleep(0.1)
    links = [link["ifname"] for link in topo.client.ip_json("link", "show")]
    assert TUN in links, links
    assert_kill_switch_routes(topo.client)
    with netlab.Capture(topo.client, "eth0", workdir / "killed.pcap", marker=MARKER) as cap:
        traffic = Traffic(topo.client)
        replies = ping_replies(topo.client, PROTECTED, count=3, timeout_s=4)
        sent, errors, _ = traffic.stop()
    assert sent + errors > 0   # it tried
    assert_no_leak(cap)
    assert replies == 0
    # The device restarts the engine: it re-attaches to the TUN and connects.
    (workdir / "m2mvpn" / "control.sock").unlink(missing_ok=True)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as again:
        again.connect()
        again.wait_for_state("connected")
        gw.wait_for_sa("psk", "net")
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2


def test_kill_switch_removed_only_on_purpose(topology, charons, pki, workdir):
    """`m2mvpn disconnect --remove` unloads the profile: the persistent TUN,
    its routes and the blackholes go, and the protected net is reached the
    ordinary way again (here: in plaintext, which the kill switch prevented)."""
    binary = binary_or_skip()
    topo, gw = leak_test_network(topology, charons, pki, workdir)
    profile = kill_switch_profile(pki, topo.gw_addr)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        client.wait_for_state("connected")
        client.cli("disconnect", "--remove")
        deadline = time.monotonic() + 10
        while True:
            routes = topo.client.ip_json("-4", "route", "show", "table", "all", netlab.PROTECTED_NET)
            links = [l["ifname"] for l in topo.client.ip_json("link", "show")]
            if not routes and TUN not in links:
                break
            assert time.monotonic() < deadline, f"left behind: routes {routes}, links {links}"
            time.sleep(0.1)
        st = client.status()
        assert st["state"] == "idle" and st["profile"] is None, st
        assert_kill_switch_gone(topo.client)   # rule and nftables table too
        # No profile, no kill switch: the gateway answers in plaintext now.
        assert ping_replies(topo.client, PROTECTED, count=2, timeout_s=3) == 2


def test_no_plaintext_for_the_part_the_gateway_narrowed_away(topology, charons, pki, workdir):
    """The profile protects 198.18.0.0/15; the gateway grants only
    198.18.0.0/24 (it may narrow, RFC 7296 §2.9). Traffic for the rest of the
    /15 must not leave in plaintext either: the routes cover the profile."""
    binary = binary_or_skip()
    topo, gw = leak_test_network(topology, charons, pki, workdir)
    profile = kill_switch_profile(pki, topo.gw_addr, remote_ts=["198.18.0.0/15"])
    outside_grant = "198.19.0.7"
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        client.wait_for_state("connected")
        child = charonmod.child_of(gw.wait_for_sa("psk", "net"))
        assert child["local-ts"] == [netlab.PROTECTED_NET]          # narrowed
        routes = topo.client.ip_json("-4", "route", "show", "table", our_table(topo.client),
                                     "198.18.0.0/15")
        assert any(r.get("dev") == TUN for r in routes), routes
        with netlab.Capture(topo.client, "eth0", workdir / "narrowed.pcap", marker=MARKER) as cap:
            assert ping_replies(topo.client, outside_grant, count=2, timeout_s=3) == 0
            assert netlab.ping(topo.client, PROTECTED, count=2) == 2   # the granted part works
        assert_no_leak(cap)


# -- routes others add to the main table (TunnelVision, TunnelCrack LocalNet) ----

# More specific than the profile's 198.18.0.0/24, via the underlay gateway:
# what a DHCP server's classless static routes (option 121) install.
OPTION121 = ("198.18.0.0/25", netlab.GW_ADDR)
# A LAN overlapping the protected network: the device's own address in it.
LOCALNET = "198.18.0.200/24"


def add_attack(ns: netlab.Namespace, attack: str) -> None:
    if attack == "option121":
        ns.ip("route", "add", OPTION121[0], "via", OPTION121[1], "dev", "eth0")
    else:
        ns.ip("addr", "add", LOCALNET, "dev", "eth0")


def remove_attack(ns: netlab.Namespace, attack: str) -> None:
    if attack == "option121":
        ns.ip("route", "del", OPTION121[0])
    else:
        ns.ip("addr", "del", LOCALNET, "dev", "eth0")


@pytest.mark.parametrize("attack", ["option121", "localnet"])
@pytest.mark.parametrize("when", ["before-load", "idle", "connected"])
def test_more_specific_route_cannot_bypass(topology, charons, pki, workdir, attack, when):
    """A route more specific than the protected prefix appears in the main
    table (option 121 route via the underlay gateway, or an overlapping LAN)
    before the profile loads, after it loaded (idle), or while connected:
    `ip route get` still answers the TUN, a capture on the gateway's side of
    the underlay sees no plaintext for the protected net, and while
    connected the protected net is still reached through the tunnel."""
    binary = binary_or_skip()
    topo = topology("direct")
    topo.client.add_route("default", via=topo.gw_addr)
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    underlay_ready(topo)
    far_marker = (topo.client_addr, 9)
    # Control: with the attack in place and no client, the probes leave in
    # plaintext by eth0 and the far-side capture sees them.
    add_attack(topo.client, attack)
    assert route_dev(topo.client, PROTECTED) == "eth0"
    with netlab.Capture(topo.gateway, "eth0", workdir / "control.pcap", marker=far_marker) as cap:
        send_probes(topo.client, netlab.PROTECTED_ADDRS)
    assert probed(cap, netlab.PROTECTED_ADDRS) == set(netlab.PROTECTED_ADDRS), cap.read()
    if when != "before-load":
        remove_attack(topo.client, attack)

    profile = kill_switch_profile(pki, topo.gw_addr)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        if when == "connected":
            client.connect()
            client.wait_for_state("connected")
        if when != "before-load":
            add_attack(topo.client, attack)
        assert route_dev(topo.client, PROTECTED) == TUN
        assert_kill_switch_routes(topo.client)
        with netlab.Capture(topo.gateway, "eth0", workdir / "attack.pcap", marker=far_marker) as cap:
            traffic = Traffic(topo.client)
            send_probes(topo.client, netlab.PROTECTED_ADDRS)
            if when == "connected":
                # Still through the tunnel: the gateway's SA counts the pings.
                before = int(charonmod.child_of(gw.wait_for_sa("psk", "net"))["packets-in"])
                assert netlab.ping(topo.client, PROTECTED, count=3) == 3
                after = int(charonmod.child_of(gw.wait_for_sa("psk", "net"))["packets-in"])
                assert after >= before + 3, (before, after)
            else:
                assert ping_replies(topo.client, PROTECTED, count=2, timeout_s=3) == 0
            sent, errors, _ = traffic.stop()
        assert sent + errors > 0
        assert_no_leak(cap)
        if when == "connected":
            assert len(cap.read(TUNNEL_FILTER)) >= 6, "no tunnel traffic seen: the capture is blind"


def test_socket_bound_to_the_underlay_cannot_bypass(topology, charons, pki, workdir):
    """A program that binds its socket to the underlay (SO_BINDTODEVICE)
    skips routing rules: with the rule alone, the kernel would take the
    protected destination as on-link and send in plaintext. The nftables
    table drops it. (Only with the nftables layer built.)"""
    binary = binary_or_skip()
    if not NFTABLES_BUILT:
        pytest.skip("built without nftables (-Dnftables=disabled): policy routing alone")
    topo = topology("direct")
    topo.client.add_route("default", via=topo.gw_addr)
    underlay_ready(topo)
    far_marker = (topo.client_addr, 9)
    with netlab.Capture(topo.gateway, "eth0", workdir / "control.pcap", marker=far_marker) as cap:
        send_probes(topo.client, netlab.PROTECTED_ADDRS, bind_to="eth0")
    assert probed(cap, netlab.PROTECTED_ADDRS) == set(netlab.PROTECTED_ADDRS), cap.read()
    profile = kill_switch_profile(pki, topo.gw_addr)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile):
        assert_kill_switch_routes(topo.client)
        with netlab.Capture(topo.gateway, "eth0", workdir / "bound.pcap", marker=far_marker) as cap:
            send_probes(topo.client, netlab.PROTECTED_ADDRS, bind_to="eth0")
        assert_no_leak(cap)


# Sixteen prefixes (PROFILE_MAX_TS): the gateway's net and fifteen more.
SIXTEEN = [netlab.PROTECTED_NET] + [f"198.18.{32 + i}.0/24" for i in range(15)]


def test_sixteen_prefixes_each_protected(topology, charons, pki, workdir):
    """A profile with 16 remote_ts: every one is routed into our table (the
    TUN) and none leaves in plaintext, idle and connected; the capture first
    shows that each probe would be seen."""
    binary = binary_or_skip()
    topo = topology("direct")
    topo.client.add_route("default", via=topo.gw_addr)
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    underlay_ready(topo)
    probes = [p.replace(".0/24", ".7") for p in SIXTEEN]
    far_marker = (topo.client_addr, 9)
    with netlab.Capture(topo.gateway, "eth0", workdir / "control.pcap", marker=far_marker) as cap:
        send_probes(topo.client, probes)
    assert probed(cap, probes) == set(probes), cap.read()

    profile = kill_switch_profile(pki, topo.gw_addr, remote_ts=SIXTEEN)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        for phase in ("idle", "connected"):
            if phase == "connected":
                client.connect()
                client.wait_for_state("connected")
                gw.wait_for_sa("psk", "net")
            table = our_table(topo.client)
            routes = {r["dst"] for r in topo.client.ip_json("-4", "route", "show", "table", table)
                      if r.get("dev") == TUN}
            assert routes == set(SIXTEEN), routes
            for p in probes:
                assert route_dev(topo.client, p) == TUN, p
            with netlab.Capture(topo.gateway, "eth0", workdir / f"{phase}.pcap",
                                marker=far_marker) as cap:
                send_probes(topo.client, probes)
                if phase == "connected":
                    assert netlab.ping(topo.client, PROTECTED, count=2) == 2
            assert_no_leak(cap)
            if phase == "connected":
                assert cap.read(TUNNEL_FILTER), "no tunnel traffic seen: the capture is blind"


def test_kill_switch_that_cannot_be_installed_is_an_error(topology, charons, pki, workdir):
    """A protected IPv6 prefix on a device where IPv6 is switched off: its
    route cannot be installed. That is an error in the status and the log,
    and no connection attempt is made (the tunnel must not come up with a
    prefix unprotected)."""
    binary = binary_or_skip()
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    for scope in ("all", "default"):
        topo.client.sysctl(f"net.ipv6.conf.{scope}.disable_ipv6", 1)
    profile = kill_switch_profile(pki, topo.gw_addr,
                                  remote_ts=[netlab.PROTECTED_NET, "2001:db8:18::/48"])
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        st = client.status()
        assert st["state"] == "idle", st
        assert st["last_error"]["code"] != 0, st
        assert "2001:db8:18::/48" in st["last_error"]["detail"], st
        assert "kill switch for profile interop not in place" in client.log_path.read_text()
        client.connect()
        deadline = time.monotonic() + 10
        while "connecting -> idle" not in client.log_path.read_text():
            assert time.monotonic() < deadline, client.log_tail()
            time.sleep(0.1)
        st = client.status()
        assert st["state"] == "idle", st
        assert "2001:db8:18::/48" in st["last_error"]["detail"], st
        assert "connecting to" not in client.log_path.read_text()
        assert not gw.list_sas()


def test_ipv6_prefix_more_specific_route_cannot_bypass(topology, charons, pki, workdir):
    """The same for a protected IPv6 prefix (its own rule and routes): an
    option-121-style more specific IPv6 route via the underlay's router,
    added while idle, takes nothing."""
    binary = binary_or_skip()
    topo = topology("direct")
    topo.client.ip("-6", "addr", "add", "2001:db8:1::10/64", "dev", "eth0", "nodad")
    topo.gateway.ip("-6", "addr", "add", "2001:db8:1::1/64", "dev", "eth0", "nodad")
    topo.gateway.add_addr("lo", "2001:db8:18::1/128")
    topo.client.ip("-6", "route", "add", "default", "via", "2001:db8:1::1")
    # The router's link-layer address first, so no probe waits for it.
    deadline = time.monotonic() + 10
    while "lladdr" not in topo.client.run("ip", "-6", "neigh", "show", "2001:db8:1::1").stdout:
        assert time.monotonic() < deadline, "the IPv6 router never answered"
        send_probes(topo.client, ["2001:db8:1::1"])
        time.sleep(0.1)
    target = "2001:db8:18::1"
    far_marker = (topo.client_addr, 9)
    with netlab.Capture(topo.gateway, "eth0", workdir / "control.pcap", marker=far_marker) as cap:
        send_probes(topo.client, [target])
    assert probed(cap, [target]) == {target}, cap.read()

    profile = kill_switch_profile(pki, topo.gw_addr,
                                  remote_ts=[netlab.PROTECTED_NET, "2001:db8:18::/48"])
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile):
        rules6 = [r for r in topo.client.ip_json("-6", "rule", "show")
                  if r.get("priority") == RULE_PRIORITY and "not" in r]
        assert len(rules6) == 1, topo.client.ip_json("-6", "rule", "show")
        topo.client.ip("-6", "route", "add", "2001:db8:18::/64", "via", "2001:db8:1::1")
        assert route_dev(topo.client, target) == TUN
        with netlab.Capture(topo.gateway, "eth0", workdir / "v6.pcap", marker=far_marker) as cap:
            send_probes(topo.client, [target])
        assert probed(cap, [target]) == set(), cap.read()
        assert not cap.read("ip6 and udp port 40002"), cap.read()


def without_libnftables(binary, workdir):
    """A stand-in for the m2mvpn binary that runs it in a mount namespace of
    its own where libnftables.so.1 is an empty file: a device without the
    library (the same state as a build without it, or a kernel without
    nf_tables: the layer cannot be installed)."""
    libs = [os.path.realpath(p) for d in ("/usr/lib", "/lib", "/usr/lib64", "/lib64")
            for p in glob.glob(f"{d}/libnftables.so.1") + glob.glob(f"{d}/*/libnftables.so.1")]
    empty = workdir / "empty.so"
    empty.write_bytes(b"")
    wrapper = workdir / "m2mvpn-without-nftables"
    mounts = " && ".join(f"mount --bind {empty} {lib}" for lib in sorted(set(libs))) or "true"
    wrapper.write_text("#!/bin/sh\n"
                       f"exec unshare -m --propagation private sh -c '{mounts} && exec \"$0\" \"$@\"' "
                       f"{binary} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def wait_for_log(client, text: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in client.log_path.read_text():
        assert time.monotonic() < deadline, client.log_tail()
        time.sleep(0.1)


def test_kill_switch_without_nftables_fails_closed(topology, charons, pki, workdir):
    """Without the nftables layer, policy routing alone does not hold a
    socket bound to the underlay (SO_BINDTODEVICE, unprivileged since Linux
    5.7): the kernel takes the protected address as on-link and sends it in
    plaintext. So the kill switch is then not in place: an error in the
    status and the log, and no connection attempt. A profile with
    tunnel.kill_switch_routing_only accepts policy routing alone: armed and
    connecting, and the status says which layers are in place."""
    binary = binary_or_skip()
    topo = topology("direct")
    topo.client.add_route("default", via=topo.gw_addr)
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    underlay_ready(topo)
    profile = kill_switch_profile(pki, topo.gw_addr)
    profile["tunnel"].pop("kill_switch_routing_only", None)   # set for builds without nftables
    stub = without_libnftables(binary, workdir)
    with m2mvpn_client.M2mvpnClient(topo.client, stub, workdir / "closed", profile) as client:
        st = client.status()
        assert st["state"] == "idle", st
        assert st["last_error"]["code"] != 0, st
        assert "no nftables table" in st["last_error"]["detail"], st
        assert "kill_switch_routing_only" in st["last_error"]["detail"], st
        assert st["kill_switch"]["routing"] is True and st["kill_switch"]["nftables"] is False, st
        assert st["kill_switch"]["nftables_missing"], st
        assert "kill switch for profile interop not in place" in client.log_path.read_text()
        assert NFT_TABLE not in nft_tables(topo.client)
        client.connect()
        wait_for_log(client, "connecting -> idle")
        assert client.status()["state"] == "idle"
        assert "connecting to" not in client.log_path.read_text()
        assert not gw.list_sas()
    profile["tunnel"]["kill_switch_routing_only"] = True
    with m2mvpn_client.M2mvpnClient(topo.client, stub, workdir / "routing-only", profile) as client:
        st = client.status()
        assert st["last_error"]["code"] == 0, st
        assert st["kill_switch"] == {"routing": True, "nftables": False,
                                     "routing_only_allowed": True,
                                     "nftables_missing": st["kill_switch"]["nftables_missing"]}, st
        assert "tunnel.kill_switch_routing_only allows" in client.log_path.read_text()
        client.connect()
        client.wait_for_state("connected")
        gw.wait_for_sa("psk", "net")
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
    # The control: the full build, the same profile: both layers.
    if NFTABLES_BUILT:
        profile["tunnel"].pop("kill_switch_routing_only")
        with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "full", profile) as client:
            st = client.status()
            assert st["kill_switch"]["routing"] is True, st
            assert st["kill_switch"]["nftables"] is True, st
            assert st["kill_switch"]["nftables_missing"] is None, st
            assert st["last_error"]["code"] == 0, st


def rule_events(ns: netlab.Namespace, action, sentinel_prio: int = 31999) -> list[str]:
    """`ip monitor rule` lines while action() runs, in order. Sentinel rules
    (priority sentinel_prio, from an underlay address) mark the start (put
    again until the monitor shows it: it may not listen yet) and the end."""
    mon = ns.popen(["ip", "monitor", "rule"], stdout=subprocess.PIPE)
    fd = mon.stdout.fileno()
    buf = b""
    start, end = "198.51.100.201", "198.51.100.202"

    def sentinel(addr: str) -> None:
        ns.run("ip", "rule", "del", "priority", str(sentinel_prio), "from", addr, check=False)
        ns.run("ip", "rule", "add", "priority", str(sentinel_prio), "from", addr, "lookup", "main")

    def read_until(marker: str, repeat: bool) -> list[str]:
        nonlocal buf
        out: list[str] = []
        deadline = time.monotonic() + 30
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if marker in text and not text.startswith("Deleted"):
                    return out
                out.append(text.strip())
            assert time.monotonic() < deadline, "no %s in ip monitor: %s" % (marker, out)
            if select.select([fd], [], [], 0.2)[0]:
                chunk = os.read(fd, 65536)
                assert chunk, "ip monitor ended early: %s" % out
                buf += chunk
            elif repeat:
                sentinel(marker)
    try:
        sentinel(start)
        read_until(start, repeat=True)
        action()
        sentinel(end)
        return read_until(end, repeat=False)
    finally:
        mon.kill()
        mon.wait()
        for addr in (start, end):
            ns.run("ip", "rule", "del", "priority", str(sentinel_prio), "from", addr, check=False)


def test_switch_to_another_tun_keeps_common_prefix_protected(topology, charons, pki, workdir):
    """Two kill-switch profiles with other TUN names that protect the same
    network: switching from one to the other puts the new one's rule (and
    table) in place before the old one's goes, so the common network is
    never left to the main table; afterwards only the new one remains."""
    binary = binary_or_skip()
    topo = topology("direct")
    topo.client.add_route("default", via=topo.gw_addr)
    a = kill_switch_profile(pki, topo.gw_addr, name="a", tun_name="m2m0")
    b = kill_switch_profile(pki, topo.gw_addr, name="b", tun_name="m2m7")
    profiles = json.dumps({"profiles": [a, b]})
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profiles) as client:
        deadline = time.monotonic() + 20
        while route_dev(topo.client, PROTECTED) != "m2m0":   # profile a armed
            assert time.monotonic() < deadline, client.log_tail()
            time.sleep(0.05)
        old_table = our_table(topo.client)

        def switch() -> None:
            client.cli("switch", "b")
            deadline = time.monotonic() + 20
            while len(our_rules(topo.client)) != 1 or our_table(topo.client) == old_table:
                assert time.monotonic() < deadline, topo.client.ip_json("rule", "show")
                time.sleep(0.05)
        events = rule_events(topo.client, switch)
        new_table = our_table(topo.client)
        assert new_table != old_table
        added = [i for i, e in enumerate(events)
                 if not e.startswith("Deleted") and f"lookup {new_table}" in e]
        deleted = [i for i, e in enumerate(events)
                   if e.startswith("Deleted") and f"lookup {old_table}" in e]
        assert added and deleted, events
        assert added[0] < deleted[0], "\n".join(events)
        assert route_dev(topo.client, PROTECTED) == "m2m7"
        assert "m2m0" not in topo.client.run("ip", "-o", "link", "show").stdout
        assert not topo.client.ip_json("-4", "route", "show", "table", str(old_table))
        if NFTABLES_BUILT:
            assert nft_tables(topo.client).count("m2mvpn_m2m7") == 1, nft_tables(topo.client)
            assert NFT_TABLE not in nft_tables(topo.client)
