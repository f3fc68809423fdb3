# SPDX-License-Identifier: Apache-2.0
"""Profile switch while traffic flows (`m2mvpn switch NAME`).

What a user checks: switching to a profile on the same gateway and TUN is
make-before-break — the new profile's IKE SA and CHILD SA come up next to
the old ones, the traffic moves, then the old IKE SA is deleted: a ping
flood across the switch loses nothing, the state never leaves connected,
and a STATE_CHANGED event says "make-before-break". A switch that cannot
keep the tunnel (another TUN here) is break-before-make, and its event says
so and why; the loss across it is reported.

A switch to a profile on another gateway (same TUN) is make-before-break as
well when that gateway hands out the same virtual IP: nothing lost, the new
gateway lists the SA, the old one none. When it hands out another one, the
tunnel takes it in place (the shortest gap): the event says which address,
and the loss is printed.
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest

import charon as charonmod
import m2mvpn_client
import netlab

pytestmark = pytest.mark.needs_m2mvpn

PROTECTED = netlab.PROTECTED_ADDRS[0]


def binary_or_skip():
    binary = m2mvpn_client.find_binary()
    if binary is None:
        pytest.skip("tools/m2mvpn not built (set M2MVPN_BINARY): our client is not tested")
    return binary


def state_events(client) -> list[str]:
    return [l for l in client.log_path.read_text(errors="replace").splitlines()
            if "event STATE_CHANGED" in l]


def wait_log(client, text: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in client.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, client.log_tail()
        time.sleep(0.1)


def test_switch_while_pinging(topology, charons, pki, workdir):
    binary = binary_or_skip()
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(
        pki, conns=["psk"], esp_proposals=["aes256gcm16", "aes128gcm16"]), name="gw")
    a = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr, name="a", kill_switch=True,
                                   esp_proposals=["aes256gcm16"])
    b = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr, name="b", kill_switch=True,
                                   esp_proposals=["aes128gcm16"])
    c = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr, name="c", kill_switch=True,
                                   tun_name="m2m5")
    profiles = json.dumps({"profiles": [a, b, c]})
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profiles) as client:
        client.connect()
        client.wait_for_state("connected")
        sa = gw.wait_for_sa("psk", "net")
        old_ike = (sa["initiator-spi"], sa["responder-spi"])
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2

        # a -> b: same gateway, same TUN: make-before-break.
        flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=8)
        time.sleep(2)
        n_events = len(state_events(client))
        client.cli("switch", "b")
        wait_log(client, "make-before-break: switched to profile b")
        res = flood.result()
        events = state_events(client)[n_events:]
        assert any("make-before-break: switched to profile b" in e for e in events), events
        assert not any("-> reconnecting" in e or "-> connecting" in e for e in events), events
        st = client.status()
        assert st["state"] == "connected"
        assert st["profile"] == "b"
        assert st["transitions"]["reconnects"] == 0, st["transitions"]
        # As for a reauthentication (test_reauth.py): zero, in every build.
        assert res["lost"] == 0, (res, st["counters"])
        deadline = time.monotonic() + 15
        while True:
            sas = [s for s in gw.list_sas() if s.get("name") == "psk"]
            kids = list(sas[0]["child-sas"].values()) if len(sas) == 1 else []
            if len(kids) == 1 and (sas[0]["initiator-spi"], sas[0]["responder-spi"]) != old_ike:
                break
            assert time.monotonic() < deadline, sas
            time.sleep(0.2)
        assert kids[0]["encr-keysize"] == "128", kids[0]   # b's proposal
        print("make-before-break switch: ping flood", res)

        # Back and forth: each switch leaves one SA behind it in the client's
        # datapath and at the gateway (the datapath holds four at most).
        for i, name in enumerate(["a", "b", "a", "b", "a"]):
            n_events = len(state_events(client))
            client.cli("switch", name)
            deadline = time.monotonic() + 20
            while not any(f"switched to profile {name}" in e for e in state_events(client)[n_events:]):
                assert time.monotonic() < deadline, client.log_tail()
                time.sleep(0.1)
            assert not any("break-before-make" in e for e in state_events(client)[n_events:]), \
                client.log_tail()
            assert netlab.ping(topo.client, PROTECTED, count=1) == 1
            # The next switch once the previous IKE SA is deleted (the gateway lists one).
            deadline = time.monotonic() + 15
            while len([s for s in gw.list_sas() if s.get("name") == "psk"]) != 1:
                assert time.monotonic() < deadline, gw.list_sas()
                time.sleep(0.1)

        # b -> c: another TUN: break-before-make, said so.
        flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=8)
        time.sleep(2)
        n_events = len(state_events(client))
        client.cli("switch", "c")
        wait_log(client, "connected: CHILD SA")
        deadline = time.monotonic() + 20
        while client.status()["state"] != "connected" or client.status()["profile"] != "c":
            assert time.monotonic() < deadline, client.log_tail()
            time.sleep(0.1)
        res2 = flood.result()
        events = state_events(client)[n_events:]
        assert any("break-before-make: another TUN (m2m5, was m2m0)" in e for e in events), events
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
        print("break-before-make switch: ping flood", res2)


GW2_ADDR = "198.51.100.3"


@contextlib.contextmanager
def two_gateways():
    """Client (198.51.100.10), gateway 1 (.1) and gateway 2 (.3) on one
    segment (a bridge in a namespace of its own); each gateway answers for
    the protected addresses itself."""
    made: list[netlab.Namespace] = []
    try:
        for role in ("sw", "gw", "gw2", "cl"):
            made.append(netlab.Namespace(role))
        sw, gw1, gw2, cl = made
        sw.ip("link", "add", "br0", "type", "bridge")
        sw.link_up("br0")
        for ns, port in ((gw1, "p1"), (gw2, "p2"), (cl, "p0")):
            netlab.veth(sw, port, ns, "eth0")
            sw.ip("link", "set", port, "master", "br0")
        cl.add_addr("eth0", f"{netlab.CLIENT_ADDR_DIRECT}/24")
        gw1.add_addr("eth0", f"{netlab.GW_ADDR}/24")
        gw2.add_addr("eth0", f"{GW2_ADDR}/24")
        for g in (gw1, gw2):
            for addr in netlab.PROTECTED_ADDRS:
                g.add_addr("lo", f"{addr}/32")
        yield netlab.Topology("two-gateways", cl, gw1, netlab.CLIENT_ADDR_DIRECT, netlab.GW_ADDR,
                              namespaces=made)
    finally:
        for ns in reversed(made):
            with contextlib.suppress(Exception):
                ns.close()


def ike_sas(gw) -> list:
    return [s for s in gw.list_sas() if s.get("name") == "psk"]


@pytest.mark.parametrize("same_vip", [True, False], ids=["same-vip", "other-vip"])
def test_switch_to_other_gateway(charons, pki, workdir, same_vip):
    binary = binary_or_skip()
    with two_gateways() as topo:
        gw2_ns = topo.namespaces[2]
        gw1 = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw1")
        pool2 = netlab.VIP_POOL if same_vip else "198.18.11.0/24"
        gw2 = charons(gw2_ns, charonmod.gateway_config(pki, conns=["psk"], pool=pool2), name="gw2")
        a = m2mvpn_client.make_profile(pki, "psk", netlab.GW_ADDR, name="a", kill_switch=True)
        b = m2mvpn_client.make_profile(pki, "psk", GW2_ADDR, name="b", kill_switch=True)
        profiles = json.dumps({"profiles": [a, b]})
        with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profiles) as client:
            client.connect()
            client.wait_for_state("connected")
            gw1.wait_for_sa("psk", "net")
            vip_before = client.status()["virtual_ip"]
            assert netlab.ping(topo.client, PROTECTED, count=2) == 2

            flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=8)
            time.sleep(2)
            n_events = len(state_events(client))
            client.cli("switch", "b")
            wait_log(client, "switched to profile b at 198.51.100.3:500")
            res = flood.result()
            events = state_events(client)[n_events:]
            assert not any("-> reconnecting" in e or "-> connecting" in e or "break-before-make" in e
                           for e in events), events
            st = client.status()
            assert st["state"] == "connected", st
            assert st["profile"] == "b"
            assert st["gateway"] == f"{GW2_ADDR}:500", st
            assert st["transitions"]["reconnects"] == 0, st["transitions"]
            if same_vip:
                assert st["virtual_ip"] == vip_before, st
                assert any("make-before-break: switched to profile b" in e for e in events), events
                assert res["lost"] == 0, (res, st["counters"])
                print("switch to another gateway, same virtual IP: ping flood", res)
            else:
                assert st["virtual_ip"].startswith("198.18.11."), st
                want = f"shortest gap (virtual IP {st['virtual_ip']}, was {vip_before}): switched to profile b"
                assert any(want in e for e in events), events
                print("switch to another gateway, other virtual IP: ping flood", res)
            # The new gateway lists the SA, the old one none (its Delete went there).
            deadline = time.monotonic() + 15
            while not (len(ike_sas(gw2)) == 1 and not ike_sas(gw1)):
                assert time.monotonic() < deadline, (gw1.list_sas(), gw2.list_sas(), client.log_tail())
                time.sleep(0.2)
            assert netlab.ping(topo.client, PROTECTED, count=2) == 2
