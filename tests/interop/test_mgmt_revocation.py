# SPDX-License-Identifier: Apache-2.0
"""Revocation end to end (issue 15): m2mvpn-mgmtd in the gateway's namespace on
198.51.100.9, a device certificate enrolled with `openssl cmp` (auto-approved
token) carrying the server's CRL distribution point, a strongSwan gateway that
trusts the device CA and checks revocation with its `revocation` plugin,
fetching the CRL over HTTP with the `curl` plugin. Our client connects with
that certificate; `m2mvpn-admin device revoke` then makes the gateway refuse
the next connection, and the client reports the refused authentication."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

import charon as charonmod
import m2mvpn_client
import netlab
import pki as pkimod

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "mgmt"))
import mgmt_helpers as mh  # noqa: E402

MGMT_ADDR = "198.51.100.9"
CRL_PORT = 8080
CRL_URL = f"http://{MGMT_ADDR}:{CRL_PORT}/crl"
# A gateway keeps a fetched CRL until its nextUpdate: short, so that the test
# is bounded (the CRL fetched before the revocation is stale after this).
CRL_NEXT_UPDATE_S = 3


def wait_until(what, check, timeout_s=30.0, interval_s=0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def test_revoked_device_refused_by_gateway(topology, charons, pki, workdir):
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
    cfg = mh.make_config(d, "sqlite:mgmt.db", listen=f"{MGMT_ADDR}:0", crl_listen=f"{MGMT_ADDR}:{CRL_PORT}",
                         crl_url=CRL_URL, crl_next_update_s=CRL_NEXT_UPDATE_S)
    srv = mh.Mgmtd(d, cfg, host=MGMT_ADDR, wrap=topo.gateway.argv())
    try:
        _scenario(topo, charons, pki, workdir, binary, d, srv)
    finally:
        srv.stop()


def _scenario(topo, charons, pki, workdir, binary, d, srv):
    # the group, an auto-approving token, the device key and certificate (openssl cmp ir in the client's namespace)
    tpl = os.path.join(d, "tpl.json")
    with open(tpl, "w") as f:
        f.write(__import__("json").dumps(mh.TEMPLATE))
    mh.admin_json(d, srv, "group", "create", "fleet", "--template", tpl)
    tok = mh.admin_json(d, srv, "token", "create", "--group", "fleet", "--auto-approve")["tokens"][0]["token"]
    tid, secret = tok.split(".")
    key, crt = os.path.join(d, "dev.key"), os.path.join(d, "dev.pem")
    mh.sh("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    r = topo.client.run("openssl", "cmp", "-cmd", "ir", "-server", f"{MGMT_ADDR}:{srv.port}/.well-known/cmp",
                        "-ref", tid, "-secret", "pass:" + secret, "-newkey", key, "-subject", "/CN=x",
                        "-certout", crt, "-tls_used", "-tls_trusted", os.path.join(d, "tls-ca.pem"),
                        "-trusted", os.path.join(d, "device-ca.pem"), "-total_timeout", "10",
                        "-unprotected_errors", "-implicit_confirm", check=False, timeout=60)
    assert r.returncode == 0 and os.path.exists(crt), r.stdout + r.stderr
    dev = mh.admin_json(d, srv, "device", "list")["devices"][0]["id"]
    text = mh.sh("openssl", "x509", "-in", crt, "-noout", "-text").stdout
    assert CRL_URL in text and f"DNS:{dev}" in text
    # the gateway trusts the device CA as m2mvpn-admin shows it
    ca = Path(d) / "device-ca-shown.pem"
    ca.write_text(mh.admin(d, srv, "ca", "show").stdout)

    gwconf = charonmod.gateway_config(pki, conns=["ecdsa"])
    conn = gwconf.tree["connections"]["ecdsa"]
    # ifuri: a certificate with a CRL distribution point must be checked against a fetched CRL
    conn["remote"] = {"auth": "pubkey", "id": "%any", "cacerts": ca.name, "revocation": "ifuri"}
    gwconf.files.append(("x509ca", ca))
    gw = charons(topo.gateway, gwconf, name="gw", options={"load": charonmod.PLUGINS + " curl"})

    profile = m2mvpn_client.make_profile(pki, "ecdsa", topo.gw_addr)
    profile["local_id"] = dev
    profile["auth"] = {"method": "cert", "cert": {"source": "file", "file": crt, "key": key}}

    # 1. not revoked: the gateway fetches the CRL, the device connects, traffic flows
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "c1", profile) as client:
        client.connect()
        client.wait_for_state("connected", timeout_s=30)
        netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0])
        client.disconnect()
        client.wait_for_state("idle", timeout_s=30)
    glog = gw.log_text()
    assert re.search(r"fetching crl from '" + re.escape(CRL_URL), glog), gw.log_tail()
    assert "certificate status is good" in glog, gw.log_tail()

    # 2. revoke; past the nextUpdate of the CRL the gateway fetched before
    assert mh.admin_json(d, srv, "device", "revoke", dev)["state"] == "revoked"
    time.sleep(CRL_NEXT_UPDATE_S + 1)
    mark = len(gw.log_text())
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "c2", profile) as client:
        client.connect()
        st = wait_until("idle with an authentication error",
                        lambda: (s := client.status())["state"] == "idle" and s["last_error"]["code"] != 0 and s)
        err = st["last_error"]
        assert "AUTHENTICATION_FAILED" in err["detail"], st
        assert st["state"] != "connected"
    glog = gw.log_text()[mark:]
    assert "certificate was revoked" in glog, gw.log_tail()
    assert re.search(r"fetching crl from '" + re.escape(CRL_URL), glog), gw.log_tail()
