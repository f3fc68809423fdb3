# SPDX-License-Identifier: Apache-2.0
"""Machine-bound certificate keys (auth.cert.source "machine") against
strongSwan: `m2mvpn bind-key` binds the client's key to this machine's
fingerprint (machine-id and the MAC of eth0); the tunnel comes up with it
and carries traffic; after the MAC changed (the same file on "another
machine") the next attempt fails with a clear CERT error and nothing is
sent to the gateway.
"""

from __future__ import annotations

import pytest

import charon as charonmod
import m2mvpn_client
from test_tunnel import binary_or_skip, ping_counted_by_gateway, wait_until

pytestmark = pytest.mark.needs_m2mvpn

def test_machine_bound_key(topology, charons, pki, workdir):
    binary = binary_or_skip()
    # The test's own world-readable "machine-id" (a fresh system's
    # /etc/machine-id may be empty) and the MAC of eth0.
    machine_id = workdir / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    machine_id.chmod(0o644)
    SOURCES = [f"file:{machine_id}", "mac:eth0"]
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"]), name="gw")
    bound = workdir / "dev1.bound"
    out = topo.client.run(str(binary), "bind-key", "--in", str(pki.dev1_ecdsa.key), "--out", str(bound),
                          "--sources", ",".join(SOURCES))
    assert "bound to this machine" in out.stdout, out
    # A world-readable file and a MAC: readable by every local user, and said so.
    assert "warning" in out.stderr and "readable by root only" in out.stderr, out
    # With a source only root can read (a provisioned serial, mode 0600): no warning.
    serial = workdir / "serial"
    serial.write_text("SN-4711\n")
    serial.chmod(0o600)
    out2 = topo.client.run(str(binary), "bind-key", "--in", str(pki.dev1_ecdsa.key), "--out",
                           str(workdir / "dev1.bound2"), "--sources", f"mac:eth0,file:{serial}")
    assert "bound to this machine" in out2.stdout and "warning" not in out2.stderr, out2
    data = bound.read_bytes()
    assert data.startswith(b"M2MVPNBK") and b"PRIVATE KEY" not in data
    assert oct(bound.stat().st_mode & 0o777) == "0o600"
    profile = m2mvpn_client.make_profile(pki, "ecdsa", topo.gw_addr)
    profile["auth"]["cert"] = {"source": "machine", "file": str(pki.dev1_ecdsa.cert), "key": str(bound),
                               "bind_sources": SOURCES}
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        client.wait_for_state("connected", timeout_s=20)
        ping_counted_by_gateway(topo, gw, "ecdsa", count=3)
        client.disconnect()
        client.wait_for_state("idle", timeout_s=10)
        wait_until("the gateway's SA deleted", lambda: not gw.list_sas())
        inits = gw.log_text().count("parsed IKE_SA_INIT request")

    # The same files, "another machine": eth0 gets another MAC, and the
    # engine starts anew (a running engine keeps the key it opened).
    topo.client.ip("link", "set", "eth0", "address", "02:00:5e:10:00:99")
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn2", profile) as client:
        client.connect()
        st = wait_until("idle with an error", lambda: (s := client.status())["state"] == "idle"
                        and s["last_error"]["code"] != 0 and s, timeout_s=20)
        err = st["last_error"]
        assert err["name"] == "CERT", st
        assert "bound to another machine" in err["detail"] and "mac:eth0" in err["detail"], st
        # Refused before anything was sent.
        assert gw.log_text().count("parsed IKE_SA_INIT request") == inits, gw.log_tail()
