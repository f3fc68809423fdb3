# SPDX-License-Identifier: Apache-2.0
"""Management day 1..N, device side (issue 15), end to end: m2mvpn-mgmtd in
the gateway's namespace on 198.51.100.9, a strongSwan gateway trusting the
device CA, our engine started with a bootstrap profile. It enrols, polls
(GET /api/v1/device/poll), and applies profile deployments safely:

- a new profile (other proposals) is tried, committed once the tunnel is up
  with it and a poll went through, and the success is recorded on the server;
- a broken profile (a gateway nobody answers on) is rolled back by itself,
  the tunnel comes back with the previous profile, the failure is recorded;
- SIGKILL of the engine after each step of applying (the documented test
  hook M2MVPN_TEST_APPLY_PAUSE=<step> holds the engine there): the state
  directory holds the old or the new profile, whole, and the restarted
  engine ends connected on a working profile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import charon as charonmod
import m2mvpn_client
import netlab
import pki as pkimod
from test_mgmt_e2e import snapshot

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "mgmt"))
import mgmt_helpers as mh  # noqa: E402

MGMT_ADDR = "198.51.100.9"
DEAD_GW = "198.51.100.77"   # nobody there: the broken profile's gateway
TRY_S = 20                  # M2MVPN_MGMT_TRY_S: how long a new profile gets to come up


def wait_until(what, check, timeout_s=60.0, interval_s=0.3, tail=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}" + tail())
        time.sleep(interval_s)


def template(pki, gw_addr, ike, esp, host=None):
    return {
        "version": 1, "name": "fleet", "mode": "always-on",
        "gateways": [{"host": host or gw_addr, "port": 500}],
        "local_id": "${device_id}", "remote_id": pkimod.GATEWAY_ID,
        "auth": {"method": "cert"},
        "ca": [Path(pki.root_ca).read_text()],
        "ike": {"proposals": [ike]}, "esp": {"proposals": [esp]},
        "tunnel": {"request_vip": True, "remote_ts": [netlab.PROTECTED_NET], "tun_name": "m2m0"},
    }


class Lab:
    def __init__(self, topo, d, srv, binary, workdir):
        self.topo, self.d, self.srv, self.binary, self.workdir = topo, d, srv, binary, workdir

    def publish(self, tpl):
        path = os.path.join(self.d, "tpl.json")
        with open(path, "w") as f:
            json.dump(tpl, f)
        mh.admin_json(self.d, self.srv, "group", "create", "fleet", "--template", path)
        return mh.admin_json(self.d, self.srv, "profile", "publish", "--group", "fleet")

    def deployment(self, dep_id):
        for x in mh.admin_json(self.d, self.srv, "deployment", "list")["deployments"]:
            if x["id"] == dep_id:
                return x
        raise AssertionError(f"deployment {dep_id} not listed")

    def client(self, boot, env=None):
        e = dict(os.environ, M2MVPN_MGMT_TRY_S=str(TRY_S), **(env or {}))
        return m2mvpn_client.M2mvpnClient(self.topo.client, self.binary, self.workdir / "dev", boot, env=e)


def mgmt_of(c):
    return c.status().get("management") or {}


def connected_with(c, version):
    s = c.status()
    m = s.get("management") or {}
    return s["state"] == "connected" and m.get("profile_version") == version and s


def pings(topo):
    return netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=3)


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
    cfg = mh.make_config(d, "sqlite:mgmt.db", listen=f"{MGMT_ADDR}:0", poll_s=5)
    # the test knob serving hand-signed bundles (test_older_or_expired_bundle_refused); empty: no effect
    os.makedirs(os.path.join(d, "test-bundles"))
    srv = mh.Mgmtd(d, cfg, host=MGMT_ADDR, wrap=topo.gateway.argv(),
                   env={"M2MVPN_MGMTD_TEST_BUNDLES": os.path.join(d, "test-bundles")})
    try:
        gwconf = charonmod.gateway_config(pki, conns=["ecdsa"])
        gwconf.tree["connections"]["ecdsa"]["remote"] = {"auth": "pubkey", "id": "%any", "cacerts": "device-ca.pem"}
        gwconf.files.append(("x509ca", Path(d) / "device-ca.pem"))
        gw = charons(topo.gateway, gwconf, name="gw")
        lab = Lab(topo, d, srv, binary, workdir)
        lab.gw = gw
        lab.pki = pki
        yield lab
    finally:
        srv.stop()


def bootstrap(lab, token):
    return {"version": 1, "name": "boot",
            "management": {"url": lab.srv.url, "server_ca": os.path.join(lab.d, "tls-ca.pem"),
                           "bundle_signer": os.path.join(lab.d, "signer.pem"),
                           "enrolment_token": token, "key": {"provider": "file"}, "poll_s": 10}}


def enrolled_device(lab):
    """Group with profile v1, an auto-approving token, the engine connected on v1."""
    pub = lab.publish(template(lab.pki, lab.topo.gw_addr, "aes256gcm16-prfsha384-x25519", "aes256gcm16"))
    assert pub["version"] == 1
    tok = mh.admin_json(lab.d, lab.srv, "token", "create", "--group", "fleet", "--auto-approve")["tokens"][0]["token"]
    return bootstrap(lab, tok)


def test_profile_deployment_commit_and_rollback(lab):
    boot = enrolled_device(lab)
    with lab.client(boot) as c:
        wait_until("connected on profile 1", lambda: connected_with(c, 1), tail=c.log_tail)
        assert pings(lab.topo) == 3
        # 1. other proposals: the device moves to them, traffic flows, success recorded
        pub = lab.publish(template(lab.pki, lab.topo.gw_addr, "aes128gcm16-prfsha256-ecp256", "aes128gcm16"))
        wait_until("profile 2 committed", lambda: connected_with(c, 2), timeout_s=90, tail=c.log_tail)
        assert pings(lab.topo) == 3
        dep = wait_until("success recorded", lambda: (x := lab.deployment(pub["id"]))["success"] == 1 and x,
                         tail=c.log_tail)
        assert dep["failure"] == 0
        # the gateway negotiated the new proposals with it
        assert "(aes128gcm16-prfsha256-ecp256), CHILD SA" in c.log_path.read_text()
        assert "AES_GCM_16_128/PRF_HMAC_SHA2_256/ECP_256" in lab.gw.log_text()
        st = c.state_dir
        assert json.loads((st / "mgmt.json").read_text())["profile_version"] == 2
        # the journal goes once the server has acknowledged the feedback, which
        # is just after the server recorded it: wait for it, bounded
        wait_until("journal done", lambda: not (st / "apply.json").exists(), timeout_s=30, tail=c.log_tail)
        assert not (st / "profile.prev.json").exists()
        good = (st / "profile.json").read_text()
        # 2. a broken profile (its gateway does not exist): rolled back by itself
        pub = lab.publish(template(lab.pki, lab.topo.gw_addr, "aes128gcm16-prfsha256-ecp256", "aes128gcm16",
                                   host=DEAD_GW))
        wait_until("the broken profile tried", lambda: DEAD_GW in (st / "profile.json").read_text(),
                   timeout_s=60, tail=c.log_tail)
        dep = wait_until("failure recorded", lambda: (x := lab.deployment(pub["id"]))["failure"] == 1 and x,
                         timeout_s=TRY_S + 60, tail=c.log_tail)
        wait_until("back on profile 2", lambda: connected_with(c, 2), timeout_s=60, tail=c.log_tail)
        assert pings(lab.topo) == 3
        assert (st / "profile.json").read_text() == good
        assert json.loads((st / "mgmt.json").read_text())["profile_version"] == 2
        assert "rolled back" in c.log_path.read_text()
        listed = mh.admin(lab.d, lab.srv, "deployment", "list").stdout
        assert str(pub["id"]) in listed


def recorded_feedback(lab, dep_id):
    """(status, details) the server stored for the deployment's one device."""
    with contextlib.closing(sqlite3.connect(os.path.join(lab.d, "mgmt.db"), timeout=10)) as db:
        return db.execute("SELECT status, details FROM deployment_devices WHERE deployment = ?", (dep_id,)).fetchone()


def test_older_or_expired_bundle_refused(lab):
    """On profile version 2, the device is served (a) a bundle of version 1
    and (b) an expired bundle of version 4, both signed with the server's
    real bundle key (made by the test: the server never makes them, its test
    knob M2MVPN_MGMTD_TEST_BUNDLES serves them as the bundle of a real
    deployment). Both refused: the state directory is unchanged byte for byte
    (mgmt.json's last_contact aside), the server records a failure with the
    reason, and the device stays connected on version 2."""
    boot = enrolled_device(lab)
    with lab.client(boot) as c:
        wait_until("connected on profile 1", lambda: connected_with(c, 1), tail=c.log_tail)
        lab.publish(template(lab.pki, lab.topo.gw_addr, "aes128gcm16-prfsha256-ecp256", "aes128gcm16"))
        wait_until("profile 2 committed", lambda: connected_with(c, 2), timeout_s=90, tail=c.log_tail)
        wait_until("journal done", lambda: not (c.state_dir / "apply.json").exists(), timeout_s=30, tail=c.log_tail)
        dev = mgmt_of(c)["device_id"]
        before = snapshot(c.state_dir)
        profile_before = (c.state_dir / "profile.json").read_bytes()
        # what would show if one were taken: other proposals and the dead gateway
        payload = json.dumps(template(lab.pki, lab.topo.gw_addr, "aes256gcm16-prfsha384-ecp384", "aes256gcm16",
                                      host=DEAD_GW)).replace("${device_id}", dev).encode()
        now = int(time.time())
        cases = [("older", 1, now + 3600, "version 1 is not newer than the installed 2"),
                 ("expired", 4, now - 60, "expired")]
        for what, version, not_after, reason in cases:
            # the next deployment's id (sequential), its bundle in place before the publish
            dep_id = max([x["id"] for x in mh.admin_json(lab.d, lab.srv, "deployment", "list")["deployments"]]) + 1
            mh.sign_bundle(lab.d, os.path.join(lab.d, "test-bundles", f"{dep_id}.der"), dev, version, not_after,
                           dep_id, payload)
            pub = lab.publish(template(lab.pki, lab.topo.gw_addr, "aes256gcm16-prfsha384-ecp384", "aes256gcm16",
                                       host=DEAD_GW))
            assert pub["id"] == dep_id, pub
            dep = wait_until(f"the {what} bundle's failure recorded",
                             lambda: (x := lab.deployment(dep_id))["failure"] == 1 and x,
                             timeout_s=60, tail=c.log_tail)
            assert dep["success"] == 0, dep
            assert f"TEST KNOB M2MVPN_MGMTD_TEST_BUNDLES: deployment {dep_id}" in lab.srv.text()
            status, details = recorded_feedback(lab, dep_id)
            assert status == "failure" and "refused" in details and reason in details, (status, details)
            assert reason in c.log_path.read_text()
            # nothing stored moved, the device goes on with version 2
            assert snapshot(c.state_dir) == before, what
            assert (c.state_dir / "profile.json").read_bytes() == profile_before
            assert not (c.state_dir / "apply.json").exists() and not (c.state_dir / "profile.next.json").exists()
            s = connected_with(c, 2)
            assert s, c.status()
            assert pings(lab.topo) == 3
        assert DEAD_GW not in (c.state_dir / "profile.json").read_text()


@pytest.mark.parametrize("step", ["staged", "written", "trying", "committed"])
def test_sigkill_at_each_apply_step(lab, step):
    boot = enrolled_device(lab)
    with lab.client(boot) as c:
        wait_until("connected on profile 1", lambda: connected_with(c, 1), tail=c.log_tail)
        old = (c.state_dir / "profile.json").read_text()
    # the engine held right after the step reached the disk, then SIGKILL
    with lab.client(boot, env={"M2MVPN_TEST_APPLY_PAUSE": step}) as c:
        wait_until("connected on profile 1 again", lambda: connected_with(c, 1), tail=c.log_tail)
        lab.publish(template(lab.pki, lab.topo.gw_addr, "aes128gcm16-prfsha256-ecp256", "aes128gcm16"))
        wait_until(f"paused after {step}", lambda: f"paused after apply step {step}" in c.log_path.read_text(),
                   timeout_s=90, tail=c.log_tail)
        c.proc.send_signal(signal.SIGKILL)
        c.proc.wait(10)
    c.control.unlink(missing_ok=True)  # left by the killed engine
    st = c.state_dir
    text = (st / "profile.json").read_text()
    json.loads(text)  # whole
    new = "aes128gcm16-prfsha256-ecp256" in text
    assert text == old or new, text
    journal = json.loads((st / "apply.json").read_text())
    assert journal["phase"] == step
    # persisted version: moves only at commit
    want = 2 if step == "committed" else 1
    if step != "committed":
        assert json.loads((st / "mgmt.json").read_text())["profile_version"] == 1
    # restart: recovered to old (rolled back, failure owed) or new (commit completed)
    with lab.client(boot) as c:
        wait_until(f"connected on profile {want}", lambda: connected_with(c, want), timeout_s=90, tail=c.log_tail)
        assert pings(lab.topo) == 3
        text = (c.state_dir / "profile.json").read_text()
        assert ("aes128gcm16-prfsha256-ecp256" in text) == (step == "committed")
        wait_until("journal done", lambda: not (c.state_dir / "apply.json").exists(), timeout_s=30, tail=c.log_tail)


def test_revoked_managed_device_told_why(topology, charons, pki, workdir):
    """A managed device revoked by the operator: the gateway (CRL fetched
    from the server) refuses it at the next connection, and the device's
    status says its certificate may have been revoked and what to do."""
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
    crl_url = f"http://{MGMT_ADDR}:8080/crl"
    cfg = mh.make_config(d, "sqlite:mgmt.db", listen=f"{MGMT_ADDR}:0", poll_s=5,
                         crl_listen=f"{MGMT_ADDR}:8080", crl_url=crl_url, crl_next_update_s=3)
    srv = mh.Mgmtd(d, cfg, host=MGMT_ADDR, wrap=topo.gateway.argv())
    try:
        gwconf = charonmod.gateway_config(pki, conns=["ecdsa"])
        gwconf.tree["connections"]["ecdsa"]["remote"] = {"auth": "pubkey", "id": "%any",
                                                         "cacerts": "device-ca.pem", "revocation": "ifuri"}
        gwconf.files.append(("x509ca", Path(d) / "device-ca.pem"))
        gw = charons(topo.gateway, gwconf, name="gw", options={"load": charonmod.PLUGINS + " curl"})
        lab = Lab(topo, d, srv, binary, workdir)
        lab.pki = pki
        boot = enrolled_device(lab)
        with lab.client(boot) as c:
            wait_until("connected on profile 1", lambda: connected_with(c, 1), tail=c.log_tail)
            dev = mgmt_of(c)["device_id"]
            assert mgmt_of(c)["cert_refused"] is False
        assert mh.admin_json(d, srv, "device", "revoke", dev)["state"] == "revoked"
        time.sleep(4)  # past the nextUpdate of the CRL the gateway holds
        with lab.client(boot) as c:
            m = wait_until("the refusal explained", lambda: (x := mgmt_of(c)).get("cert_refused") and x,
                           timeout_s=60, tail=c.log_tail)
            assert "may have been revoked" in m["last_error"] and "m2mvpn-admin" in m["last_error"], m
            assert "AUTHENTICATION_FAILED" in m["last_error"], m
            assert c.status()["state"] != "connected"
        assert "certificate was revoked" in gw.log_text()
    finally:
        srv.stop()


_APP = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from m2mvpn.client import Client
state, boot, out = sys.argv[2], sys.argv[3], sys.argv[4]
with Client(library=os.environ["M2MVPN_LIB"]) as c:
    c.set_state_dir(state)
    c.start()
    c.load_profile_json(open(boot).read())
    got = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and got is None:
        ev = c.next_event(timeout=1)
        if ev is not None and ev.name == "UPDATE_AVAILABLE":
            got = ev.detail
    if got is None:
        sys.exit("no UPDATE_AVAILABLE")
    version, path = got.split(" ", 1)
    data = open(path, "rb").read()
    try:
        c.update_result("0.0.0-not-delivered", True, "x")
        wrong = "accepted"
    except Exception as e:
        wrong = str(e)
    c.update_result(version, True, "installed by the test application")
    time.sleep(8)   # the feedback goes out with the next poll
    json.dump({"version": version, "path": path, "size": len(data), "wrong": wrong}, open(out, "w"))
"""


def test_software_update_handed_over_and_result_recorded(lab):
    """update publish -> the device downloads and verifies the file, hands it
    to the application (UPDATE_AVAILABLE, the Python binding here), whose
    m2mvpn_update_result() ends on the server as the deployment's success."""
    lib = os.environ.get("M2MVPN_LIB")
    if not lib or not os.path.exists(lib):
        pytest.skip("libm2mvpn.so not built (M2MVPN_LIB)")
    boot = enrolled_device(lab)
    art = Path(lab.d) / "firmware.bin"
    art.write_bytes(os.urandom(50000))
    w = lab.workdir / "app"
    (w / "state").mkdir(parents=True)
    (w / "boot.json").write_text(json.dumps(boot))
    script = w / "app.py"
    script.write_text(_APP)
    bindings = str(Path(__file__).resolve().parent.parent.parent / "bindings" / "python")
    log = open(w / "app.log", "w")
    p = lab.topo.client.popen([sys.executable, str(script), bindings, str(w / "state"), str(w / "boot.json"),
                               str(w / "out.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        # published once the device is enrolled (a deployment goes to the devices enrolled then)
        mgmt_json = w / "state" / "mgmt.json"
        wait_until("enrolled with profile 1",
                   lambda: mgmt_json.exists() and json.loads(mgmt_json.read_text() or "{}").get("profile_version") == 1)
        pub = mh.admin_json(lab.d, lab.srv, "update", "publish", "--group", "fleet", "--file", str(art),
                            "--version", "1.4.2")
        assert pub["devices"] == 1, pub
        rc = p.wait(timeout=180)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert rc == 0, (w / "app.log").read_text()
    out = json.loads((w / "out.json").read_text())
    assert out["version"] == "1.4.2" and out["size"] == 50000
    assert Path(out["path"]).read_bytes() == art.read_bytes()
    assert Path(out["path"]).name == "update-1.4.2.bin"
    assert "no update 0.0.0-not-delivered was handed over" in out["wrong"], out
    dep = lab.deployment(pub["id"])
    assert dep["success"] == 1 and dep["failure"] == 0, dep
    assert json.loads((w / "state" / "mgmt.json").read_text())["software_seq"] >= 1


_INSTALLER = """#!/bin/sh
# the test's installer: records its argv and the hash of the file it got
h=$(sha256sum "$1" | cut -d' ' -f1)
echo "$0|$1|$2|$h|$#" >> {rec}
echo "installer: writing $2"
if [ -e {fail} ]; then echo "flash write failed (test)" >&2; exit 1; fi
exit 0
"""


def test_software_update_by_installer(lab):
    """management.installer: a 3 MiB update streamed to the state directory,
    verified and installed by the bootstrap's installer (argv: installer,
    /dev/fd/3 (the verified file, open), version), its exit status recorded on the server as the
    deployment's success or failure; outside the maintenance window it waits;
    an artifact changed on the server (sha256 no longer the signed one) never
    reaches the installer and is recorded as a failure."""
    boot = enrolled_device(lab)
    w = lab.workdir / "inst"
    w.mkdir()
    rec, fail = w / "installs.txt", w / "fail"
    script = w / "install.sh"
    script.write_text(_INSTALLER.format(rec=rec, fail=fail))
    script.chmod(0o755)
    boot["management"]["installer"] = str(script)
    boot["management"]["installer_timeout_s"] = 60

    def publish(version, data, *extra):
        art = Path(lab.d) / f"fw-{version}.bin"
        art.write_bytes(data)
        pub = mh.admin_json(lab.d, lab.srv, "update", "publish", "--group", "fleet", "--file", str(art),
                            "--version", version, *extra)
        assert pub["devices"] == 1, pub
        return pub

    def settled(dep_id):
        x = lab.deployment(dep_id)
        return x["success"] + x["failure"] == 1 and x

    def installs():
        return [ln.split("|") for ln in rec.read_text().splitlines()] if rec.exists() else []

    with lab.client(boot) as c:
        wait_until("connected on profile 1", lambda: connected_with(c, 1), tail=c.log_tail)
        big = os.urandom(3 << 20)
        pub = publish("2.0.0", big)
        dep = wait_until("update 2.0.0 settled", lambda: settled(pub["id"]), timeout_s=120, tail=c.log_tail)
        assert dep["success"] == 1 and dep["failure"] == 0, dep
        (argv0, path, version, digest, argc), = installs()
        assert argv0 == str(script) and version == "2.0.0" and argc == "2"
        # the verified file by its open descriptor, never by its path again
        assert path == "/dev/fd/3"
        assert digest == hashlib.sha256(big).hexdigest()
        assert not (c.state_dir / "update-2.0.0.bin").exists()  # the installer's to take, not kept
        log = c.log_path.read_text()
        assert "installer: installer: writing 2.0.0" in log
        assert json.loads((c.state_dir / "mgmt.json").read_text())["software_seq"] == pub["id"]

        fail.touch()
        pub = publish("2.0.1", os.urandom((1 << 20) + 5))
        dep = wait_until("update 2.0.1 settled", lambda: settled(pub["id"]), timeout_s=120, tail=c.log_tail)
        assert dep["failure"] == 1 and dep["success"] == 0, dep
        assert [x[2] for x in installs()] == ["2.0.0", "2.0.1"]
        log = c.log_path.read_text()
        assert "failed with exit status 1" in log and "flash write failed (test)" in log
        fail.unlink()

    # an artifact changed on the server after it was signed: same size, one bit
    data = os.urandom(3 << 20)
    pub = publish("2.0.2", data)
    stored = Path(lab.d) / "artifacts" / hashlib.sha256(data).hexdigest()
    b = bytearray(stored.read_bytes())
    b[(3 << 20) - 1000] ^= 1
    stored.write_bytes(bytes(b))
    with lab.client(boot) as c:
        dep = wait_until("update 2.0.2 settled", lambda: settled(pub["id"]), timeout_s=120, tail=c.log_tail)
        assert dep["failure"] == 1 and dep["success"] == 0, dep
        assert [x[2] for x in installs()] == ["2.0.0", "2.0.1"]  # never handed to the installer
        assert "sha256 does not match the signed manifest" in c.log_path.read_text()
        names = [p.name for p in c.state_dir.iterdir()]
        assert "update-2.0.2.bin" not in names and not [n for n in names if n.endswith(".part")], names

        # outside the maintenance window: downloaded and verified, not installed
        h = (time.gmtime().tm_hour + 3) % 24
        pub = publish("2.0.3", os.urandom(100000), "--window", f"{h:02d}:00-{h:02d}:30")
        wait_until("2.0.3 waiting for the window",
                   lambda: "update 2.0.3 stored; waiting for the maintenance window" in c.log_path.read_text(),
                   timeout_s=90, tail=c.log_tail)
        time.sleep(12)  # polls go on; the window stays closed
        assert [x[2] for x in installs()] == ["2.0.0", "2.0.1"]
        assert (c.state_dir / "update-2.0.3.bin").exists()
        assert lab.deployment(pub["id"])["success"] == 0


def test_update_waiting_for_window_survives_restart(lab):
    """A verified update waiting for its maintenance window outlives an
    engine restart (update.json next to the file): after a SIGKILL and a new
    start it is installed once the window opens. A stored file changed on
    disk while the engine was down (same size, one bit) is hashed again
    before use: never installed, recorded as a failure, removed."""
    boot = enrolled_device(lab)
    w = lab.workdir / "inst"
    w.mkdir()
    rec = w / "installs.txt"
    script = w / "install.sh"
    script.write_text(_INSTALLER.format(rec=rec, fail=w / "fail"))
    script.chmod(0o755)
    boot["management"]["installer"] = str(script)
    boot["management"]["installer_timeout_s"] = 60
    closed = (time.gmtime().tm_hour + 3) % 24

    def publish(version, data):
        art = Path(lab.d) / f"fw-{version}.bin"
        art.write_bytes(data)
        pub = mh.admin_json(lab.d, lab.srv, "update", "publish", "--group", "fleet", "--file", str(art),
                            "--version", version, "--window", f"{closed:02d}:00-{closed:02d}:30")
        assert pub["devices"] == 1, pub
        return pub

    def open_window(dep_id):
        # the operator's window reached: the server now says "available"
        with contextlib.closing(sqlite3.connect(os.path.join(lab.d, "mgmt.db"), timeout=10)) as db:
            db.execute("UPDATE deployments SET window_start = -1, window_end = -1 WHERE id = ?", (dep_id,))
            db.commit()

    def settled(dep_id):
        x = lab.deployment(dep_id)
        return x["success"] + x["failure"] == 1 and x

    def installs():
        return [ln.split("|") for ln in rec.read_text().splitlines()] if rec.exists() else []

    def stored_then_killed(version, data):
        with lab.client(boot) as c:
            wait_until("connected on profile 1", lambda: connected_with(c, 1), tail=c.log_tail)
            pub = publish(version, data)
            wait_until(f"{version} waiting for the window",
                       lambda: f"update {version} stored; waiting for the maintenance window" in
                       c.log_path.read_text(), timeout_s=90, tail=c.log_tail)
            mark = json.loads((c.state_dir / "update.json").read_text())
            assert (mark["deployment"], mark["software_version"], mark["sha256"], mark["size"]) == \
                (pub["id"], version, hashlib.sha256(data).hexdigest(), len(data)), mark
            c.proc.send_signal(signal.SIGKILL)
            c.proc.wait(10)
        c.control.unlink(missing_ok=True)  # left by the killed engine
        return c, pub

    # 1. the honest file: installed after the restart, once the window opens
    data = os.urandom(200000)
    c, pub = stored_then_killed("3.0.0", data)
    f = c.state_dir / "update-3.0.0.bin"
    assert f.read_bytes() == data and installs() == []
    with lab.client(boot) as c:
        wait_until("connected on profile 1", lambda: connected_with(c, 1), tail=c.log_tail)
        assert "update 3.0.0 (deployment %d) stored before the restart" % pub["id"] in c.log_path.read_text()
        time.sleep(7)  # a poll or more with the window closed: nothing installed
        assert installs() == [] and f.exists()
        open_window(pub["id"])
        dep = wait_until("update 3.0.0 settled", lambda: settled(pub["id"]), timeout_s=60, tail=c.log_tail)
        assert dep["success"] == 1 and dep["failure"] == 0, dep
        (argv0, path, version, digest, argc), = installs()
        assert (path, version, digest) == ("/dev/fd/3", "3.0.0", hashlib.sha256(data).hexdigest())
        assert not f.exists()
        wait_until("update.json gone", lambda: not (c.state_dir / "update.json").exists(), timeout_s=10)

    # 2. the file changed on disk while the engine was down: never installed
    data = os.urandom(200000)
    c, pub = stored_then_killed("3.0.1", data)
    f = c.state_dir / "update-3.0.1.bin"
    b = bytearray(f.read_bytes())
    b[1234] ^= 1
    f.write_bytes(bytes(b))
    with lab.client(boot) as c:
        wait_until("connected on profile 1", lambda: connected_with(c, 1), tail=c.log_tail)
        open_window(pub["id"])
        dep = wait_until("update 3.0.1 settled", lambda: settled(pub["id"]), timeout_s=60, tail=c.log_tail)
        assert dep["failure"] == 1 and dep["success"] == 0, dep
        assert [x[2] for x in installs()] == ["3.0.0"]  # never handed to the installer
        assert "update 3.0.1 refused: the stored update" in c.log_path.read_text()
        assert "changed on disk: its sha256 no longer matches the signed manifest" in c.log_path.read_text()
        assert not f.exists() and not (c.state_dir / "update.json").exists()

    # 3. stored by a version that kept no signed bundle (update.p7m), or
    # whose bundle went stale: dropped at the start, the still open
    # deployment asked again and taken at its own version (already
    # accepted), verified afresh, installed; never "not newer"
    # The first start after it cannot reach the server (nothing fetched
    # again before the next stop): the start after still takes it.
    from test_mgmt_renew import block_mgmt, unblock_mgmt
    data = os.urandom(200000)
    c, pub = stored_then_killed("3.0.2", data)
    (c.state_dir / "update.p7m").unlink()
    block_mgmt(lab)
    with lab.client(boot) as c:
        wait_until("connected on profile 1", lambda: connected_with(c, 1), tail=c.log_tail)
        assert f"the stored update is dropped; deployment {pub['id']} is asked again" in c.log_path.read_text()
        assert not (c.state_dir / "update.json").exists()
    unblock_mgmt(lab)
    with lab.client(boot) as c:
        wait_until("connected on profile 1", lambda: connected_with(c, 1), tail=c.log_tail)
        open_window(pub["id"])
        dep = wait_until("update 3.0.2 settled", lambda: settled(pub["id"]), timeout_s=90, tail=c.log_tail)
        log = c.log_path.read_text()
        assert dep["success"] == 1 and dep["failure"] == 0, (dep, log[-3000:])
        assert "not newer" not in log
        assert "software_refetch" not in json.loads((c.state_dir / "mgmt.json").read_text())
        assert installs()[-1][1:4] == ["/dev/fd/3", "3.0.2", hashlib.sha256(data).hexdigest()]
