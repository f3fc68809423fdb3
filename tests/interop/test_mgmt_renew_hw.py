# SPDX-License-Identifier: Apache-2.0
"""Certificate renewal (issue 15) with the device key in hardware: a SoftHSM2
token (PKCS#11) and a swtpm TPM, end to end with m2mvpn-mgmtd issuing short
certificates and the strongSwan gateway trusting the device CA (the lab of
test_mgmt_renew.py). The device renews at about 2/3 of the lifetime with a
CMP KUR signed inside the token / TPM, moves the tunnel to the new
certificate (make-before-break reauthentication, pings pass, none lost) and
the gateway accepts it.

PKCS#11: the renewal makes a new key pair on the token (a different public
key in the new certificate), the tunnel moves to it, and the old pair and
certificate are deleted from the token afterwards. TPM: the renewal makes a
new key in the TPM as well (a different public key in the new certificate,
the key blob device.tss2.pem replaced, no transient object of ours left in
the TPM); a new key blob that does not hold the renewed certificate's key
(tampered while the engine was down) is never switched to.
"""

from __future__ import annotations

import calendar
import os
import re
import subprocess
import time

import pytest

import netlab
from test_mgmt_dayn_device import enrolled_device, mgmt_of, wait_until
from test_mgmt_renew import renew_lab, lab  # noqa: F401  (the fixtures)
from test_mgmt_renew import block_mgmt, killed_in_renewal

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "1234"
FLOOD_S = 20        # from 3 s before the renewal's earliest time: the renewal and its reauthentication


def pubkey_of(pem: str) -> bytes:
    return subprocess.run(["openssl", "x509", "-pubkey", "-noout"], input=pem.encode(), check=True,
                          capture_output=True).stdout


def not_before_after(pem: str) -> tuple[int, int]:
    out = subprocess.run(["openssl", "x509", "-noout", "-startdate", "-enddate", "-dateopt", "iso_8601"],
                         input=pem.encode(), check=True, capture_output=True, text=False).stdout.decode()
    nb = re.search(r"notBefore=(\S+ \S+)", out).group(1)
    na = re.search(r"notAfter=(\S+ \S+)", out).group(1)
    return tuple(calendar.timegm(time.strptime(v, "%Y-%m-%d %H:%M:%SZ")) for v in (nb, na))


def renew_once(lab, c):
    """Connected, then a ping flood across one renewal: returns (old cert PEM,
    new cert PEM, the CERT_RENEWED detail). The flood (FLOOD_S) starts 3 s
    before the earliest renewal time (11/18 of the lifetime)."""
    wait_until("connected", lambda: c.status()["state"] == "connected" and mgmt_of(c).get("cert_not_after"),
               timeout_s=90, tail=c.log_tail)
    lab.gw.wait_for_sa("ecdsa", "net")
    assert netlab.ping(lab.topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2
    old_pem = (c.state_dir / "device.crt.pem").read_text()
    first = mgmt_of(c)["cert_not_after"]
    nb, na = not_before_after(old_pem)
    start = nb + (na - nb) * 11 // 18 - 3
    while time.time() < start:
        assert c.status()["state"] == "connected", c.log_tail()
        time.sleep(0.5)
    assert "certificate renewed" not in c.log_path.read_text(errors="replace"), c.log_tail()
    flood = netlab.PingFlood(lab.topo.client, netlab.PROTECTED_ADDRS[0], duration_s=FLOOD_S)
    deadline = time.monotonic() + FLOOD_S
    while time.monotonic() < deadline:
        assert c.status()["state"] == "connected", c.log_tail()
        time.sleep(0.5)
    res = flood.result()
    log = c.log_path.read_text(errors="replace")
    renewed = re.findall(r"event CERT_RENEWED: certificate renewed: serial [0-9A-F]+, not_after (\d+) \(([a-z ]+)\)",
                         log)
    assert renewed, c.log_tail()
    assert int(renewed[0][0]) > first, (renewed, first)
    # the tunnel moved to the renewed certificate (reauthenticated, the gateway accepted it)
    assert "[conn] IKE SA reauthenticated: " in log, c.log_tail()
    wait_until("the tunnel on the renewed certificate",
               lambda: c.status()["credential"]["not_after"] == mgmt_of(c)["cert_not_after"] != first,
               timeout_s=30, tail=c.log_tail)
    assert netlab.ping(lab.topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2
    assert res["sent"] > FLOOD_S * 50 and res["lost"] == 0, res
    new_pem = (c.state_dir / "device.crt.pem").read_text()
    assert new_pem != old_pem
    assert not [p.name for p in c.state_dir.iterdir() if p.name.endswith(".next")]
    return old_pem, new_pem, renewed[0][1]


def test_renewal_key_on_a_pkcs11_token(renew_lab, workdir):
    lab = renew_lab
    tokens = workdir / "tokens"
    tokens.mkdir()
    conf = workdir / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    env = {"SOFTHSM2_CONF": str(conf)}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "m2m", "--pin", PIN, "--so-pin", "0000"],
                   check=True, capture_output=True, env=dict(os.environ, **env))
    boot = enrolled_device(lab)
    # no key yet: the device makes it on the token at enrolment
    boot["management"]["key"] = {"provider": "pkcs11", "pkcs11_module": SOFTHSM,
                                 "pkcs11_uri": "pkcs11:token=m2m;object=dev", "pin": PIN}
    p11 = ["pkcs11-tool", "--module", SOFTHSM, "--token-label", "m2m", "--login", "--pin", PIN, "--list-objects"]

    def objects():
        return subprocess.run(p11, capture_output=True, text=True, check=True, env=dict(os.environ, **env)).stdout

    with lab.client(boot, env=env) as c:
        wait_until("connected", lambda: c.status()["state"] == "connected", timeout_s=90, tail=c.log_tail)
        before = objects()
        assert before.count("Private Key Object") == 1, before
        old_id = re.search(r"Private Key Object.*?\n\s+ID:\s+(\S+)", before, re.S).group(1)
        old_pem, new_pem, detail = renew_once(lab, c)
        assert detail == "new key"
        assert pubkey_of(new_pem) != pubkey_of(old_pem)
        # the old key pair and certificate leave the token once the tunnel runs on the new one
        after = wait_until("the old key deleted from the token",
                           lambda: (o := objects()).count("Private Key Object") == 1 and old_id not in o and o,
                           timeout_s=60, tail=c.log_tail)
        assert "dev.old" not in after and "dev.next" not in after, after
        # what is left: the new pair and its certificate, labelled as the bootstrap's URI says
        assert after.count("label:      dev\n") == 3, after
        assert "the replaced key \"dev.old\" deleted from the token" in c.log_path.read_text()
        assert not (c.state_dir / "device.p11id.next").exists()
        # still up on the new key
        assert netlab.ping(lab.topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2
        assert c.status()["credential"]["not_after"] == mgmt_of(c)["cert_not_after"]


def transient_handles(tpm) -> list[str]:
    out = tpm.tool("tpm2_getcap", "handles-transient").stdout
    return re.findall(r"0x8[0-9a-fA-F]{7}", out)


def test_renewal_key_in_a_tpm(renew_lab, workdir):
    """The device key in a TPM (swtpm: three object slots): the renewal makes
    a new key in it, the KUR signed with the current key carries the new one,
    the tunnel moves to it with no ping lost, the old key blob is gone, and
    no transient object is left behind by management (the tunnel's key is the
    only one loaded while connected, none after the stop)."""
    from test_hwcred import Swtpm
    lab = renew_lab
    tpm = Swtpm(lab.topo.client, workdir / "tpm")
    try:
        boot = enrolled_device(lab)
        # no key yet: the device makes it in the TPM (device.tss2.pem in its state directory)
        boot["management"]["key"] = {"provider": "tpm", "tpm_tcti": tpm.tcti}
        with lab.client(boot) as c:
            wait_until("connected", lambda: c.status()["state"] == "connected", timeout_s=90, tail=c.log_tail)
            blob = (c.state_dir / "device.tss2.pem").read_text()
            assert blob.startswith("-----BEGIN TSS2 PRIVATE KEY-----\n")
            old_pem, new_pem, detail = renew_once(lab, c)
            new_blob = (c.state_dir / "device.tss2.pem").read_text()
            assert new_blob.startswith("-----BEGIN TSS2 PRIVATE KEY-----\n") and new_blob != blob
            # the old key blob gone: the one key file is the new one
            assert [p.name for p in c.state_dir.iterdir() if ".tss2" in p.name] == ["device.tss2.pem"]
            # after a poll or two: only the tunnel's key loaded in the TPM
            time.sleep(5)
            assert len(transient_handles(tpm)) == 1, transient_handles(tpm)
        assert transient_handles(tpm) == []
        assert detail == "new key"
        assert pubkey_of(new_pem) != pubkey_of(old_pem)
    finally:
        tpm.stop()


@pytest.mark.parametrize("step,tamper", [("issued", False), ("written", False), ("written", True)],
                         ids=["before-cert", "after-cert", "after-cert-tampered"])
def test_renewal_tpm_killed_in_swap(lab, workdir, step, tamper):  # noqa: F811
    """SIGKILL in a TPM key renewal. Before the certificate reached the disk
    (device.tss2.pem.next alone): the next start removes it and keeps the
    old pair. After (device.crt.pem.next too): the next start finishes the
    swap and connects with the new key. After, with the new key blob replaced
    by another (here the current key's blob) while the engine was down: the
    next start does not switch to it (it does not hold the certificate's
    key); the old key and certificate stay in use. Certificates of days (an
    operator's renewal); the management server out of reach at the restart,
    so no other renewal hides what the recovery did."""
    from test_hwcred import Swtpm
    tpm = Swtpm(lab.topo.client, workdir / "tpm")
    try:
        boot = enrolled_device(lab)
        boot["management"]["key"] = {"provider": "tpm", "tpm_tcti": tpm.tcti}
        c, _, _ = killed_in_renewal(lab, boot, step)
        st = c.state_dir
        key, key_next = st / "device.tss2.pem", st / "device.tss2.pem.next"
        crt, crt_next = st / "device.crt.pem", st / "device.crt.pem.next"
        assert key_next.exists() and crt_next.exists() == (step == "written"), sorted(p.name for p in st.iterdir())
        old_key, old_crt, new_key = key.read_text(), crt.read_text(), key_next.read_text()
        new_crt = crt_next.read_text() if step == "written" else None
        assert new_key != old_key
        if tamper:
            key_next.write_text(old_key)  # another key's blob, a valid TSS2 file
        block_mgmt(lab)
        with lab.client(boot) as c:
            wait_until("connected", lambda: c.status()["state"] == "connected", timeout_s=90, tail=c.log_tail)
            log = c.log_path.read_text(errors="replace")
            assert not key_next.exists() and not crt_next.exists()
            if step == "written" and not tamper:
                assert "an interrupted certificate renewal finished" in log, c.log_tail()
                assert key.read_text() == new_key and crt.read_text() == new_crt
                assert pubkey_of(new_crt) != pubkey_of(old_crt)
            else:
                if tamper:
                    assert "does not hold the public key of" in log, c.log_tail()
                assert key.read_text() == old_key and crt.read_text() == old_crt
            # the tunnel authenticated with the key in place (the engine checks it fits the certificate)
            assert c.status()["credential"]["not_after"] == mgmt_of(c)["cert_not_after"]
            assert netlab.ping(lab.topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2
    finally:
        tpm.stop()


def softhsm_token(workdir, name="tokens"):
    """A SoftHSM2 token "m2m" in workdir: (env for it, env for the same token
    whose module refuses to generate key pairs: slots.mechanisms without
    CKM_EC_KEY_PAIR_GEN and CKM_RSA_PKCS_KEY_PAIR_GEN, as on tokens that
    only hold keys made elsewhere)."""
    tokens = workdir / name
    tokens.mkdir()
    conf, nogen = workdir / "softhsm2.conf", workdir / "softhsm2-nogen.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    nogen.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                     # SoftHSM 2.6.1 skips the first name after "-": given twice
                     "slots.mechanisms = -CKM_EC_KEY_PAIR_GEN,CKM_EC_KEY_PAIR_GEN,CKM_RSA_PKCS_KEY_PAIR_GEN\n")
    env = {"SOFTHSM2_CONF": str(conf)}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "m2m", "--pin", PIN, "--so-pin", "0000"],
                   check=True, capture_output=True, env=dict(os.environ, **env))
    return env, {"SOFTHSM2_CONF": str(nogen)}


def token_objects(env, typ=None):
    """pkcs11-tool's listing of the token's objects (all, or of --type typ)."""
    cmd = ["pkcs11-tool", "--module", SOFTHSM, "--token-label", "m2m", "--login", "--pin", PIN, "--list-objects"]
    if typ:
        cmd += ["--type", typ]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ, **env)).stdout


def token_certs(env, label):
    """The DER certificates on the token labelled `label`, as PEM text."""
    out = []
    for cid in re.findall(r"Certificate Object.*?label:\s+(\S+)\n.*?ID:\s+(\S+)", token_objects(env, "cert"), re.S):
        if cid[0] != label:
            continue
        der = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "m2m", "--login", "--pin", PIN,
                              "--read-object", "--type", "cert", "--id", cid[1]], capture_output=True, check=True,
                             env=dict(os.environ, **env)).stdout
        out.append(subprocess.run(["openssl", "x509", "-inform", "DER"], input=der, capture_output=True,
                                  check=True).stdout.decode())
    return out


def test_renewal_same_key_when_the_token_cannot_generate(lab, workdir):
    """A token whose module refuses key generation (CKR_MECHANISM_INVALID):
    an operator's renewal renews the same key, and the renewed certificate
    replaces the old one on the token (one certificate object with the
    key's label, the new one), so the tunnel authenticates with it."""
    from test_mgmt_renew import cert_renew
    from test_mgmt_dayn_device import connected_with, pings, recorded_feedback
    env, nogen = softhsm_token(workdir)
    boot = enrolled_device(lab)
    boot["management"]["key"] = {"provider": "pkcs11", "pkcs11_module": SOFTHSM,
                                 "pkcs11_uri": "pkcs11:token=m2m;object=dev", "pin": PIN}
    with lab.client(boot, env=env) as c:   # enrolment: the key made on the token
        wait_until("connected on profile 1", lambda: connected_with(c, 1), timeout_s=90, tail=c.log_tail)
    with lab.client(boot, env=nogen) as c:
        wait_until("connected on profile 1", lambda: connected_with(c, 1), timeout_s=90, tail=c.log_tail)
        old_pem = (c.state_dir / "device.crt.pem").read_text()
        assert token_certs(nogen, "dev") == [old_pem]
        first = c.status()["credential"]["not_after"]
        dep = cert_renew(lab)
        fb = wait_until("the renewal's feedback recorded", lambda: (x := recorded_feedback(lab, dep))[0] in
                        ("success", "failure") and x, timeout_s=60, tail=c.log_tail)
        assert fb[0] == "success" and fb[1].endswith("(same key)"), fb
        log = c.log_path.read_text()
        assert "the same key was renewed: token \"m2m\" does not offer ECC P-256 key generation " \
            "(mechanism not listed)" in log, c.log_tail()
        new_pem = (c.state_dir / "device.crt.pem").read_text()
        assert new_pem != old_pem and pubkey_of(new_pem) == pubkey_of(old_pem)
        # one certificate labelled as the key: the renewed one
        assert token_certs(nogen, "dev") == [new_pem]
        objs = token_objects(nogen)
        assert objs.count("Certificate Object") == 1 and objs.count("Private Key Object") == 1, objs
        assert "dev.next" not in objs and "dev.old" not in objs, objs
        # the tunnel moved to it (reauthenticated with the token's certificate)
        na = mgmt_of(c)["cert_not_after"]
        assert na > first
        wait_until("the tunnel on the renewed certificate", lambda: c.status()["credential"]["not_after"] == na,
                   timeout_s=60, tail=c.log_tail)
        wait_until("connected", lambda: connected_with(c, 1), timeout_s=60, tail=c.log_tail)
        assert pings(lab.topo) == 3


# The steps of a PKCS#11 new-key renewal the engine can be killed after
# (M2MVPN_TEST_RENEW_PAUSE), and whether the certificate was on disk by then
# (device.crt.pem.next: the restart finishes that renewal, no second one).
P11_STEPS = [("p11-generated", False), ("issued", False), ("p11-relabelled", True), ("written", True),
             ("p11-intent-dropped", True), ("p11-swapped", True)]


def token_consistent(env, state_dir):
    """The token holds one key pair and one certificate, all labelled "dev",
    the certificate being device.crt.pem and for that key; no .next/.old
    object, no intent file, no .next file. Returns the certificate or None."""
    objs = token_objects(env)
    if (objs.count("Private Key Object"), objs.count("Public Key Object"), objs.count("Certificate Object"),
            objs.count("label:      dev\n")) != (1, 1, 1, 3):
        return None
    crt = (state_dir / "device.crt.pem").read_text()
    if token_certs(env, "dev") != [crt]:
        return None
    pub = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "m2m", "--login", "--pin", PIN,
                          "--read-object", "--type", "pubkey", "--label", "dev"], capture_output=True, check=True,
                         env=dict(os.environ, **env)).stdout
    pub_pem = subprocess.run(["openssl", "pkey", "-pubin", "-inform", "DER"], input=pub, capture_output=True,
                             check=True).stdout
    if pub_pem != pubkey_of(crt):
        return None
    if [p.name for p in state_dir.iterdir() if p.name.endswith(".next")]:
        return None
    return crt


def test_pkcs11_renewal_killed_at_each_step(lab, workdir):
    """SIGKILL of the engine after each step of a new-key renewal on a
    SoftHSM2 token, then a start without the hook: the device ends on one
    consistent key pair + certificate (the token's and device.crt.pem), the
    deployment reported once as a success, the tunnel up on it, nothing
    stray left on the token."""
    import signal
    from test_mgmt_renew import cert_renew, issued_certs
    from test_mgmt_dayn_device import connected_with, pings, recorded_feedback
    env, _ = softhsm_token(workdir)
    boot = enrolled_device(lab)
    boot["management"]["key"] = {"provider": "pkcs11", "pkcs11_module": SOFTHSM,
                                 "pkcs11_uri": "pkcs11:token=m2m;object=dev", "pin": PIN}
    with lab.client(boot, env=env) as c:   # enrolment: the key made on the token
        wait_until("connected on profile 1", lambda: connected_with(c, 1), timeout_s=90, tail=c.log_tail)
        dev_id = mgmt_of(c)["device_id"]
        assert token_consistent(env, c.state_dir)
    for step, cert_on_disk in P11_STEPS:
        with lab.client(boot, env=dict(env, M2MVPN_TEST_RENEW_PAUSE=step)) as c:
            wait_until("connected on profile 1", lambda: connected_with(c, 1), timeout_s=90, tail=c.log_tail)
            old = (c.state_dir / "device.crt.pem").read_text()
            dep = cert_renew(lab)
            wait_until(f"paused after {step}", lambda: f"paused after renewal step {step}" in
                       c.log_path.read_text(), timeout_s=60, tail=c.log_tail)
            c.proc.send_signal(signal.SIGKILL)
            c.proc.wait(10)
        c.control.unlink(missing_ok=True)  # left by the killed engine
        issued = issued_certs(lab, dev_id)
        with lab.client(boot, env=env) as c:
            wait_until(f"{step}: connected on profile 1", lambda: connected_with(c, 1), timeout_s=90,
                       tail=c.log_tail)
            fb = wait_until(f"{step}: the deployment's feedback", lambda: (x := recorded_feedback(lab, dep))[0] in
                            ("success", "failure") and x, timeout_s=60, tail=c.log_tail)
            assert fb[0] == "success", (step, fb)
            crt = wait_until(f"{step}: one consistent key pair and certificate on the token",
                             lambda: token_consistent(env, c.state_dir), timeout_s=30, tail=c.log_tail)
            assert crt != old, step
            if cert_on_disk:   # finished, not renewed again: no other certificate issued
                assert issued_certs(lab, dev_id) == issued, step
                assert fb[1].endswith("(finished after a restart)"), (step, fb)
            na = mgmt_of(c)["cert_not_after"]
            wait_until(f"{step}: the tunnel on that certificate", lambda: c.status()["credential"]["not_after"] == na
                       and connected_with(c, 1), timeout_s=60, tail=c.log_tail)
            assert pings(lab.topo) == 3, step


def token_that_can_go_away(lab, workdir, monkeypatch):
    """A SoftHSM2 token "m2m" (SOFTHSM2_CONF set to its configuration) and a
    second configuration without it (the token unplugged); an enrolled
    device whose management key is "dev" on it. Returns (conf, conf_away,
    bootstrap)."""
    tokens = workdir / "tokens"
    tokens.mkdir()
    conf = workdir / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    away = workdir / "no-tokens"
    away.mkdir()
    conf_away = workdir / "softhsm2-away.conf"
    conf_away.write_text(f"directories.tokendir = {away}\nobjectstore.backend = file\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "m2m", "--pin", PIN, "--so-pin", "0000"],
                   check=True, capture_output=True)
    boot = enrolled_device(lab)
    boot["management"]["key"] = {"provider": "pkcs11", "pkcs11_module": SOFTHSM,
                                 "pkcs11_uri": "pkcs11:token=m2m;object=dev", "pin": PIN}
    return conf, conf_away, boot


def test_renewal_pkcs11_killed_token_away_at_restart(lab, workdir, monkeypatch):  # noqa: F811
    """SIGKILL in a key renewal on a PKCS#11 token after the certificate
    reached the disk and the token's labels were switched; at the next start
    the token is not there (a USB token not plugged in yet): that start
    finishes nothing, the renewed certificate waits with the token's intent.
    The start after, with the token back, finishes the swap and connects
    with the new key (the new pair is not taken for an attempt without its
    certificate and deleted, leaving a certificate without a key)."""
    import m2mvpn_client
    conf, conf_away, boot = token_that_can_go_away(lab, workdir, monkeypatch)
    c, _, _ = killed_in_renewal(lab, boot, "written")
    st = c.state_dir
    crt, crt_next, intent = st / "device.crt.pem", st / "device.crt.pem.next", st / "device.p11id.next"
    assert crt_next.exists() and intent.exists(), sorted(p.name for p in st.iterdir())
    old_crt, new_crt = crt.read_text(), crt_next.read_text()
    assert pubkey_of(new_crt) != pubkey_of(old_crt)
    block_mgmt(lab)
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf_away))
    c = lab.client(boot)
    try:
        c.start()
        wait_until("the token's side not finished",
                   lambda: "finishing an interrupted key renewal on the token" in c.log_path.read_text(),
                   timeout_s=60, tail=c.log_tail)
    except m2mvpn_client.ClientError:
        pass
    finally:
        try:
            c.stop()
        except m2mvpn_client.ClientError:
            pass
    c.control.unlink(missing_ok=True)
    log = c.log_path.read_text(errors="replace")
    assert "finishing an interrupted key renewal on the token" in log, log[-3000:]
    # nothing finished without the token: the renewed certificate still waits with the intent
    assert crt.read_text() == old_crt and crt_next.exists() and intent.exists(), \
        (sorted(p.name for p in st.iterdir()), log[-3000:])
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    with lab.client(boot) as c:
        wait_until("connected", lambda: c.status()["state"] == "connected", timeout_s=90, tail=c.log_tail)
        assert crt.read_text() == new_crt and not crt_next.exists() and not intent.exists()
        assert c.status()["credential"]["not_after"] == mgmt_of(c)["cert_not_after"]
        assert netlab.ping(lab.topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2


def test_renewal_pkcs11_undone_token_away_keeps_the_key(lab, workdir, monkeypatch):  # noqa: F811
    """A PKCS#11 new-key renewal that is being undone when the token fails:
    killed after the old pair was relabelled "dev.old", its certificate
    file gone (as a switch that failed leaves it); the start that should
    undo it finds no token. The intent stays, so the start after, with the
    token back, undoes it: the old pair labelled "dev" again, the tunnel up
    on the old certificate, the new pair deleted. (Dropping the intent
    there made the next start delete "dev.old", the only key.)"""
    import m2mvpn_client
    conf, conf_away, boot = token_that_can_go_away(lab, workdir, monkeypatch)
    c, _, _ = killed_in_renewal(lab, boot, "p11-relabelled")
    st = c.state_dir
    crt, crt_next, intent = st / "device.crt.pem", st / "device.crt.pem.next", st / "device.p11id.next"
    assert crt_next.exists() and intent.exists(), sorted(p.name for p in st.iterdir())
    old_crt = crt.read_text()
    crt_next.unlink()
    block_mgmt(lab)
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf_away))
    c = lab.client(boot)
    try:
        c.start()
        wait_until("the undo failed", lambda: "undoing a key renewal on the token" in c.log_path.read_text(),
                   timeout_s=60, tail=c.log_tail)
    except m2mvpn_client.ClientError:
        pass
    finally:
        try:
            c.stop()
        except m2mvpn_client.ClientError:
            pass
    c.control.unlink(missing_ok=True)
    log = c.log_path.read_text(errors="replace")
    assert "undoing a key renewal on the token" in log, log[-3000:]
    assert intent.exists(), (sorted(p.name for p in st.iterdir()), log[-3000:])
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    with lab.client(boot) as c:
        wait_until("connected", lambda: c.status()["state"] == "connected", timeout_s=90, tail=c.log_tail)
        assert crt.read_text() == old_crt and not intent.exists()
        assert token_consistent({"SOFTHSM2_CONF": str(conf)}, st) == old_crt
        assert netlab.ping(lab.topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2
