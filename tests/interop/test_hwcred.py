# SPDX-License-Identifier: Apache-2.0
"""Hardware credentials against the strongSwan gateway: a PKCS#11 token
(SoftHSM2 standing in for a smartcard) and a TPM 2.0 (swtpm).

Each test makes its own token (SOFTHSM2_CONF in its folder) or TPM (swtpm in
the client's namespace, socket TCTI) and removes it. Keys are made by
`m2mvpn keygen` inside the token/TPM; the test CA (pki.py) issues the
certificate from the CSR keygen wrote. What a user would check:
  - the tunnel comes up and carries traffic, with RSA and EC keys, and
    `status --json` names the credential (never the PIN);
  - a wrong PIN ends the attempt with PIN and is not tried again: the token's
    C_Login calls (counted by OpenSC's pkcs11-spy between client and token)
    and the TPM's lockout counter go up by exactly one;
  - an always-on tunnel whose token is pulled reports the error and comes
    back once the token is back;
  - the keys cannot be read out (PKCS#11: CKA_VALUE refused; TPM: fixedTPM,
    fixedParent, duplication refused).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import charon as charonmod
import m2mvpn_client
import sanitizer
import netlab
import pki as pkimod
from test_tunnel import binary_or_skip, ping_counted_by_gateway, wait_until

pytestmark = pytest.mark.needs_m2mvpn

SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")
SPY = Path("/usr/lib/x86_64-linux-gnu/pkcs11-spy.so")
PIN = "314159"
SO_PIN = "271828"
TPM_PIN = "tpm-auth-42"
SUBJECT = f"/O=m2mvpn test/CN={pkimod.CLIENT_ID}"
TPM_PORT = 2321          # inside the client's own namespace: always free


def cred_probe() -> Path:
    """cred_probe.c (built by meson): every signature scheme through the provider."""
    path = os.environ.get("M2MVPN_CRED_PROBE")
    if not path and m2mvpn_client.find_binary():
        path = str(m2mvpn_client.find_binary().parent.parent / "tests" / "cred_probe")
    if not path or not Path(path).is_file():
        pytest.fail("cred_probe not built (set M2MVPN_CRED_PROBE)")
    return Path(path)


def gateway_saw_signature(gw, want: str) -> None:
    """strongSwan's log: how it verified our AUTH."""
    m = re.search(rf"authentication of '{re.escape(pkimod.CLIENT_ID)}' with (\S+) successful",
                  gw.log_text())
    assert m and m.group(1) == want, m and m.group(0)


def all_schemes_sign(argv: list[str], rsa: bool) -> None:
    """The provider signs in every scheme of its key, each verified with the certificate."""
    out = run(argv).stdout.split("\n")
    lines = [line for line in out if line]
    want = (["rsa-pkcs1-sha256", "rsa-pkcs1-sha384", "rsa-pkcs1-sha512", "rsa-pss-sha256",
             "rsa-pss-sha384", "rsa-pss-sha512"] if rsa
            else ["ecdsa-sha256", "ecdsa-sha384", "ecdsa-sha512"])
    assert lines == [f"{s} ok" for s in want], out


def need(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.fail(f"missing tools {missing}: install softhsm2, swtpm, swtpm-tools, tpm2-tools, opensc")


# -- SoftHSM2 token ---------------------------------------------------------------------

def hsm_client(ns, binary, folder, prof) -> m2mvpn_client.M2mvpnClient:
    """Our engine for a token test. OpenSC's pkcs11-spy (a test instrument
    that counts C_Login, used only where a test counts them) leaves memory
    allocated and is unloaded before exit, so LeakSanitizer cannot tell its
    leaks from ours: a sanitized engine behind the spy runs without leak
    checking (ASan's other checks stay on). Every other token test talks to
    SoftHSM2 directly, with leak checking."""
    env = None
    if sanitizer.logs_dir() is not None and prof["auth"]["cert"].get("pkcs11_module") == str(SPY):
        env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0")
    return m2mvpn_client.M2mvpnClient(ns, binary, folder, prof, env=env)


class SoftHsm:
    """A SoftHSM2 token "m2m" in folder d; SOFTHSM2_CONF points at it while
    the test runs. remove()/reinsert() take the token away and bring it back."""

    def __init__(self, d: Path, monkeypatch):
        need("softhsm2-util", "pkcs11-tool")
        self.dir = d
        self.tokens = d / "tokens"
        self.tokens.mkdir(parents=True)
        self.conf = d / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {self.tokens}\nobjectstore.backend = file\n"
                             "log.level = ERROR\n")
        self.spy_log = d / "pkcs11-spy.log"
        monkeypatch.setenv("SOFTHSM2_CONF", str(self.conf))
        # The client loads pkcs11-spy, which logs every call and passes it on.
        monkeypatch.setenv("PKCS11SPY", str(SOFTHSM))
        monkeypatch.setenv("PKCS11SPY_OUTPUT", str(self.spy_log))
        run(["softhsm2-util", "--init-token", "--free", "--label", "m2m", "--pin", PIN,
             "--so-pin", SO_PIN])

    def tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["pkcs11-tool", "--module", str(SOFTHSM), "--token-label", "m2m", *args],
                   check=check)

    def token_flags(self) -> str:
        out = self.tool("--show-info", "-T").stdout
        m = re.search(r"token flags\s*:\s*(.*)", out)
        assert m, out
        return m.group(1)

    def logins(self) -> list[str]:
        """Return values of the client's C_Login calls, in order."""
        if not self.spy_log.exists():
            return []
        text = self.spy_log.read_text(errors="replace")
        out = []
        for block in re.split(r"\n(?=\d+: C_)", text):
            if re.match(r"\d+: C_Login\b", block):
                m = re.search(r"Returned:\s+\d+\s+(\w+)", block)
                out.append(m.group(1) if m else "?")
        return out

    def remove(self) -> None:
        self.tokens.rename(self.dir / "tokens.away")

    def reinsert(self) -> None:
        (self.dir / "tokens.away").rename(self.tokens)


def run(argv, *, check=True, input=None, timeout=60) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                             f"{proc.stdout}{proc.stderr}")
    return proc


def token_enrol(binary: Path, hsm: SoftHsm, pki: pkimod.Pki, d: Path, *, rsa: bool) -> Path:
    """keygen on the token, certificate from the CSR, certificate onto the token."""
    csr = d / "dev1.csr"
    args = [str(binary), "keygen", "--provider", "pkcs11", "--module", str(SOFTHSM),
            "--uri", "pkcs11:token=m2m;object=dev1;id=%01", "--pin-stdin",
            "--csr", str(csr), "--subject", SUBJECT] + (["--rsa"] if rsa else [])
    run(args, input=PIN + "\n")
    text = run(["openssl", "req", "-in", str(csr), "-noout", "-text"]).stdout
    assert ("rsaEncryption" in text) == rsa and ("prime256v1" in text) == (not rsa), text
    cert = pkimod.issue_from_csr(pki, csr, d / "dev1.pem",
                                 issuer="intermediate" if rsa else "root")
    der = d / "dev1.der"
    run(["openssl", "x509", "-in", str(cert), "-outform", "DER", "-out", str(der)])
    hsm.tool("--login", "--pin", PIN, "--write-object", str(der), "--type", "cert",
             "--id", "01", "--label", "dev1")
    return cert


def token_profile(pki, topo, *, pin: str | None, mode: str = "manual",
                  module: Path = SOFTHSM) -> dict:
    prof = m2mvpn_client.make_profile(pki, "ecdsa", topo.gw_addr, mode=mode)
    cert = {"source": "pkcs11", "pkcs11_module": str(module),
            "pkcs11_uri": "pkcs11:token=m2m;object=dev1"}
    if pin is not None:
        cert["pin"] = pin
    prof["auth"] = {"method": "cert", "cert": cert}
    return prof


@pytest.mark.parametrize("rsa", [False, True], ids=["ecdsa-p256", "rsa2048"])
def test_token_connects_and_carries_traffic(topology, charons, pki, workdir, monkeypatch, rsa):
    binary = binary_or_skip()
    hsm = SoftHsm(workdir / "hsm", monkeypatch)
    token_enrol(binary, hsm, pki, workdir, rsa=rsa)
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["rsa" if rsa else "ecdsa"]),
                 name="gw")
    conn = "rsa" if rsa else "ecdsa"
    all_schemes_sign([str(cred_probe()), "pkcs11", str(SOFTHSM), "pkcs11:token=m2m;object=dev1", PIN], rsa)
    prof = token_profile(pki, topo, pin=PIN, module=SPY)
    with hsm_client(topo.client, binary, workdir / "m2mvpn", prof) as client:
        client.connect()
        st = client.wait_for_state("connected", timeout_s=30)
        sa = gw.wait_for_sa(conn, "net", timeout_s=10)
        assert sa["remote-id"] == pkimod.CLIENT_ID, sa
        gateway_saw_signature(gw, "RSA_EMSA_PKCS1_SHA2_256" if rsa else "ECDSA_WITH_SHA256_DER")
        ping_counted_by_gateway(topo, gw, conn)
        # The AUTH signature was made by the token: C_Sign through the spy.
        spy = hsm.spy_log.read_text(errors="replace")
        assert re.search(r"\d+: C_Sign\b", spy), "no C_Sign on the token"
        mech = "CKM_RSA_PKCS" if rsa else "CKM_ECDSA"
        assert re.search(rf"pMechanism->type = {mech}\b", spy), spy[-2000:]
        # Status: what holds the key, the certificate, never the PIN.
        cred = st["credential"]
        assert cred["source"] == "pkcs11", st
        assert 'token "m2m"' in cred["holder"] and "dev1" in cred["holder"], st
        assert pkimod.CLIENT_ID in cred["subject"], st
        assert cred["not_after"] > time.time() + 20 * 86400, st
        raw = client.cli("status", "--json").stdout
        assert PIN not in raw and PIN not in client.log_path.read_text()


def test_token_p384_key(topology, charons, pki, workdir, monkeypatch):
    """An ECDSA P-384 key made on the token by another tool: CSR signed on the
    token (ecdsa-with-SHA384), every scheme signs, the tunnel comes up."""
    binary = binary_or_skip()
    hsm = SoftHsm(workdir / "hsm", monkeypatch)
    hsm.tool("--login", "--pin", PIN, "--keypairgen", "--key-type", "EC:secp384r1",
             "--label", "dev1", "--id", "01")
    csr = workdir / "dev1.csr"
    csr.write_text(run([str(cred_probe()), "csr", str(SOFTHSM), "pkcs11:token=m2m;object=dev1", PIN,
                        SUBJECT]).stdout)
    text = run(["openssl", "req", "-in", str(csr), "-noout", "-text"]).stdout
    assert "secp384r1" in text and "ecdsa-with-SHA384" in text, text
    # The gateway's "rsa" connection takes any key issued by the intermediate.
    cert = pkimod.issue_from_csr(pki, csr, workdir / "dev1.pem", issuer="intermediate")
    der = workdir / "dev1.der"
    run(["openssl", "x509", "-in", str(cert), "-outform", "DER", "-out", str(der)])
    hsm.tool("--login", "--pin", PIN, "--write-object", str(der), "--type", "cert", "--id", "01",
             "--label", "dev1")
    out = run([str(cred_probe()), "pkcs11", str(SOFTHSM), "pkcs11:token=m2m;object=dev1", PIN]).stdout
    assert out.split() == ["ecdsa-sha256", "ok", "ecdsa-sha384", "ok", "ecdsa-sha512", "ok"], out
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["rsa"]), name="gw")
    prof = token_profile(pki, topo, pin=PIN)
    with hsm_client(topo.client, binary, workdir / "m2mvpn", prof) as client:
        client.connect()
        client.wait_for_state("connected", timeout_s=30)
        ping_counted_by_gateway(topo, gw, "rsa")
        gateway_saw_signature(gw, "ECDSA_WITH_SHA384_DER")


def test_token_wrong_pin_is_tried_once(topology, charons, pki, workdir, monkeypatch):
    """Always-on with a wrong PIN in the profile: PIN error, one C_Login, no
    retry; then the PIN through `m2mvpn pin`: wrong once (one more C_Login),
    right once, connected."""
    binary = binary_or_skip()
    hsm = SoftHsm(workdir / "hsm", monkeypatch)
    token_enrol(binary, hsm, pki, workdir, rsa=False)
    assert "user PIN count low" not in hsm.token_flags()
    topo = topology("direct")
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"]), name="gw")
    prof = token_profile(pki, topo, pin="000000", mode="always-on", module=SPY)
    with hsm_client(topo.client, binary, workdir / "m2mvpn", prof) as client:
        st = wait_until("the wrong PIN reported",
                        lambda: (s := client.status())["last_error"]["name"] == "PIN" and s,
                        timeout_s=20)
        assert st["state"] == "idle", st
        assert 'wrong PIN for token "m2m"' in st["last_error"]["detail"], st
        # Longer than the first back-offs (1 s, 2 s): nothing tried again.
        time.sleep(5)
        assert client.status()["state"] == "idle"
        assert hsm.logins() == ["CKR_PIN_INCORRECT"], hsm.logins()
    # The token itself counted the failure (flag of C_GetTokenInfo).
    assert "user PIN count low" in hsm.token_flags()

    # Without a PIN in the profile: PIN_REQUIRED, then the user's PINs.
    hsm.spy_log.unlink()
    prof = token_profile(pki, topo, pin=None, module=SPY)
    with hsm_client(topo.client, binary, workdir / "m2mvpn2", prof) as client:
        client.connect()
        wait_until("waiting for the PIN",
                   lambda: "waiting for the PIN" in client.log_path.read_text(), timeout_s=20)
        assert hsm.logins() == []
        client.pin("999999")
        st = wait_until("wrong PIN reported",
                        lambda: (s := client.status())["last_error"]["name"] == "PIN" and s,
                        timeout_s=20)
        assert st["state"] == "idle", st
        time.sleep(3)
        assert hsm.logins() == ["CKR_PIN_INCORRECT"], hsm.logins()
        client.connect()
        wait_until("asked for the PIN again",
                   lambda: client.log_path.read_text().count("waiting for the PIN") >= 2, timeout_s=20)
        client.pin(PIN)
        client.wait_for_state("connected", timeout_s=30)
        assert hsm.logins() == ["CKR_PIN_INCORRECT", "CKR_OK"], hsm.logins()
        assert PIN not in client.log_path.read_text()


def test_token_low_pin_counter_asks_the_user(topology, charons, pki, workdir, monkeypatch):
    """The token's PIN counter is low (one wrong login by another program):
    the always-on profile's PIN is not tried by itself (no C_Login), the
    engine asks through PIN_REQUIRED and says why; the PIN given by the
    user (`m2mvpn pin`) is tried once and connects."""
    binary = binary_or_skip()
    hsm = SoftHsm(workdir / "hsm", monkeypatch)
    token_enrol(binary, hsm, pki, workdir, rsa=False)
    hsm.tool("--login", "--pin", "000000", "--list-objects", check=False)
    assert "user PIN count low" in hsm.token_flags()
    topo = topology("direct")
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"]), name="gw")
    prof = token_profile(pki, topo, pin=PIN, mode="always-on", module=SPY)
    with hsm_client(topo.client, binary, workdir / "m2mvpn", prof) as client:
        wait_until("waiting for the PIN",
                   lambda: "waiting for the PIN" in client.log_path.read_text(), timeout_s=20)
        log = client.log_path.read_text()
        assert "PIN retry counter is low: the profile PIN was not tried" in log, client.log_tail()
        time.sleep(4)  # past the first back-off steps: still nothing tried
        assert hsm.logins() == [], hsm.logins()
        assert client.status()["state"] != "connected"
        client.pin(PIN)
        client.wait_for_state("connected", timeout_s=30)
        assert hsm.logins() == ["CKR_OK"], hsm.logins()
        assert PIN not in client.log_path.read_text()


PIN_APP = r'''
import json, sys, threading
import m2mvpn

events, done = [], threading.Event()

def on_event(client, ev):
    events.append({"type": m2mvpn.event_name(ev.type), "error": ev.error,
                   "error_name": m2mvpn.error_name(ev.error) if ev.error else "",
                   "detail": ev.detail, "state": m2mvpn.state_name(ev.state)})
    if ev.type == m2mvpn.EventType.PIN_REQUIRED:
        client.enter_pin(sys.argv[2])          # a control call from the callback
    if ev.type == m2mvpn.EventType.STATE_CHANGED and ev.state in (m2mvpn.State.CONNECTED, m2mvpn.State.IDLE):
        done.set()

with m2mvpn.Client(on_event=on_event) as c:
    c.load_profile_file(sys.argv[1])
    c.start()
    c.connect()
    finished = done.wait(30)
    st = c.status_snapshot()
    c.stop()
print(json.dumps({"finished": finished, "events": events, "credential": st.credential,
                  "cert_subject": st.cert_subject, "cert_not_after": st.cert_not_after}))
'''


def test_token_pin_required_event(topology, charons, pki, workdir, monkeypatch):
    """An application (Python binding) gets PIN_REQUIRED naming the token,
    answers with m2mvpn_enter_pin() and the tunnel comes up: one C_Login."""
    lib = os.environ.get("M2MVPN_LIB", "")
    if not lib or not Path(lib).is_file():
        pytest.fail("M2MVPN_LIB (the built libm2mvpn) is not set")
    binary = binary_or_skip()
    hsm = SoftHsm(workdir / "hsm", monkeypatch)
    token_enrol(binary, hsm, pki, workdir, rsa=False)
    topo = topology("direct")
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"]), name="gw")
    pf = workdir / "profile.json"
    pf.write_text(json.dumps(token_profile(pki, topo, pin=None, module=SPY)))
    app = workdir / "app.py"
    app.write_text(PIN_APP)
    binding = Path(__file__).resolve().parents[2] / "bindings" / "python"
    env = dict(os.environ, M2MVPN_LIB=lib, PYTHONPATH=str(binding), PYTHONDONTWRITEBYTECODE="1")
    proc = topo.client.popen(["/usr/bin/python3", str(app), str(pf), PIN], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert res["finished"], res
    pins = [e for e in res["events"] if e["type"] == "PIN_REQUIRED"]
    assert len(pins) == 1, res["events"]
    assert pins[0]["detail"] == 'PKCS#11 token "m2m", key "dev1"' and pins[0]["error_name"] == "PIN", pins
    assert res["events"][-1]["state"] == "connected", res["events"]
    assert res["credential"] == 'PKCS#11 token "m2m", key "dev1"', res
    assert pkimod.CLIENT_ID in res["cert_subject"] and res["cert_not_after"] > 0, res
    assert hsm.logins() == ["CKR_OK"], hsm.logins()
    assert PIN not in out


def test_token_removed_during_always_on(topology, charons, pki, workdir, monkeypatch):
    binary = binary_or_skip()
    hsm = SoftHsm(workdir / "hsm", monkeypatch)
    token_enrol(binary, hsm, pki, workdir, rsa=False)
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"]), name="gw")
    prof = token_profile(pki, topo, pin=PIN, mode="always-on", module=SOFTHSM)
    with hsm_client(topo.client, binary, workdir / "m2mvpn", prof) as client:
        client.wait_for_state("connected", timeout_s=30)
        hsm.remove()
        gw.terminate("ecdsa")   # the next AUTH needs the token
        st = wait_until("the missing token reported",
                        lambda: (s := client.status())["last_error"]["name"] == "IO" and s,
                        timeout_s=30)
        assert st["state"] in ("reconnecting", "connecting"), st
        assert "token" in st["last_error"]["detail"], st
        time.sleep(3)
        assert client.status()["state"] != "connected"
        hsm.reinsert()
        client.wait_for_state("connected", timeout_s=60)
        gw.wait_for_sa("ecdsa", "net", timeout_s=10)
        assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2


def export_probe(workdir: Path) -> Path:
    """p11_export_probe.c, compiled for this test."""
    exe = workdir / "p11_export_probe"
    cflags = run(["pkg-config", "--cflags", "p11-kit-1"]).stdout.split()
    run(["cc", "-o", str(exe), str(Path(__file__).with_name("p11_export_probe.c")), *cflags, "-ldl"])
    return exe


def test_token_key_cannot_be_exported(pki, workdir, monkeypatch):
    binary = binary_or_skip()
    hsm = SoftHsm(workdir / "hsm", monkeypatch)
    token_enrol(binary, hsm, pki, workdir, rsa=False)
    probe = export_probe(workdir)
    # Reading the private value (C_GetAttributeValue CKA_VALUE, logged in) is
    # refused: CKR_ATTRIBUTE_SENSITIVE (0x11); the key is sensitive, not extractable.
    got = run([str(probe), str(SOFTHSM), "m2m", PIN, "dev1"]).stdout.strip()
    assert got == "value_rv=0x11 value_len=-1 extractable=0 sensitive=1", got
    # The same probe does read a key that is allowed out (so the check above
    # can fail): one generated by the probe as neither sensitive nor
    # protected from extraction.
    got = run([str(probe), str(SOFTHSM), "m2m", PIN, "readable", "--make-readable"]).stdout.strip()
    assert got == "value_rv=0x0 value_len=32 extractable=1 sensitive=0", got


# -- swtpm -----------------------------------------------------------------------------

class Swtpm:
    """swtpm (TPM 2.0, socket TCTI) inside namespace ns, state in folder d."""

    def __init__(self, ns: netlab.Namespace, d: Path):
        need("swtpm", "tpm2_getcap", "tpm2_readpublic")
        self.ns = ns
        self.dir = d
        d.mkdir(parents=True)
        self.tcti = f"swtpm:host=127.0.0.1,port={TPM_PORT}"
        self.start()

    def start(self) -> None:
        """Start swtpm on the state folder (again after stop(): a TPM reset)."""
        self.proc = self.ns.popen(["swtpm", "socket", "--tpm2",
                                   "--server", f"type=tcp,port={TPM_PORT},bindaddr=127.0.0.1",
                                   "--ctrl", f"type=tcp,port={TPM_PORT + 1},bindaddr=127.0.0.1",
                                   "--tpmstate", f"dir={self.dir}", "--flags", "not-need-init,startup-clear"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.tool("tpm2_getcap", "properties-fixed", check=False).returncode != 0:
            assert self.proc.poll() is None, "swtpm exited"
            assert time.monotonic() < deadline, "swtpm not answering"
            time.sleep(0.1)

    def tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(self.ns.argv(*args, "-T", self.tcti), check=check)

    def lockout_counter(self) -> int:
        out = self.tool("tpm2_getcap", "properties-variable").stdout
        m = re.search(r"TPM2_PT_LOCKOUT_COUNTER:\s*(0x[0-9a-fA-F]+|\d+)", out)
        assert m, out
        return int(m.group(1), 0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def tpm_in(workdir):
    made: list[Swtpm] = []

    def start(ns: netlab.Namespace) -> Swtpm:
        t = Swtpm(ns, workdir / "tpm")
        made.append(t)
        return t

    yield start
    for t in made:
        t.stop()


def tpm_enrol(binary: Path, tpm: Swtpm, pki: pkimod.Pki, d: Path, *, rsa: bool,
              pin: str | None, handle: str | None = None) -> tuple[str, Path]:
    """keygen in the TPM (key file or persistent handle), certificate from the CSR."""
    csr = d / "dev1.csr"
    key = handle or str(d / "dev1.tss2.pem")
    args = [str(binary), "keygen", "--provider", "tpm", "--tcti", tpm.tcti,
            "--csr", str(csr), "--subject", SUBJECT]
    args += ["--handle", handle] if handle else ["--out", key]
    args += (["--rsa"] if rsa else []) + (["--pin-stdin"] if pin else [])
    run(tpm.ns.argv(*args), input=(pin + "\n") if pin else None)
    if not handle:
        assert Path(key).read_text().startswith("-----BEGIN TSS2 PRIVATE KEY-----")
    cert = pkimod.issue_from_csr(pki, csr, d / "dev1.pem", issuer="intermediate" if rsa else "root")
    return key, cert


def tpm_profile(pki, topo, tpm: Swtpm, key: str, cert: Path, *, pin: str | None,
                mode: str = "manual") -> dict:
    prof = m2mvpn_client.make_profile(pki, "ecdsa", topo.gw_addr, mode=mode)
    c = {"source": "tpm", "tpm_key": key, "file": str(cert), "tpm_tcti": tpm.tcti}
    if pin is not None:
        c["pin"] = pin
    prof["auth"] = {"method": "cert", "cert": c}
    return prof


@pytest.mark.parametrize("rsa,handle,pin", [
    pytest.param(False, None, None, id="ecdsa-p256-keyfile-emptyauth"),
    pytest.param(True, "0x81000010", TPM_PIN, id="rsa2048-handle-authvalue"),
    pytest.param(False, None, TPM_PIN, id="ecdsa-p256-keyfile-authvalue"),
])
def test_tpm_connects_and_carries_traffic(topology, charons, pki, workdir, tpm_in, rsa, handle, pin):
    binary = binary_or_skip()
    topo = topology("direct")
    tpm = tpm_in(topo.client)
    key, cert = tpm_enrol(binary, tpm, pki, workdir, rsa=rsa, pin=pin, handle=handle)
    conn = "rsa" if rsa else "ecdsa"
    all_schemes_sign(topo.client.argv(str(cred_probe()), "tpm", key, str(cert), tpm.tcti,
                                      *([pin] if pin else [])), rsa)
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=[conn]), name="gw")
    prof = tpm_profile(pki, topo, tpm, key, cert, pin=pin)
    with hsm_client(topo.client, binary, workdir / "m2mvpn", prof) as client:
        client.connect()
        st = client.wait_for_state("connected", timeout_s=30)
        assert gw.wait_for_sa(conn, "net", timeout_s=10)["remote-id"] == pkimod.CLIENT_ID
        gateway_saw_signature(gw, "RSA_EMSA_PKCS1_SHA2_256" if rsa else "ECDSA_WITH_SHA256_DER")
        ping_counted_by_gateway(topo, gw, conn)
        cred = st["credential"]
        assert cred["source"] == "tpm" and f"TPM key {key}" in cred["holder"], st
        assert pkimod.CLIENT_ID in cred["subject"] and cred["not_after"] > time.time(), st
        if pin:
            assert pin not in client.cli("status", "--json").stdout
            assert pin not in client.log_path.read_text()
    assert tpm.lockout_counter() == 0


def test_tpm_gone_during_always_on(topology, charons, pki, workdir, tpm_in):
    """The TPM stops answering (swtpm stopped) while an always-on tunnel is
    up: the next attempt reports it, and once the TPM is back (restarted:
    a TPM reset, the key file loads again) the tunnel comes back."""
    binary = binary_or_skip()
    topo = topology("direct")
    tpm = tpm_in(topo.client)
    key, cert = tpm_enrol(binary, tpm, pki, workdir, rsa=False, pin=TPM_PIN)
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"]), name="gw")
    prof = tpm_profile(pki, topo, tpm, key, cert, pin=TPM_PIN, mode="always-on")
    with hsm_client(topo.client, binary, workdir / "m2mvpn", prof) as client:
        client.wait_for_state("connected", timeout_s=30)
        # An orderly shutdown: a TPM that loses power without one counts a
        # dictionary-attack failure by itself (the key was used), which
        # would hide what this test checks at the end.
        tpm.tool("tpm2_shutdown")
        tpm.stop()
        gw.terminate("ecdsa")
        st = wait_until("the missing TPM reported",
                        lambda: (s := client.status())["last_error"]["name"] == "IO" and s,
                        timeout_s=30)
        assert "TPM not reachable" in st["last_error"]["detail"], st
        assert st["state"] in ("reconnecting", "connecting"), st
        tpm.start()
        client.wait_for_state("connected", timeout_s=60)
        assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2
    assert tpm.lockout_counter() == 0


def test_tpm_wrong_pin_is_tried_once(topology, charons, pki, workdir, tpm_in):
    binary = binary_or_skip()
    topo = topology("direct")
    tpm = tpm_in(topo.client)
    key, cert = tpm_enrol(binary, tpm, pki, workdir, rsa=False, pin=TPM_PIN)
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"]), name="gw")
    assert tpm.lockout_counter() == 0
    prof = tpm_profile(pki, topo, tpm, key, cert, pin="not-the-pin", mode="always-on")
    with hsm_client(topo.client, binary, workdir / "m2mvpn", prof) as client:
        st = wait_until("the wrong PIN reported",
                        lambda: (s := client.status())["last_error"]["name"] == "PIN" and s,
                        timeout_s=20)
        assert st["state"] == "idle" and "wrong PIN for TPM key" in st["last_error"]["detail"], st
        time.sleep(5)
        assert client.status()["state"] == "idle"
    assert tpm.lockout_counter() == 1

    # Through `m2mvpn pin`: a wrong one counts once more, the right one connects.
    prof = tpm_profile(pki, topo, tpm, key, cert, pin=None)
    with hsm_client(topo.client, binary, workdir / "m2mvpn2", prof) as client:
        client.connect()
        wait_until("waiting for the PIN",
                   lambda: "waiting for the PIN" in client.log_path.read_text(), timeout_s=20)
        assert tpm.lockout_counter() == 1
        client.pin("wrong-again")
        wait_until("wrong PIN reported",
                   lambda: client.status()["last_error"]["name"] == "PIN", timeout_s=20)
        assert tpm.lockout_counter() == 2
        client.connect()
        wait_until("asked for the PIN again",
                   lambda: client.log_path.read_text().count("waiting for the PIN") >= 2, timeout_s=20)
        client.pin(TPM_PIN)
        client.wait_for_state("connected", timeout_s=30)
    assert tpm.lockout_counter() == 2


def test_tpm_lockout_is_waited_out(topology, charons, pki, workdir, tpm_in):
    """Another program puts the TPM in dictionary-attack lockout (wrong
    authValues on its own key until maxTries): the always-on engine presents
    no authValue while the TPM is locked (the failure counter does not move),
    reports the lockout as a retryable error (not a wrong PIN) and connects by
    itself once the lockout is cleared."""
    binary = binary_or_skip()
    topo = topology("direct")
    tpm = tpm_in(topo.client)
    key, cert = tpm_enrol(binary, tpm, pki, workdir, rsa=False, pin=TPM_PIN)
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"]), name="gw")
    # Another object with an authValue, and wrong authValues for it.
    other = workdir / "other"
    other.mkdir()
    tpm.tool("tpm2_dictionarylockout", "--setup-parameters", "--max-tries=2",
             "--recovery-time=3600", "--lockout-recovery-time=0")
    # swtpm without a resource manager: each tool's transient objects stay
    # loaded unless flushed.
    flush = ("tpm2_flushcontext", "--transient-object")
    tpm.tool("tpm2_createprimary", "-C", "o", "-c", str(other / "primary.ctx"))
    tpm.tool(*flush)
    tpm.tool("tpm2_create", "-C", str(other / "primary.ctx"), "-G", "ecc", "-p", "other-secret",
             "-u", str(other / "key.pub"), "-r", str(other / "key.priv"))
    tpm.tool("tpm2_load", "-C", str(other / "primary.ctx"), "-u", str(other / "key.pub"),
             "-r", str(other / "key.priv"), "-c", str(other / "key.ctx"))
    tpm.tool(*flush)
    digest = other / "data"
    digest.write_bytes(b"x" * 32)
    for _ in range(2):
        r = tpm.tool("tpm2_sign", "-c", str(other / "key.ctx"), "-p", "wrong", "-g", "sha256",
                     "-o", str(other / "sig"), str(digest), check=False)
        assert r.returncode != 0
        tpm.tool(*flush)
    assert tpm.lockout_counter() == 2
    r = tpm.tool("tpm2_sign", "-c", str(other / "key.ctx"), "-p", "other-secret", "-g", "sha256",
                 "-o", str(other / "sig"), str(digest), check=False)
    assert r.returncode != 0 and "lockout" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    tpm.tool(*flush)
    prof = tpm_profile(pki, topo, tpm, key, cert, pin=TPM_PIN, mode="always-on")
    with hsm_client(topo.client, binary, workdir / "m2mvpn", prof) as client:
        st = wait_until("the lockout reported",
                        lambda: (s := client.status())["last_error"]["name"] == "IO"
                        and "lockout" in s["last_error"]["detail"] and s, timeout_s=20)
        assert st["state"] == "reconnecting", st
        time.sleep(4)  # several attempts (1 s, 2 s back-off): none presents the PIN
        st = client.status()
        assert st["state"] in ("reconnecting", "connecting"), st
        assert tpm.lockout_counter() == 2
        assert "wrong PIN" not in client.log_path.read_text()
        tpm.tool("tpm2_dictionarylockout", "--clear-lockout")
        client.wait_for_state("connected", timeout_s=60)
        assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2
    assert tpm.lockout_counter() == 0


def test_tpm_key_cannot_leave(topology, pki, workdir, tpm_in):
    binary = binary_or_skip()
    topo = topology("direct")
    tpm = tpm_in(topo.client)
    handle = "0x81000011"
    tpm_enrol(binary, tpm, pki, workdir, rsa=False, pin=None, handle=handle)
    pub = tpm.tool("tpm2_readpublic", "-c", handle).stdout
    text = pub.lower()
    assert "fixedtpm" in text and "fixedparent" in text and "sensitivedataorigin" in text, pub
    assert "encryptedduplication" not in text, pub
    # TPM2_Duplicate is refused: the key is fixedParent and has no policy
    # that could authorize the duplication role.
    dup = run(tpm.ns.argv("tpm2_duplicate", "-T", tpm.tcti, "-C", "null", "-c", handle,
                          "-G", "null", "-r", str(workdir / "dup.priv"), "-s", str(workdir / "dup.seed"),
                          "-p", ""), check=False)
    assert dup.returncode != 0, dup
    assert "authPolicy" not in pub or re.search(r"authorization policy:\s*$", pub, re.M), pub
    # The attribute check above can fail: a key made without fixedTPM and
    # fixedParent shows neither. (Without a resource manager the tools leave
    # transient objects loaded: flushed after each.)
    run(tpm.ns.argv("tpm2_createprimary", "-T", tpm.tcti, "-C", "o", "-c", str(workdir / "p.ctx")))
    tpm.tool("tpm2_flushcontext", "-t")
    run(tpm.ns.argv("tpm2_create", "-T", tpm.tcti, "-C", str(workdir / "p.ctx"), "-G", "ecc",
                    "-a", "sign|userwithauth|sensitivedataorigin",
                    "-u", str(workdir / "d.pub"), "-r", str(workdir / "d.priv")))
    tpm.tool("tpm2_flushcontext", "-t")
    run(tpm.ns.argv("tpm2_load", "-T", tpm.tcti, "-C", str(workdir / "p.ctx"), "-u", str(workdir / "d.pub"),
                    "-r", str(workdir / "d.priv"), "-c", str(workdir / "d.ctx")))
    other = tpm.tool("tpm2_readpublic", "-c", str(workdir / "d.ctx")).stdout.lower()
    assert "sign" in other and "fixedtpm" not in other and "fixedparent" not in other, other


def test_tpm_key_files_are_those_of_tpm2_openssl(topology, pki, workdir, tpm_in):
    """The TSS2 key file format is the one of tpm2-openssl (and
    tpm2-tss-engine): their OpenSSL provider signs with a key file our keygen
    wrote (same public key, same storage primary key), and our provider signs
    with one their genpkey wrote (it encodes emptyAuth TRUE as BER 0x01)."""
    binary = binary_or_skip()
    if not Path("/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so").exists():
        pytest.fail("tpm2-openssl (the OpenSSL tpm2 provider) is not installed")
    topo = topology("direct")
    tpm = tpm_in(topo.client)
    key, _ = tpm_enrol(binary, tpm, pki, workdir, rsa=False, pin=None)

    def openssl(*args: str) -> str:
        return run(topo.client.argv("env", f"TPM2OPENSSL_TCTI={tpm.tcti}", "openssl", *args)).stdout

    theirs_csr = workdir / "theirs-of-ours.csr"
    openssl("req", "-new", "-provider", "tpm2", "-provider", "default", "-key", key,
            "-subj", "/CN=compat", "-out", str(theirs_csr))
    run(["openssl", "req", "-in", str(theirs_csr), "-verify", "-noout"])
    pub = lambda csr: run(["openssl", "req", "-in", str(csr), "-pubkey", "-noout"]).stdout  # noqa: E731
    assert pub(theirs_csr) == pub(workdir / "dev1.csr")

    their_key = workdir / "their.tss2.pem"
    their_csr = workdir / "their.csr"
    openssl("genpkey", "-provider", "tpm2", "-provider", "default", "-algorithm", "EC",
            "-pkeyopt", "group:P-256", "-out", str(their_key))
    openssl("req", "-new", "-provider", "tpm2", "-provider", "default", "-key", str(their_key),
            "-subj", SUBJECT, "-out", str(their_csr))
    cert = pkimod.issue_from_csr(pki, their_csr, workdir / "their.pem")
    all_schemes_sign(topo.client.argv(str(cred_probe()), "tpm", str(their_key), str(cert), tpm.tcti), False)


def test_keygen_never_replaces_a_key(topology, pki, workdir, monkeypatch, tpm_in):
    """A second keygen for the same token label, key file or TPM handle fails
    with a clear line and leaves the first key as it was."""
    binary = binary_or_skip()
    hsm = SoftHsm(workdir / "hsm", monkeypatch)
    token_enrol(binary, hsm, pki, workdir, rsa=False)
    (workdir / "dev1.csr").unlink()
    again = run([str(binary), "keygen", "--provider", "pkcs11", "--module", str(SOFTHSM),
                 "--uri", "pkcs11:token=m2m;object=dev1", "--pin-stdin", "--csr", str(workdir / "x.csr"),
                 "--subject", SUBJECT], input=PIN + "\n", check=False)
    assert again.returncode == 1, again
    assert 'already holds a private key labelled "dev1"' in again.stderr, again.stderr
    keys = hsm.tool("--login", "--pin", PIN, "--list-objects", "--type", "privkey").stdout
    assert keys.count("Private Key Object") == 1, keys
    assert not (workdir / "x.csr").exists()

    topo = topology("direct")
    tpm = tpm_in(topo.client)
    tdir = workdir / "tpmkeys"
    tdir.mkdir()
    key, _ = tpm_enrol(binary, tpm, pki, tdir, rsa=False, pin=None)
    before = Path(key).read_bytes()
    for extra in (["--out", key], ["--handle", "0x81000020"], ["--handle", "0x81000020"]):
        got = run(topo.client.argv(str(binary), "keygen", "--provider", "tpm", "--tcti", tpm.tcti,
                                   "--csr", str(tdir / f"y{len(extra)}.csr"), "--subject", SUBJECT, *extra),
                  check=False)
        if extra[0] == "--handle" and not (tdir / "made").exists():
            assert got.returncode == 0, got   # the first time the handle is free
            (tdir / "made").write_text("")
            (tdir / f"y{len(extra)}.csr").unlink()
            continue
        assert got.returncode == 1, got
        assert ("exists: not replaced" if extra[0] == "--out" else "handle taken") in got.stderr, got.stderr
    assert Path(key).read_bytes() == before
    got = run([str(binary), "keygen", "--provider", "file", "--out", key, "--csr", str(tdir / "z.csr"),
               "--subject", SUBJECT], check=False)
    assert got.returncode == 1 and "exists: not replaced" in got.stderr, got
    assert Path(key).read_bytes() == before


# -- the libraries are loaded when a TPM or token is used, not linked --------

def test_psk_client_loads_no_tpm_or_token_library(tmp_path):
    """tpm2-tss and libp11 are not linked: a client without a TPM or token
    profile runs without them, and a TPM or token profile on a device that
    lacks them gets an error naming the missing library (here hidden by an
    empty file bound over it, in a mount namespace of the test's own)."""
    binary = binary_or_skip()
    needed = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    assert "libtss2" not in needed and "libp11" not in needed, needed
    hide = [os.path.realpath(f"/usr/lib/{d}/{n}") for d in os.listdir("/usr/lib")
            for n in ("libtss2-esys.so.0", "libp11.so.3") if os.path.exists(f"/usr/lib/{d}/{n}")]
    if len(hide) < 2:
        pytest.skip("libtss2-esys.so.0 or libp11.so.3 not installed")
    mounts = "; ".join(f"mount --bind /dev/null {p}" for p in hide)
    tpm = subprocess.run(
        ["unshare", "-m", "sh", "-c", f'{mounts}; exec "$0" keygen --provider tpm --tcti swtpm:port=1 '
         f'--out {tmp_path}/k.tss2.pem --csr {tmp_path}/k.csr --subject /CN=x', str(binary)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert tpm.returncode != 0
    assert "TPM support needs libtss2-esys.so.0" in tpm.stderr, tpm.stderr
    token = subprocess.run(
        ["unshare", "-m", "sh", "-c", f'{mounts}; exec "$0" pkcs11 {SOFTHSM} "pkcs11:token=x" 1234',
         str(cred_probe())], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert token.returncode != 0
    assert "PKCS#11 support needs libp11.so.3" in token.stdout + token.stderr, token.stdout + token.stderr
    # a TPM key opened (a TPM profile's credential): the same error, no crash in the clean-up
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / "k.key.pem"), "-out", str(tmp_path / "k.crt.pem"), "-subj", "/CN=x",
                    "-days", "1"], check=True, capture_output=True)
    key = subprocess.run(
        ["unshare", "-m", "sh", "-c", f'{mounts}; exec "$0" tpm {tmp_path}/k.tss2.pem {tmp_path}/k.crt.pem '
         'swtpm:port=1', str(cred_probe())], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert key.returncode > 0, (key.returncode, key.stdout + key.stderr)
    assert "TPM support needs libtss2-esys.so.0" in key.stdout + key.stderr, key.stdout + key.stderr
