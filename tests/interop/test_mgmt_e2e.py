# SPDX-License-Identifier: Apache-2.0
"""Management day 0 end to end (issue 14): m2mvpn-mgmtd in the gateway's
namespace on 198.51.100.9, a strongSwan gateway trusting the device CA as
`m2mvpn-admin ca show` prints it, and a device that has nothing but a
bootstrap file (management URL, server CA, bundle signer, enrolment token,
key provider) running `m2mvpn run --profile boot.json --state-dir DIR`:
pending (its device id shown) -> approved with `m2mvpn-admin` -> enrolled ->
its profile fetched -> tunnel up -> traffic, for the key in a file, on a
SoftHSM2 token and in swtpm, on SQLite and on PostgreSQL with two server
instances. Then the refusals, each leaving the state directory as it was.

Pending is retried after the server's checkAfter (60 s) but never later
than the bootstrap's poll_s: poll_s 10 (its minimum) bounds every wait."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

import charon as charonmod
import m2mvpn_client
import netlab
import pki as pkimod
from test_hwcred import PIN, SOFTHSM, SoftHsm, tpm_in  # noqa: F401 (tpm_in is a fixture)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "mgmt"))
import mgmt_helpers as mh  # noqa: E402

pytestmark = pytest.mark.needs_m2mvpn

MGMT_ADDR = "198.51.100.9"
GROUP = "fleet"
POLL_S = 10


def need_server():
    if m2mvpn_client.find_binary() is None:
        pytest.skip("tools/m2mvpn not built (set M2MVPN_BINARY): our client is not tested")
    if not (mh.MGMTD and os.path.exists(mh.MGMTD) and mh.ADMIN and os.path.exists(mh.ADMIN)):
        pytest.skip("the management server is not built (M2MVPN_MGMTD, M2MVPN_ADMIN)")


class Lab:
    """The topology, the server's PKI and config folder d, server instances."""

    def __init__(self, topo, pki, workdir: Path, stack: ExitStack):
        self.topo, self.pki, self.workdir, self.stack = topo, pki, workdir, stack
        self.d = str(workdir / "mgmt")
        os.makedirs(self.d)
        mh.make_pki(self.d, ips=(MGMT_ADDR,))
        topo.gateway.add_addr("eth0", f"{MGMT_ADDR}/24")

    def server(self, db: str = "sqlite:mgmt.db", name: str = "mgmtd", **extra) -> mh.Mgmtd:
        cfg = mh.make_config(self.d, db, name=name + ".json", listen=f"{MGMT_ADDR}:0", **extra)
        srv = mh.Mgmtd(self.d, cfg, tag=name, host=MGMT_ADDR, wrap=self.topo.gateway.argv())
        self.stack.callback(srv.stop)
        return srv

    def admin(self, srv, *args):
        return mh.admin_json(self.d, srv, *args)

    def group(self, srv, publish: bool = True) -> None:
        """The group's template: the gateway, its id, proposals, its CA inline."""
        tpl = {
            "version": 1, "name": "fleet", "mode": "always-on",
            "gateways": [{"host": self.topo.gw_addr, "port": 500}],
            "local_id": "${device_id}", "remote_id": pkimod.GATEWAY_ID,
            "ca": [self.pki.root_ca.read_text()],
            "ike": {"proposals": ["aes256gcm16-prfsha384-x25519"]},
            "esp": {"proposals": ["aes256gcm16"]},
            "tunnel": {"request_vip": True, "remote_ts": [netlab.PROTECTED_NET], "kill_switch": False},
        }
        path = os.path.join(self.d, "tpl.json")
        with open(path, "w") as f:
            json.dump(tpl, f)
        mh.admin(self.d, srv, "group", "create", GROUP, "--template", path)
        if publish:
            mh.admin(self.d, srv, "profile", "publish", "--group", GROUP)

    def token(self, srv, *args) -> str:
        return self.admin(srv, "token", "create", "--group", GROUP, *args)["tokens"][0]["token"]

    def gateway(self, charons, srv):
        """strongSwan trusting the device CA exactly as m2mvpn-admin shows it."""
        ca = Path(self.d) / "device-ca-shown.pem"
        ca.write_text(mh.admin(self.d, srv, "ca", "show").stdout)
        gwconf = charonmod.gateway_config(self.pki, conns=["ecdsa"])
        conn = gwconf.tree["connections"]["ecdsa"]
        conn["remote"] = {"auth": "pubkey", "id": "%any", "cacerts": ca.name}
        gwconf.files.append(("x509ca", ca))
        return charons(self.topo.gateway, gwconf, name="gw")

    def boot(self, srv, token: str, key: dict | None = None, server_ca: str | None = None) -> dict:
        return {"version": 1, "name": "boot",
                "management": {"url": srv.url, "server_ca": server_ca or os.path.join(self.d, "tls-ca.pem"),
                               "bundle_signer": os.path.join(self.d, "signer.pem"),
                               "enrolment_token": token, "key": key or {"provider": "file"},
                               "poll_s": POLL_S}}

    def device(self, boot: dict, sub: str = "dev", env=None) -> m2mvpn_client.M2mvpnClient:
        return m2mvpn_client.M2mvpnClient(self.topo.client, m2mvpn_client.find_binary(), self.workdir / sub,
                                          boot, env=env)


@pytest.fixture
def lab(topology, pki, workdir):
    need_server()
    with ExitStack() as stack:
        yield Lab(topology("direct"), pki, workdir, stack)


def wait_mgmt(client, what, check, timeout_s: float = 60, stop_on_error: bool = True) -> dict:
    deadline = time.monotonic() + timeout_s
    m = None
    while time.monotonic() < deadline:
        m = client.status().get("management")
        if m and check(m):
            return m
        if stop_on_error and m and m["state"] == "error":
            break   # refused for good: no point waiting
        time.sleep(0.2)
    raise AssertionError(f"management never {what}: last {m}" + client.log_tail())


def wait_error(client, timeout_s: float = 60) -> dict:
    return wait_mgmt(client, "reported an error", lambda m: m["state"] == "error" or m.get("last_error"),
                     timeout_s, stop_on_error=False)


def snapshot(state: Path) -> dict[str, str]:
    """What the device stored: names and SHA-256 of the contents (the
    service's own pid and log files aside). In mgmt.json, last_contact is
    left out: an enrolled device's poll to a server that proved itself with
    TLS records the contact even when the bundle it then offers is refused;
    every other byte must stay."""
    if not state.exists():
        return {}

    def content(p: Path) -> bytes:
        if p.name != "mgmt.json":
            return p.read_bytes()
        m = json.loads(p.read_text())
        m.pop("last_contact", None)
        return json.dumps(m, sort_keys=True).encode()
    return {p.name: hashlib.sha256(content(p)).hexdigest() for p in sorted(state.iterdir())
            # .mgmt.json.tmp: that write (last_contact) caught between its temporary file and the rename
            if p.name not in ("m2mvpn.pid", "m2mvpn.log", ".mgmt.json.tmp")}


def events(client) -> str:
    return client.log_path.read_text(errors="replace")


def day0(lab: Lab, charons, device_srv, admin_srv, key: dict | None = None, env=None) -> dict:
    """The whole walk: bootstrap only -> pending -> approve -> enrolled ->
    profile -> tunnel -> traffic. Returns the device's last status."""
    lab.gateway(charons, admin_srv)
    lab.group(admin_srv)
    tok = lab.token(admin_srv)
    t0 = time.monotonic()
    with lab.device(lab.boot(device_srv, tok, key), env=env) as dev:
        m = wait_mgmt(dev, "pending", lambda m: m["state"] == "pending" and m.get("device_id"))
        dev_id = m["device_id"]
        listed = {x["id"]: x for x in lab.admin(admin_srv, "device", "list")["devices"]}
        assert listed[dev_id]["state"] == "pending", listed
        assert snapshot(dev.state_dir).keys() <= {"mgmt.json", "device.key.pem"}
        t_pending = time.monotonic() - t0
        lab.admin(admin_srv, "device", "approve", dev_id)
        t1 = time.monotonic()
        m = wait_mgmt(dev, "enrolled with a profile", lambda m: m["state"] == "enrolled" and m.get("profile_version"))
        assert m["device_id"] == dev_id and m["profile_version"] >= 1
        st = dev.wait_for_state("connected", timeout_s=60)
        t_tunnel = time.monotonic() - t1
        assert st["profile"] == "fleet", st
        assert netlab.ping(lab.topo.client, netlab.PROTECTED_ADDRS[0]) == 3
        # the echoes went through the tunnel: our counters (refreshed about once a second)
        deadline = time.monotonic() + 10
        while (c := dev.status()["counters"])["packets_out"] < 3 or c["packets_in"] < 3:
            assert time.monotonic() < deadline, c
            time.sleep(0.2)
        log = events(dev)
        assert f"event ENROLLED: enrolled as {dev_id}" in log and "event CONFIG_UPDATED" in log, dev.log_tail()
        assert log.index("event ENROLLED") < log.index("event CONFIG_UPDATED")
        listed = {x["id"]: x for x in lab.admin(admin_srv, "device", "list")["devices"]}
        assert listed[dev_id]["state"] == "enrolled", listed
        installed = json.loads((dev.state_dir / "profile.json").read_text())
        assert installed["local_id"] == dev_id and installed["remote_id"] == pkimod.GATEWAY_ID
        assert f"enrolled as {dev_id}" in dev.cli("status").stdout
        st = dev.status()
        assert st["management"]["last_contact"] > 0 and st["management"]["last_error"] == "", st
        print(f"day0 timings: pending after {t_pending:.1f}s, approve->tunnel {t_tunnel:.1f}s")
        return st


def test_day0_file_key_sqlite(lab, charons):
    srv = lab.server()
    day0(lab, charons, srv, srv)


def test_day0_softhsm_key(lab, charons, workdir, monkeypatch):
    hsm = SoftHsm(workdir / "hsm", monkeypatch)
    srv = lab.server()
    day0(lab, charons, srv, srv, key={"provider": "pkcs11", "pkcs11_module": str(SOFTHSM),
                                      "pkcs11_uri": "pkcs11:token=m2m;object=device", "pin": PIN})
    objs = hsm.tool("--list-objects").stdout
    assert "label:      device" in objs and "Certificate Object" in objs, objs


def test_day0_tpm_key(lab, charons, tpm_in):  # noqa: F811
    tpm = tpm_in(lab.topo.client)
    srv = lab.server()
    # a persistent handle the device makes its key at on first start
    day0(lab, charons, srv, srv, key={"provider": "tpm", "tpm_key": "0x81000010", "tpm_tcti": tpm.tcti})
    assert "0x81000010" in tpm.tool("tpm2_getcap", "handles-persistent").stdout


def test_day0_postgres_two_instances(lab, charons):
    # PostgreSQL runs as "nobody": a folder it can reach (pytest's is root's alone)
    pgdir = tempfile.mkdtemp(prefix="m2mpg-")
    os.chmod(pgdir, 0o755)
    try:
        with mh.postgres_server(pgdir, wrap=lab.topo.gateway.argv()) as db:
            if db is None:
                pytest.fail("PostgreSQL server binaries missing (apt-get install postgresql)")
            try:
                a = lab.server(db, name="a")
                b = lab.server(db, name="b")
                assert a.port != b.port
                assert "store postgresql" in a.text() and "store postgresql" in b.text()
                # the device talks to a, the operator to b: no state in either instance
                day0(lab, charons, a, b)
            finally:
                lab.stack.close()   # the servers stop before their database
    finally:
        shutil.rmtree(pgdir, ignore_errors=True)


# -- refusals: nothing changed on the device ------------------------------------------------


def refused(lab: Lab, boot: dict, sub: str, want: list[str], before: dict | None = None) -> dict:
    if before is None:
        before = snapshot(lab.workdir / sub / "state")
    with lab.device(boot, sub=sub) as dev:
        m = wait_error(dev)
        err = m.get("last_error") or ""
        for w in want:
            assert w in err, m
        print(f"refused ({sub}): {err}")
        time.sleep(1)
        assert snapshot(dev.state_dir) == before
        assert "event ENROLLED" not in events(dev)
        return m


def test_reused_token_refused(lab):
    srv = lab.server()
    lab.group(srv)
    tok = lab.token(srv, "--auto-approve")
    with lab.device(lab.boot(srv, tok), sub="first") as first:
        wait_mgmt(first, "enrolled", lambda m: m["state"] == "enrolled")
    # another device (its own key, made in its own state directory) with the same token
    m = refused(lab, lab.boot(srv, tok), "second", ["already used"])
    assert len(lab.admin(srv, "device", "list")["devices"]) == 1


def test_expired_token_refused(lab):
    srv = lab.server()
    lab.group(srv)
    tok = lab.token(srv, "--expires", "1s")
    time.sleep(2)
    refused(lab, lab.boot(srv, tok), "dev", ["expired"])
    assert lab.admin(srv, "device", "list")["devices"] == []


def test_server_certificate_not_pinned_refused(lab):
    srv = lab.server()
    lab.group(srv)
    tok = lab.token(srv, "--auto-approve")
    # the bootstrap pins another CA than the one that issued the server's certificate
    refused(lab, lab.boot(srv, tok, server_ca=str(lab.pki.root_ca)), "dev", ["server_ca"])
    assert lab.admin(srv, "device", "list")["devices"] == []


def test_bundle_from_another_signer_refused(lab):
    """The device is enrolled with profile 1; the server then signs with a
    key the bootstrap does not pin (the real device path: CMS over mutual
    TLS): profile 2 is refused, profile 1 stays, nothing is written."""
    srv = lab.server()
    lab.group(srv)
    boot = lab.boot(srv, lab.token(srv, "--auto-approve"))
    with lab.device(boot) as dev:
        m = wait_mgmt(dev, "enrolled", lambda m: m["state"] == "enrolled" and m.get("profile_version"))
        v1 = m["profile_version"]
    before = snapshot(lab.workdir / "dev" / "state")
    assert {"device.crt.pem", "profile.json", "mgmt.json"} <= before.keys()
    time.sleep(1.1)   # a rewritten last_contact (seconds) would differ
    srv.stop()
    lab.stack.pop_all()
    d = lab.d
    mh.sh("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{d}/rogue.key")
    mh.sh("openssl", "req", "-x509", "-new", "-key", f"{d}/rogue.key", "-subj", "/CN=test bundle signer",
          "-days", "30", "-out", f"{d}/rogue.pem")
    srv = lab.server(name="rogue", bundle_signer_cert="rogue.pem", bundle_signer_key="file:rogue.key")
    mh.admin(d, srv, "profile", "publish", "--group", GROUP)
    boot["management"]["url"] = srv.url
    m = refused(lab, boot, "dev", ["bundle"], before=before)
    assert m["profile_version"] == v1, m
