# SPDX-License-Identifier: Apache-2.0
"""Rekeying against strongSwan (RFC 7296 §1.3, §2.8, §2.18): our client
<-> a strongSwan gateway.

What a user checks: the tunnel never drops while the CHILD and IKE SAs are
replaced, by either side, with and without PFS; `status --json` stays
connected (the SPIs change); the gateway lists new SPIs and exactly one
CHILD SA and one IKE SA once the old ones are deleted; a ping flood across
the rekeys loses nothing; a checksum-verified TCP transfer survives several
rekeys of each kind; both sides rekeying at the same moment (a collision,
§2.8.1) ends with one SA per kind and traffic still flowing.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

import charon as charonmod
import m2mvpn_client
import netlab

pytestmark = pytest.mark.needs_m2mvpn

PROTECTED = netlab.PROTECTED_ADDRS[0]
IKE = "aes256gcm16-prfsha384-x25519"


def binary_or_skip():
    binary = m2mvpn_client.find_binary()
    if binary is None:
        pytest.skip("tools/m2mvpn not built (set M2MVPN_BINARY): our client is not tested")
    return binary


def start(topology, charons, pki, workdir, *, esp="aes256gcm16", child_extra=None, extra=None,
          ike_lifetime=None, esp_lifetime=None, gw_esp=None, ike_opts=None, esp_opts=None):
    binary = binary_or_skip()
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(
        pki, conns=["psk"], esp_proposals=[gw_esp or esp], child_extra=child_extra, extra=extra),
        name="gw")
    prof = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr, ike_proposals=[IKE], esp_proposals=[esp])
    if ike_lifetime:
        prof["ike"]["lifetime_s"] = ike_lifetime
    if esp_lifetime:
        prof["esp"]["lifetime_s"] = esp_lifetime
    prof["ike"].update(ike_opts or {})
    prof["esp"].update(esp_opts or {})
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, binary, workdir / "c")
    client.connect()
    client.wait_for_state("connected")
    gw.wait_for_sa("psk", "net")
    assert netlab.ping(topo.client, PROTECTED, count=2) == 2
    return topo, gw, client


def one_child(gw) -> dict:
    sa = gw.wait_for_sa("psk", "net")
    children = list(sa["child-sas"].values())
    return sa, children


def wait_settled(gw, old_spis: set, timeout_s: float = 15) -> tuple[dict, dict]:
    """Until the gateway has exactly one IKE SA with one installed CHILD SA,
    none of whose SPIs is in old_spis. Returns (IKE SA, CHILD SA)."""
    deadline = time.monotonic() + timeout_s
    while True:
        sas = [s for s in gw.list_sas() if s.get("name") == "psk"]
        if len(sas) == 1 and sas[0].get("state") == "ESTABLISHED":
            children = list(sas[0]["child-sas"].values())
            if (len(children) == 1 and children[0].get("state") == "INSTALLED" and
                    not {children[0]["spi-in"], children[0]["spi-out"]} & old_spis):
                return sas[0], children[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"gateway SAs did not settle: {sas}" + gw.log_tail())
        time.sleep(0.1)


def events(client, name: str = "REKEYED") -> list[str]:
    return [l for l in client.log_path.read_text(errors="replace").splitlines() if f"event {name}" in l]


@pytest.mark.parametrize("esp", [
    pytest.param("aes256gcm16", id="no-pfs"),
    pytest.param("aes256gcm16-x25519", id="pfs"),
])
def test_gateway_rekeys_child(topology, charons, pki, workdir, esp):
    topo, gw, client = start(topology, charons, pki, workdir, esp=esp)
    try:
        _, child = wait_settled(gw, set())
        old = {child["spi-in"], child["spi-out"]}
        flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=4)
        time.sleep(1)
        gw.rekey(child="net")
        res = flood.result()
        _, child = wait_settled(gw, old)
        if esp.endswith("x25519"):
            assert child.get("dh-group") == "CURVE_25519", child
        st = client.status()
        assert st["state"] == "connected"
        assert res["lost"] == 0, res
        assert len(events(client)) == 1
        # Counted in the status, and shown by `m2mvpn status`.
        assert st["transitions"]["rekeys"] == 1, st["transitions"]
        assert "reconnects, 1 rekeys, 0 roams" in client.cli("status").stdout
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
    finally:
        client.stop()


@pytest.mark.parametrize("esp", [
    pytest.param("aes256gcm16", id="no-pfs"),
])
def test_we_rekey_child(topology, charons, pki, workdir, esp):
    # Our lifetime 20 s: the rekey comes at 16..18 s; the gateway's is long.
    # (With PFS, and our IKE SA rekeys: test_two_minutes_of_rekeys_both_ways.)
    topo, gw, client = start(topology, charons, pki, workdir, esp=esp, esp_lifetime=20)
    try:
        _, child = wait_settled(gw, set())
        old = {child["spi-in"], child["spi-out"]}
        flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=22)
        res = flood.result()
        _, child = wait_settled(gw, old)
        if esp.endswith("x25519"):
            assert child.get("dh-group") == "CURVE_25519", child
        assert client.status()["state"] == "connected"
        assert res["lost"] == 0, res
        assert events(client)
    finally:
        client.stop()


def test_gateway_rekeys_ike(topology, charons, pki, workdir):
    topo, gw, client = start(topology, charons, pki, workdir)
    try:
        sa, child = wait_settled(gw, set())
        old_ike = (sa["initiator-spi"], sa["responder-spi"])
        flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=4)
        time.sleep(1)
        gw.rekey(ike="psk")
        res = flood.result()
        sa, child2 = wait_settled(gw, set())
        assert (sa["initiator-spi"], sa["responder-spi"]) != old_ike
        assert child2["spi-in"] == child["spi-in"]   # the CHILD SA moved over
        assert res["lost"] == 0, res
        # The new IKE SA works: the gateway rekeys the CHILD SA on it.
        gw.rekey(child="net")
        wait_settled(gw, {child["spi-in"], child["spi-out"]})
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
        assert client.status()["state"] == "connected"
    finally:
        client.stop()


# -- two minutes of rekeys by both sides under traffic -----------------------------------

_PACED = r"""
import hashlib, os, socket, sys, time
role, addr, port, rate, duration = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
h = hashlib.sha256()
n = 0
if role == "listen":
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(1)
    ls.settimeout(30)
    print("ready", flush=True)
    s, _ = ls.accept()
    s.settimeout(60)
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        h.update(b)
        n += len(b)
else:
    s = socket.create_connection((addr, port), timeout=30)
    s.settimeout(60)
    start = time.monotonic()
    chunk = rate // 20
    while time.monotonic() - start < duration:
        data = os.urandom(chunk)
        h.update(data)
        s.sendall(data)
        n += len(data)
        left = start + n / rate - time.monotonic()
        if left > 0:
            time.sleep(left)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
s.close()
print(n, h.hexdigest(), flush=True)
"""


def rekeys_in_log(client) -> dict[str, int]:
    log = client.log_path.read_text(errors="replace")
    return {
        "child_ours": len(re.findall(r"\] CHILD SA rekeyed: ", log)),
        "child_gw": len(re.findall(r"\] gateway rekeyed CHILD SA ", log)),
        "ike_ours": len(re.findall(r"IKE SA rekeyed: .*we initiated", log)),
        "ike_gw": len(re.findall(r"IKE SA rekeyed: .*the gateway initiated", log)),
    }


def test_two_minutes_of_rekeys_both_ways(topology, charons, pki, workdir):
    """Our lifetimes: CHILD 30 s (rekey at 24..27 s), IKE 40 s (32..36 s);
    the gateway rekeys the CHILD SA at 40 and 80 s and the IKE SA at 55 and
    95 s, in between ours come due: over 120 s of a ping flood (every 10 ms)
    and a paced TCP stream (checksummed at both ends) both sides rekey both
    SAs several times, with and without PFS on the gateway's side."""
    duration = 120
    topo, gw, client = start(topology, charons, pki, workdir, esp="aes256gcm16-x25519",
                             gw_esp="aes256gcm16-x25519", esp_lifetime=30, ike_lifetime=40)
    srv = topo.gateway.popen([netlab.PYTHON, "-c", _PACED, "listen", PROTECTED, "40101", "0", "0"],
                             stdout=subprocess.PIPE, text=True)
    flood = None
    try:
        assert srv.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        cl = topo.client.popen([netlab.PYTHON, "-c", _PACED, "connect", PROTECTED, "40101",
                                str(200_000), str(duration - 2)],
                               stdout=subprocess.PIPE, text=True)
        flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=duration - 2)
        plan = [(40, "child"), (55, "ike"), (80, "child"), (95, "ike")]
        for at, what in plan:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if what == "child":
                gw.rekey(child="net")
            else:
                gw.rekey(ike="psk")
        res = flood.result()
        sent = cl.communicate(timeout=60)[0].split()
        got = srv.communicate(timeout=60)[0].split()
        assert cl.returncode == 0 and srv.returncode == 0
        assert sent == got, (sent, got)
        assert int(sent[0]) > 10_000_000
        counts = rekeys_in_log(client)
        assert counts["child_ours"] >= 2 and counts["child_gw"] >= 2, counts
        assert counts["ike_ours"] >= 1 and counts["ike_gw"] >= 2, counts
        assert res["lost"] == 0, (res, counts)
        sa, child = wait_settled(gw, set())
        assert child.get("dh-group") == "CURVE_25519"
        st = client.status()
        assert st["state"] == "connected"
        # The client sends with the SA the gateway has (SPIs as both list them).
        assert st["child_sa"]["spi_in"] == child["spi-out"], (st["child_sa"], child)
        assert st["child_sa"]["spi_out"] == child["spi-in"], (st["child_sa"], child)
        print("rekeys", counts, "ping flood", res)
    finally:
        if flood:
            flood.stop()
        if srv.poll() is None:
            srv.kill()
        client.stop()


def test_byte_lifetime_rekeys_under_transfer(topology, charons, pki, workdir):
    """esp.lifetime_bytes 400 kB: a paced transfer of 200 kB/s for 20 s
    (4 MB out) makes the datapath ask for a CHILD SA rekey at 80..90 % of it,
    again and again: several make-before-break rekeys, the transfer's
    checksum equal at both ends, nothing lost in a ping flood across them,
    no reconnect; the hard limit is never reached."""
    duration = 20
    topo, gw, client = start(topology, charons, pki, workdir, esp_opts={"lifetime_bytes": 400_000})
    srv = topo.gateway.popen([netlab.PYTHON, "-c", _PACED, "listen", PROTECTED, "40102", "0", "0"],
                             stdout=subprocess.PIPE, text=True)
    flood = None
    try:
        assert srv.stdout.readline().strip() == "ready"
        cl = topo.client.popen([netlab.PYTHON, "-c", _PACED, "connect", PROTECTED, "40102",
                                str(200_000), str(duration)],
                               stdout=subprocess.PIPE, text=True)
        flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=duration)
        res = flood.result()
        sent = cl.communicate(timeout=60)[0].split()
        got = srv.communicate(timeout=60)[0].split()
        assert cl.returncode == 0 and srv.returncode == 0
        assert sent == got, (sent, got)
        assert int(sent[0]) >= 3_000_000, sent
        log = client.log_path.read_text(errors="replace")
        by_bytes = len(re.findall(r"SOFT_BYTES; rekeying", log))
        counts = rekeys_in_log(client)
        assert by_bytes >= 4 and counts["child_ours"] >= 4, (by_bytes, counts)
        assert "HARD_BYTES" not in log
        assert res["lost"] == 0, (res, counts)
        st = client.status()
        assert st["state"] == "connected"
        assert st["transitions"]["reconnects"] == 0, st["transitions"]
        _, child = wait_settled(gw, set())
        assert st["child_sa"]["spi_in"] == child["spi-out"], (st["child_sa"], child)
        print("byte lifetime rekeys", by_bytes, counts, "ping flood", res)
    finally:
        if flood:
            flood.stop()
        if srv.poll() is None:
            srv.kill()
        client.stop()


# -- a forced collision ---------------------------------------------------------------

def test_forced_ike_rekey_collision(topology, charons, pki, workdir):
    """Both sides rekey the IKE SA at the same time (RFC 7296 §2.8.1), forced
    by dropping IKE (port 4500 with the non-ESP marker) at the gateway:
    our request (at 16..18 s of ike.lifetime_s 20) is dropped on the way in,
    the gateway's (swanctl --rekey) on the way out; then the gateway may
    send (its retransmission reaches us while ours waits: we answer, that
    answer is dropped), then receive (our retransmission reaches it while its
    own waits: it answers). Each side saw the other's request while its own
    was out; both exchanges complete, the lowest nonce decides which new IKE
    SA survives, the redundant and the old one are deleted. ESP is not
    touched: the ping flood loses nothing."""
    # Our retransmissions 6 s apart (the gateway's come after 4 s). No
    # MOBIKE: with it the gateway sends address list updates of its own (for
    # one, when its link-local IPv6 address settles just after the SA is up);
    # the IKE filter below drops them and the one left pending holds back the
    # gateway's rekey request.
    topo, gw, client = start(topology, charons, pki, workdir, ike_lifetime=20,
                             ike_opts={"retransmit_timeout_s": 6.0, "retransmit_base": 2.0, "mobike": False})
    flood = None
    try:
        sa, child = wait_settled(gw, set())
        old_ike = (sa["initiator-spi"], sa["responder-spi"])
        flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=50)
        topo.gateway.nft("table inet m2i_ike {\n"
                         " chain in { type filter hook input priority 0; udp dport 4500 @th,64,32 0 drop; }\n"
                         " chain out { type filter hook output priority 0; udp sport 4500 @th,64,32 0 drop; }\n"
                         "}\n")

        def client_log_has(text, timeout_s):
            deadline = time.monotonic() + timeout_s
            while text not in client.log_path.read_text(errors="replace"):
                assert time.monotonic() < deadline, f"{text!r} not in our log" + client.log_tail()
                time.sleep(0.05)

        client_log_has("rekey IKE SA", 30)
        mark = len(gw.log_text())
        gw.rekey(ike="psk")
        gw.wait_for_log("generating CREATE_CHILD_SA request", after=mark)
        topo.gateway.nft("flush chain inet m2i_ike out\n")
        client_log_has("gateway rekeys the IKE SA too (collision)", 10)
        topo.gateway.nft("flush chain inet m2i_ike in\n")
        client_log_has("IKE SA rekey collision", 15)
        gw.wait_for_log("collision", after=mark, timeout_s=15)
        # Settled: one IKE SA (new SPIs) with the CHILD SA, nothing else left.
        deadline = time.monotonic() + 30
        while True:
            sas = [s for s in gw.list_sas() if s.get("name") == "psk"]
            if (len(sas) == 1 and sas[0].get("state") == "ESTABLISHED" and
                    (sas[0]["initiator-spi"], sas[0]["responder-spi"]) != old_ike):
                break
            assert time.monotonic() < deadline, f"gateway SAs: {sas}" + client.log_tail() + gw.log_tail()
            time.sleep(0.2)
        _, child2 = wait_settled(gw, set())
        assert child2["spi-in"] == child["spi-in"]
        res = flood.finish()   # settled: the flood (at most 50 s) has covered the collision
        assert res["lost"] == 0, res
        assert client.status()["state"] == "connected"
        # The surviving IKE SA works: the gateway rekeys the CHILD SA on it.
        gw.rekey(child="net")
        wait_settled(gw, {child["spi-in"], child["spi-out"]})
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
        print([l for l in client.log_path.read_text(errors="replace").splitlines() if "collision" in l])
    finally:
        if flood:
            flood.stop()
        client.stop()
