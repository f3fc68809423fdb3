# SPDX-License-Identifier: Apache-2.0
"""m2mvpn-mgmtd on SQLite, driven by m2mvpn-admin and openssl cmp (issue 14)."""
import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest

from mgmt_helpers import ADMIN as ADMIN_BIN, ADMIN_TOKEN, MGMTD, TEMPLATE, Mgmtd, admin, admin_json, make_config, sh


def https(d, srv, path, method="GET", body=None, headers=None, cert=None):
    ctx = ssl.create_default_context(cafile=os.path.join(d, "tls-ca.pem"))
    if cert:
        ctx.load_cert_chain(*cert)
    req = urllib.request.Request(srv.url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def cmp_ir(d, srv, token, key, out):
    tid, secret = token.split(".")
    r = subprocess.run(["openssl", "cmp", "-cmd", "ir", "-server", f"127.0.0.1:{srv.port}/.well-known/cmp",
                        "-ref", tid, "-secret", "pass:" + secret, "-newkey", key, "-subject", "/CN=ignored",
                        "-certout", out, "-tls_used", "-tls_trusted", os.path.join(d, "tls-ca.pem"),
                        "-trusted", os.path.join(d, "device-ca.pem"), "-total_timeout", "5",
                        "-unprotected_errors"],
                       capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def newkey(d, name):
    p = os.path.join(d, name)
    sh("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p)
    return p


def test_admin_commands_and_enrolment(pki, server):
    d, srv = pki, server
    with open(os.path.join(d, "tpl.json"), "w") as f:
        json.dump(TEMPLATE, f)
    assert admin_json(d, srv, "group", "create", "fleet", "--template", os.path.join(d, "tpl.json")) == {"group": "fleet"}
    toks = admin_json(d, srv, "token", "create", "--group", "fleet", "--count", "3", "--expires", "12h")["tokens"]
    assert len(toks) == 3 and len({t["id"] for t in toks}) == 3
    for t in toks:
        assert re.fullmatch(r"[0-9a-f]{16}\.[A-Za-z0-9_-]{43}", t["token"]) and t["token"].startswith(t["id"])
    # human output: one token a line
    plain = admin(d, srv, "token", "create", "--group", "fleet").stdout.split()
    assert len(plain) == 1 and "." in plain[0]
    assert admin_json(d, srv, "device", "list") == {"devices": []}
    ca = admin(d, srv, "ca", "show").stdout
    with open(os.path.join(d, "device-ca.pem")) as f:
        assert ca.strip() == f.read().strip()
    assert admin_json(d, srv, "ca", "show")["ca"].strip() == ca.strip()

    # enrol: pending, approve, enrol again -> certificate from the device CA
    key = newkey(d, "dev1.key")
    crt = os.path.join(d, "dev1.pem")
    rc, out = cmp_ir(d, srv, toks[0]["token"], key, crt)
    assert rc != 0 and not os.path.exists(crt), out
    devs = admin_json(d, srv, "device", "list")["devices"]
    assert len(devs) == 1 and devs[0]["state"] == "pending" and devs[0]["group"] == "fleet"
    dev = devs[0]["id"]
    assert re.fullmatch(r"dev-[0-9a-f]{16}", dev)
    assert admin_json(d, srv, "device", "approve", dev) == {"id": dev, "state": "approved"}
    rc, out = cmp_ir(d, srv, toks[0]["token"], key, crt)
    assert rc == 0, out
    sh("openssl", "verify", "-CAfile", os.path.join(d, "device-ca.pem"), crt)
    subj = sh("openssl", "x509", "-in", crt, "-noout", "-subject").stdout
    assert dev in subj and "m2mvpn test" in subj
    assert admin_json(d, srv, "device", "list")["devices"][0]["state"] == "enrolled"
    # the same token with another key: refused, nothing recorded
    other = newkey(d, "dev2.key")
    rc, out = cmp_ir(d, srv, toks[0]["token"], other, os.path.join(d, "dev2.pem"))
    assert rc != 0 and "enrolment token already used" in out, out
    assert len(admin_json(d, srv, "device", "list")["devices"]) == 1

    # the device's profile: mutual TLS with its certificate, CMS-signed, ETag/304
    st, _, body = https(d, srv, "/api/v1/device/profile", cert=(crt, key))
    assert st == 404 and b"no profile published for group fleet" in body
    pub = admin_json(d, srv, "profile", "publish", "--group", "fleet")
    assert pub["group"] == "fleet" and pub["version"] == 1 and pub["type"] == "profile"
    st, hdr, body = https(d, srv, "/api/v1/device/profile", cert=(crt, key))
    assert st == 200 and hdr["Content-Type"] == "application/pkcs7-mime"
    with open(os.path.join(d, "bundle.der"), "wb") as f:
        f.write(body)
    manifest = json.loads(sh("openssl", "cms", "-verify", "-inform", "DER", "-in", os.path.join(d, "bundle.der"),
                             "-CAfile", os.path.join(d, "signer.pem"), "-purpose", "any").stdout)
    assert manifest["device"] == dev and manifest["version"] == 1 and manifest["type"] == "profile"
    import base64
    prof = json.loads(base64.b64decode(manifest["payload"]))
    assert prof["auth"] == {"method": "cert"} and prof["local_id"] == dev and prof["name"] == "fleet-" + dev
    st, _, _ = https(d, srv, "/api/v1/device/profile", cert=(crt, key), headers={"If-None-Match": hdr["ETag"]})
    assert st == 304
    assert admin_json(d, srv, "device", "list")["devices"][0]["profile_version"] == 1
    # no client certificate, or one the device CA did not issue: refused
    st, _, body = https(d, srv, "/api/v1/device/profile")
    assert st == 401 and b"device certificate is required" in body
    st, _, body = https(d, srv, "/api/v1/device/profile", cert=(os.path.join(d, "signer.pem"), os.path.join(d, "signer.key")))
    assert st == 403
    # a forged certificate: the device's name and serial, another key, not from the device CA
    serial = admin_json(d, srv, "device", "list")["devices"][0]["serial"]
    fkey = newkey(d, "forged.key")
    sh("openssl", "req", "-x509", "-new", "-key", fkey, "-subj", f"/CN={dev}/O=m2mvpn test", "-days", "2",
       "-set_serial", "0x" + serial, "-addext", "extendedKeyUsage=clientAuth", "-out", os.path.join(d, "forged.pem"))
    st, _, body = https(d, srv, "/api/v1/device/profile", cert=(os.path.join(d, "forged.pem"), fkey))
    assert st == 403 and b"not a device certificate of this server" in body, body

    # revoke: the profile route refuses the device; reject/approve then say why not
    assert admin_json(d, srv, "device", "revoke", dev)["state"] == "revoked"
    st, _, body = https(d, srv, "/api/v1/device/profile", cert=(crt, key))
    assert st == 403 and b"revoked" in body
    r = admin(d, srv, "device", "approve", dev, check=False)
    assert r.returncode != 0 and "cannot be approved" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    # reject: a second device, pending, rejected -> its next IR is refused
    key3 = newkey(d, "dev3.key")
    rc, out = cmp_ir(d, srv, toks[1]["token"], key3, os.path.join(d, "dev3.pem"))
    assert rc != 0
    dev3 = [x for x in admin_json(d, srv, "device", "list")["devices"] if x["id"] != dev][0]["id"]
    assert admin_json(d, srv, "device", "reject", dev3)["state"] == "rejected"
    rc, out = cmp_ir(d, srv, toks[1]["token"], key3, os.path.join(d, "dev3.pem"))
    assert rc != 0 and "rejected by the operator" in out, out
    # auto-approve: one IR gives the certificate
    auto = admin_json(d, srv, "token", "create", "--group", "fleet", "--auto-approve")["tokens"][0]["token"]
    rc, out = cmp_ir(d, srv, auto, newkey(d, "dev4.key"), os.path.join(d, "dev4.pem"))
    assert rc == 0, out
    # no secret in the log
    log = srv.text()
    assert ADMIN_TOKEN not in log and toks[0]["token"].split(".")[1] not in log


def test_bad_bearer_and_limits(pki, server):
    d, srv = pki, server
    r = admin(d, srv, "device", "list", token="wrong-token", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "m2mvpn-admin: bad admin token (HTTP 401)"
    st, _, body = https(d, srv, "/api/v1/admin/devices")
    assert st == 401 and json.loads(body)["error"].startswith("admin routes need")
    st, _, body = https(d, srv, "/api/v1/admin/tokens", method="POST", body=b"{" + b" " * 100000 + b"}",
                        headers={"Authorization": "Bearer " + ADMIN_TOKEN})
    assert st == 413 and "larger than" in json.loads(body)["error"]
    st, _, body = https(d, srv, "/api/v1/admin/tokens", method="POST", body=b'{"group": "x", "bogus": 1}',
                        headers={"Authorization": "Bearer " + ADMIN_TOKEN})
    assert st == 400 and "bogus" in json.loads(body)["error"]
    st, _, body = https(d, srv, "/healthz")
    assert st == 200 and json.loads(body) == {"ok": True}
    # a token for a group that does not exist
    r = admin(d, srv, "token", "create", "--group", "nope", check=False)
    assert r.returncode == 1 and "no group nope" in r.stderr
    r = admin(d, srv, "device", "approve", "dev-0000000000000000", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "m2mvpn-admin: no device dev-0000000000000000 (HTTP 404)"
    r = admin(d, srv, "token", "create", "--group", "g", "--expires", "7x", check=False)
    assert r.returncode == 1 and "--expires 7x" in r.stderr
    # a garbage CMP message gets an answer, not a crash
    st, _, body = https(d, srv, "/.well-known/cmp", method="POST", body=b"\x30\x03\x02\x01\x00",
                        headers={"Content-Type": "application/pkixcmp"})
    assert st == 400 and "not a CMP PKIMessage" in json.loads(body)["error"] and srv.proc.poll() is None


@pytest.mark.parametrize("bad,word", [
    ({"listen": "127.0.0.1"}, '"listen"'),
    ({"cert_days": "x"}, '"cert_days"'),
    ({"cert_lifetime_s": 59}, '"cert_lifetime_s"'),
    ({"cert_lifetime_s": "90"}, '"cert_lifetime_s"'),
    ({"admin_token_sha256": "abc"}, '"admin_token_sha256"'),
    ({"colour": "blue"}, '"colour"'),
    ({"database": "mysql://x"}, '"database"'),
    ({"tls_key": "nonexistent.key"}, '"tls_key"'),
    ({"poll_s": 0}, '"poll_s"'),
    ({"max_connections": 0}, '"max_connections"'),
    ({"artifact_max_bytes": "64M"}, '"artifact_max_bytes"'),
    ({"state_dir": ""}, '"state_dir"'),
])
def test_bad_config(pki, bad, word):
    cfg = make_config(pki, "sqlite:mgmt.db", name="bad.json", **bad)
    r = subprocess.run([MGMTD, "--config", cfg], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and word in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_config_key(pki):
    cfg = make_config(pki, "sqlite:mgmt.db", name="bad.json")
    with open(cfg) as f:
        c = json.load(f)
    del c["token_key"]
    with open(cfg, "w") as f:
        json.dump(c, f)
    r = subprocess.run([MGMTD, "--config", cfg], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and 'missing key "token_key"' in r.stderr


def test_expired_and_unknown_token(pki, server):
    d, srv = pki, server
    with open(os.path.join(d, "tpl.json"), "w") as f:
        json.dump(TEMPLATE, f)
    admin_json(d, srv, "group", "create", "g", "--template", os.path.join(d, "tpl.json"))
    tok = admin_json(d, srv, "token", "create", "--group", "g", "--expires", "1s")["tokens"][0]
    deadline = tok["expires"] + 1
    import time
    while time.time() <= deadline:
        time.sleep(0.2)
    rc, out = cmp_ir(d, srv, tok["token"], newkey(d, "k1.key"), os.path.join(d, "c1.pem"))
    assert rc != 0 and "enrolment token expired" in srv.text(), out
    # an unknown id, and a known id with a wrong secret: refused, nothing recorded
    good = admin_json(d, srv, "token", "create", "--group", "g")["tokens"][0]["token"]
    rc, out = cmp_ir(d, srv, "0123456789abcdef." + "A" * 43, newkey(d, "k2.key"), os.path.join(d, "c2.pem"))
    assert rc != 0 and "unknown enrolment token" in srv.text()
    rc, out = cmp_ir(d, srv, good.split(".")[0] + "." + "B" * 43, newkey(d, "k3.key"), os.path.join(d, "c3.pem"))
    assert rc != 0
    assert admin_json(d, srv, "device", "list") == {"devices": []}
    # the good token still works afterwards
    rc, out = cmp_ir(d, srv, good, newkey(d, "k4.key"), os.path.join(d, "c4.pem"))
    assert rc != 0 and admin_json(d, srv, "device", "list")["devices"][0]["state"] == "pending"


def test_admin_config_file(pki, server):
    d, srv = pki, server
    cfg = os.path.join(d, "admin.json")
    with open(cfg, "w") as f:
        json.dump({"server": srv.url, "ca": os.path.join(d, "tls-ca.pem"), "token": ADMIN_TOKEN}, f)
    env = {k: v for k, v in os.environ.items() if k != "M2MVPN_ADMIN_TOKEN"}
    r = subprocess.run([ADMIN_BIN, "--config", cfg, "--json", "device", "list"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout) == {"devices": []}, r.stderr
    # no token at all: one clear line
    r = subprocess.run([ADMIN_BIN, "--server", srv.url, "device", "list"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 1 and "no admin token" in r.stderr and len(r.stderr.splitlines()) == 1
    # a server whose certificate the --ca does not vouch for
    r = subprocess.run([ADMIN_BIN, "--server", srv.url, "--ca", os.path.join(d, "device-ca.pem"), "device", "list"],
                       capture_output=True, text=True, env=dict(env, M2MVPN_ADMIN_TOKEN=ADMIN_TOKEN), timeout=60)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "certificate" in r.stderr.lower(), r.stderr


def test_log_lines_carry_no_control_characters(pki, server):
    """An unauthenticated client's request line reaches the log (the refused path): terminal escapes or a
    carriage return in it must not forge log lines or drive the operator's terminal."""
    d, srv = pki, server
    ctx = ssl.create_default_context(cafile=os.path.join(d, "tls-ca.pem"))
    for path in (b"/x\x1b[2J\x1b[31mfake", b"/y\rm2mvpn-mgmtd: admin: forged line", b"/api/v1/admin/z\x07\x7f"):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = b""
                while (chunk := s.recv(65536)):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 4"), answer
    with open(srv.log, "rb") as f:
        log = f.read()
    assert b"fake" in log and b"forged line" in log, log
    bad = sorted({c for c in log if (c < 0x20 and c != 0x0a) or c == 0x7f})
    assert not bad, f"control characters {bad} in the log: {log[-600:]!r}"


def test_connection_flood_at_the_descriptor_limit(pki):
    """Idle TCP connections up to the process's descriptor limit: the server neither spins on accept()
    nor floods its log, and serves again once they are gone."""
    d = pki
    srv = Mgmtd(d, make_config(d, "sqlite:mgmt.db"), wrap=("prlimit", "--nofile=64:64", "--"))
    idle = []
    try:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=30) for _ in range(80)]
        time.sleep(3)
        with open(srv.log, "rb") as f:
            lines = f.read().count(b"\n")
        assert lines < 50, f"{lines} log lines in 3 s at the descriptor limit"
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 30
    while True:
        try:
            st, _, body = https(d, srv, "/healthz")
            break
        except OSError:
            assert time.monotonic() < deadline, "the server does not accept connections again"
            time.sleep(0.5)
    assert st == 200 and json.loads(body) == {"ok": True}
    srv.stop()
