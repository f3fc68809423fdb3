# SPDX-License-Identifier: Apache-2.0
"""The kill-switch checks of test_killswitch.py for IPv6 (issue 12), on an
IPv6-only underlay with a protected IPv6 network (2001:db8:18::/64 on the
gateway's lo): no plaintext for it leaves the client's underlay before the
first connect, after a disconnect, while the gateway is gone, after the
engine was killed, for the part the gateway narrowed away, through a more
specific IPv6 route in the main table, or from a socket bound to the
underlay. And the leak a dual-stack device is known for: a full IPv4 tunnel
whose gateway assigns no IPv6, where IPv6 to the outside must not go around
the tunnel (profile.md: a full tunnel in one family protects both unless
"full_tunnel_families" is "listed").

As in test_killswitch.py, every test first shows that without our client
the same traffic does leave and the capture sees it.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

import charon as charonmod
import m2mvpn_client
import netlab
from test_killswitch import (FAST, NFTABLES_BUILT, RULE_PRIORITY, TCP_SINK_PORT, TUN,
                             TUNNEL_FILTER, Traffic, _TCP_SINK, binary_or_skip, ping_replies,
                             probed, route_dev, send_probes)

pytestmark = pytest.mark.needs_m2mvpn

PROTECTED6 = netlab.PROTECTED_ADDRS6[0]
LEAK_FILTER6 = "net 2001:db8:18::/48"
MARKER6 = (netlab.GW_ADDR6, 9)
PROFILE_TS6 = [netlab.PROTECTED_NET6]


def gateway6(pki):
    return charonmod.gateway_config(pki, conns=["psk"], pool=None, pool6=netlab.VIP_POOL6,
                                    local_ts=netlab.PROTECTED_NET6)


def underlay6_ready(topo) -> None:
    assert netlab.ping(topo.client, topo.gw_addr, count=1) == 1
    assert netlab.ping(topo.gateway, topo.client_addr, count=1) == 1


def leak_test_network6(topology, charons, pki, workdir, *, start_gateway: bool = True):
    """IPv6-only underlay, the client's default route via the gateway (which
    answers for the protected IPv6 net), the control capture showing that
    plaintext would leave eth0 and be seen. Returns (topology, charon|None)."""
    topo = topology("direct6")
    topo.client.add_route("default", via=topo.gw_addr)
    underlay6_ready(topo)
    gw = charons(topo.gateway, gateway6(pki), name="gw") if start_gateway else None
    with netlab.Capture(topo.client, "eth0", workdir / "control.pcap", marker=MARKER6) as cap:
        traffic = Traffic(topo.client, targets=netlab.PROTECTED_ADDRS6)
        assert netlab.ping(topo.client, PROTECTED6, count=1) == 1
        sent, _, _ = traffic.stop()
    assert sent > 0
    control = cap.read(LEAK_FILTER6)
    assert any("ICMP6, echo request" in p for p in control), control
    assert any(".40002: UDP" in p for p in control), control
    return topo, gw


def profile6(pki, gw_addr: str = netlab.GW_ADDR6, **kwargs) -> dict:
    kwargs.setdefault("remote_ts", PROFILE_TS6)
    profile = m2mvpn_client.make_profile(pki, "psk", gw_addr, kill_switch=True, **kwargs)
    profile["ike"].update(FAST)
    return profile


def assert_no_leak6(cap: netlab.Capture) -> None:
    leaks = cap.read(LEAK_FILTER6)
    assert not leaks, f"{len(leaks)} plaintext IPv6 packets for the protected net left:\n" \
        + "\n".join(leaks[:20])


def assert_kill_switch_routes6(ns: netlab.Namespace) -> None:
    rules = [r for r in ns.ip_json("-6", "rule", "show")
             if r.get("priority") == RULE_PRIORITY and "not" in r and r.get("fwmark")]
    assert len(rules) == 1, ns.ip_json("-6", "rule", "show")
    routes = ns.ip_json("-6", "route", "show", "table", rules[0]["table"], netlab.PROTECTED_NET6)
    assert any(r.get("dev") == TUN for r in routes), routes
    assert any(r.get("type") == "blackhole" for r in routes), routes
    if NFTABLES_BUILT:
        assert f"m2mvpn_{TUN}" in ns.run("nft", "list", "tables").stdout


def leak_checked(topo, workdir, name: str) -> None:
    """UDP and ICMPv6 to the protected net: nothing answers, nothing leaves."""
    with netlab.Capture(topo.client, "eth0", workdir / f"{name}.pcap", marker=MARKER6) as cap:
        traffic = Traffic(topo.client, targets=netlab.PROTECTED_ADDRS6)
        replies = ping_replies(topo.client, PROTECTED6, count=2, timeout_s=3)
        sent, errors, _ = traffic.stop()
    assert sent + errors > 0
    assert_no_leak6(cap)
    assert replies == 0, "the protected address answered in plaintext"


def test_no_plaintext6_before_first_connect(topology, charons, pki, workdir):
    binary = binary_or_skip()
    topo, _ = leak_test_network6(topology, charons, pki, workdir)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile6(pki)) as client:
        assert client.status()["state"] == "idle"
        assert_kill_switch_routes6(topo.client)
        leak_checked(topo, workdir, "before")


def test_no_plaintext6_after_disconnect(topology, charons, pki, workdir):
    binary = binary_or_skip()
    topo, gw = leak_test_network6(topology, charons, pki, workdir)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile6(pki)) as client:
        client.connect()
        client.wait_for_state("connected")
        assert netlab.ping(topo.client, PROTECTED6, count=2) == 2   # through the tunnel
        client.disconnect()
        client.wait_for_state("idle")
        deadline = time.monotonic() + 10
        while gw.list_sas():
            assert time.monotonic() < deadline, "gateway kept the SA after disconnect"
            time.sleep(0.1)
        assert_kill_switch_routes6(topo.client)
        leak_checked(topo, workdir, "after")


def test_no_plaintext6_while_gateway_is_down(topology, charons, pki, workdir):
    """Always-on over IPv6, a TCP stream and UDP to the protected IPv6 net;
    the gateway stops and comes back: tunnel traffic on the capture, no
    plaintext, traffic flows again after the reconnect."""
    binary = binary_or_skip()
    topo, gw = leak_test_network6(topology, charons, pki, workdir)
    profile = profile6(pki, mode="always-on")
    profile["ike"]["dpd_s"] = 2
    sink = topo.gateway.popen([netlab.PYTHON, "-c", _TCP_SINK, PROTECTED6, str(TCP_SINK_PORT)],
                              stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.wait_for_state("connected")
        with netlab.Capture(topo.client, "eth0", workdir / "outage.pcap", marker=MARKER6) as cap:
            traffic = Traffic(topo.client, tcp=True, targets=netlab.PROTECTED_ADDRS6)
            sent, received = netlab.tcp_transfer(topo.client, topo.gateway, PROTECTED6, 2_000_000)
            assert received == sent
            gw.stop()
            st = client.wait_for_state("reconnecting", timeout_s=15)
            assert st["last_error"]["code"] != 0, st
            assert ping_replies(topo.client, PROTECTED6, count=3, timeout_s=4) == 0
            assert_kill_switch_routes6(topo.client)
            gw2 = charons(topo.gateway, gateway6(pki), name="gw2")
            client.wait_for_state("connected", timeout_s=30)
            gw2.wait_for_sa("psk", "net")
            assert netlab.ping(topo.client, PROTECTED6, count=2) == 2
            udp_sent, _, tcp_bytes = traffic.stop()
        assert udp_sent > 100 and tcp_bytes > 0, (udp_sent, tcp_bytes)
        assert_no_leak6(cap)
        assert len(cap.read(TUNNEL_FILTER)) > 100, "no tunnel traffic seen: the capture is blind"


def test_no_plaintext6_after_engine_is_killed(topology, charons, pki, workdir):
    binary = binary_or_skip()
    topo, gw = leak_test_network6(topology, charons, pki, workdir)
    profile = profile6(pki)
    client = m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile)
    with client:
        client.connect()
        client.wait_for_state("connected")
        assert netlab.ping(topo.client, PROTECTED6, count=2) == 2
        client.proc.send_signal(signal.SIGKILL)
        assert client.proc.wait(timeout=10) == -9
    assert_kill_switch_routes6(topo.client)
    leak_checked(topo, workdir, "killed")
    # The restarted engine takes the TUN over (its old IPv6 address goes)
    # and connects again.
    (workdir / "m2mvpn" / "control.sock").unlink(missing_ok=True)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as again:
        again.connect()
        st = again.wait_for_state("connected")
        gw.wait_for_sa("psk", "net")
        addrs = [a["local"] for link in topo.client.ip_json("-6", "addr", "show", "dev", TUN)
                 for a in link.get("addr_info", []) if a.get("scope") == "global"]
        assert addrs == [st["virtual_ip"]], addrs
        assert netlab.ping(topo.client, PROTECTED6, count=2) == 2


def test_no_plaintext6_for_the_part_the_gateway_narrowed_away(topology, charons, pki, workdir):
    """The profile protects 2001:db8:18::/48, the gateway grants the /64:
    the rest of the /48 does not leave in plaintext either."""
    binary = binary_or_skip()
    topo, gw = leak_test_network6(topology, charons, pki, workdir)
    profile = profile6(pki, remote_ts=["2001:db8:18::/48"])
    outside_grant = "2001:db8:18:7::7"
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        client.wait_for_state("connected")
        child = charonmod.child_of(gw.wait_for_sa("psk", "net"))
        assert child["local-ts"] == [netlab.PROTECTED_NET6], child
        with netlab.Capture(topo.client, "eth0", workdir / "narrowed.pcap", marker=MARKER6) as cap:
            assert ping_replies(topo.client, outside_grant, count=2, timeout_s=3) == 0
            assert netlab.ping(topo.client, PROTECTED6, count=2) == 2
        assert_no_leak6(cap)


@pytest.mark.parametrize("when", ["idle", "connected"])
def test_more_specific_ipv6_route_cannot_bypass(topology, charons, pki, workdir, when):
    """An option-121-style IPv6 route more specific than the protected
    prefix, via the underlay, appears in the main table: a capture on the
    gateway's side of the underlay sees no plaintext."""
    binary = binary_or_skip()
    topo = topology("direct6")
    topo.client.add_route("default", via=topo.gw_addr)
    gw = charons(topo.gateway, gateway6(pki), name="gw")
    underlay6_ready(topo)
    far_marker = (topo.client_addr, 9)
    specific = "2001:db8:18::/80"
    topo.client.add_route(specific, via=topo.gw_addr)
    assert route_dev(topo.client, PROTECTED6) == "eth0"
    with netlab.Capture(topo.gateway, "eth0", workdir / "control.pcap", marker=far_marker) as cap:
        send_probes(topo.client, netlab.PROTECTED_ADDRS6)
    assert probed(cap, netlab.PROTECTED_ADDRS6) == set(netlab.PROTECTED_ADDRS6), cap.read()
    topo.client.ip("-6", "route", "del", specific)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile6(pki)) as client:
        if when == "connected":
            client.connect()
            client.wait_for_state("connected")
        topo.client.add_route(specific, via=topo.gw_addr)
        assert route_dev(topo.client, PROTECTED6) == TUN
        with netlab.Capture(topo.gateway, "eth0", workdir / "attack.pcap", marker=far_marker) as cap:
            send_probes(topo.client, netlab.PROTECTED_ADDRS6)
            if when == "connected":
                assert netlab.ping(topo.client, PROTECTED6, count=3) == 3
            else:
                assert ping_replies(topo.client, PROTECTED6, count=2, timeout_s=3) == 0
        assert_no_leak6(cap)
        if when == "connected":
            assert len(cap.read(TUNNEL_FILTER)) >= 6, "no tunnel traffic seen: the capture is blind"
            gw.wait_for_sa("psk", "net")


def test_ipv6_socket_bound_to_the_underlay_cannot_bypass(topology, charons, pki, workdir):
    binary = binary_or_skip()
    if not NFTABLES_BUILT:
        pytest.skip("built without nftables (-Dnftables=disabled): policy routing alone")
    topo = topology("direct6")
    topo.client.add_route("default", via=topo.gw_addr)
    underlay6_ready(topo)
    far_marker = (topo.client_addr, 9)
    with netlab.Capture(topo.gateway, "eth0", workdir / "control.pcap", marker=far_marker) as cap:
        send_probes(topo.client, netlab.PROTECTED_ADDRS6, bind_to="eth0")
    assert probed(cap, netlab.PROTECTED_ADDRS6) == set(netlab.PROTECTED_ADDRS6), cap.read()
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile6(pki)):
        assert_kill_switch_routes6(topo.client)
        with netlab.Capture(topo.gateway, "eth0", workdir / "bound.pcap", marker=far_marker) as cap:
            send_probes(topo.client, netlab.PROTECTED_ADDRS6, bind_to="eth0")
        assert_no_leak6(cap)


# -- a full IPv4 tunnel on a dual-stack network ------------------------------------

@pytest.mark.parametrize("kill_switch", [True, False], ids=["kill-switch", "plain"])
def test_full_ipv4_tunnel_does_not_leak_ipv6(topology, charons, pki, workdir, kill_switch):
    """remote_ts ["0.0.0.0/0"] on a dual-stack network, a gateway that
    assigns IPv4 only: an IPv6 probe to an outside address never appears on
    the underlay (the full tunnel protects IPv6 too; without an IPv6 SA it
    is dropped). The control shows the probe leaves and is answered without
    our client."""
    binary = binary_or_skip()
    topo = topology("dual")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"], local_ts="0.0.0.0/0"),
                 name="gw")
    leak = f"ip6 and host {netlab.OUTSIDE_ADDR6}"
    marker = (netlab.ROUTER_CLIENT_SIDE, 9)
    with netlab.Capture(topo.client, "eth0", workdir / "control.pcap", marker=marker) as cap:
        assert netlab.ping(topo.client, netlab.OUTSIDE_ADDR6, count=1) == 1
        send_probes(topo.client, [netlab.OUTSIDE_ADDR6])
    assert any("ICMP6, echo request" in p for p in cap.read(leak)), cap.read()
    assert probed(cap, [netlab.OUTSIDE_ADDR6]), cap.read()

    profile = m2mvpn_client.make_profile(pki, "psk", netlab.GW_ADDR, remote_ts=["0.0.0.0/0"],
                                         kill_switch=kill_switch)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        client.wait_for_state("connected", timeout_s=20)
        child = charonmod.child_of(gw.wait_for_sa("psk", "net"))
        assert child["local-ts"] == ["0.0.0.0/0"], child          # IPv4 only inside
        assert route_dev(topo.client, netlab.OUTSIDE_ADDR6) == TUN
        # No end marker here: everything but our own IKE/ESP goes into the
        # tunnel now; the IPv4 pings after the probes, seen as ESP on the
        # capture, show it ran past them.
        no_sa = client.status()["counters"]["dropped"]["no_sa"]
        with netlab.Capture(topo.client, "eth0", workdir / "tunnel.pcap") as cap:
            assert ping_replies(topo.client, netlab.OUTSIDE_ADDR6, count=2, timeout_s=3) == 0
            send_probes(topo.client, [netlab.OUTSIDE_ADDR6])
            # Dropped by our datapath (no SA covers IPv6), not sent to the
            # gateway either: 2 echo requests and 3 probe datagrams (the
            # status counters are refreshed every second).
            deadline = time.monotonic() + 5
            while client.status()["counters"]["dropped"]["no_sa"] < no_sa + 5:
                assert time.monotonic() < deadline, client.status()["counters"]
                time.sleep(0.2)
            assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2   # IPv4 flows
            time.sleep(0.5)
        leaks = cap.read(leak)
        assert not leaks, "IPv6 left around the full IPv4 tunnel:\n" + "\n".join(leaks[:20])
        assert cap.read(TUNNEL_FILTER), "no tunnel traffic seen: the capture is blind"


def test_full_ipv4_tunnel_listed_only_leaves_ipv6_outside(topology, charons, pki, workdir):
    """The opt-out: "full_tunnel_families": "listed" protects IPv4 only, so
    IPv6 reaches the outside address directly (as the profile says)."""
    binary = binary_or_skip()
    topo = topology("dual")
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"], local_ts="0.0.0.0/0"),
            name="gw")
    profile = m2mvpn_client.make_profile(pki, "psk", netlab.GW_ADDR, remote_ts=["0.0.0.0/0"],
                                         kill_switch=True)
    profile["tunnel"]["full_tunnel_families"] = "listed"
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        client.wait_for_state("connected", timeout_s=20)
        assert route_dev(topo.client, netlab.OUTSIDE_ADDR6) == "eth0"
        assert netlab.ping(topo.client, netlab.OUTSIDE_ADDR6, count=2) == 2
        assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2
