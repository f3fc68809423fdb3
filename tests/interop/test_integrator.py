# SPDX-License-Identifier: Apache-2.0
"""What integrators run against a real gateway: the Python test-rig example
(examples/test_rig.py through the binding), and the service's SIGHUP reload
with a live tunnel: a rejected profile file leaves the tunnel exactly as it
was (same SPIs, traffic still flows, the gateway keeps its SA); a valid
changed one is taken (the tunnel comes back with the new settings)."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import charon as charonmod
import m2mvpn_client
import netlab

ROOT = Path(__file__).resolve().parents[2]
LIB = os.environ.get("M2MVPN_LIB", "")
PROTECTED = netlab.PROTECTED_ADDRS[0]


def wait_until(what: str, check, timeout_s: float = 20, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s}s")
        time.sleep(interval_s)


# -- the rig example ---------------------------------------------------------------

@pytest.mark.skipif(not LIB or not Path(LIB).is_file(), reason="M2MVPN_LIB (the built libm2mvpn) is not set")
@pytest.mark.parametrize("auth", ["psk", "ecdsa"])
def test_rig_example_drives_a_real_tunnel(topology, charons, pki, workdir, auth):
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki), name="gw")
    prof = m2mvpn_client.make_profile(pki, auth, topo.gw_addr)
    pf = workdir / "atm.json"
    pf.write_text(json.dumps(prof))
    pf.chmod(0o600)
    env = dict(os.environ, M2MVPN_LIB=LIB, PYTHONPATH=str(ROOT / "bindings" / "python"),
               PYTHONDONTWRITEBYTECODE="1")
    proc = topo.client.popen(["/usr/bin/python3", str(ROOT / "examples" / "test_rig.py"), str(pf),
                              "--ping", PROTECTED, "--count", "3", "-v"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, f"rig exited {proc.returncode}:\n{out}\n{err[-4000:]}"
    lines = out.splitlines()
    assert lines[-1] == "PASS", out
    first = lines[0].split()
    assert first[:2] == ["connected", "to"] and first[2].split(":")[0] == topo.gw_addr, out
    vip = ipaddress.ip_address(first[4])
    assert vip in ipaddress.ip_network(netlab.VIP_POOL), out
    assert f"ping {PROTECTED}: answered" in out, out
    events = json.loads(lines[-2][len("events: "):])
    assert events[:2] == ["STATE_CHANGED:connecting", "STATE_CHANGED:connected"], events
    assert events[-1] == "STATE_CHANGED:idle", events
    # The rig took its tunnel down again.
    wait_until("the gateway's SA deleted after the rig", lambda: not gw.list_sas(), timeout_s=10)


# -- SIGHUP with a live tunnel ------------------------------------------------------

def _spis(st: dict) -> tuple[str, str]:
    child = st["child_sa"]
    assert child, st
    return child["spi_in"], child["spi_out"]


def _rewrite(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.rename(path)


def test_sighup_reload_with_a_live_tunnel(topology, charons, pki, workdir):
    binary = m2mvpn_client.find_binary()
    if binary is None:
        pytest.skip("tools/m2mvpn not built (set M2MVPN_BINARY)")
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki), name="gw")
    prof = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr, esp_proposals=["aes256gcm16"])
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", prof) as client:
        client.connect()
        st = client.wait_for_state("connected", timeout_s=20)
        spis = _spis(st)
        gw_sa = gw.wait_for_sa("psk", "net")
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2

        # 1. A broken file: rejected, the tunnel untouched.
        bad = dict(prof, esp=dict(prof["esp"], proposals=["aes256gcm17"]))
        _rewrite(client.profile_path, json.dumps(bad))
        client.proc.send_signal(signal.SIGHUP)
        st = wait_until("the reload rejected",
                        lambda: (s := client.status())["service"]["reload"]["rejected"] == 1 and s)
        last = st["service"]["reload"]["last"]
        assert last["ok"] is False and "aes256gcm17" in last["error"], last
        assert "aes256gcm17" in client.log_path.read_text()
        time.sleep(1)  # anything a reload would set off has had time to start
        st = client.status()
        assert st["state"] == "connected" and _spis(st) == spis, st
        assert st["algorithms"]["esp"] == "aes256gcm16"
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
        sa = gw.wait_for_sa("psk", "net")
        assert sa["uniqueid"] == gw_sa["uniqueid"]
        assert charonmod.child_of(sa)["spi-in"] == charonmod.child_of(gw_sa)["spi-in"]

        # 2. A valid changed file: taken; the tunnel comes back with it.
        good = dict(prof, esp=dict(prof["esp"], proposals=["aes128gcm16"]))
        _rewrite(client.profile_path, json.dumps(good))
        client.proc.send_signal(signal.SIGHUP)
        wait_until("the reload taken", lambda: client.status()["service"]["reload"]["taken"] == 1)
        st = wait_until("connected again with the new ESP proposal",
                        lambda: (s := client.status())["state"] == "connected"
                        and s["algorithms"]["esp"] == "aes128gcm16" and s, timeout_s=30)
        assert _spis(st) != spis
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
        child = charonmod.child_of(gw.wait_for_sa("psk", "net"))
        assert child["encr-alg"] == "AES_GCM_16" and child["encr-keysize"] == "128", child
