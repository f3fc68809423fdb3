# SPDX-License-Identifier: Apache-2.0
"""Our IKEv2 initiator (lib/ike) against a strongSwan 5.9 gateway.

These tests run the initiator through tests/interop/ike_probe.c: lib/ike with
plain UDP sockets and no ESP datapath, so they check IKE and the CHILD SA on
the gateway on their own. Each test builds its own namespaces and gateway.
Every success is checked on the gateway too (swanctl --list-sas): IKE SA
ESTABLISHED and CHILD SA INSTALLED with the algorithms we asked for; every
failure must end in the right M2MVPN_E_* code and leave no SA on the gateway.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import charon as charonmod
import m2mvpn_client
import netlab
import pki as pkimod
import sanitizer

PROBE = os.environ.get("M2MVPN_IKE_PROBE", "")

# Error codes of include/m2mvpn/m2mvpn.h.
E_TIMEOUT, E_NO_PROPOSAL, E_AUTH_LOCAL, E_AUTH_PEER, E_TS = -13, -14, -15, -16, -17

# strongSwan's names in --list-sas for our proposal keywords.
ENCR = {"aes128gcm16": ("AES_GCM_16", "128"), "aes256gcm16": ("AES_GCM_16", "256"),
        "aes128": ("AES_CBC", "128"), "aes256": ("AES_CBC", "256"),
        "chacha20poly1305": ("CHACHA20_POLY1305", None)}
INTEG = {"sha256": "HMAC_SHA2_256_128", "sha384": "HMAC_SHA2_384_192", "sha512": "HMAC_SHA2_512_256"}
PRF = {"prfsha256": "PRF_HMAC_SHA2_256", "prfsha384": "PRF_HMAC_SHA2_384",
       "prfsha512": "PRF_HMAC_SHA2_512"}
KE = {"x25519": "CURVE_25519", "ecp256": "ECP_256", "ecp384": "ECP_384", "ecp521": "ECP_521",
      "modp2048": "MODP_2048", "modp3072": "MODP_3072", "modp4096": "MODP_4096"}

pytestmark = pytest.mark.skipif(not PROBE or not Path(PROBE).is_file(),
                                reason="M2MVPN_IKE_PROBE (the built ike_probe) is not set")


def probe(topo: netlab.Topology, workdir: Path, prof: dict, hold_s: int = 3,
          timeout_s: float = 90) -> tuple[dict, subprocess.Popen]:
    """Start ike_probe in the client namespace; return its first JSON line."""
    pf = workdir / "profile.json"
    pf.write_text(json.dumps(prof))
    proc = topo.client.popen([PROBE, str(pf), "--hold", str(hold_s), "-v"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=max(1, deadline - time.monotonic()))
        raise AssertionError(f"ike_probe printed nothing ({sanitizer.describe_code(proc.returncode)})"
                             f"{sanitizer.report_of(proc.pid)}\nlog:\n{proc.stderr.read()[-4000:]}")
    res = json.loads(line)
    _printed[proc.pid] = res
    return res, proc


# What each running ike_probe printed first (pid -> result), for finish().
_printed: dict[int, dict] = {}


def finish(proc: subprocess.Popen) -> str:
    """Wait for ike_probe and return its log (stderr). It must exit as its
    printed result says (0: established, 1: failed); anything else, such as a
    crash or a sanitizer abort, or a sanitizer report of that process, fails
    the test with the report and the log tail."""
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"ike_probe did not end within 60 s; log:\n{err[-4000:]}")
    res = _printed.pop(proc.pid, {})
    expected = 0 if res.get("result") == "established" else 1
    problem = sanitizer.exit_problem("ike_probe", proc.pid, proc.returncode, expected)
    if problem:
        raise AssertionError(f"{problem}\n--- ike_probe log tail ---\n{err[-4000:]}")
    return err


def profile(pki, auth: str, gw_addr: str = netlab.GW_ADDR, *, ike: str = "aes256gcm16-prfsha384-x25519",
            esp: str = "aes256gcm16", **ike_opts) -> dict:
    prof = m2mvpn_client.make_profile(pki, auth, gw_addr, ike_proposals=[ike], esp_proposals=[esp])
    prof["ike"].update(ike_opts)
    return prof


def expect_ike(sa: dict, ike: str) -> None:
    parts = ike.split("-")
    encr, ks = ENCR[parts[0]]
    assert sa["encr-alg"] == encr
    if ks:
        assert sa["encr-keysize"] == ks
    prf = [PRF[p] for p in parts if p in PRF]
    integ = [INTEG[p] for p in parts if p in INTEG]
    if integ:
        assert sa["integ-alg"] == integ[0]
    assert sa["prf-alg"] == (prf[0] if prf else integ[0].replace("HMAC", "PRF_HMAC")[:17])
    assert sa["dh-group"] == KE[parts[-1]]


def expect_esp(child: dict, esp: str) -> None:
    parts = esp.split("-")
    encr, ks = ENCR[parts[0]]
    assert child["protocol"] == "ESP"
    assert child["encr-alg"] == encr
    if ks:
        assert child["encr-keysize"] == ks
    if len(parts) > 1 and parts[1] in INTEG:
        assert child["integ-alg"] == INTEG[parts[1]]
    assert child["encap"] == "yes"  # ESP in UDP: our datapath's only mode


def established(topo, gw, workdir, prof, *, ike: str, esp: str, gw_conn: str) -> dict:
    res, proc = probe(topo, workdir, prof)
    try:
        assert res["result"] == "established", res
        sa = gw.wait_for_sa(gw_conn, "net", timeout_s=10)
        assert sa["state"] == "ESTABLISHED"
        assert sa["remote-id"] == pkimod.CLIENT_ID
        expect_ike(sa, ike)
        child = charonmod.child_of(sa)
        assert child["state"] == "INSTALLED"
        expect_esp(child, esp)
        assert child["remote-ts"] == [f"{res['vip']}/32"]
        assert child["local-ts"] == [netlab.PROTECTED_NET]
        assert ipaddress.ip_address(res["vip"]) in ipaddress.ip_network(netlab.VIP_POOL)
        assert sa.get("remote-vips") == [res["vip"]]
        assert res["ike"] == canonical_ike(ike) and res["esp"] == esp
        return sa
    finally:
        log = finish(proc)
        if "IKE SA with" not in log:
            print(log[-3000:])


def canonical_ike(ike: str) -> str:
    """How status names a proposal: the PRF always spelled out (for CBC+HMAC
    proposals without one, strongSwan and we take it from the integrity)."""
    parts = ike.split("-")
    if not any(p.startswith("prf") for p in parts):
        integ = next(p for p in parts if p in INTEG)
        parts.insert(len(parts) - 1, "prf" + integ)
    return "-".join(parts)


def no_sa_on(gw, settle_s: float = 1.0) -> None:
    time.sleep(settle_s)
    established = [s for s in gw.list_sas() if s.get("state") == "ESTABLISHED"]
    assert not established, established


# --- authentication ----------------------------------------------------------------

def test_psk(topology, charons, pki, workdir):
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    established(topo, gw, workdir, profile(pki, "psk"), ike="aes256gcm16-prfsha384-x25519",
                esp="aes256gcm16", gw_conn="psk")


def test_ecdsa_certificates(topology, charons, pki, workdir):
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"]), name="gw")
    sa = established(topo, gw, workdir, profile(pki, "ecdsa"), ike="aes256gcm16-prfsha384-x25519",
                     esp="aes256gcm16", gw_conn="ecdsa")
    assert sa["remote-id"] == pkimod.CLIENT_ID


def test_rsa_intermediate_over_fragment_dropping_path(topology, charons, pki, workdir):
    """Certificates too big for one datagram cross only as IKE fragments (RFC 7383)."""
    topo = topology("fragdrop")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["rsa"]), name="gw")
    established(topo, gw, workdir, profile(pki, "rsa"), ike="aes256gcm16-prfsha384-x25519",
                esp="aes256gcm16", gw_conn="rsa")


def test_rsa_without_fragmentation_fails_on_that_path(topology, charons, pki, workdir):
    """The same path without IKE fragmentation: the big IKE_AUTH cannot cross."""
    topo = topology("fragdrop")
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["rsa"]), name="gw")
    prof = profile(pki, "rsa", fragmentation=False, retransmit_timeout_s=0.5,
                   retransmit_tries=2, retransmit_base=1.5)
    res, proc = probe(topo, workdir, prof)
    finish(proc)
    assert res["result"] == "failed" and res["code"] == E_TIMEOUT, res


# --- SHA-1 signatures ----------------------------------------------------------------
# With charon.signature_authentication = no strongSwan neither announces
# SIGNATURE_HASH_ALGORITHMS (RFC 7427) nor uses method 14: its RSA key signs
# with method 1, RSA PKCS#1 v1.5 SHA-1. We refuse SHA-1 both ways unless the
# profile says ike.allow_sha1_signatures.
NO_RFC7427 = {"signature_authentication": False}
E_NOTSUPP = -3


def _rsa_gateway_for_ecdsa_clients(pki) -> charonmod.SwanctlConfig:
    """The "rsa" connection (gateway signs with its RSA key), but for a client
    with the ECDSA certificate: the client's method 9 needs no notify, so only
    the gateway's AUTH uses SHA-1."""
    conf = charonmod.gateway_config(pki, conns=["rsa"])
    conf.tree["connections"]["rsa"]["remote"] = {"auth": "pubkey", "id": pkimod.CLIENT_ID}
    return conf


def test_rsa_client_refuses_sha1_when_gateway_offers_no_hash(topology, charons, pki, workdir):
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["rsa"]), name="gw",
                 options=NO_RFC7427)
    res, proc = probe(topo, workdir, profile(pki, "rsa"))
    log = finish(proc)
    assert res["result"] == "failed" and res["code"] == E_NOTSUPP, res
    assert "offers no acceptable signature hash" in res["detail"], res
    assert "ike.allow_sha1_signatures" in res["detail"], res
    assert "sending IKE_AUTH" not in log  # nothing signed with SHA-1 went out
    no_sa_on(gw)


def test_gateway_rsa_sha1_auth_is_refused(topology, charons, pki, workdir):
    topo = topology("direct")
    gw = charons(topo.gateway, _rsa_gateway_for_ecdsa_clients(pki), name="gw", options=NO_RFC7427)
    res, proc = probe(topo, workdir, profile(pki, "ecdsa"))
    finish(proc)
    assert res["result"] == "failed" and res["code"] == E_AUTH_PEER, res
    assert "RSA PKCS#1 SHA-1 (method 1), which is refused" in res["detail"], res
    # The gateway did sign with method 1 ("RSA signature"; RFC 7427 would
    # read "RSA_EMSA_PKCS1_SHA2_256"): the refusal is ours.
    assert "(myself) with RSA signature successful" in gw.log_text()
    no_sa_on(gw)


@pytest.mark.parametrize("client", ["rsa", "ecdsa"])
def test_sha1_signatures_allowed_by_profile(topology, charons, pki, workdir, client):
    topo = topology("direct")
    conf = (charonmod.gateway_config(pki, conns=["rsa"]) if client == "rsa"
            else _rsa_gateway_for_ecdsa_clients(pki))
    gw = charons(topo.gateway, conf, name="gw", options=NO_RFC7427)
    res, proc = probe(topo, workdir, profile(pki, client, allow_sha1_signatures=True))
    try:
        assert res["result"] == "established", res
        sa = gw.wait_for_sa("rsa", "net", timeout_s=10)
        assert sa["state"] == "ESTABLISHED"
    finally:
        log = finish(proc)
    assert "gateway 198.51.100.1" in log and "authenticated with RSA SHA-1" in log, log[-3000:]
    if client == "rsa":
        assert "signing our AUTH with RSA SHA-1" in log, log[-3000:]


def test_through_nat(topology, charons, pki, workdir):
    topo = topology("nat")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    sa = established(topo, gw, workdir, profile(pki, "psk"), ike="aes256gcm16-prfsha384-x25519",
                     esp="aes256gcm16", gw_conn="psk")
    assert sa["remote-host"] == netlab.ROUTER_GW_SIDE  # seen through the NAT
    assert sa.get("nat-remote") == "yes"


# --- algorithms ---------------------------------------------------------------------
# Together these cover every algorithm family: AES-GCM 128/256, AES-CBC 128/256,
# ChaCha20-Poly1305; HMAC-SHA2-256/384/512 integrity and PRF; x25519,
# ecp256/384/521, modp2048/3072/4096.
PROPOSAL_SETS = [
    ("aes128gcm16-prfsha256-ecp256", "aes128gcm16"),
    ("aes256-sha512-modp4096", "aes256-sha512"),
    ("chacha20poly1305-prfsha512-ecp384", "chacha20poly1305"),
    ("aes128-sha384-ecp521", "aes128-sha384"),
    ("aes256gcm16-prfsha384-modp3072", "aes256-sha256"),
    ("aes128-sha256-modp2048", "aes128-sha256"),
    ("aes256gcm16-prfsha256-x25519", "aes256gcm16"),
]


@pytest.mark.parametrize("ike,esp", PROPOSAL_SETS, ids=[p[0] for p in PROPOSAL_SETS])
def test_proposal_sets(topology, charons, pki, workdir, ike, esp):
    topo = topology("direct")
    gwconf = charonmod.gateway_config(pki, conns=["psk"], ike_proposals=[ike], esp_proposals=[esp])
    gw = charons(topo.gateway, gwconf, name="gw")
    established(topo, gw, workdir, profile(pki, "psk", ike=ike, esp=esp), ike=ike, esp=esp,
                gw_conn="psk")


def test_invalid_ke_payload_retry(topology, charons, pki, workdir):
    """We open with x25519; the gateway wants ecp256 (which we also offered)."""
    topo = topology("direct")
    gwconf = charonmod.gateway_config(pki, conns=["psk"], ike_proposals=["aes256gcm16-prfsha256-ecp256"])
    gw = charons(topo.gateway, gwconf, name="gw")
    prof = profile(pki, "psk", ike="aes256gcm16-prfsha256-x25519-ecp256")
    res, proc = probe(topo, workdir, prof)
    log = finish(proc)
    assert res["result"] == "established", res
    assert "INVALID_KE_PAYLOAD" in log
    assert res["ike"] == "aes256gcm16-prfsha256-ecp256"
    assert gw.list_sas() == []  # deleted again after --hold


# --- failures -----------------------------------------------------------------------

def test_wrong_psk_is_rejected(topology, charons, pki, workdir):
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    prof = m2mvpn_client.make_profile(pki, "psk", netlab.GW_ADDR, psk="not-the-gateway-psk")
    res, proc = probe(topo, workdir, prof)
    finish(proc)
    assert res["result"] == "failed" and res["code"] == E_AUTH_LOCAL, res
    assert "AUTHENTICATION_FAILED" in res["detail"]
    no_sa_on(gw)


def test_untrusted_gateway_certificate(topology, charons, pki, workdir):
    topo = topology("direct")
    gwconf = charonmod.gateway_config(pki, conns=["ecdsa"], ecdsa_cert=pki.gw_untrusted)
    gw = charons(topo.gateway, gwconf, name="gw")
    res, proc = probe(topo, workdir, profile(pki, "ecdsa"))
    finish(proc)
    assert res["result"] == "failed" and res["code"] == E_AUTH_PEER, res
    assert "issuer" in res["detail"] or "untrusted" in res["detail"], res
    no_sa_on(gw)


def test_gateway_identity_mismatch(topology, charons, pki, workdir):
    """We send the profile's remote_id as IDr; a strongSwan gateway that is not
    that identity finds no config for it and refuses us (AUTHENTICATION_FAILED).

    strongSwan as responder always answers with the IDr it was sent (or
    refuses), so it never makes our own IDr check fire: a gateway that
    presents another identity is played by the fake gateway of
    tests/unit/test_ike_sa.c (test_auth_peer_other_identity, PSK).
    """
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"]), name="gw")
    prof = profile(pki, "ecdsa")
    prof["remote_id"] = "other-gw.m2m.test"
    res, proc = probe(topo, workdir, prof)
    finish(proc)
    assert res["result"] == "failed" and res["code"] == E_AUTH_LOCAL, res
    assert "rejected our authentication (AUTHENTICATION_FAILED)" in res["detail"], res
    log = gw.log_text()
    assert f"[other-gw.m2m.test]...{topo.client_addr}[{pkimod.CLIENT_ID}]" in log, gw.log_tail()
    assert "no matching peer config found" in log, gw.log_tail()
    no_sa_on(gw)


def test_no_proposal_chosen(topology, charons, pki, workdir):
    topo = topology("direct")
    gwconf = charonmod.gateway_config(pki, conns=["psk"], ike_proposals=["aes256gcm16-prfsha384-x25519"])
    gw = charons(topo.gateway, gwconf, name="gw")
    res, proc = probe(topo, workdir, profile(pki, "psk", ike="aes128-sha256-modp2048"))
    finish(proc)
    assert res["result"] == "failed" and res["code"] == E_NO_PROPOSAL, res
    assert "aes128-sha256" in res["detail"]  # our proposals are named
    no_sa_on(gw)


def test_traffic_selectors_unacceptable(topology, charons, pki, workdir):
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    prof = profile(pki, "psk")
    prof["tunnel"]["remote_ts"] = ["198.19.0.0/16"]  # not what the gateway offers
    res, proc = probe(topo, workdir, prof)
    finish(proc)
    assert res["result"] == "failed" and res["code"] == E_TS, res
    no_sa_on(gw)  # we delete the IKE SA that has no CHILD SA


def test_gateway_that_does_not_answer(topology, pki, workdir):
    topo = topology("direct")  # no charon at all
    prof = profile(pki, "psk", retransmit_timeout_s=0.5, retransmit_tries=2, retransmit_base=1.5)
    res, proc = probe(topo, workdir, prof)
    finish(proc)
    assert res["result"] == "failed" and res["code"] == E_TIMEOUT, res
    assert res["detail"] == f"no answer from {netlab.GW_ADDR}:500 after 2 retransmits"


def test_cookie_requested_by_gateway(topology, charons, pki, workdir):
    """A gateway with a half-open IKE SA answers the next IKE_SA_INIT with a
    COOKIE (RFC 7296 §2.6, strongSwan cookie_threshold = 1); we repeat the
    request with it and carry on."""
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw",
                 options={"cookie_threshold": 1})
    # A first initiator whose IKE_AUTH (UDP/4500) is dropped stays half-open.
    topo.client.nft("table inet m2i_cookie {\n chain out {\n  type filter hook output priority 0;\n"
                    "  udp dport 4500 drop\n }\n}\n")
    first = workdir / "first"
    first.mkdir()
    proc_a = topo.client.popen([PROBE, str(_write(first, profile(pki, "psk")))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not any(s.get("state") == "CONNECTING" for s in gw.list_sas()):
            assert time.monotonic() < deadline, "no half-open IKE SA on the gateway"
            time.sleep(0.1)
        topo.client.run("nft", "delete", "table", "inet", "m2i_cookie")
        res, proc = probe(topo, workdir, profile(pki, "psk"))
        log = finish(proc)
        assert res["result"] == "established", res
        assert "COOKIE" in log
    finally:
        proc_a.kill()
        proc_a.communicate()


def _write(d: Path, prof: dict) -> Path:
    f = d / "profile.json"
    f.write_text(json.dumps(prof))
    return f
