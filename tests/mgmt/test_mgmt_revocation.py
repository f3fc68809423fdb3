# SPDX-License-Identifier: Apache-2.0
"""Certificate renewal (CMP KUR) and revocation (CMP RR, m2mvpn-admin device revoke), the CRL
over plain HTTP and HTTPS (issue 15), driven by the openssl command line."""
import json
import os
import re
import subprocess
import urllib.request

import pytest

from mgmt_helpers import TEMPLATE, Mgmtd, admin, admin_json, make_config, sh
from test_mgmt_server import cmp_ir, https, newkey


def cmp_signed(d, srv, cmd, cert, key, *extra):
    """openssl cmp kur|rr signed with the device's certificate and key."""
    r = subprocess.run(["openssl", "cmp", "-cmd", cmd, "-server", f"127.0.0.1:{srv.port}/.well-known/cmp",
                        "-cert", cert, "-key", key, "-tls_used", "-tls_trusted", os.path.join(d, "tls-ca.pem"),
                        "-trusted", os.path.join(d, "device-ca.pem"), "-total_timeout", "10",
                        "-unprotected_errors", *extra],
                       capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def x509(path, *what):
    return sh("openssl", "x509", "-in", path, "-noout", *what).stdout


def serial_of(path):
    return x509(path, "-serial").strip().split("=")[1].lower().lstrip("0")


def crl_http(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/crl", timeout=30) as r:
        assert r.headers["Content-Type"] == "application/pkix-crl"
        return r.read()


def crl_text(d, der, name="crl.der"):
    p = os.path.join(d, name)
    with open(p, "wb") as f:
        f.write(der)
    # signed by the device CA (openssl crl -CAfile verifies the signature, exit != 0 otherwise)
    out = sh("openssl", "crl", "-inform", "DER", "-in", p, "-CAfile", os.path.join(d, "device-ca.pem"),
             "-noout", "-text").stdout
    return out


def revoked_serials(text):
    return {s.lower().lstrip("0") for s in re.findall(r"Serial Number: ([0-9A-Fa-f]+)", text)}


@pytest.fixture
def crlserver(pki):
    cfg = make_config(pki, "sqlite:mgmt.db", crl_listen="127.0.0.1:0", crl_url="http://198.51.100.9:8080/crl",
                      crl_next_update_s=120)
    srv = Mgmtd(pki, cfg)
    m = re.search(r"CRL on 127\.0\.0\.1 port (\d+) \(http", srv.text())
    assert m, srv.text()
    srv.crl_port = int(m.group(1))
    yield srv
    srv.stop()


def enrol(d, srv, name):
    tpl = os.path.join(d, "tpl.json")
    if not os.path.exists(tpl):
        with open(tpl, "w") as f:
            json.dump(TEMPLATE, f)
        admin_json(d, srv, "group", "create", "fleet", "--template", tpl)
        admin_json(d, srv, "profile", "publish", "--group", "fleet")
    tok = admin_json(d, srv, "token", "create", "--group", "fleet", "--auto-approve")["tokens"][0]["token"]
    key, crt = newkey(d, name + ".key"), os.path.join(d, name + ".pem")
    rc, out = cmp_ir(d, srv, tok, key, crt)
    assert rc == 0, out
    return key, crt


def test_kur_rr_revoke_crl(pki, crlserver):
    d, srv = pki, crlserver
    key, crt = enrol(d, srv, "dev1")
    dev = admin_json(d, srv, "device", "list")["devices"][0]["id"]
    # the certificate names the CRL distribution point from the config
    assert "URI:http://198.51.100.9:8080/crl" in x509(crt, "-ext", "crlDistributionPoints")
    # an empty CRL, signed by the device CA, nextUpdate = lastUpdate + crl_next_update_s
    text = crl_text(d, crl_http(srv.crl_port))
    assert "No Revoked Certificates" in text and "Issuer: CN = test device CA" in text

    # KUR signed with the current certificate, a new key: a new certificate, same CN, new serial
    key2, crt2 = newkey(d, "dev1-2.key"), os.path.join(d, "dev1-2.pem")
    # (openssl's default: explicit confirmation, a signed certConf after the answer)
    rc, out = cmp_signed(d, srv, "kur", crt, key, "-newkey", key2, "-certout", crt2)
    assert rc == 0 and "sending CERTCONF" in out, out
    sh("openssl", "verify", "-CAfile", os.path.join(d, "device-ca.pem"), crt2)
    assert f"CN = {dev}" in x509(crt2, "-subject") and serial_of(crt2) != serial_of(crt)
    assert sh("openssl", "pkey", "-in", key2, "-pubout").stdout == x509(crt2, "-pubkey")
    listed = admin_json(d, srv, "device", "list")["devices"][0]
    # (the server's hex has whole bytes: a leading 0 when the top nibble is 0)
    assert listed["serial"].lower().lstrip("0") == serial_of(crt2) and listed["state"] == "enrolled"
    # the old certificate stays valid: the device routes (day 0 and day N) still take it, and the new one
    for c, k in ((crt, key), (crt2, key2)):
        for route in ("/api/v1/device/profile", "/api/v1/device/poll"):
            st, _, body = https(d, srv, route, cert=(c, k))
            assert st == 200, (route, body)

    # KUR with a MAC (an enrolment token) instead of a signature: refused
    tok = admin_json(d, srv, "token", "create", "--group", "fleet", "--auto-approve")["tokens"][0]["token"]
    tid, secret = tok.split(".")
    r = subprocess.run(["openssl", "cmp", "-cmd", "kur", "-server", f"127.0.0.1:{srv.port}/.well-known/cmp",
                        "-ref", tid, "-secret", "pass:" + secret, "-oldcert", crt, "-newkey", newkey(d, "k.key"),
                        "-certout", os.path.join(d, "mac.pem"), "-tls_used", "-tls_trusted",
                        os.path.join(d, "tls-ca.pem"), "-total_timeout", "10", "-unprotected_errors",
                        "-implicit_confirm"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and not os.path.exists(os.path.join(d, "mac.pem"))
    assert "not a MAC" in r.stdout + r.stderr, r.stdout + r.stderr

    # RR: the device revokes its new certificate, signed with it; the CRL lists it at once
    rc, out = cmp_signed(d, srv, "rr", crt2, key2, "-oldcert", crt2)
    assert rc == 0, out
    text = crl_text(d, crl_http(srv.crl_port))
    assert revoked_serials(text) == {serial_of(crt2)}
    assert "Cessation Of Operation" in text
    # a revoked certificate renews nothing, revokes nothing, reaches no device route
    rc, out = cmp_signed(d, srv, "kur", crt2, key2, "-newkey", newkey(d, "k3.key"), "-certout",
                         os.path.join(d, "no.pem"), "-implicit_confirm")
    assert rc != 0 and "revoked" in out and not os.path.exists(os.path.join(d, "no.pem")), out
    for route in ("/api/v1/device/profile", "/api/v1/device/poll"):
        st, _, body = https(d, srv, route, cert=(crt2, key2))
        assert st == 403, (route, body)
    # the old certificate is still good (the device is not revoked: it has one valid certificate)
    assert admin_json(d, srv, "device", "list")["devices"][0]["state"] == "enrolled"
    st, _, body = https(d, srv, "/api/v1/device/poll", cert=(crt, key))
    assert st == 200, body

    # RR for another device's certificate: refused
    okey, ocrt = enrol(d, srv, "dev2")
    rc, out = cmp_signed(d, srv, "rr", crt, key, "-oldcert", ocrt)
    assert rc != 0 and "only revoke the certificate that signs" in out, out
    assert serial_of(ocrt) not in revoked_serials(crl_text(d, crl_http(srv.crl_port)))

    # m2mvpn-admin device revoke: every unexpired certificate of the device, keyCompromise, CRL regenerated
    assert admin_json(d, srv, "device", "revoke", dev)["state"] == "revoked"
    text = crl_text(d, crl_http(srv.crl_port))
    assert revoked_serials(text) == {serial_of(crt), serial_of(crt2)}
    assert "Key Compromise" in text
    st, _, body = https(d, srv, "/api/v1/device/poll", cert=(crt, key))
    assert st == 403, body
    rc, out = cmp_signed(d, srv, "kur", crt, key, "-newkey", newkey(d, "k4.key"), "-certout",
                         os.path.join(d, "no2.pem"), "-implicit_confirm")
    assert rc != 0 and "revoked" in out, out
    # the same CRL over HTTPS
    st, hdr, body = https(d, srv, "/crl")
    assert st == 200 and hdr["Content-Type"] == "application/pkix-crl"
    assert revoked_serials(crl_text(d, body, "crl2.der")) == {serial_of(crt), serial_of(crt2)}
    # the plain listener serves nothing else
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{srv.crl_port}/api/v1/admin/devices", timeout=30)
    assert e.value.code == 404


@pytest.mark.parametrize("bad,word", [
    ({"crl_listen": "nowhere"}, '"crl_listen"'),
    ({"crl_url": "ftp://x/crl"}, '"crl_url"'),
    ({"crl_next_update_s": 0}, '"crl_next_update_s"'),
])
def test_bad_crl_config(pki, bad, word):
    cfg = make_config(pki, "sqlite:mgmt.db", name="bad.json", **bad)
    r = subprocess.run([os.environ["M2MVPN_MGMTD"], "--config", cfg], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and word in r.stderr, r.stderr
