# SPDX-License-Identifier: Apache-2.0
"""Certificate renewal on the device (issue 15), end to end: m2mvpn-mgmtd
issuing certificates of LIFETIME_S seconds (cert_lifetime_s), the strongSwan
gateway trusting the device CA, our engine enrolled from a bootstrap. Under a
continuous ping flood through the tunnel the device renews its certificate
(CMP KUR, a new key) at about 2/3 of each lifetime, several times, and moves
each time to the new certificate with a make-before-break reauthentication:
CERT_RENEWED events, new serials recorded by the server, new IKE SAs on the
gateway, the tunnel never down, no ping lost.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

import charon as charonmod
import m2mvpn_client
import netlab

from test_mgmt_dayn_device import Lab, enrolled_device, mgmt_of, wait_until, mh, MGMT_ADDR

LIFETIME_S = 60     # renewals at about 34 s after each issuance (notBefore is backdated by a tenth)
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
