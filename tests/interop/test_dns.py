# SPDX-License-Identifier: Apache-2.0
"""DNS servers from the gateway's configuration payload (INTERNAL_IP4_DNS):
shown in status, and applied by the profile's tunnel.dns_hook."""

from __future__ import annotations

import os
import time

import pytest

import charon as charonmod
import m2mvpn_client
import netlab

pytestmark = pytest.mark.skipif(m2mvpn_client.find_binary() is None,
                                reason="M2MVPN_BINARY (tools/m2mvpn) is not built")
DNS = "198.18.0.53"


def wait_for_lines(path, n: int, timeout_s: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            if len(lines) >= n:
                return lines
        time.sleep(0.1)
    raise AssertionError(f"dns_hook wrote {path.read_text() if path.exists() else 'nothing'!r}")


def test_dns_servers_in_status_and_hook(topology, charons, pki, workdir):
    topo = topology("direct")
    conf = charonmod.gateway_config(pki, conns=["psk"])
    conf.tree["pools"]["vpool"]["dns"] = DNS
    charons(topo.gateway, conf, name="gw")
    calls = workdir / "hook-calls"
    hook = workdir / "dns-hook"
    hook.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    os.chmod(hook, 0o755)
    prof = m2mvpn_client.make_profile(pki, "psk", netlab.GW_ADDR)
    prof["tunnel"]["dns_hook"] = str(hook)
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, m2mvpn_client.find_binary(), workdir)
    try:
        client.connect()
        st = client.wait_for_state("connected", timeout_s=20)
        deadline = time.monotonic() + 5
        while st.get("dns") != [DNS] and time.monotonic() < deadline:
            time.sleep(0.2)
            st = client.status()
        assert st["dns"] == [DNS], st
        assert wait_for_lines(calls, 1) == [f"up m2m0 {DNS}"]
        client.disconnect()
        client.wait_for_state("idle", timeout_s=10)
        assert wait_for_lines(calls, 2)[1] == "down m2m0"
        assert client.status()["dns"] == []
    finally:
        client.stop()
