# SPDX-License-Identifier: Apache-2.0
"""IPv6 everywhere (issue 12): the gateway over an IPv6 underlay, IPv6 inside
the tunnel, both families in one CHILD SA, a gateway name with A and AAAA
records where one family does not work (Happy Eyeballs), and no IPv6 leak
around a tunnel that carries IPv4 only.

Addresses: 2001:db8::/32 (netlab's IPv6 plan) for the underlay and inside;
IPv6 addresses are added without duplicate address detection.
"""

from __future__ import annotations

import os
import time

import pytest

import charon as charonmod
import m2mvpn_client
import netlab

pytestmark = pytest.mark.needs_m2mvpn

GW_NAME = "gw.m2m.test"


def binary_or_skip():
    binary = m2mvpn_client.find_binary()
    if binary is None:
        pytest.skip("tools/m2mvpn not built (set M2MVPN_BINARY): our client is not tested")
    return binary


def tun_addrs(ns: netlab.Namespace, family: str, tun: str = "m2m0") -> list[str]:
    out = ns.ip_json(family, "addr", "show", "dev", tun)
    return [a["local"] for link in out for a in link.get("addr_info", [])
            if a.get("scope") == "global"]


def test_ipv6_only_underlay_with_ipv6_inside(topology, charons, pki, workdir):
    """An IPv6-only underlay, an IPv6 pool and an IPv6 protected network:
    connect to the gateway's IPv6 address, ping6 through the tunnel, and a
    transfer whose checksum both ends compare. IKE and ESP-in-UDP go over
    IPv6 (the gateway sees the client's IPv6 address)."""
    binary = binary_or_skip()
    topo = topology("direct6")
    gw = charons(topo.gateway, charonmod.gateway_config(
        pki, conns=["psk"], pool=None, pool6=netlab.VIP_POOL6,
        local_ts=netlab.PROTECTED_NET6), name="gw")
    profile = m2mvpn_client.make_profile(pki, "psk", netlab.GW_ADDR6,
                                         remote_ts=[netlab.PROTECTED_NET6])
    with netlab.Capture(topo.client, "eth0", workdir / "underlay.pcap") as cap, \
            m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        st = client.wait_for_state("connected", timeout_s=20)
        assert st["gateway"] == f"[{netlab.GW_ADDR6}]:500", st
        assert st["virtual_ip"].startswith("2001:db8:1a::"), st
        assert tun_addrs(topo.client, "-6") == [st["virtual_ip"]]
        sa = gw.wait_for_sa("psk", "net")
        assert sa["remote-host"] == netlab.CLIENT_ADDR6_DIRECT, sa
        child = charonmod.child_of(sa)
        assert child["local-ts"] == [netlab.PROTECTED_NET6], child
        assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS6[0], count=3, size=200) == 3
        sent, received = netlab.tcp_transfer(topo.client, topo.gateway,
                                             netlab.PROTECTED_ADDRS6[1], 4_000_000)
        assert received == sent and sent[0] == 4_000_000
        child = charonmod.child_of(gw.wait_for_sa("psk", "net"))
        assert int(child["packets-in"]) >= 3, child
    cap.stop()
    # On the wire: IKE and ESP in UDP/4500 over IPv6, no IPv4 at all.
    assert cap.read(f"ip6 and udp port 4500 and host {netlab.GW_ADDR6}"), cap.read()
    assert not cap.read("ip"), cap.read("ip")


def test_dual_stack_tunnel_carries_both_families(topology, charons, pki, workdir):
    """A dual-stack gateway with an IPv4 and an IPv6 pool and protected
    networks of both families: one CHILD SA carries both (TSi/TSr with both
    families), the TUN gets both virtual IPs and IPv4 and IPv6 reach the
    protected networks through it. Over an IPv4 underlay here, while the
    IPv6-only test covers the IPv6 underlay."""
    binary = binary_or_skip()
    topo = topology("dual")
    both_ts = f"{netlab.PROTECTED_NET},{netlab.PROTECTED_NET6}"
    gw = charons(topo.gateway, charonmod.gateway_config(
        pki, conns=["psk"], pool6=netlab.VIP_POOL6, local_ts=both_ts), name="gw")
    profile = m2mvpn_client.make_profile(pki, "psk", netlab.GW_ADDR,
                                         remote_ts=[netlab.PROTECTED_NET, netlab.PROTECTED_NET6])
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        st = client.wait_for_state("connected", timeout_s=20)
        sas = gw.wait_for_sa("psk", "net")
        child = charonmod.child_of(sas)
        assert sorted(child["local-ts"]) == sorted([netlab.PROTECTED_NET, netlab.PROTECTED_NET6]), child
        assert len(child["remote-ts"]) == 2, child          # our vip of each family
        v4, v6 = tun_addrs(topo.client, "-4"), tun_addrs(topo.client, "-6")
        assert len(v4) == 1 and v4[0].startswith("198.18.10."), v4
        assert len(v6) == 1 and v6[0].startswith("2001:db8:1a::"), v6
        assert st["virtual_ip"] == v4[0], st
        assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2
        assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS6[0], count=2) == 2
        sent, received = netlab.tcp_transfer(topo.client, topo.gateway,
                                             netlab.PROTECTED_ADDRS6[0], 1_000_000)
        assert received == sent
        # All of it in the one IKE SA and its one CHILD SA.
        sas = gw.list_sas()
        assert len(sas) == 1 and len(sas[0]["child-sas"]) == 1, sas
        child = charonmod.child_of(sas[0])
        assert int(child["packets-in"]) >= 4, child


@pytest.mark.parametrize("broken", [6, 4, "6-noroute"],
                         ids=["ipv6-broken", "ipv4-broken", "ipv6-no-route"])
def test_name_with_a_and_aaaa_one_family_broken(topology, charons, pki, workdir, broken):
    """The gateway's name has an A and an AAAA record (the client's hosts
    file); the router silently drops one family. The client connects over
    the other family within a few seconds: far below the time its IKE
    retransmissions would take to give up on the broken one (4 s initial
    timeout, 5 tries, base 1.8: about 60 s), because the second family
    starts shortly after the first got no answer (RFC 8305 spirit). Without
    any IPv6 route (ipv6-no-route) IPv4 is used at once."""
    binary = binary_or_skip()
    topo = topology("dual")
    topo.client.set_hosts(f"127.0.0.1 localhost\n{netlab.GW_ADDR} {GW_NAME}\n"
                          f"{netlab.GW_ADDR6} {GW_NAME}\n")
    # Control: the client resolves both records.
    got = topo.client.run(netlab.PYTHON, "-c",
                          "import socket; print(sorted({a[4][0] for a in "
                          f"socket.getaddrinfo('{GW_NAME}', 500, type=socket.SOCK_DGRAM)}}))").stdout
    assert netlab.GW_ADDR in got and netlab.GW_ADDR6 in got, got
    if broken == "6-noroute":
        topo.client.ip("-6", "route", "del", "default")
        broken = 6
        no_route = True
    else:
        netlab.block_family(topo, broken)
        no_route = False
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    profile = m2mvpn_client.make_profile(pki, "psk", GW_NAME)
    profile["ike"].update({"retransmit_timeout_s": 4.0, "retransmit_tries": 5,
                           "retransmit_base": 1.8})
    working = netlab.GW_ADDR6 if broken == 4 else netlab.GW_ADDR
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        start = time.monotonic()
        client.connect()
        client.wait_for_state("connected", timeout_s=30)
        took = time.monotonic() - start
        sa = gw.wait_for_sa("psk", "net")
        client_addr = netlab.CLIENT_ADDR6_ROUTED if broken == 4 else netlab.CLIENT_ADDR_ROUTED
        assert sa["remote-host"] == client_addr, sa
        assert sa["local-host"] == working, sa
        assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2
        # Far below the broken family's full retransmission time (~60 s),
        # and below even its first retransmission (4 s).
        assert took < 4.0, f"connected after {took:.1f} s"
        log = client.log_path.read_text()
        if no_route:      # no way at all over IPv6: IPv4 straight away
            assert "Network is unreachable" in log and "as well" not in log, log[-3000:]
        elif broken == 6:   # IPv6 first, then IPv4 after a short delay
            assert "trying 198.51.100.1 as well" in log, log[-3000:]


def test_happy_eyeballs_remembers_the_family_that_worked(topology, charons, pki, workdir):
    """After IPv4 answered where IPv6 did not, the next connection attempt
    starts with IPv4 (what worked last time) instead of waiting for IPv6."""
    binary = binary_or_skip()
    topo = topology("dual")
    topo.client.set_hosts(f"{netlab.GW_ADDR} {GW_NAME}\n{netlab.GW_ADDR6} {GW_NAME}\n")
    netlab.block_family(topo, 6)
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    profile = m2mvpn_client.make_profile(pki, "psk", GW_NAME)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        client.wait_for_state("connected", timeout_s=30)
        client.disconnect()
        client.wait_for_state("idle", timeout_s=10)
        mark = len(client.log_path.read_text())
        client.connect()
        client.wait_for_state("connected", timeout_s=30)
        second = client.log_path.read_text()[mark:]
        assert f"at {netlab.GW_ADDR} " in second, second
        assert "as well" not in second, second   # no race needed: IPv4 first
        gw.wait_for_sa("psk", "net")


def test_gateway_list_mixes_families(topology, charons, pki, workdir):
    """`gateways` lists an IPv6 gateway that does not answer, then an IPv4
    one: an always-on client fails over from the one to the other."""
    binary = binary_or_skip()
    topo = topology("dual")
    netlab.block_family(topo, 6)
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    profile = m2mvpn_client.make_profile(pki, "psk", netlab.GW_ADDR6, mode="always-on")
    profile["gateways"].append({"host": netlab.GW_ADDR, "port": 500})
    profile["ike"].update({"retransmit_timeout_s": 0.5, "retransmit_tries": 1,
                           "retransmit_base": 1.5})
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        st = client.wait_for_state("connected", timeout_s=30)
        assert st["gateway"] == f"{netlab.GW_ADDR}:500", st
        sa = gw.wait_for_sa("psk", "net")
        assert sa["remote-host"] == netlab.CLIENT_ADDR_ROUTED, sa
        assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2


@pytest.mark.parametrize("kill_switch", [True, False], ids=["kill-switch", "plain"])
def test_full_ipv6_tunnel_over_ipv6(topology, charons, pki, workdir, kill_switch):
    """remote_ts ["::/0"] over an IPv6-only underlay: everything goes into
    the TUN except our own IKE and ESP to the gateway (marked sockets skip
    our rule and pass the nftables table), which lies inside ::/0 itself.
    The full tunnel protects IPv4 as well (0.0.0.0/0 implied), which the
    gateway does not grant here: blocked, not sent."""
    binary = binary_or_skip()
    topo = topology("direct6")
    gw = charons(topo.gateway, charonmod.gateway_config(
        pki, conns=["psk"], pool=None, pool6=netlab.VIP_POOL6, local_ts="::/0"), name="gw")
    profile = m2mvpn_client.make_profile(pki, "psk", netlab.GW_ADDR6, remote_ts=["::/0"],
                                         kill_switch=kill_switch)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        client.wait_for_state("connected", timeout_s=20)
        got = topo.client.run("ip", "-6", "route", "get", netlab.GW_ADDR6).stdout
        assert "dev m2m0" in got, got          # the gateway lies inside the tunnel routes
        got = topo.client.run("ip", "-4", "route", "get", netlab.PROTECTED_ADDRS[0]).stdout
        assert "dev m2m0" in got, got          # IPv4 too: implied by the full tunnel
        assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS6[0], count=3) == 3
        child = charonmod.child_of(gw.wait_for_sa("psk", "net"))
        assert child["local-ts"] == ["::/0"], child
        assert int(child["packets-in"]) >= 3, child


def test_full_ipv4_tunnel_where_ipv6_is_off(topology, charons, pki, workdir):
    """A device with IPv6 switched off: the ::/0 a full IPv4 tunnel implies
    gets no route (the kernel refuses it), so the kill switch is in place and
    the tunnel comes up; the nftables set still holds ::/0 (IPv6 may come
    later). A listed IPv6 prefix would be an error instead: test_killswitch.py."""
    binary = binary_or_skip()
    topo = topology("direct")
    for scope in ("all", "default"):
        topo.client.sysctl(f"net.ipv6.conf.{scope}.disable_ipv6", 1)
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"], local_ts="0.0.0.0/0"),
                 name="gw")
    profile = m2mvpn_client.make_profile(pki, "psk", netlab.GW_ADDR, remote_ts=["0.0.0.0/0"],
                                         kill_switch=True)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        st = client.wait_for_state("connected", timeout_s=20)
        assert st["last_error"]["code"] == 0, st
        assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2
        gw.wait_for_sa("psk", "net")
        if os.environ.get("M2MVPN_NFTABLES", "1") != "0":
            # No route, but the kill switch's set holds ::/0 all the same:
            # an interface that gets IPv6 later (conf/default, SLAAC)
            # cannot send it in the clear.
            ruleset = topo.client.run("nft", "list", "ruleset").stdout
            assert "::/0" in ruleset, ruleset
