# SPDX-License-Identifier: Apache-2.0
"""Forged packets from the path must not stop an always-on tunnel (issue 8).

A forger on the router between client and gateway (forger.py, a real
process with raw sockets) answers faster than the gateway:
- every IKE_SA_INIT request gets a forged response first (the correct SPIi
  and message ID; a Key Length of 128 on our ChaCha20-Poly1305, an unknown
  attribute, or a truncated SA payload). Nothing in IKE_SA_INIT is
  authenticated: the client must keep waiting, accept the real answer that
  follows and connect, never going idle.
- the same with an Ed25519 client and an answer without the hash notify it
  needs (RFC 8420), while the gateway's answer does not get through for two
  attempts: each ends with NOTSUPP, the gateway's fault, so the client keeps
  trying and connects once the gateway answers.
- after every fragment of the gateway's IKE_AUTH response (RSA certificates
  over a path that drops IP fragments, so strongSwan fragments it, RFC 7383)
  come forged fragments with the same message ID: one in another exchange,
  one with a broken ICV. They must not discard the real fragments.

The router's nftables hold back the real packets the forger watches, and the
forger sends them on right after its forgery: the forgery always arrives
first, whatever the timing of the machine.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import charon as charonmod
import m2mvpn_client
import netlab
import pki as pkimod

pytestmark = pytest.mark.skipif(m2mvpn_client.find_binary() is None,
                                reason="M2MVPN_BINARY (tools/m2mvpn) is not built")
FORGER = Path(__file__).with_name("forger.py")
PROTECTED = netlab.PROTECTED_ADDRS[0]

HOLD_INIT = """
table ip m2i_forger {{
    chain hold {{
        type filter hook forward priority 0; policy accept;
        ip saddr {client} udp dport 500 counter drop
    }}
}}
"""
HOLD_GW_4500 = """
table ip m2i_forger {{
    chain hold {{
        type filter hook forward priority 0; policy accept;
        ip saddr {gw} udp sport 4500 counter drop
    }}
}}
"""


class Forger:
    """forger.py running in the router's namespace."""

    def __init__(self, ns: netlab.Namespace, workdir: Path, *args: str):
        self.log_path = workdir / "forger.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        try:
            self.proc = ns.popen([sys.executable, "-u", str(FORGER), *args], stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + 10
        while "ready" not in self.text():
            assert self.proc.poll() is None, f"forger exited: {self.text()}"
            assert time.monotonic() < deadline, f"forger not ready: {self.text()}"
            time.sleep(0.05)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def forgeries(self) -> int:
        return sum(1 for line in self.text().splitlines() if line.startswith("forged"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def went_idle(client) -> list[str]:
    """The engine's state changes into idle, from its log."""
    text = client.log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if "state " in line and "-> idle" in line]


@pytest.mark.parametrize("kind,reason", [
    ("keylen128", "chose an IKE proposal we did not offer"),
    ("unknown-attr", "unknown attribute"),
    ("truncated", "malformed IKE_SA_INIT response"),
])
def test_forged_init_response_then_real_gateway(topology, charons, pki, workdir, kind, reason):
    topo = topology("routed")
    ike = "chacha20poly1305-prfsha256-x25519"
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"], ike_proposals=[ike]), name="gw")
    topo.router.nft(HOLD_INIT.format(client=topo.client_addr))
    forger = Forger(topo.router, workdir / "forger", "init", "cl0", kind)
    prof = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr, mode="always-on", ike_proposals=[ike])
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, m2mvpn_client.find_binary(),
                                               workdir / "c")
    try:
        st = client.wait_for_state("connected", timeout_s=40)
        assert st["algorithms"]["ike"] == ike, st
        # The forgery came first and was seen (else this test proves nothing) ...
        assert forger.forgeries() >= 1, forger.text()
        log = client.log_path.read_text(errors="replace")
        assert reason in log and "waiting 2000 ms for a valid answer" in log, client.log_tail(80)
        # ... and it neither stopped the engine nor cost the attempt.
        assert went_idle(client) == [], client.log_tail(80)
        assert "reconnecting in" not in log, client.log_tail(80)
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
    finally:
        client.stop()
        forger.stop()


def test_forged_fragments_interleaved_with_real_ike_auth(topology, charons, pki, workdir):
    topo = topology("fragdrop")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["rsa"]), name="gw")
    topo.router.nft(HOLD_GW_4500.format(gw=topo.gw_addr))
    forger = Forger(topo.router, workdir / "forger", "frag", "gw0")
    prof = m2mvpn_client.make_profile(pki, "rsa", topo.gw_addr, mode="always-on",
                                      ike_proposals=["aes256-sha256-modp2048"],
                                      esp_proposals=["aes128-sha256"])
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, m2mvpn_client.find_binary(),
                                               workdir / "c")
    try:
        client.wait_for_state("connected", timeout_s=40)
        assert "splitting IKE message" in gw.log_text(), "the gateway did not fragment IKE_AUTH"
        assert forger.forgeries() >= 2, forger.text()
        assert went_idle(client) == [], client.log_tail(80)
        # Connected at the first IKE_AUTH: no attempt was lost to the forgeries.
        assert client.log_path.read_text(errors="replace").count("sending IKE_AUTH to") == 1, \
            client.log_tail(80)
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
    finally:
        client.stop()
        forger.stop()


def test_forged_answers_fail_attempts_until_the_gateway_answers(topology, charons, pki, workdir):
    """The gateway's answer does not get through for the first two attempts;
    each ends with the forgery's error, here NOTSUPP: an Ed25519 key signs only
    with a hash the gateway announces (RFC 8420), and the forged answer
    announces none. NOTSUPP from our own side would stop the profile; from the
    gateway's answer it must not: the client keeps trying and connects once
    the real gateway answers."""
    topo = topology("routed")
    ike = "aes256gcm16-prfsha384-x25519"
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["rsa"], ike_proposals=[ike]), name="gw")
    # An Ed25519 client certificate from the intermediate CA: the gateway's
    # "rsa" connection takes any key type from it.
    inter_key = pki.dir / "intermediate-ca.key.pem"
    ed = pkimod._leaf(workdir, "dev1-ed25519", "ed25519", pkimod.CLIENT_ID, False,
                      pki.intermediate_ca, inter_key, (pki.intermediate_ca,))
    topo.router.nft(HOLD_INIT.format(client=topo.client_addr))
    forger = Forger(topo.router, workdir / "forger", "init", "cl0", "no-hash-notify", "2")
    prof = m2mvpn_client.make_profile(pki, "rsa", topo.gw_addr, mode="always-on", ike_proposals=[ike])
    prof["auth"]["cert"].update({"file": str(ed.cert), "key": str(ed.key)})
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, m2mvpn_client.find_binary(),
                                               workdir / "c")
    try:
        st = client.wait_for_state("connected", timeout_s=40)
        assert st["algorithms"]["ike"] == ike, st
        assert forger.text().count("swallowed") == 2, forger.text()
        log = client.log_path.read_text(errors="replace")
        assert log.count("announced no signature hash") >= 2, client.log_tail(80)
        assert log.count("reconnecting in") >= 2, client.log_tail(80)
        assert went_idle(client) == [], client.log_tail(80)
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
    finally:
        client.stop()
        forger.stop()
