# SPDX-License-Identifier: Apache-2.0
"""Benchmark helpers: strongSwan (kernel-libipsec) measured in the same run.

Builds on the interop harness (tests/interop: netlab, charon, pki). Needs
root. Every function cleans up its namespaces and charons, also on failure.

    iperf3_mbps(client_ns, server_ns, addr, seconds)  TCP throughput, Mbit/s
    veth_mbps(seconds)                                 the raw veth pair, for reference
    strongswan_gateway(workdir, ...)                   context: a gateway for any client
    strongswan_pair(workdir, ...)                      context: two connected charons
    strongswan_pair_mbps(seconds, ...)                 ESP throughput through that pair
    strongswan_connect_s(auth, ...)                    initiate -> first echo reply, seconds
    strongswan_footprint()                             binary sizes and connected RSS

Throughput is what the iperf3 receiver counted (TCP, one stream).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "interop"))

import charon as charonmod  # noqa: E402
import netlab  # noqa: E402
import pki as pkimod  # noqa: E402

IPERF3 = "iperf3"
# What counts as the strongSwan datapath on disk (DESIGN.md section 7).
STRONGSWAN_FILES = ("/usr/lib/ipsec/charon", "/usr/lib/ipsec/libcharon.so.0",
                    "/usr/lib/ipsec/libstrongswan.so.0", "/usr/lib/ipsec/libipsec.so.0")


class BenchError(RuntimeError):
    pass


def iperf3_mbps(client_ns: netlab.Namespace, server_ns: netlab.Namespace, server_addr: str,
                seconds: int = 5, port: int = 5201, reverse: bool = False) -> float:
    """One TCP stream from client_ns to server_addr (in server_ns) for seconds
    (reverse: from the server to the client).

    Returns the receiver's rate in Mbit/s.
    """
    server = server_ns.popen([IPERF3, "-s", "-1", "-B", server_addr, "-p", str(port),
                              "--forceflush"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            line = server.stdout.readline()
            if "Server listening" in line:
                break
            if not line or time.monotonic() > deadline:
                raise BenchError(f"iperf3 server did not start: {line!r}")
        proc = client_ns.run(IPERF3, "-c", server_addr, "-p", str(port), "-t", str(seconds),
                             *(["-R"] if reverse else []), "-J", check=False, timeout=seconds + 30)
        try:
            result = json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            raise BenchError(f"iperf3 client: {proc.stdout[-500:]} {proc.stderr}") from exc
        if "error" in result:
            raise BenchError(f"iperf3 client: {result['error']}")
        return result["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=5)


def veth_mbps(seconds: int = 5) -> float:
    """TCP over the bare veth between two namespaces (no tunnel)."""
    with netlab.direct() as topo:
        return iperf3_mbps(topo.client, topo.gateway, topo.gw_addr, seconds)


@contextlib.contextmanager
def strongswan_gateway(workdir: Path, *, auth: str = "psk",
                       ike: str = "aes256gcm16-prfsha256-x25519", esp: str = "aes256gcm16",
                       pki: pkimod.Pki | None = None,
                       ) -> Iterator[tuple[netlab.Topology, charonmod.Charon, pkimod.Pki]]:
    """A strongSwan gateway (kernel-libipsec) on a direct veth topology that
    accepts only auth with exactly these proposals; yields (topology, gateway
    charon, pki). Put any client into topology.client and measure against
    netlab.PROTECTED_ADDRS[0] (e.g. our client against strongSwan's own)."""
    workdir = Path(workdir)
    pki = pki or pkimod.generate(workdir / "pki")
    with netlab.direct() as topo:
        gw = charonmod.Charon(topo.gateway, workdir / "gw",
                              charonmod.gateway_config(pki, conns=[auth], ike_proposals=[ike],
                                                       esp_proposals=[esp]), name="gw")
        with gw:
            yield topo, gw, pki


@contextlib.contextmanager
def strongswan_pair(workdir: Path, *, auth: str = "psk",
                    ike: str = "aes256gcm16-prfsha256-x25519",
                    esp: str = "aes256gcm16", pki: pkimod.Pki | None = None,
                    ) -> Iterator[tuple[netlab.Topology, charonmod.Charon, charonmod.Charon]]:
    """Two charons (kernel-libipsec) in two namespaces joined by a veth,
    connected with auth and the given proposals; the tunnel is checked with
    an echo to the gateway's protected address before yielding
    (topology, gateway charon, client charon)."""
    workdir = Path(workdir)
    with strongswan_gateway(workdir, auth=auth, ike=ike, esp=esp, pki=pki) as (topo, gw, pki):
        cl = charonmod.Charon(topo.client, workdir / "cl",
                              charonmod.client_config(pki, auth, topo.gw_addr,
                                                      ike_proposals=[ike], esp_proposals=[esp]),
                              name="cl")
        with cl:
            cl.initiate("net")
            if netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=1) != 1:
                raise BenchError("tunnel carries no traffic" + cl.log_tail() + gw.log_tail())
            yield topo, gw, cl


def strongswan_pair_mbps(seconds: int = 5, esp: str = "aes256gcm16") -> float:
    """TCP through a strongSwan client <-> gateway pair (ESP in UDP, libipsec)."""
    with tempfile.TemporaryDirectory(prefix="m2i-bench-") as tmp:
        with strongswan_pair(Path(tmp), esp=esp) as (topo, _gw, _cl):
            return iperf3_mbps(topo.client, topo.gateway, netlab.PROTECTED_ADDRS[0], seconds)


def strongswan_connect_s(auth: str = "psk", repeats: int = 3,
                         pki: pkimod.Pki | None = None,
                         from_daemon_start: bool = False) -> float:
    """Median seconds from `swanctl --initiate` to the first echo reply through
    the tunnel, for auth psk or ecdsa. The gateway is always running first;
    from_daemon_start: start the clock before the client charon starts
    (daemon start + loading the configuration + connect).

    The echo is netlab.ping (a Python raw-socket process, about 20 ms of its
    own): time our client with the same probe so the ratio is fair."""
    times = []
    with tempfile.TemporaryDirectory(prefix="m2i-bench-") as tmp:
        tmpdir = Path(tmp)
        pki = pki or pkimod.generate(tmpdir / "pki")
        for i in range(repeats):
            with netlab.direct() as topo:
                gw = charonmod.Charon(topo.gateway, tmpdir / f"gw{i}",
                                      charonmod.gateway_config(pki, conns=[auth]), name="gw")
                cl = charonmod.Charon(topo.client, tmpdir / f"cl{i}",
                                      charonmod.client_config(pki, auth, topo.gw_addr),
                                      name="cl")
                with gw:
                    try:
                        t0 = time.monotonic()
                        cl.start()
                        if not from_daemon_start:
                            t0 = time.monotonic()
                        cl.initiate("net")
                        if netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=1) != 1:
                            raise BenchError("tunnel carries no traffic" + cl.log_tail())
                        times.append(time.monotonic() - t0)
                    finally:
                        cl.stop()
    times.sort()
    return times[len(times) // 2]


def strongswan_footprint() -> dict[str, int]:
    """Bytes on disk of charon + libcharon + libstrongswan + libipsec (Debian
    ships them stripped) and the VmRSS in KiB of a connected client charon."""
    disk = sum(os.path.getsize(os.path.realpath(p)) for p in STRONGSWAN_FILES)
    with tempfile.TemporaryDirectory(prefix="m2i-bench-") as tmp:
        with strongswan_pair(Path(tmp)) as (_topo, _gw, cl):
            rss = cl.rss_kib()
    return {"disk_bytes": disk, "rss_kib": rss}


def main(argv: list[str]) -> int:
    """`swanbench.py connect|footprint|pair|veth`: print one strongSwan figure."""
    what = argv[1] if len(argv) > 1 else ""
    if os.geteuid() != 0:
        print("swanbench: needs root (network namespaces)", file=sys.stderr)
        return 77
    netlab.sweep_stale()
    if what == "connect":
        for auth in ("psk", "ecdsa"):
            print(f"strongswan connect {auth} {strongswan_connect_s(auth) * 1000:.0f} ms")
            from_start = strongswan_connect_s(auth, from_daemon_start=True)
            print(f"strongswan start+connect {auth} {from_start * 1000:.0f} ms")
    elif what == "footprint":
        fp = strongswan_footprint()
        print(f"strongswan disk {fp['disk_bytes']} bytes")
        print(f"strongswan rss {fp['rss_kib']} KiB")
    elif what == "pair":
        print(f"strongswan {strongswan_pair_mbps():.0f} Mbit/s")
    elif what == "veth":
        print(f"veth {veth_mbps():.0f} Mbit/s")
    else:
        print("usage: swanbench.py connect|footprint|pair|veth", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
