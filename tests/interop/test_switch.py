# SPDX-License-Identifier: Apache-2.0
"""Profile switch while traffic flows (`m2mvpn switch NAME`).

What a user checks: switching to a profile on the same gateway and TUN is
make-before-break — the new profile's IKE SA and CHILD SA come up next to
the old ones, the traffic moves, then the old IKE SA is deleted: a ping
flood across the switch loses nothing, the state never leaves connected,
and a STATE_CHANGED event says "make-before-break". A switch that cannot
keep the tunnel (another TUN here) is break-before-make, and its event says
so and why; the loss across it is reported.
"""

from __future__ import annotations

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
