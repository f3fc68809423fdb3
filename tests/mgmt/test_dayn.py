# SPDX-License-Identifier: Apache-2.0
"""Day 1..N of m2mvpn-mgmtd (issue 15): simulated devices (a certificate from
openssl cmp, then Python's ssl/http.client) poll, fetch deployment bundles and
artifacts and report; staged rollouts; the fleet page in headless Chromium."""
import base64
import datetime
import hashlib
import http.client
import json
import os
import re
import shutil
import sqlite3
import ssl
import struct
import subprocess
import time
import urllib.parse

import pytest

from mgmt_helpers import ADMIN_TOKEN, TEMPLATE, Mgmtd, admin, admin_json, make_config, sh
from test_mgmt_revocation import cmp_signed
from test_mgmt_server import cmp_ir, newkey


class Device:
    """A device after enrolment: its key and certificate, mutual TLS to the server."""

    def __init__(self, d, srv, token, name):
        self.d, self.srv = d, srv
        self.key = newkey(d, name + ".key")
        self.crt = os.path.join(d, name + ".pem")
        rc, out = cmp_ir(d, srv, token, self.key, self.crt)
        assert rc == 0, out
        subj = sh("openssl", "x509", "-in", self.crt, "-noout", "-subject").stdout
        self.id = re.search(r"dev-[0-9a-f]{16}", subj).group(0)

    def request(self, method, path, body=None, headers=None):
        ctx = ssl.create_default_context(cafile=os.path.join(self.d, "tls-ca.pem"))
        ctx.load_cert_chain(self.crt, self.key)
        c = http.client.HTTPSConnection("127.0.0.1", self.srv.port, context=ctx, timeout=30)
        try:
            hdr = dict(headers or {})
            if body is not None:
                body = json.dumps(body).encode()
                hdr["Content-Type"] = "application/json"
            c.request(method, path, body=body, headers=hdr)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def poll(self, etag=None, **state):
        q = urllib.parse.urlencode(state)
        st, hdr, body = self.request("GET", "/api/v1/device/poll" + ("?" + q if q else ""),
                                     headers={"If-None-Match": etag} if etag else None)
        return st, hdr, json.loads(body) if st == 200 else None

    def open_ids(self):
        st, _, ans = self.poll()
        assert st == 200
        return [x["id"] for x in ans["deployments"]]

    def feedback(self, dep, result, details="test"):
        st, _, body = self.request("POST", f"/api/v1/device/deployments/{dep}/feedback",
                                   body={"result": result, "details": details})
        assert st == 204, body

    def bundle(self, dep):
        """The deployment's bundle, verified with the signer certificate as openssl cms does; its manifest."""
        st, hdr, body = self.request("GET", f"/api/v1/device/deployments/{dep}")
        assert st == 200 and hdr["Content-Type"] == "application/pkcs7-mime", body
        p = os.path.join(self.d, f"bundle-{self.id}-{dep}.der")
        with open(p, "wb") as f:
            f.write(body)
        return json.loads(sh("openssl", "cms", "-verify", "-inform", "DER", "-in", p, "-binary",
                             "-CAfile", os.path.join(self.d, "signer.pem"), "-purpose", "any").stdout)


def setup_group(d, srv, group="fleet", n=1):
    with open(os.path.join(d, "tpl.json"), "w") as f:
        json.dump(TEMPLATE, f)
    admin_json(d, srv, "group", "create", group, "--template", os.path.join(d, "tpl.json"))
    if n == 0:
        return []
    toks = admin_json(d, srv, "token", "create", "--group", group, "--count", str(n), "--auto-approve")["tokens"]
    return [Device(d, srv, t["token"], f"{group}-{i}") for i, t in enumerate(toks)]


def deployment(d, srv, dep_id):
    return next(x for x in admin_json(d, srv, "deployment", "list")["deployments"] if x["id"] == dep_id)


def test_poll_profile_deployment_feedback(pki, server):
    d, srv = pki, server
    dev, = setup_group(d, srv)
    # a poll records the reported state; unchanged answer -> 304 with the same ETag (still recorded)
    st, hdr, ans = dev.poll(tunnel="down", profile=0, software="1.0.0", cert_not_after=2000000000)
    assert st == 200 and ans == {"poll_s": 300, "deployments": []}
    etag = hdr["ETag"]
    lst = admin_json(d, srv, "device", "list")["devices"][0]
    assert (lst["tunnel"], lst["software_version"], lst["cert_not_after"], lst["overdue"]) == \
        ("down", "1.0.0", 2000000000, False)
    st, hdr2, _ = dev.poll(etag=etag, tunnel="up")
    assert st == 304 and hdr2["ETag"] == etag
    assert admin_json(d, srv, "device", "list")["devices"][0]["tunnel"] == "up"
    st, _, _ = dev.poll(tunnel="sideways")
    assert st == 400

    pub = admin_json(d, srv, "profile", "publish", "--group", "fleet")
    dep = pub["id"]
    assert pub["version"] == 1 and pub["devices"] == 1 and pub["state"] == "active"
    st, hdr3, ans = dev.poll(etag=etag)
    assert st == 200 and hdr3["ETag"] != etag
    assert ans["deployments"] == [{"id": dep, "type": "profile", "href": f"/api/v1/device/deployments/{dep}",
                                   "maintenance_window": "available"}]
    man = dev.bundle(dep)
    assert (man["type"], man["device"], man["version"], man["deployment"]) == ("profile", dev.id, 1, dep)
    prof = json.loads(base64.b64decode(man["payload"]))
    assert prof["name"] == "fleet-" + dev.id and prof["auth"] == {"method": "cert"}
    assert hashlib.sha256(base64.b64decode(man["payload"])).hexdigest() == man["sha256"]
    # another device's deployment id, a bad feedback
    st, _, _ = dev.request("GET", "/api/v1/device/deployments/999")
    assert st == 404
    st, _, _ = dev.request("POST", f"/api/v1/device/deployments/{dep}/feedback", body={"result": "maybe"})
    assert st == 400
    st, _, _ = dev.request("POST", f"/api/v1/device/deployments/{dep}/feedback",
                           body={"result": "success", "details": "two\nlines"})
    assert st == 400
    dev.feedback(dep, "proceeding")
    assert dev.open_ids() == [dep]
    dev.feedback(dep, "success", "tunnel up with profile 1")
    assert dev.open_ids() == []
    st, _, body = dev.request("POST", f"/api/v1/device/deployments/{dep}/feedback", body={"result": "failure"})
    assert st == 409 and b"already closed" in body
    info = deployment(d, srv, dep)
    assert info["state"] == "done" and info["success"] == 1
    assert "done" in admin(d, srv, "deployment", "list").stdout
    # no client certificate: refused
    ctx = ssl.create_default_context(cafile=os.path.join(d, "tls-ca.pem"))
    c = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=30)
    c.request("GET", "/api/v1/device/poll")
    assert c.getresponse().status == 401
    c.close()


def test_staged_rollout_halts_on_failures(pki, server):
    d, srv = pki, server
    devs = setup_group(d, srv, n=10)
    pub = admin_json(d, srv, "profile", "publish", "--group", "fleet", "--percent", "30", "--max-failures", "0.2")
    dep = pub["id"]
    assert pub["devices"] == 10 and pub["first_wave"] == 3
    seeing = [x for x in devs if dep in x.open_ids()]
    assert len(seeing) == 3
    rest = [x for x in devs if x not in seeing]
    # a device of the second wave can neither fetch the bundle nor report yet
    st, _, _ = rest[0].request("GET", f"/api/v1/device/deployments/{dep}")
    assert st == 404
    seeing[0].feedback(dep, "success")
    seeing[1].feedback(dep, "failure", "gateway unreachable")
    info = deployment(d, srv, dep)
    assert info["state"] == "halted" and info["failure"] == 1
    for x in devs:
        assert dep not in x.open_ids()
    st, _, body = seeing[2].request("GET", f"/api/v1/device/deployments/{dep}")
    assert st == 409 and b"halted" in body
    # the day-0 profile route follows the rollout too: nobody gets the halted version
    for x in devs:
        st, _, _ = x.request("GET", "/api/v1/device/profile")
        assert st == 404


def test_staged_rollout_second_wave(pki, server):
    d, srv = pki, server
    devs = setup_group(d, srv, n=10)
    dep = admin_json(d, srv, "profile", "publish", "--group", "fleet", "--percent", "30",
                     "--max-failures", "0.2")["id"]
    first = [x for x in devs if dep in x.open_ids()]
    rest = [x for x in devs if x not in first]
    assert len(first) == 3
    for x in first[:2]:
        x.feedback(dep, "success")
    assert all(dep not in x.open_ids() for x in rest)   # not before the whole first wave succeeded
    # the day-0 profile route: the first wave gets version 1, the rest nothing yet
    assert first[0].request("GET", "/api/v1/device/profile")[0] == 200
    assert rest[0].request("GET", "/api/v1/device/profile")[0] == 404
    first[2].feedback(dep, "success")
    assert deployment(d, srv, dep)["wave"] == 2
    for x in rest:
        assert x.open_ids() == [dep]
        assert x.bundle(dep)["version"] == 1
    # the share counts against the wave (now every device): one failure of 10 (0.1) stays under 0.2
    for x in rest[:-1]:
        x.feedback(dep, "success")
    rest[-1].feedback(dep, "failure", "rolled back")
    info = deployment(d, srv, dep)
    assert (info["state"], info["success"], info["failure"], info["pending"]) == ("done", 9, 1, 0)


def test_one_early_failure_does_not_halt_a_wave(pki, server):
    """The first report being a failure (1 of 1 report) must not halt a wave of 10
    at 0.2: the limit is 0.2 x 10 devices; the third failure halts it."""
    d, srv = pki, server
    devs = setup_group(d, srv, n=10)
    dep = admin_json(d, srv, "profile", "publish", "--group", "fleet", "--max-failures", "0.2")["id"]
    devs[0].feedback(dep, "failure", "early failure")
    info = deployment(d, srv, dep)
    assert (info["state"], info["failure"]) == ("active", 1)
    assert all(x.open_ids() == [dep] for x in devs[1:])
    devs[1].feedback(dep, "success")
    devs[2].feedback(dep, "failure", "second")
    assert deployment(d, srv, dep)["state"] == "active"
    devs[3].feedback(dep, "failure", "third")
    info = deployment(d, srv, dep)
    assert (info["state"], info["failure"]) == ("halted", 3)
    assert all(dep not in x.open_ids() for x in devs[4:])


def window_excluding_now():
    now = datetime.datetime.now(datetime.timezone.utc)
    a, b = now + datetime.timedelta(hours=2), now + datetime.timedelta(hours=3)
    return f"{a:%H:%M}-{b:%H:%M}"


def test_software_update_and_artifact(pki, server):
    d, srv = pki, server
    dev, other = setup_group(d, srv, n=2)
    # a device of another group never gets the artifact
    admin_json(d, srv, "group", "create", "lab", "--template", os.path.join(d, "tpl.json"))
    tok = admin_json(d, srv, "token", "create", "--group", "lab", "--auto-approve")["tokens"][0]["token"]
    stranger = Device(d, srv, tok, "lab-0")
    blob = os.urandom(300000)
    path = os.path.join(d, "update-1.4.2.bin")
    with open(path, "wb") as f:
        f.write(blob)
    sha = hashlib.sha256(blob).hexdigest()
    pub = admin_json(d, srv, "update", "publish", "--group", "fleet", "--file", path, "--version", "1.4.2")
    dep = pub["id"]
    assert (pub["type"], pub["artifact"], pub["size"], pub["software_version"]) == ("software", sha, len(blob), "1.4.2")
    assert os.path.exists(os.path.join(d, "artifacts", sha))
    st, _, ans = dev.poll()
    assert ans["deployments"] == [{"id": dep, "type": "software", "href": f"/api/v1/device/deployments/{dep}",
                                   "maintenance_window": "available"}]
    man = dev.bundle(dep)
    assert man["software_version"] == "1.4.2" and man["sha256"] == sha and man["size"] == len(blob)
    assert man["url"] == f"/api/v1/device/artifacts/{sha}" and man["payload"] == "" and man["deployment"] == dep
    assert man["type"] == "software" and man["version"] == dep
    st, hdr, body = dev.request("GET", man["url"])
    assert st == 200 and hdr["Content-Type"] == "application/octet-stream"
    assert len(body) == len(blob) and hashlib.sha256(body).hexdigest() == sha
    # refused: a device without that deployment; an unknown hash
    st, _, body = stranger.request("GET", man["url"])
    assert st == 403 and b"no deployment of artifact" in body
    st, _, _ = stranger.request("GET", f"/api/v1/device/deployments/{dep}")
    assert st == 404
    st, _, _ = dev.request("GET", "/api/v1/device/artifacts/" + "0" * 64)
    assert st == 403
    dev.feedback(dep, "success", "installed 1.4.2")
    dev.poll(software="1.4.2")
    assert next(x for x in admin_json(d, srv, "device", "list")["devices"]
                if x["id"] == dev.id)["software_version"] == "1.4.2"
    # a maintenance window that excludes now: listed, but "unavailable"
    w = window_excluding_now()
    pub2 = admin_json(d, srv, "update", "publish", "--group", "fleet", "--file", path, "--version", "1.4.3",
                      "--window", w)
    assert pub2["window"] == w and pub2["version"] > dep
    st, _, ans = other.poll()
    assert {(x["id"], x["maintenance_window"]) for x in ans["deployments"]} == \
        {(dep, "available"), (pub2["id"], "unavailable")}
    r = admin(d, srv, "update", "publish", "--group", "fleet", "--file", path, "--version", "2", "--window", "25:00",
              check=False)
    assert r.returncode != 0 and "HH:MM-HH:MM" in r.stderr
    # a version a device would refuse (its file name, its installer's argument)
    for bad in ("-rf", "1.0;reboot", "1/../x", ".1"):
        r = admin(d, srv, "update", "publish", "--group", "fleet", "--file", path, "--version", bad, check=False)
        assert r.returncode != 0 and "software_version" in r.stderr, (bad, r.stderr)
    # a revoked device: every device route refuses it
    admin_json(d, srv, "device", "revoke", other.id)
    for method, route in (("GET", "/api/v1/device/poll"), ("GET", f"/api/v1/device/deployments/{dep}"),
                          ("GET", man["url"])):
        st, _, body = other.request(method, route)
        assert st == 403 and b"revoked" in body, (route, body)


def test_artifact_size_limit(pki):
    srv = Mgmtd(pki, make_config(pki, "sqlite:mgmt.db", artifact_max_bytes=100000, state_dir="state"))
    try:
        setup_group(pki, srv, n=0)
        big = os.path.join(pki, "big.bin")
        with open(big, "wb") as f:
            f.write(os.urandom(100001))
        r = admin(pki, srv, "update", "publish", "--group", "fleet", "--file", big, "--version", "9", check=False)
        assert r.returncode != 0 and ("413" in r.stderr or "larger" in r.stderr), r.stderr
        with open(big, "wb") as f:
            f.write(os.urandom(100000))
        assert admin_json(pki, srv, "update", "publish", "--group", "fleet", "--file", big, "--version", "9")["size"] == 100000
        assert len(os.listdir(os.path.join(pki, "state", "artifacts"))) == 1
    finally:
        srv.stop()


def png_size(p):
    with open(p, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def chromium(d, *args):
    """Headless Chromium with its own profile in the test's folder; the server's
    test TLS CA is not in its trust store, hence --ignore-certificate-errors."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium missing (scripts/deps.sh installs it)"
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors",
                           "--user-data-dir=" + os.path.join(d, "chromium-profile"), *args],
                          capture_output=True, text=True, timeout=120)


def test_fleet_page_overdue_and_chromium(pki, server):
    d, srv = pki, server
    devs = setup_group(d, srv, n=4)
    for i, x in enumerate(devs):
        x.poll(tunnel="up", profile=i, software=f"1.{i}.0", cert_not_after=2000000000 + i)
    # two devices missed their polls: their last contact moved back (more than 3 x poll_s = 900 s)
    now = int(time.time())
    db = sqlite3.connect(os.path.join(d, "mgmt.db"))
    db.execute("UPDATE devices SET last_contact = ? WHERE id = ?", (now - 5000, devs[1].id))
    db.execute("UPDATE devices SET last_contact = ? WHERE id = ?", (now - 1000, devs[2].id))
    db.execute("UPDATE devices SET last_contact = ? WHERE id = ?", (now - 100, devs[3].id))
    db.commit()
    db.close()
    lst = {x["id"]: x for x in admin_json(d, srv, "device", "list")["devices"]}
    assert [lst[x.id]["overdue"] for x in devs] == [False, True, True, False]
    assert "OVERDUE" in admin(d, srv, "device", "list").stdout
    # authentication: none, a wrong password -> 401; bearer works
    ctx = ssl.create_default_context(cafile=os.path.join(d, "tls-ca.pem"))
    for hdr in ({}, {"Authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()}):
        c = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=30)
        c.request("GET", "/fleet", headers=hdr)
        r = c.getresponse()
        assert r.status == 401 and "Basic" in r.getheader("WWW-Authenticate")
        c.close()
    c = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=30)
    c.request("GET", "/fleet", headers={"Authorization": "Bearer " + ADMIN_TOKEN})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/html") and b"<script" not in r.read()
    c.close()

    base = f"https://ops:{ADMIN_TOKEN}@127.0.0.1:{srv.port}/fleet"
    r = chromium(d, "--dump-dom", base + "?sort=last_contact")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = re.findall(r'<tr class="([^"]*)" data-id="([^"]+)" data-last-contact="(\d+)"', r.stdout)
    assert len(rows) == 4, r.stdout[:2000]
    assert [rid for _, rid, _ in rows] == [devs[1].id, devs[2].id, devs[3].id, devs[0].id]   # oldest first
    assert [int(lc) for _, _, lc in rows] == sorted(int(lc) for _, _, lc in rows)
    assert {rid for cls, rid, _ in rows if "overdue" in cls.split()} == {devs[1].id, devs[2].id}
    assert "1.3.0" in r.stdout and "up" in r.stdout and "4 devices, 2 overdue" in r.stdout
    r = chromium(d, "--dump-dom", base + "?sort=-last_contact")
    ids = re.findall(r'data-id="([^"]+)"', r.stdout)
    assert ids == [devs[0].id, devs[3].id, devs[2].id, devs[1].id]
    shot = os.path.join(d, "fleet.png")
    r = chromium(d, "--screenshot=" + shot, "--window-size=1280,720", base + "?sort=last_contact")
    assert r.returncode == 0 and os.path.exists(shot), r.stderr[-2000:]
    assert png_size(shot) == (1280, 720) and os.path.getsize(shot) > 5000


def test_fleet_page_escapes(pki, server):
    d, srv = pki, server
    dev, = setup_group(d, srv)
    st, _, _ = dev.poll(software="<b>x</b>&'\"")
    assert st == 200
    ctx = ssl.create_default_context(cafile=os.path.join(d, "tls-ca.pem"))
    c = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=30)
    c.request("GET", "/fleet", headers={"Authorization": "Basic " + base64.b64encode(
        ("any:" + ADMIN_TOKEN).encode()).decode()})
    r = c.getresponse()
    page = r.read().decode()
    c.close()
    assert r.status == 200 and "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;&amp;&#39;&quot;" in page


# schema 1 exactly as day 0 created it (server/store/store.c migration_1)
SCHEMA_1 = [
    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied BIGINT NOT NULL)",
    "CREATE TABLE groups (name TEXT PRIMARY KEY, template TEXT NOT NULL, published TEXT,"
    " version BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE tokens (id TEXT PRIMARY KEY, grp TEXT NOT NULL REFERENCES groups(name),"
    " expires BIGINT NOT NULL, auto_approve INTEGER NOT NULL, state TEXT NOT NULL,"
    " device TEXT, created BIGINT NOT NULL)",
    "CREATE TABLE devices (id TEXT PRIMARY KEY, grp TEXT NOT NULL REFERENCES groups(name),"
    " state TEXT NOT NULL, token TEXT NOT NULL REFERENCES tokens(id), serial TEXT,"
    " not_after BIGINT NOT NULL DEFAULT 0, last_contact BIGINT NOT NULL DEFAULT 0,"
    " profile_version BIGINT NOT NULL DEFAULT 0, created BIGINT NOT NULL)",
    "CREATE INDEX devices_grp ON devices (grp)",
    "INSERT INTO schema_version VALUES (1, 0)",
]


def test_upgrade_from_schema_1(pki):
    """A day-0 database with a fleet in it: the server adds schemas 2 (day N) and 3 (certificates),
    keeps the rows; the device's certificate is recorded so it still authenticates."""
    d = pki
    now = int(time.time())
    db = sqlite3.connect(os.path.join(d, "mgmt.db"))
    for sql in SCHEMA_1:
        db.execute(sql)
    db.execute("INSERT INTO groups VALUES ('old', ?, ?, 3)", (json.dumps(TEMPLATE), json.dumps(TEMPLATE)))
    db.execute("INSERT INTO tokens VALUES ('00112233445566aa', 'old', ?, 0, 'used', 'dev-00112233445566aa', ?)",
               (now + 60, now))
    db.execute("INSERT INTO devices VALUES ('dev-00112233445566aa', 'old', 'enrolled', '00112233445566aa', 'ab',"
               " ?, ?, 3, ?)", (now + 86400, now, now))
    db.commit()
    db.close()
    srv = Mgmtd(d, make_config(d, "sqlite:mgmt.db"))
    try:
        assert "schema 3" in srv.text()
        dev, = admin_json(d, srv, "device", "list")["devices"]
        assert (dev["id"], dev["profile_version"], dev["tunnel"], dev["software_version"], dev["overdue"]) == \
            ("dev-00112233445566aa", 3, None, None, False)
        assert admin_json(d, srv, "deployment", "list") == {"deployments": []}
        pub = admin_json(d, srv, "profile", "publish", "--group", "old")
        assert pub["version"] == 4 and pub["devices"] == 1
    finally:
        srv.stop()
    db = sqlite3.connect(os.path.join(d, "mgmt.db"))
    try:
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone() == (3,)
        assert db.execute("SELECT serial, device, not_after, revoked_at FROM certificates").fetchall() == \
            [("ab", "dev-00112233445566aa", now + 86400, None)]
    finally:
        db.close()


def test_cert_renew_deployment_from_admin(pki, server):
    """`m2mvpn-admin cert renew --group G`: a cert deployment to the group's
    devices, listed in their poll, its bundle says "renew", closed by the
    device's feedback like any other deployment, a success only once the
    server issued the device a certificate since the deployment was made."""
    d, srv = pki, server
    devs = setup_group(d, srv, n=2)
    time.sleep(1.1)  # the store counts whole seconds: enrolled before the deployment, not in its second
    r = admin(d, srv, "cert", "renew", "--group", "fleet")
    m = re.match(r"group fleet: certificate renewal requested, deployment (\d+) \(2 devices, first wave 2\)$",
                 r.stdout.strip())
    assert m, r.stdout
    dep = int(m.group(1))
    info = deployment(d, srv, dep)
    assert (info["type"], info["group"], info["state"], info["devices"]) == ("cert", "fleet", "active", 2)
    for dev in devs:
        st, _, ans = dev.poll()
        assert st == 200 and ans["deployments"] == [{"id": dep, "type": "cert",
                                                     "href": f"/api/v1/device/deployments/{dep}",
                                                     "maintenance_window": "available"}]
        man = dev.bundle(dep)
        assert (man["type"], man["device"], man["deployment"], man["action"], man["payload"]) == \
            ("cert", dev.id, dep, "renew", "")
        # its word alone does not close it: the server issued it no certificate since
        st, _, body = dev.request("POST", f"/api/v1/device/deployments/{dep}/feedback",
                                  body={"result": "success", "details": "certificate renewed: serial 01"})
        assert st == 409 and "no certificate was issued" in str(body), (st, body)
        assert dev.open_ids() == [dep]
        key2, crt2 = newkey(d, dev.id + "-2.key"), os.path.join(d, dev.id + "-2.pem")
        rc, out = cmp_signed(d, srv, "kur", dev.crt, dev.key, "-newkey", key2, "-certout", crt2)
        assert rc == 0, out
        dev.feedback(dep, "success", "certificate renewed")
        assert dev.open_ids() == []
    info = deployment(d, srv, dep)
    assert (info["state"], info["success"], info["failure"]) == ("done", 2, 0)
    # a staged one through --percent, --json answer; the usage errors
    j = admin_json(d, srv, "cert", "renew", "--group", "fleet", "--percent", "50")
    assert (j["type"], j["devices"], j["first_wave"]) == ("cert", 2, 1)
    r = admin(d, srv, "cert", "renew", check=False)
    assert r.returncode == 1 and "cert renew needs --group G" in r.stderr
    r = admin(d, srv, "cert", "renew", "--group", "fleet", "--percent", "0", check=False)
    assert r.returncode == 1 and "--percent 0" in r.stderr
    r = admin(d, srv, "cert", "renew", "--group", "nosuch", check=False)
    assert r.returncode == 1 and "nosuch" in r.stderr, r.stderr
