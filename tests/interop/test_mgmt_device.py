# SPDX-License-Identifier: Apache-2.0
"""Management, device side, without the real server (issue 14): the CMP
client against `openssl cmp`'s mock server, the profile fetched over mutual
TLS from a stand-in (mgmt_front.py), all in one namespace.

What a device owner checks: the state directory (certificate, profile,
mgmt.json) and `m2mvpn status --json`'s "management" object; a refused
token or an unpinned server leaves the state directory empty.
"""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import m2mvpn_client
import netlab

pytestmark = pytest.mark.needs_m2mvpn

ADDR = "198.51.100.9"
PORT = 8443
CMP_PORT = 8080
TOKEN_ID = "0123456789abcdef"
SECRET = "A" * 20 + "b" * 20 + "-_c"   # 43 base64url characters
HERE = Path(__file__).resolve().parent


def ossl(d: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)


def ca(d: Path, name: str) -> None:
    ossl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "30", "-subj", f"/CN={name}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def leaf(d: Path, name: str, issuer: str, subj: str, ext: str, key: str | None = None) -> None:
    if key is None:
        ossl(d, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key")
        key = f"{name}.key"
    ossl(d, "req", "-new", "-key", key, "-subj", subj, "-out", f"{name}.csr")
    (d / f"{name}.ext").write_text(ext + "\n")
    ossl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key",
         "-CAcreateserial", "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.pem")


def device_id(d: Path, key: str) -> str:
    der = subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-outform", "DER"], cwd=d,
                         check=True, capture_output=True).stdout
    return "dev-" + hashlib.sha256(der).hexdigest()[:16]


def bundle(d: Path, dev: str, version: int, profile: dict) -> None:
    payload = json.dumps(profile).encode()
    manifest = {"format": 1, "type": "profile", "device": dev, "version": version,
                "not_after": int(time.time()) + 3600, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": base64.b64encode(payload).decode()}
    (d / "manifest.json").write_text(json.dumps(manifest))
    ossl(d, "cms", "-sign", "-signer", "signer.pem", "-inkey", "signer.key", "-in", "manifest.json",
         "-binary", "-nodetach", "-outform", "DER", "-out", "bundle.der")


@pytest.fixture
def lab(workdir: Path):
    d = workdir
    for name in ("mgmtca", "devca", "otherca"):
        ca(d, name)
    leaf(d, "server", "mgmtca", f"/CN={ADDR}", f"subjectAltName=IP:{ADDR}\nextendedKeyUsage=serverAuth")
    leaf(d, "rogue", "otherca", f"/CN={ADDR}", f"subjectAltName=IP:{ADDR}\nextendedKeyUsage=serverAuth")
    leaf(d, "signer", "mgmtca", "/CN=bundle signer", "keyUsage=digitalSignature")
    leaf(d, "device", "devca", "/CN=dev-x/O=m2mvpn", "extendedKeyUsage=clientAuth")
    leaf(d, "stranger", "devca", "/CN=dev-y/O=m2mvpn", "extendedKeyUsage=clientAuth")
    dev = device_id(d, "device.key")
    bundle(d, dev, 1, {"version": 1, "name": "managed", "mode": "manual",
                       "gateways": [{"host": "198.51.100.1"}], "remote_id": "gw.m2m.test",
                       "auth": {"method": "cert"}, "ca": [(d / "devca.pem").read_text()]})
    with netlab.Namespace("mgmt") as ns:
        ns.add_addr("lo", f"{ADDR}/32")
        yield ns, d, dev


def start_mock(ns, d: Path, secret: str, *extra: str, rsp_cert: str = "device.pem") -> subprocess.Popen:
    log = open(d / "mock.log", "w")
    p = ns.popen(["openssl", "cmp", "-port", str(CMP_PORT), "-srv_ref", TOKEN_ID, "-srv_secret", f"pass:{secret}",
                  "-srv_cert", "signer.pem", "-srv_key", "signer.key", "-rsp_cert", rsp_cert, *extra],
                 cwd=d, stdout=log, stderr=subprocess.STDOUT)
    wait_port(ns, CMP_PORT)
    return p


def start_front(ns, d: Path, cert: str = "server") -> Path:
    out = d / f"front-{cert}.log"
    ns.popen([sys.executable, str(HERE / "mgmt_front.py"), ADDR, str(PORT), f"{cert}.pem", f"{cert}.key",
              "devca.pem", str(CMP_PORT), "bundle.der"], cwd=d, stdout=open(out, "w"), stderr=subprocess.STDOUT)
    wait_port(ns, PORT)
    return out


def wait_port(ns, port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if f":{port} " in ns.run("ss", "-Hltn").stdout:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


def boot(d: Path, key: str | None = "device.key") -> dict:
    k = {"provider": "file"}
    if key:
        k["key"] = str(d / key)
    return {"version": 1, "name": "boot",
            "management": {"url": f"https://{ADDR}:{PORT}", "server_ca": str(d / "mgmtca.pem"),
                           "bundle_signer": str(d / "signer.pem"),
                           "enrolment_token": f"{TOKEN_ID}.{SECRET}", "key": k, "poll_s": 10}}


def wait_mgmt(client, state: str, timeout_s: float = 30, **want) -> dict:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = client.status().get("management")
        if last and last["state"] == state and all(last.get(k) == v for k, v in want.items()):
            return last
        time.sleep(0.2)
    raise AssertionError(f"management never reached {state} {want}: last {last}" + client.log_tail())


def stored(client) -> list[str]:
    """What management stored (the service keeps its pid file there too)."""
    return sorted(p.name for p in client.state_dir.iterdir() if p.name not in ("m2mvpn.pid", "m2mvpn.log"))


def client_for(ns, d: Path, profile: dict, sub: str = "dev"):
    return m2mvpn_client.M2mvpnClient(ns, m2mvpn_client.find_binary(), d / sub, profile)


def test_enrol_then_profile_over_mutual_tls(lab):
    ns, d, dev = lab
    start_mock(ns, d, SECRET)
    front = start_front(ns, d)
    with client_for(ns, d, boot(d)) as c:
        m = wait_mgmt(c, "enrolled", profile_version=1)
        assert m["device_id"] == dev and m["cert_not_after"] > time.time()
        st = c.state_dir
        assert (st / "device.crt.pem").read_text() == (d / "device.pem").read_text()
        installed = json.loads((st / "profile.json").read_text())
        assert installed["auth"]["cert"] == {"source": "file", "file": "device.crt.pem", "key": str(d / "device.key")}
        assert installed["ca"] == ["ca-0.pem"]
        assert (st / "ca-0.pem").read_text() == (d / "devca.pem").read_text()
        assert json.loads((st / "mgmt.json").read_text())["profile_version"] == 1
        assert oct((st / "profile.json").stat().st_mode & 0o777) == "0o600"
        assert c.status()["profile"] == "managed"
        assert f"management:  enrolled as {dev}, profile version 1\n" in c.cli("status").stdout
        # The profile request carried the device certificate (mutual TLS).
        gets = [json.loads(x) for x in front.read_text().splitlines() if '"GET"' in x]
        assert gets and gets[0]["status"] == 200
    # A restart: no enrolment again, the stored profile at once, the ETag asked.
    before = (d / "mock.log").read_text().count("received")
    with client_for(ns, d, boot(d)) as c:
        wait_mgmt(c, "enrolled", profile_version=1)
        time.sleep(1)
        assert c.status()["profile"] == "managed"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and '"status": 304' not in front.read_text():
            time.sleep(0.2)
        assert '"status": 304' in front.read_text()
    assert (d / "mock.log").read_text().count("received") == before


def test_wrong_token_secret_is_refused_and_nothing_is_written(lab):
    ns, d, _ = lab
    start_mock(ns, d, "B" * 43)
    start_front(ns, d)
    with client_for(ns, d, boot(d)) as c:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = c.status().get("management")
            if m and m["state"] == "error":
                break
            time.sleep(0.2)
        assert m and m["state"] == "error", m
        assert "enrolment token" in m["last_error"] and "enrolment_token" in m["last_error"], m
        assert stored(c) == []


def test_server_certificate_not_pinned_is_refused(lab):
    ns, d, _ = lab
    start_mock(ns, d, SECRET)
    start_front(ns, d, cert="rogue")
    with client_for(ns, d, boot(d)) as c:
        deadline = time.monotonic() + 30
        m = None
        while time.monotonic() < deadline:
            m = c.status().get("management")
            if m and m["state"] == "error":
                break
            time.sleep(0.2)
        assert m and m["state"] == "error" and "server_ca" in m["last_error"], m
        assert stored(c) == []


def test_generated_key_and_a_certificate_for_another_key(lab):
    """No key in the bootstrap: the device makes device.key.pem in its state
    directory; the mock answers with a certificate for another key, which
    the device refuses, and the key made for the refused attempt goes too:
    the state directory is as before."""
    ns, d, _ = lab
    start_mock(ns, d, SECRET)
    start_front(ns, d)
    with client_for(ns, d, boot(d, key=None)) as c:
        deadline = time.monotonic() + 30
        m = None
        while time.monotonic() < deadline:
            m = c.status().get("management")
            if m and m["state"] == "error":
                break
            time.sleep(0.2)
        assert m and "not for this device's key" in m["last_error"], m
        assert stored(c) == []


def test_pending_keeps_its_generated_key(lab):
    """Pending (the server has bound the token to the key): the key made in
    the state directory stays, encrypted with management.key.pin, and no
    certificate is there yet."""
    ns, d, _ = lab
    start_mock(ns, d, SECRET, "-poll_count", "1000", "-check_after", "1")
    start_front(ns, d)
    prof = boot(d, key=None)
    prof["management"]["key"]["pin"] = "s3cret-pin"
    with client_for(ns, d, prof) as c:
        wait_mgmt(c, "pending")
        assert stored(c) == ["device.key.pem", "mgmt.json"]
        key = c.state_dir / "device.key.pem"
        assert oct(key.stat().st_mode & 0o777) == "0o600"
        assert "BEGIN ENCRYPTED PRIVATE KEY" in key.read_text()
        first = key.read_text()
        time.sleep(3)   # asked again (check_after 1 s): the same key
        assert key.read_text() == first


def test_pending_then_enrolled(lab):
    ns, d, _ = lab
    start_mock(ns, d, SECRET, "-poll_count", "2", "-check_after", "1")
    start_front(ns, d)
    with client_for(ns, d, boot(d)) as c:
        # pending already shows the id the operator approves
        wait_mgmt(c, "pending", device_id=device_id(d, "device.key"))
        assert json.loads((c.state_dir / "mgmt.json").read_text())["state"] == "pending"
        assert not (c.state_dir / "device.crt.pem").exists()
        wait_mgmt(c, "enrolled", profile_version=1)


SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "123456"


def test_key_on_a_pkcs11_token(lab, monkeypatch):
    """The device key on a SoftHSM2 token: CMP proof of possession and the
    mutual TLS of the profile request are signed by the token (libp11's key
    in OpenSSL); the certificate goes onto the token next to the key, and
    the installed profile uses source pkcs11."""
    ns, d, _ = lab
    tokens = d / "tokens"
    tokens.mkdir()
    (d / "softhsm2.conf").write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(d / "softhsm2.conf"))
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "m2m", "--pin", PIN, "--so-pin", "0000"],
                   check=True, capture_output=True)
    # The key is made on the token beforehand, so that the mock's fixed
    # answer can be a certificate for it.
    subprocess.run([str(m2mvpn_client.find_binary()), "keygen", "--provider", "pkcs11", "--module", SOFTHSM,
                    "--uri", "pkcs11:token=m2m;object=dev;id=%02", "--pin-stdin", "--csr", str(d / "tok.csr"),
                    "--subject", "/CN=x"], input=PIN + "\n", text=True, check=True, capture_output=True)
    ossl(d, "x509", "-req", "-in", "tok.csr", "-CA", "devca.pem", "-CAkey", "devca.key", "-CAcreateserial",
         "-days", "30", "-extfile", "device.ext", "-out", "tok.pem")
    ossl(d, "x509", "-in", "tok.pem", "-pubkey", "-noout", "-out", "tok.pub")
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", "tok.pub", "-outform", "DER"], cwd=d, check=True,
                         capture_output=True).stdout
    dev = "dev-" + hashlib.sha256(der).hexdigest()[:16]
    # always-on towards a gateway that is not there: the engine opens the
    # token for its own attempts (and closes it again) meanwhile.
    managed = {"version": 1, "name": "managed", "mode": "always-on", "gateways": [{"host": ADDR}],
               "remote_id": "gw.m2m.test", "auth": {"method": "cert"}, "tunnel": {"kill_switch": False}}
    bundle(d, dev, 1, managed)
    start_mock(ns, d, SECRET, rsp_cert="tok.pem")
    front = start_front(ns, d)
    prof = boot(d)
    prof["management"]["key"] = {"provider": "pkcs11", "pkcs11_module": SOFTHSM,
                                 "pkcs11_uri": "pkcs11:token=m2m;object=dev", "pin": PIN}
    with client_for(ns, d, prof) as c:
        m = wait_mgmt(c, "enrolled", profile_version=1)
        assert m["device_id"] == dev
        installed = json.loads((c.state_dir / "profile.json").read_text())
        assert installed["auth"]["cert"]["source"] == "pkcs11"
        assert stored(c) == ["device.crt.pem", "mgmt.json", "profile.json"]
        gets = [json.loads(x) for x in front.read_text().splitlines() if '"GET"' in x]
        assert gets and gets[0]["status"] == 200
        # A newer profile later: the token key still signs the mutual TLS
        # while the engine uses the same token for its own attempts.
        for version in (2, 3):   # the second after the engine closed its first token session
            bundle(d, dev, version, managed)
            wait_mgmt(c, "enrolled", timeout_s=60, profile_version=version)
    objs = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "m2m", "--list-objects",
                           "--type", "cert"], capture_output=True, text=True, check=True).stdout
    assert "label:      dev" in objs, objs


def test_stop_while_the_server_hangs(lab):
    """A server that accepts the connection and never answers: stopping the
    engine aborts the request at once (the worker does not hold the stop
    for the transfer's own timeouts)."""
    ns, d, _ = lab
    hang = ns.popen([sys.executable, "-c",
                     "import socket, time\n"
                     f"s = socket.socket(); s.bind(('{ADDR}', {PORT})); s.listen(8)\n"
                     "conns = []\n"
                     "while True: conns.append(s.accept())\n"])
    wait_port(ns, PORT)
    c = client_for(ns, d, boot(d)).start()
    try:
        time.sleep(2)   # the CMP request is under way, waiting for the TLS answer
        assert c.status()["management"]["state"] == "unenrolled"
        t0 = time.monotonic()
        c.stop(grace_s=30)
        assert time.monotonic() - t0 < 5
    finally:
        c.stop()
        hang.kill()
