# SPDX-License-Identifier: Apache-2.0
"""Full tunnel (traffic selector 0.0.0.0/0) with our client: everything goes
into the TUN, except our own IKE and ESP packets to the gateway, which carry
our fwmark (the rule that sends traffic to our routing table skips them) and
stay on the underlay interface (sockets bound to it), so the tunnel does not
eat itself. The gateway offers 0.0.0.0/0 as its local traffic selector."""

from __future__ import annotations

import pytest

import charon as charonmod
import m2mvpn_client
import netlab

pytestmark = pytest.mark.skipif(m2mvpn_client.find_binary() is None,
                                reason="M2MVPN_BINARY (tools/m2mvpn) is not built")


def our_table(ns: netlab.Namespace) -> str:
    """The table our rule (priority 1000, not fwmark) sends traffic to."""
    rules = [r for r in ns.ip_json("rule", "show") if r.get("priority") == 1000 and "not" in r]
    assert len(rules) == 1, ns.ip_json("rule", "show")
    return rules[0]["table"]


@pytest.mark.parametrize("kill_switch", [False, True], ids=["plain", "kill-switch"])
def test_full_tunnel_routes_everything_but_itself(topology, charons, pki, workdir, kill_switch):
    # Routed (through a NAT router): the gateway is reached by the main
    # table's default route; our table's default route, looked up first,
    # takes everything else (with the kill switch a blackhole beneath it).
    topo = topology("nat")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"], local_ts="0.0.0.0/0"),
                 name="gw")
    prof = m2mvpn_client.make_profile(pki, "psk", netlab.GW_ADDR, remote_ts=["0.0.0.0/0"],
                                      kill_switch=kill_switch)
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, m2mvpn_client.find_binary(), workdir)
    try:
        client.connect()
        st = client.wait_for_state("connected", timeout_s=20)
        routes = topo.client.run("ip", "-4", "route", "show", "table", our_table(topo.client)).stdout
        assert "default dev m2m0" in routes, routes
        assert ("blackhole default" in routes) == kill_switch, routes
        # The gateway's own address is covered by the tunnel routes too, and
        # so is the client's own LAN (the router) ...
        got = topo.client.run("ip", "-4", "route", "get", netlab.GW_ADDR).stdout
        assert "dev m2m0" in got, got
        got = topo.client.run("ip", "-4", "route", "get", netlab.ROUTER_CLIENT_SIDE).stdout
        assert "dev m2m0" in got, got
        # ... yet IKE and ESP still reach it: traffic flows through the tunnel.
        assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=3, size=100) == 3
        sa = charonmod.child_of(gw.wait_for_sa("psk", "net"))
        assert int(sa["packets-in"]) >= 3, sa
        assert st["virtual_ip"]
        client.disconnect()
        client.wait_for_state("idle", timeout_s=10)
        routes = topo.client.run("ip", "-4", "route", "show", "table", "all").stdout
        # Without the kill switch the tunnel's routes go; with it they stay.
        assert ("m2m0" in routes) == kill_switch, routes
    finally:
        client.stop()
