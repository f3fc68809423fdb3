# SPDX-License-Identifier: Apache-2.0
"""Decommissioning from the device (issue 15): m2mvpn-mgmtd in the gateway's
namespace on 198.51.100.9 publishing its CRL over HTTP, a strongSwan gateway
that checks device certificates against it (`revocation` plugin, `curl`),
and our engine enrolled from a bootstrap with the tunnel up.

`m2mvpn decommission` (m2mvpn_decommission: a CMP RR signed with the device
key) first while the server cannot be reached: refused, nothing changed;
then for real: the server records the certificate revoked, its CRL lists
the serial, the tunnel is down, the state directory holds no key or
certificate any more, and the gateway refuses a new connection made with a
copy of that certificate and key."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import sys
import time
from pathlib import Path

import pytest

import charon as charonmod
import m2mvpn_client
import netlab
from test_mgmt_dayn_device import bootstrap, template, wait_until
from test_mgmt_e2e import snapshot

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "mgmt"))
import mgmt_helpers as mh  # noqa: E402

MGMT_ADDR = "198.51.100.9"
CRL_PORT = 8080
CRL_URL = f"http://{MGMT_ADDR}:{CRL_PORT}/crl"
CRL_NEXT_UPDATE_S = 3  # the gateway's fetched CRL is stale after this


class Lab:
    pass


@pytest.fixture
def lab(topology, charons, pki, workdir):
    binary = m2mvpn_client.find_binary()
    if binary is None:
        pytest.skip("tools/m2mvpn not built (set M2MVPN_BINARY): our client is not tested")
    if not (mh.MGMTD and os.path.exists(mh.MGMTD) and mh.ADMIN and os.path.exists(mh.ADMIN)):
        pytest.skip("the management server is not built (M2MVPN_MGMTD, M2MVPN_ADMIN)")
    topo = topology("direct")
    topo.gateway.add_addr("eth0", f"{MGMT_ADDR}/24")
    d = str(workdir / "mgmt")
    os.makedirs(d)
    mh.make_pki(d, ips=(MGMT_ADDR,))
    cfg = mh.make_config(d, "sqlite:mgmt.db", listen=f"{MGMT_ADDR}:0", poll_s=5,
                         crl_listen=f"{MGMT_ADDR}:{CRL_PORT}", crl_url=CRL_URL,
                         crl_next_update_s=CRL_NEXT_UPDATE_S)
    srv = mh.Mgmtd(d, cfg, host=MGMT_ADDR, wrap=topo.gateway.argv())
    try:
        gwconf = charonmod.gateway_config(pki, conns=["ecdsa"])
        # ifuri: a certificate with a CRL distribution point is checked against the fetched CRL
        gwconf.tree["connections"]["ecdsa"]["remote"] = {"auth": "pubkey", "id": "%any", "cacerts": "device-ca.pem",
                                                         "revocation": "ifuri"}
        gwconf.files.append(("x509ca", Path(d) / "device-ca.pem"))
        lab = Lab()
        lab.gw = charons(topo.gateway, gwconf, name="gw", options={"load": charonmod.PLUGINS + " curl"})
        lab.topo, lab.d, lab.srv, lab.binary, lab.workdir, lab.pki = topo, d, srv, binary, workdir, pki
        yield lab
    finally:
        srv.stop()


def revoked_at(lab, serial):
    with contextlib.closing(sqlite3.connect(os.path.join(lab.d, "mgmt.db"), timeout=10)) as db:
        for ser, at in db.execute("SELECT serial, revoked_at FROM certificates"):
            if mh.norm_serial(ser) == serial:
                return at
    raise AssertionError(f"certificate {serial} not recorded by the server")


def crl_serials(lab):
    """The serials the server's CRL lists, fetched over HTTP as the gateway does."""
    out = os.path.join(lab.d, "crl.der")
    lab.topo.gateway.run("curl", "-sf", "-o", out, CRL_URL)
    text = mh.sh("openssl", "crl", "-inform", "DER", "-in", out, "-noout", "-text").stdout
    return {mh.norm_serial(s) for s in re.findall(r"Serial Number:\s*([0-9A-Fa-f]+)", text)}


def test_decommission_revokes_and_forgets(lab):
    path = os.path.join(lab.d, "tpl.json")
    with open(path, "w") as f:
        json.dump(template(lab.pki, lab.topo.gw_addr, "aes256gcm16-prfsha384-x25519", "aes256gcm16"), f)
    mh.admin_json(lab.d, lab.srv, "group", "create", "fleet", "--template", path)
    mh.admin_json(lab.d, lab.srv, "profile", "publish", "--group", "fleet")
    tok = mh.admin_json(lab.d, lab.srv, "token", "create", "--group", "fleet", "--auto-approve")["tokens"][0]["token"]
    boot = bootstrap(lab, tok)
    with m2mvpn_client.M2mvpnClient(lab.topo.client, lab.binary, lab.workdir / "dev", boot) as c:
        wait_until("connected", lambda: c.status()["state"] == "connected", timeout_s=90, tail=c.log_tail)
        assert netlab.ping(lab.topo.client, netlab.PROTECTED_ADDRS[0], count=3) == 3
        st = c.state_dir
        key, crt = st / "device.key.pem", st / "device.crt.pem"
        serial = mh.cert_serial(crt)
        dev = (c.status().get("management") or {})["device_id"]
        # a copy of the credential, for the gateway's refusal at the end
        (lab.workdir / "old.key").write_bytes(key.read_bytes())
        (lab.workdir / "old.pem").write_bytes(crt.read_bytes())
        assert revoked_at(lab, serial) is None and serial not in crl_serials(lab)

        # 1. the server cannot be reached (its port answers with a reset): refused, nothing changed
        before = snapshot(st)
        nft = ["nft", "-f", "-"]
        lab.topo.gateway.run(*nft, input="table inet decom {\n chain in {\n type filter hook input priority 0;\n"
                             f" ip daddr {MGMT_ADDR} tcp dport {lab.srv.port} reject with tcp reset\n }}\n}}\n")
        try:
            r = c.cli("decommission", check=False, timeout=200)
        finally:
            lab.topo.gateway.run("nft", "delete", "table", "inet", "decom")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "decommission failed, nothing changed" in r.stderr and "network" in r.stderr, r.stderr
        assert snapshot(st) == before
        s = c.status()
        assert s["state"] == "connected" and s["management"]["state"] == "enrolled", s
        assert revoked_at(lab, serial) is None

        # 2. decommission: revoked on the server, in its CRL, tunnel down, credential gone
        r = c.cli("decommission", timeout=200)
        assert dev in r.stdout and "decommissioned" in r.stdout, r.stdout
        assert revoked_at(lab, serial), "the server did not record the revocation"
        assert serial in crl_serials(lab)
        wait_until("tunnel down", lambda: c.status()["state"] == "idle", timeout_s=30, tail=c.log_tail)
        assert c.status()["management"]["state"] == "decommissioned"
        assert not key.exists() and not crt.exists() and not (st / "mgmt.json").exists()
        assert not (st / "profile.json").exists()
        assert json.loads((st / "decommission.json").read_text())["phase"] == "done"
        mark = len(lab.gw.log_text())
    assert "device %s revoked its certificate" % dev in lab.srv.text()

    # 3. the gateway refuses that certificate now (its CRL fetched again past nextUpdate)
    time.sleep(CRL_NEXT_UPDATE_S + 1)
    profile = m2mvpn_client.make_profile(lab.pki, "ecdsa", lab.topo.gw_addr)
    profile["local_id"] = dev
    profile["auth"] = {"method": "cert", "cert": {"source": "file", "file": str(lab.workdir / "old.pem"),
                                                  "key": str(lab.workdir / "old.key")}}
    with m2mvpn_client.M2mvpnClient(lab.topo.client, lab.binary, lab.workdir / "again", profile) as client:
        client.connect()
        st = wait_until("refused", lambda: (s := client.status())["state"] == "idle"
                        and s["last_error"]["code"] != 0 and s, timeout_s=60, tail=client.log_tail)
        assert "AUTHENTICATION_FAILED" in st["last_error"]["detail"], st
    assert "certificate was revoked" in lab.gw.log_text()[mark:], lab.gw.log_tail()


def test_decommission_killed_midway_finishes_at_restart(lab):
    """SIGKILL while the RR is out (the server's port drops it): the state
    directory says "requested"; the restarted engine does not bring the
    tunnel up with that certificate, sends the RR again and finishes; a
    third start refuses the bootstrap with a clear error."""
    import signal
    path = os.path.join(lab.d, "tpl.json")
    with open(path, "w") as f:
        json.dump(template(lab.pki, lab.topo.gw_addr, "aes256gcm16-prfsha384-x25519", "aes256gcm16"), f)
    mh.admin_json(lab.d, lab.srv, "group", "create", "fleet", "--template", path)
    mh.admin_json(lab.d, lab.srv, "profile", "publish", "--group", "fleet")
    tok = mh.admin_json(lab.d, lab.srv, "token", "create", "--group", "fleet", "--auto-approve")["tokens"][0]["token"]
    boot = bootstrap(lab, tok)
    c = m2mvpn_client.M2mvpnClient(lab.topo.client, lab.binary, lab.workdir / "dev", boot)
    with c:
        wait_until("connected", lambda: c.status()["state"] == "connected", timeout_s=90, tail=c.log_tail)
        st = c.state_dir
        serial = mh.cert_serial(st / "device.crt.pem")
        lab.topo.gateway.run("nft", "-f", "-", input="table inet decom {\n chain in {\n type filter hook input "
                             f"priority 0;\n ip daddr {MGMT_ADDR} tcp dport {lab.srv.port} drop\n }}\n}}\n")
        cli = lab.topo.client.popen([str(lab.binary), "decommission", "--control", str(c.control)],
                                    stdout=open(os.devnull, "w"), stderr=open(os.devnull, "w"))
        try:
            wait_until("the intent on disk", lambda: (st / "decommission.json").exists(), timeout_s=30,
                       tail=c.log_tail)
            c.proc.send_signal(signal.SIGKILL)
            c.proc.wait(10)
        finally:
            cli.kill()
            cli.wait(10)
            lab.topo.gateway.run("nft", "delete", "table", "inet", "decom")
    c.control.unlink(missing_ok=True)  # left by the killed engine
    assert json.loads((st / "decommission.json").read_text())["phase"] == "requested"
    assert (st / "device.key.pem").exists() and revoked_at(lab, serial) is None
    mark = len(lab.gw.log_text())
    with m2mvpn_client.M2mvpnClient(lab.topo.client, lab.binary, lab.workdir / "dev", boot) as c:
        wait_until("decommissioned", lambda: (c.status().get("management") or {}).get("state") == "decommissioned",
                   timeout_s=60, tail=c.log_tail)
        assert c.status()["state"] == "idle"
    assert "IKE_SA ecdsa" not in lab.gw.log_text()[mark:], "the restarted engine used the certificate"
    assert revoked_at(lab, serial) and serial in crl_serials(lab)
    assert not (st / "device.key.pem").exists() and not (st / "device.crt.pem").exists()
    assert json.loads((st / "decommission.json").read_text())["phase"] == "done"
    with m2mvpn_client.M2mvpnClient(lab.topo.client, lab.binary, lab.workdir / "dev", boot) as c:
        s = wait_until("refused", lambda: "was decommissioned" in ((s := c.status()).get("management") or {})
                       .get("last_error", "") and s, timeout_s=30, tail=c.log_tail)
        assert s["management"]["state"] == "decommissioned" and s["state"] == "idle", s


def test_decommission_key_on_a_pkcs11_token(lab):
    """The RR signed inside a SoftHSM2 token (the key never leaves it); on
    success the device's key pair and certificate objects leave the token."""
    import subprocess
    softhsm, pin = "/usr/lib/softhsm/libsofthsm2.so", "1234"
    tokens = lab.workdir / "tokens"
    tokens.mkdir()
    conf = lab.workdir / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "m2m", "--pin", pin, "--so-pin", "0000"],
                   check=True, capture_output=True, env=env)

    def objects():
        return subprocess.run(["pkcs11-tool", "--module", softhsm, "--token-label", "m2m", "--login", "--pin", pin,
                               "--list-objects"], capture_output=True, text=True, check=True, env=env).stdout

    path = os.path.join(lab.d, "tpl.json")
    with open(path, "w") as f:
        json.dump(template(lab.pki, lab.topo.gw_addr, "aes256gcm16-prfsha384-x25519", "aes256gcm16"), f)
    mh.admin_json(lab.d, lab.srv, "group", "create", "fleet", "--template", path)
    mh.admin_json(lab.d, lab.srv, "profile", "publish", "--group", "fleet")
    tok = mh.admin_json(lab.d, lab.srv, "token", "create", "--group", "fleet", "--auto-approve")["tokens"][0]["token"]
    boot = bootstrap(lab, tok)
    boot["management"]["key"] = {"provider": "pkcs11", "pkcs11_module": softhsm,
                                 "pkcs11_uri": "pkcs11:token=m2m;object=dev", "pin": pin}
    with m2mvpn_client.M2mvpnClient(lab.topo.client, lab.binary, lab.workdir / "dev", boot, env=env) as c:
        wait_until("connected", lambda: c.status()["state"] == "connected", timeout_s=90, tail=c.log_tail)
        assert objects().count("Private Key Object") == 1
        serial = mh.cert_serial(c.state_dir / "device.crt.pem")
        r = c.cli("decommission", timeout=200)
        assert "decommissioned" in r.stdout, r.stdout
        assert revoked_at(lab, serial) and serial in crl_serials(lab)
        left = objects()
        assert "Private Key Object" not in left and "label:      dev\n" not in left, left
        assert not (c.state_dir / "device.crt.pem").exists()


def test_decommission_refused_by_the_server_changes_nothing(lab):
    """The operator revoked the device already: the server refuses the RR
    (the signing certificate is no longer good); the device says so and its
    state directory stays byte for byte."""
    path = os.path.join(lab.d, "tpl.json")
    with open(path, "w") as f:
        json.dump(template(lab.pki, lab.topo.gw_addr, "aes256gcm16-prfsha384-x25519", "aes256gcm16"), f)
    mh.admin_json(lab.d, lab.srv, "group", "create", "fleet", "--template", path)
    mh.admin_json(lab.d, lab.srv, "profile", "publish", "--group", "fleet")
    tok = mh.admin_json(lab.d, lab.srv, "token", "create", "--group", "fleet", "--auto-approve")["tokens"][0]["token"]
    with m2mvpn_client.M2mvpnClient(lab.topo.client, lab.binary, lab.workdir / "dev", bootstrap(lab, tok)) as c:
        wait_until("connected", lambda: c.status()["state"] == "connected", timeout_s=90, tail=c.log_tail)
        dev = c.status()["management"]["device_id"]
        assert mh.admin_json(lab.d, lab.srv, "device", "revoke", dev)["state"] == "revoked"
        before = snapshot(c.state_dir)
        r = c.cli("decommission", check=False, timeout=200)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "nothing changed" in r.stderr and "refused by the server" in r.stderr, r.stderr
        assert snapshot(c.state_dir) == before
        assert c.status()["management"]["state"] == "enrolled"



def test_decommission_unanswered_then_revoked_on_retry(lab):
    """The RR goes unanswered (the server's port drops it: a timeout, so it
    may have reached the server): the device cannot know whether it was
    revoked, so decommission.json stays "requested", the tunnel stops and
    management says to call again. Meanwhile the certificate got revoked (as
    the lost RR would have done); the retry is refused with certRevoked,
    signed by the device CA, which the device takes as revoked: the
    credential goes."""
    path = os.path.join(lab.d, "tpl.json")
    with open(path, "w") as f:
        json.dump(template(lab.pki, lab.topo.gw_addr, "aes256gcm16-prfsha384-x25519", "aes256gcm16"), f)
    mh.admin_json(lab.d, lab.srv, "group", "create", "fleet", "--template", path)
    mh.admin_json(lab.d, lab.srv, "profile", "publish", "--group", "fleet")
    tok = mh.admin_json(lab.d, lab.srv, "token", "create", "--group", "fleet", "--auto-approve")["tokens"][0]["token"]
    with m2mvpn_client.M2mvpnClient(lab.topo.client, lab.binary, lab.workdir / "dev", bootstrap(lab, tok)) as c:
        wait_until("connected", lambda: c.status()["state"] == "connected", timeout_s=90, tail=c.log_tail)
        st = c.state_dir
        dev = c.status()["management"]["device_id"]
        lab.topo.gateway.run("nft", "-f", "-", input="table inet decom {\n chain in {\n type filter hook input "
                             f"priority 0;\n ip daddr {MGMT_ADDR} tcp dport {lab.srv.port} drop\n }}\n}}\n")
        try:
            r = c.cli("decommission", check=False, timeout=200)
        finally:
            lab.topo.gateway.run("nft", "delete", "table", "inet", "decom")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "decommission unfinished" in r.stderr and "call m2mvpn_decommission again" in r.stderr, r.stderr
        assert json.loads((st / "decommission.json").read_text())["phase"] == "requested"
        assert (st / "device.key.pem").exists() and (st / "device.crt.pem").exists()
        s = wait_until("tunnel stopped", lambda: (s := c.status())["state"] != "connected" and s, timeout_s=30,
                       tail=c.log_tail)
        assert s["management"]["state"] == "error", s

        assert mh.admin_json(lab.d, lab.srv, "device", "revoke", dev)["state"] == "revoked"
        r = c.cli("decommission", timeout=200)
        assert "decommissioned" in r.stdout, r.stdout
        assert not (st / "device.key.pem").exists() and not (st / "device.crt.pem").exists()
        assert json.loads((st / "decommission.json").read_text())["phase"] == "done"
        assert c.status()["management"]["state"] == "decommissioned"
