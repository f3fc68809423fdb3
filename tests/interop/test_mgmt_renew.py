# SPDX-License-Identifier: Apache-2.0
"""Certificate renewal on the device (issue 15), end to end: m2mvpn-mgmtd
issuing certificates of LIFETIME_S seconds (cert_lifetime_s), the strongSwan
gateway trusting the device CA, our engine enrolled from a bootstrap. Under a
continuous ping flood through the tunnel the device renews its certificate
(CMP KUR, a new key) at about 2/3 of each lifetime, several times, and moves
each time to the new certificate with a make-before-break reauthentication:
CERT_RENEWED events, new serials recorded by the server, new IKE SAs on the
gateway, the tunnel never down, no ping lost.

Also, on a certificate of the default lifetime (days): an operator's
`m2mvpn-admin cert renew` (a cert deployment) makes the device renew at its
next poll, its success recorded, the tunnel moved to the new certificate by a
reauthentication (no reconnect); and a SIGKILL of the engine in the middle of
the key swap (test knob M2MVPN_TEST_RENEW_PAUSE) is finished at the next
start, or, killed before the certificate reached the disk, leaves the old
pair working and the renewal done again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

import charon as charonmod
import m2mvpn_client
import netlab

from test_mgmt_dayn_device import Lab, enrolled_device, mgmt_of, wait_until, mh, MGMT_ADDR
from test_mgmt_dayn_device import connected_with, pings, recorded_feedback
import test_mgmt_dayn_device

lab = test_mgmt_dayn_device.lab   # the fixture: management server, gateway, device on the default lifetime

LIFETIME_S = 60     # renewals at about 34 s after each issuance (notBefore is backdated by a tenth; the server allows 60 s at least)
DURATION_S = 100    # the ping flood: two renewals or more


@pytest.fixture
def renew_lab(topology, charons, pki, workdir):
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
    cfg = mh.make_config(d, "sqlite:mgmt.db", listen=f"{MGMT_ADDR}:0", poll_s=5, cert_lifetime_s=LIFETIME_S)
    srv = mh.Mgmtd(d, cfg, host=MGMT_ADDR, wrap=topo.gateway.argv())
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


def test_cert_renewal_under_ping_flood(renew_lab):
    lab = renew_lab
    boot = enrolled_device(lab)
    with lab.client(boot) as c:
        wait_until("connected", lambda: c.status()["state"] == "connected" and mgmt_of(c).get("cert_not_after"),
                   timeout_s=60, tail=c.log_tail)
        lab.gw.wait_for_sa("ecdsa", "net")
        assert netlab.ping(lab.topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2
        dev_id = mgmt_of(c)["device_id"]
        not_afters = [mgmt_of(c)["cert_not_after"]]
        first = not_afters[0]
        assert 0 < first - time.time() <= LIFETIME_S + 5, first
        ike_spis: set[str] = set()
        in_use: set[int] = set()   # notAfter of the certificate the tunnel's newest IKE SA authenticated with
        flood = netlab.PingFlood(lab.topo.client, netlab.PROTECTED_ADDRS[0], duration_s=DURATION_S)
        deadline = time.monotonic() + DURATION_S
        while time.monotonic() < deadline:
            st = c.status()
            assert st["state"] == "connected", (st, c.log_tail())
            na = (st.get("management") or {}).get("cert_not_after")
            if na and na != not_afters[-1]:
                not_afters.append(na)
            if st.get("credential"):
                in_use.add(st["credential"]["not_after"])
            ike_spis.update(s["initiator-spi"] + "/" + s["responder-spi"]
                            for s in lab.gw.list_sas() if s.get("name") == "ecdsa")
            # the certificate in use never expires under the tunnel
            assert na > time.time(), (na, c.log_tail())
            time.sleep(0.5)
        res = flood.result()
        log = c.log_path.read_text(errors="replace")
        renewed = re.findall(r"event CERT_RENEWED: certificate renewed: serial ([0-9A-F]+), not_after (\d+) "
                             r"\(new key\)", log)
        assert len(renewed) >= 2, c.log_tail()
        # status followed every renewal, each later than the one before
        assert len(not_afters) >= 3 and not_afters == sorted(set(not_afters)), not_afters
        assert [int(x[1]) for x in renewed] == not_afters[1:len(renewed) + 1], (renewed, not_afters)
        # each renewal moved the tunnel to the new certificate: a reauthentication per renewal, seen by the gateway
        assert log.count("[conn] IKE SA reauthenticated: ") >= len(renewed), c.log_tail()
        assert len(ike_spis) >= len(renewed) + 1, ike_spis
        # ... and the tunnel did use each renewed certificate (read anew by the reauthentication)
        assert set(not_afters[:len(renewed) + 1]) <= in_use | {not_afters[len(renewed)]}, (in_use, not_afters)
        wait_until("the tunnel on the last renewed certificate",
                   lambda: c.status()["credential"]["not_after"] == mgmt_of(c)["cert_not_after"], timeout_s=30,
                   tail=c.log_tail)
        # the server recorded the renewals: the device's current serial is the last one renewed
        srv_log = Path(lab.srv.log).read_text()
        assert srv_log.count(f"cmp: device {dev_id} renewed its certificate") >= len(renewed), srv_log[-2000:]
        dev = [x for x in mh.admin_json(lab.d, lab.srv, "device", "list")["devices"] if x["id"] == dev_id][0]
        assert dev["serial"].upper().lstrip("0") == renewed[-1][0].lstrip("0"), (dev, renewed)
        # the state directory holds the new pair only (no half-swapped file)
        names = sorted(p.name for p in c.state_dir.iterdir())
        assert not [n for n in names if n.endswith(".next")], names
        # no outage: not one echo lost (make-before-break)
        assert res["sent"] > DURATION_S * 50 and res["lost"] == 0, res
        print(f"renewals: {len(renewed)}, reauthentications: {log.count('[conn] IKE SA reauthenticated: ')}, "
              f"pings: {res}")


REAUTH = "[conn] IKE SA reauthenticated: "


def cert_renew(lab):
    """`m2mvpn-admin cert renew --group fleet`: the cert deployment's id."""
    out = mh.admin(lab.d, lab.srv, "cert", "renew", "--group", "fleet").stdout
    m = re.search(r"certificate renewal requested, deployment (\d+) \(1 devices", out)
    assert m, out
    return int(m.group(1))


def server_serial(lab, dev_id):
    dev = [x for x in mh.admin_json(lab.d, lab.srv, "device", "list")["devices"] if x["id"] == dev_id][0]
    return mh.norm_serial(dev["serial"])


def issued_certs(lab, dev_id):
    """Serials of every certificate the server issued to the device (its CA's record)."""
    import contextlib
    import sqlite3
    with contextlib.closing(sqlite3.connect(os.path.join(lab.d, "mgmt.db"), timeout=10)) as db:
        return sorted(mh.norm_serial(r[0]) for r in
                      db.execute("SELECT serial FROM certificates WHERE device = ?", (dev_id,)))


def test_operator_forced_renewal(lab):
    """A certificate of the server's default lifetime, renewed at once on the operator's word."""
    boot = enrolled_device(lab)
    with lab.client(boot) as c:
        wait_until("connected on profile 1", lambda: connected_with(c, 1), tail=c.log_tail)
        assert pings(lab.topo) == 3
        st = c.state_dir
        crt, key = st / "device.crt.pem", st / "device.key.pem"
        dev_id = mgmt_of(c)["device_id"]
        old_serial, old_key = mh.cert_serial(crt), key.read_text()
        assert server_serial(lab, dev_id) == old_serial
        na = mgmt_of(c)["cert_not_after"]
        # far from 2/3 of its lifetime (days of validity): no renewal of its own before long
        assert na - time.time() > 7 * 86400, na
        sched = re.findall(r"certificate renewal in (\d+) s", c.log_path.read_text())
        assert sched and int(sched[-1]) > 86400, sched
        before = c.status()["transitions"]
        assert REAUTH not in c.log_path.read_text()
        flood = netlab.PingFlood(lab.topo.client, netlab.PROTECTED_ADDRS[0], duration_s=30)
        dep = cert_renew(lab)
        fb = wait_until("the renewal's feedback recorded", lambda: (x := recorded_feedback(lab, dep))[0] in
                        ("success", "failure") and x, timeout_s=60, tail=c.log_tail)
        assert fb[0] == "success", fb
        m = re.match(r"certificate renewed: serial ([0-9A-F]+), not_after (\d+) \(new key\)$", fb[1])
        assert m, fb
        new_serial = mh.norm_serial(m.group(1))
        info = lab.deployment(dep)
        assert (info["type"], info["state"], info["success"], info["failure"]) == ("cert", "done", 1, 0), info
        # the new pair on disk: a new serial (the server's record too), a new key, matching each other
        assert mh.cert_serial(crt) == new_serial != old_serial
        assert server_serial(lab, dev_id) == new_serial
        assert key.read_text() != old_key
        assert mh.cert_matches_key(crt, key)
        assert not [p.name for p in st.iterdir() if p.name.endswith(".next")]
        log = c.log_path.read_text()
        assert "deployment %d: certificate renewal asked by the server" % dep in log
        assert "event CERT_RENEWED: certificate renewed: serial " in log
        # the tunnel moved to it by a reauthentication, not a reconnect
        wait_until("reauthenticated", lambda: REAUTH in c.log_path.read_text(), timeout_s=60, tail=c.log_tail)
        wait_until("the tunnel on the renewed certificate",
                   lambda: c.status()["credential"]["not_after"] == int(m.group(2)), timeout_s=30, tail=c.log_tail)
        res = flood.result()
        after = c.status()
        assert after["state"] == "connected"
        assert after["transitions"]["reconnects"] == before["reconnects"], (before, after["transitions"])
        assert after["transitions"]["rekeys"] > before["rekeys"], (before, after["transitions"])
        assert mgmt_of(c)["cert_not_after"] == int(m.group(2))
        assert res["lost"] == 0 and res["received"] > 0, res
        assert pings(lab.topo) == 3


def block_mgmt(lab):
    """Drop the device's packets to the management server (its namespace's output)."""
    lab.topo.client.nft(f"""
table inet m2i_nomgmt {{
    chain out {{
        type filter hook output priority 0; policy accept;
        ip daddr {MGMT_ADDR} tcp dport {lab.srv.port} counter drop
    }}
}}
""")


def unblock_mgmt(lab):
    lab.topo.client.run("nft", "delete", "table", "inet", "m2i_nomgmt")


def killed_in_renewal(lab, boot, step):
    """The engine connected, asked to renew, held at `step` of the renewal, SIGKILLed there."""
    with lab.client(boot, env={"M2MVPN_TEST_RENEW_PAUSE": step}) as c:
        wait_until("connected on profile 1", lambda: connected_with(c, 1), tail=c.log_tail)
        dev_id = mgmt_of(c)["device_id"]
        dep = cert_renew(lab)
        wait_until(f"paused after {step}", lambda: f"paused after renewal step {step}" in c.log_path.read_text(),
                   timeout_s=60, tail=c.log_tail)
        c.proc.send_signal(signal.SIGKILL)
        c.proc.wait(10)
    c.control.unlink(missing_ok=True)  # left by the killed engine
    return c, dev_id, dep


def test_sigkill_after_renewed_cert_written(lab):
    """Killed with device.crt.pem.next and device.key.pem.next on disk, before
    the renames: the next start finishes the swap and connects with the new
    pair. The management server is out of reach during that start, so no
    other renewal can hide what the recovery did. The deployment id was kept
    (renew.json): back in reach, the restart reports that same renewal
    once, and the server never issues a second certificate for it."""
    boot = enrolled_device(lab)
    c, dev_id, dep = killed_in_renewal(lab, boot, "written")
    issued = issued_certs(lab, dev_id)
    assert len(issued) == 2, issued    # the enrolment's and the renewal's
    st = c.state_dir
    assert json.loads((st / "renew.json").read_text())["deployment"] == dep
    crt, key = st / "device.crt.pem", st / "device.key.pem"
    crt_next, key_next = st / "device.crt.pem.next", st / "device.key.pem.next"
    old_serial = mh.cert_serial(crt)
    assert crt_next.exists() and key_next.exists(), sorted(p.name for p in st.iterdir())
    new_serial, new_key = mh.cert_serial(crt_next), key_next.read_text()
    assert new_serial != old_serial and mh.cert_matches_key(crt_next, key_next)
    assert mh.cert_matches_key(crt, key)    # the old pair untouched
    assert server_serial(lab, dev_id) == new_serial  # issued: the server recorded it
    block_mgmt(lab)
    with lab.client(boot) as c:
        wait_until("connected on profile 1", lambda: connected_with(c, 1), timeout_s=60, tail=c.log_tail)
        # the swap finished: the new certificate and the new key in place, matching, no .next left
        assert mh.cert_serial(crt) == new_serial and key.read_text() == new_key
        assert mh.cert_matches_key(crt, key)
        assert not [p.name for p in st.iterdir() if p.name.endswith(".next")]
        assert "an interrupted certificate renewal finished" in c.log_path.read_text()
        # ... and the tunnel authenticated with it
        na = mh.cert_not_after(crt)
        assert c.status()["credential"]["not_after"] == na and mgmt_of(c)["cert_not_after"] == na
        assert pings(lab.topo) == 3
        # the server back: the deployment (whose feedback the killed engine never sent) ends in success
        unblock_mgmt(lab)
        fb = wait_until("the deployment's feedback", lambda: (x := recorded_feedback(lab, dep))[0] in
                        ("success", "failure") and x, timeout_s=60, tail=c.log_tail)
        assert fb[0] == "success", fb
        m = re.match(r"certificate renewed: serial ([0-9A-F]+), not_after (\d+) \(finished after a restart\)$", fb[1])
        assert m and mh.norm_serial(m.group(1)) == new_serial and int(m.group(2)) == na, fb
        # one certificate for the deployment: the one the killed engine got, still in use
        assert issued_certs(lab, dev_id) == issued
        assert mh.cert_serial(crt) == new_serial and server_serial(lab, dev_id) == new_serial
        info = lab.deployment(dep)
        assert (info["type"], info["state"], info["success"], info["failure"]) == ("cert", "done", 1, 0), info
        wait_until("renew.json gone once its feedback is delivered", lambda: not (st / "renew.json").exists(),
                   timeout_s=30, tail=c.log_tail)
        # a later poll does not renew for it either
        time.sleep(7)
        assert issued_certs(lab, dev_id) == issued
        assert "certificate renewal asked by the server" not in c.log_path.read_text()
        wait_until("connected", lambda: connected_with(c, 1), timeout_s=60, tail=c.log_tail)
        assert mh.cert_matches_key(crt, key)
        assert pings(lab.topo) == 3


def test_sigkill_before_renewed_cert_written(lab):
    """Killed once the server issued the certificate but before
    device.crt.pem.next was written (only the new key's .next on disk): the
    old pair stays in use and the renewal is done again."""
    boot = enrolled_device(lab)
    c, dev_id, dep = killed_in_renewal(lab, boot, "issued")
    st = c.state_dir
    crt, key = st / "device.crt.pem", st / "device.key.pem"
    names = sorted(p.name for p in st.iterdir())
    assert "device.key.pem.next" in names and "device.crt.pem.next" not in names, names
    old_serial, old_key = mh.cert_serial(crt), key.read_text()
    assert mh.cert_matches_key(crt, key)
    issued = server_serial(lab, dev_id)   # the lost one
    assert issued != old_serial
    with lab.client(boot) as c:
        wait_until("connected on profile 1", lambda: connected_with(c, 1), timeout_s=60, tail=c.log_tail)
        # the renewal retried: the open deployment asks again, its success recorded
        fb = wait_until("the deployment's feedback", lambda: (x := recorded_feedback(lab, dep))[0] in
                        ("success", "failure") and x, timeout_s=60, tail=c.log_tail)
        assert fb[0] == "success", fb
        new_serial = mh.cert_serial(crt)
        assert new_serial not in (old_serial, issued)
        assert server_serial(lab, dev_id) == new_serial
        assert key.read_text() != old_key and mh.cert_matches_key(crt, key)
        assert not [p.name for p in st.iterdir() if p.name.endswith(".next")]
        wait_until("reauthenticated", lambda: REAUTH in c.log_path.read_text(), timeout_s=60, tail=c.log_tail)
        wait_until("connected", lambda: connected_with(c, 1), timeout_s=60, tail=c.log_tail)
        assert pings(lab.topo) == 3
