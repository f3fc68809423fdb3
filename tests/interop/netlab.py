# SPDX-License-Identifier: Apache-2.0
"""Network namespaces for the interop tests and benchmarks.

Everything here needs root. Every namespace this module makes is named
``m2i-<pid>-<n>-<role>`` where <pid> is the creating process, so that
``sweep_stale()`` can remove what a killed test run left behind without ever
touching the namespaces of a run that is still alive.

Addresses: the underlay is 198.51.100.0/24 (TEST-NET-2), everything inside a
tunnel is in 198.18.0.0/15 (RFC 2544 benchmark range); for IPv6 both are in
the documentation prefix 2001:db8::/32 (underlay 2001:db8:100::/48, inside
2001:db8:18::/48). Nothing here ever sends to any other address. IPv6
addresses are added without duplicate address detection (`nodad`), so they
are usable at once.

Ownership: a ``Namespace`` owns the kernel namespace and every process started
through it; ``close()`` (or leaving the ``with`` block) kills those processes
(SIGTERM, then SIGKILL) and deletes the namespace, also after a failure. A
``Topology`` owns its namespaces.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

PREFIX = "m2i-"
PYTHON = "/usr/bin/python3"

# Underlay plan. Direct topology: one /24. Routed topologies: the gateway side
# is the lower /25, the client side the upper /25, a router in between.
GW_ADDR = "198.51.100.1"
CLIENT_ADDR_DIRECT = "198.51.100.10"
ROUTER_GW_SIDE = "198.51.100.2"
ROUTER_CLIENT_SIDE = "198.51.100.129"
CLIENT_ADDR_ROUTED = "198.51.100.130"

# Inside the tunnel: the gateway's protected network (addresses on its lo)
# and the pool of virtual IPs it hands out through configuration payloads.
PROTECTED_NET = "198.18.0.0/24"
PROTECTED_ADDRS = ("198.18.0.1", "198.18.0.2")
VIP_POOL = "198.18.10.0/24"

# IPv6 plan (2001:db8::/32). Underlay: the gateway's link 2001:db8:100::/64,
# the client's link behind a router 2001:db8:101::/64. Inside the tunnel:
# the gateway's protected network and its pool of virtual IPs.
GW_ADDR6 = "2001:db8:100::1"
CLIENT_ADDR6_DIRECT = "2001:db8:100::10"
ROUTER6_GW_SIDE = "2001:db8:100::2"
ROUTER6_CLIENT_SIDE = "2001:db8:101::1"
CLIENT_ADDR6_ROUTED = "2001:db8:101::10"
PROTECTED_NET6 = "2001:db8:18::/64"
PROTECTED_ADDRS6 = ("2001:db8:18::1", "2001:db8:18::2")
VIP_POOL6 = "2001:db8:1a::/120"
# An address outside every tunnel, on the router's lo: where a leak would go.
OUTSIDE_ADDR6 = "2001:db8:ff::1"

_counter = itertools.count(1)


class CommandError(RuntimeError):
    """A command inside a namespace failed; carries its output for the report."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command {' '.join(self.argv)!r} exited {returncode}\n"
            f"stdout: {stdout.strip()}\nstderr: {stderr.strip()}")


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30,
         input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True,
                          timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


def require_root() -> None:
    """Raise PermissionError unless running as root (the tests need it)."""
    if os.geteuid() != 0:
        raise PermissionError("the interop tests need root (network namespaces)")


def list_namespaces() -> list[str]:
    """Names of all network namespaces known to iproute2."""
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (killed, not yet reaped) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _kill_pids(pids: Iterable[int], grace_s: float = 3.0) -> None:
    """SIGTERM the pids, wait up to grace_s for them to go, then SIGKILL."""
    pids = [p for p in pids if p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _pid_alive(p) and not _is_zombie(p)]
        if pids:
            time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return True


def _netns_pids(name: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _remove_etc(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{path}/hosts")
    with contextlib.suppress(OSError):
        os.rmdir(path)


def sweep_stale() -> list[str]:
    """Delete m2i- namespaces whose creating process is gone.

    A run killed with SIGKILL cannot clean up after itself; the next run calls
    this first. Namespaces of live processes (a parallel run) are left alone.
    Returns the names that were removed.
    """
    removed = []
    for name in list_namespaces():
        if not name.startswith(PREFIX):
            continue
        parts = name.split("-")
        if len(parts) < 3 or not parts[1].isdigit():
            continue
        if _pid_alive(int(parts[1])):
            continue
        _kill_pids(_netns_pids(name), grace_s=1.0)
        _run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    # Hosts files of namespaces that are gone (Namespace.set_hosts).
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir("/etc/netns"):
            parts = name.split("-")
            if name.startswith(PREFIX) and len(parts) >= 3 and parts[1].isdigit() \
                    and not _pid_alive(int(parts[1])):
                _remove_etc(f"/etc/netns/{name}")
    return removed


def remove_own() -> list[str]:
    """Delete every m2i- namespace this process made (and kill what runs in
    them): the last safety net of a run that is being interrupted."""
    removed = []
    for name in list_namespaces():
        if name.startswith(f"{PREFIX}{os.getpid()}-"):
            _kill_pids(_netns_pids(name), grace_s=1.0)
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


class Namespace:
    """A network namespace with a unique m2i- name.

    Use as a context manager (or call close()). All methods raise CommandError
    when the underlying command fails.
    """

    def __init__(self, role: str):
        require_root()
        self.role = role
        self.name = f"{PREFIX}{os.getpid()}-{next(_counter)}-{role}"
        self._procs: list[subprocess.Popen] = []
        self._closed = False
        self._etc: str | None = None
        _run(["ip", "netns", "add", self.name])
        try:
            self.ip("link", "set", "lo", "up")
        except Exception:
            _run(["ip", "netns", "del", self.name], check=False)
            raise

    # -- running things inside -------------------------------------------------
    def argv(self, *argv: str) -> list[str]:
        """The command line that runs argv inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 30,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run argv inside the namespace and wait; text output is captured."""
        return _run(self.argv(*argv), check=check, timeout=timeout, input=input)

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start argv inside the namespace; it is killed by close()."""
        proc = subprocess.Popen(self.argv(*argv), **kwargs)
        self._procs.append(proc)
        return proc

    def ip(self, *args: str) -> subprocess.CompletedProcess:
        return _run(["ip", "-n", self.name, *args])

    def ip_json(self, *args: str) -> list:
        """`ip -json <args>` inside the namespace, parsed."""
        return json.loads(_run(["ip", "-json", "-n", self.name, *args]).stdout or "[]")

    # -- configuration -----------------------------------------------------------
    def add_addr(self, ifname: str, cidr: str) -> None:
        if ":" in cidr:   # IPv6: usable at once, no duplicate address detection
            self.ip("-6", "addr", "add", cidr, "dev", ifname, "nodad")
        else:
            self.ip("addr", "add", cidr, "dev", ifname)

    def no_dad(self) -> None:
        """No duplicate address detection on interfaces made from now on."""
        for scope in ("all", "default"):
            self.sysctl(f"net.ipv6.conf.{scope}.accept_dad", 0)

    def set_hosts(self, text: str) -> None:
        """/etc/hosts as seen by programs run inside (`ip netns exec`
        bind-mounts /etc/netns/<name>/hosts over /etc/hosts); removed by
        close()."""
        self._etc = f"/etc/netns/{self.name}"
        os.makedirs(self._etc, exist_ok=True)
        with open(f"{self._etc}/hosts", "w") as f:
            f.write(text)

    def link_up(self, ifname: str) -> None:
        self.ip("link", "set", ifname, "up")

    def add_route(self, dest: str, via: str | None = None, dev: str | None = None) -> None:
        args = ["route", "add", dest]
        if via:
            args += ["via", via]
        if dev:
            args += ["dev", dev]
        if ":" in dest or (via and ":" in via):
            args = ["-6", *args]
        self.ip(*args)

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def nft(self, ruleset: str) -> None:
        """Load an nftables ruleset (nft -f syntax) into this namespace."""
        self.run("nft", "-f", "-", input=ruleset)

    def pids(self) -> list[int]:
        """Pids of all processes whose network namespace is this one."""
        return _netns_pids(self.name)

    # -- cleanup -------------------------------------------------------------------
    def close(self) -> None:
        """Kill every process in the namespace and delete it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        _kill_pids([p.pid for p in self._procs if p.poll() is None], grace_s=3.0)
        _kill_pids(self.pids(), grace_s=2.0)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
        _run(["ip", "netns", "del", self.name], check=False)
        if self._etc:
            _remove_etc(self._etc)

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


def veth(a: Namespace, a_if: str, b: Namespace, b_if: str, mtu: int | None = None) -> None:
    """Join two namespaces with a veth pair created directly inside them.

    The pair never exists in the root namespace, so interface names only have
    to be unique inside a and b and parallel runs cannot collide.
    """
    args = ["link", "add", a_if]
    if mtu:
        args += ["mtu", str(mtu)]
    args += ["type", "veth", "peer", "name", b_if, "netns", b.name]
    if mtu:
        args += ["mtu", str(mtu)]
    a.ip(*args)
    a.link_up(a_if)
    b.link_up(b_if)


# nftables rule set for a router that drops every IP fragment: non-first
# fragments (offset != 0) and first fragments (MF set). It hooks prerouting
# before conntrack's defragmentation (priority -400) so it sees the raw pieces
# even when NAT is active in the same namespace.
FRAG_DROP_RULES = """
table ip m2i_fragdrop {
    chain pre {
        type filter hook prerouting priority -450; policy accept;
        ip frag-off & 0x1fff != 0 counter drop
        ip frag-off & 0x2000 != 0 counter drop
    }
}
"""

MASQUERADE_RULES = """
table ip m2i_nat {{
    chain post {{
        type nat hook postrouting priority 100; policy accept;
        oifname "{oif}" masquerade
    }}
}}
"""


@dataclass
class Topology:
    """Namespaces of one test network; close() removes them all.

    client/gateway are always set; router is set for routed topologies.
    client_addr/gw_addr are the underlay addresses the peers use.
    """
    kind: str
    client: Namespace
    gateway: Namespace
    client_addr: str
    gw_addr: str
    router: Namespace | None = None
    protected_addrs: tuple[str, ...] = PROTECTED_ADDRS
    namespaces: list[Namespace] = field(default_factory=list)
    # IPv6 underlay addresses (None: the underlay has no IPv6).
    client_addr6: str | None = None
    gw_addr6: str | None = None

    def close(self) -> None:
        errors = []
        for ns in reversed(self.namespaces):
            try:
                ns.close()
            except Exception as exc:  # keep cleaning the others
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> "Topology":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _gateway_protected_net(gw: Namespace, addrs: Iterable[str]) -> None:
    # The dummy link type does not exist on these kernels: use lo.
    for addr in addrs:
        gw.add_addr("lo", f"{addr}/32")


@contextlib.contextmanager
def _building(namespaces: list[Namespace]) -> Iterator[None]:
    """Delete the namespaces made so far if building a topology fails."""
    try:
        yield
    except BaseException:
        for ns in reversed(namespaces):
            with contextlib.suppress(Exception):
                ns.close()
        raise


def direct() -> Topology:
    """(a) client <-> gateway on one /24 (198.51.100.10 and .1)."""
    made: list[Namespace] = []
    with _building(made):
        gw = Namespace("gw")
        made.append(gw)
        cl = Namespace("cl")
        made.append(cl)
        veth(cl, "eth0", gw, "eth0")
        cl.add_addr("eth0", f"{CLIENT_ADDR_DIRECT}/24")
        gw.add_addr("eth0", f"{GW_ADDR}/24")
        _gateway_protected_net(gw, PROTECTED_ADDRS)
    return Topology("direct", cl, gw, CLIENT_ADDR_DIRECT, GW_ADDR, namespaces=made)


def routed(*, nat: bool = False, drop_fragments: bool = False) -> Topology:
    """Client <-> router <-> gateway.

    nat: (b) the router masquerades the client side behind 198.51.100.2, so
    the gateway sees the client as .2 and IKE must detect NAT (RFC 7296 2.23).
    drop_fragments: (c) the router drops every IP fragment in both directions,
    so only messages that fit one packet pass (IKE fragmentation, RFC 7383).
    """
    made: list[Namespace] = []
    with _building(made):
        gw = Namespace("gw")
        made.append(gw)
        rt = Namespace("rt")
        made.append(rt)
        cl = Namespace("cl")
        made.append(cl)
        veth(cl, "eth0", rt, "cl0")
        veth(rt, "gw0", gw, "eth0")
        cl.add_addr("eth0", f"{CLIENT_ADDR_ROUTED}/25")
        rt.add_addr("cl0", f"{ROUTER_CLIENT_SIDE}/25")
        rt.add_addr("gw0", f"{ROUTER_GW_SIDE}/25")
        gw.add_addr("eth0", f"{GW_ADDR}/25")
        cl.add_route("default", via=ROUTER_CLIENT_SIDE)
        if not nat:
            gw.add_route("198.51.100.128/25", via=ROUTER_GW_SIDE)
        rt.sysctl("net.ipv4.ip_forward", 1)
        if nat:
            rt.nft(MASQUERADE_RULES.format(oif="gw0"))
        if drop_fragments:
            rt.nft(FRAG_DROP_RULES)
        _gateway_protected_net(gw, PROTECTED_ADDRS)
    kind = "+".join(k for k, on in (("nat", nat), ("fragdrop", drop_fragments)) if on) or "routed"
    return Topology(kind, cl, gw, CLIENT_ADDR_ROUTED, GW_ADDR, router=rt, namespaces=made)


# Multihomed client: two uplinks through one router (RFC 4555 roaming).
CLIENT_UPLINKS = (("eth0", "198.51.100.130", "198.51.100.129", "cl0"),
                  ("eth1", "198.51.100.194", "198.51.100.193", "cl1"))


def multihomed() -> Topology:
    """Client with two uplinks (eth0 198.51.100.130/26, preferred, and eth1
    198.51.100.194/26) to one router, which routes to the gateway.

    Both uplinks carry a default route (eth0 metric 100, eth1 metric 200), so
    when eth0 goes away (Topology.drop_client_uplink("eth0")) traffic moves to
    eth1 and an IKE SA has to follow with MOBIKE. client_addr is eth0's.
    """
    made: list[Namespace] = []
    with _building(made):
        gw = Namespace("gw")
        made.append(gw)
        rt = Namespace("rt")
        made.append(rt)
        cl = Namespace("cl")
        made.append(cl)
        veth(rt, "gw0", gw, "eth0")
        rt.add_addr("gw0", f"{ROUTER_GW_SIDE}/25")
        gw.add_addr("eth0", f"{GW_ADDR}/25")
        gw.add_route("198.51.100.128/25", via=ROUTER_GW_SIDE)
        for metric, (cl_if, cl_addr, rt_addr, rt_if) in zip((100, 200), CLIENT_UPLINKS):
            veth(cl, cl_if, rt, rt_if)
            cl.add_addr(cl_if, f"{cl_addr}/26")
            rt.add_addr(rt_if, f"{rt_addr}/26")
            cl.ip("route", "add", "default", "via", rt_addr, "dev", cl_if, "metric", str(metric))
        rt.sysctl("net.ipv4.ip_forward", 1)
        _gateway_protected_net(gw, PROTECTED_ADDRS)
    return Topology("multihomed", cl, gw, CLIENT_UPLINKS[0][1], GW_ADDR, router=rt,
                    namespaces=made)


def direct6() -> Topology:
    """Client <-> gateway on one IPv6-only link (2001:db8:100::10 and ::1):
    no IPv4 address on the underlay at all, as on a mobile network that
    hands out IPv6 only. The gateway holds PROTECTED_ADDRS6 on its lo (and
    PROTECTED_ADDRS, for tunnels that carry IPv4 inside)."""
    made: list[Namespace] = []
    with _building(made):
        gw = Namespace("gw")
        made.append(gw)
        cl = Namespace("cl")
        made.append(cl)
        for ns in (gw, cl):
            ns.no_dad()
        veth(cl, "eth0", gw, "eth0")
        cl.add_addr("eth0", f"{CLIENT_ADDR6_DIRECT}/64")
        gw.add_addr("eth0", f"{GW_ADDR6}/64")
        _gateway_protected_net(gw, PROTECTED_ADDRS)
        for addr in PROTECTED_ADDRS6:
            gw.add_addr("lo", f"{addr}/128")
    return Topology("direct6", cl, gw, CLIENT_ADDR6_DIRECT, GW_ADDR6, namespaces=made,
                    client_addr6=CLIENT_ADDR6_DIRECT, gw_addr6=GW_ADDR6)


def dual_stack() -> Topology:
    """Client <-> router <-> gateway with IPv4 and IPv6 on every link (the
    routed IPv4 plan, and 2001:db8:101::/64 client side, 2001:db8:100::/64
    gateway side). The client's default routes (both families) go via the
    router, which also holds OUTSIDE_ADDR6 on its lo: an address outside any
    tunnel. The gateway holds PROTECTED_ADDRS and PROTECTED_ADDRS6.
    block_family(topo, 4|6) makes the router drop one family's traffic."""
    made: list[Namespace] = []
    with _building(made):
        gw = Namespace("gw")
        made.append(gw)
        rt = Namespace("rt")
        made.append(rt)
        cl = Namespace("cl")
        made.append(cl)
        for ns in (gw, rt, cl):
            ns.no_dad()
        veth(cl, "eth0", rt, "cl0")
        veth(rt, "gw0", gw, "eth0")
        cl.add_addr("eth0", f"{CLIENT_ADDR_ROUTED}/25")
        rt.add_addr("cl0", f"{ROUTER_CLIENT_SIDE}/25")
        rt.add_addr("gw0", f"{ROUTER_GW_SIDE}/25")
        gw.add_addr("eth0", f"{GW_ADDR}/25")
        cl.add_addr("eth0", f"{CLIENT_ADDR6_ROUTED}/64")
        rt.add_addr("cl0", f"{ROUTER6_CLIENT_SIDE}/64")
        rt.add_addr("gw0", f"{ROUTER6_GW_SIDE}/64")
        gw.add_addr("eth0", f"{GW_ADDR6}/64")
        rt.add_addr("lo", f"{OUTSIDE_ADDR6}/128")
        cl.add_route("default", via=ROUTER_CLIENT_SIDE)
        cl.ip("-6", "route", "add", "default", "via", ROUTER6_CLIENT_SIDE)
        gw.add_route("198.51.100.128/25", via=ROUTER_GW_SIDE)
        gw.add_route("2001:db8:101::/64", via=ROUTER6_GW_SIDE)
        rt.sysctl("net.ipv4.ip_forward", 1)
        rt.sysctl("net.ipv6.conf.all.forwarding", 1)
        _gateway_protected_net(gw, PROTECTED_ADDRS)
        for addr in PROTECTED_ADDRS6:
            gw.add_addr("lo", f"{addr}/128")
    return Topology("dual", cl, gw, CLIENT_ADDR_ROUTED, GW_ADDR, router=rt, namespaces=made,
                    client_addr6=CLIENT_ADDR6_ROUTED, gw_addr6=GW_ADDR6)


def block_family(topo: Topology, family: int) -> None:
    """The router silently drops what it would forward of one address
    family (4 or 6): that family's way to the gateway is broken, as when a
    carrier's IPv6 (or IPv4) does not work, with no error coming back."""
    proto = "ip" if family == 4 else "ip6"
    topo.router.nft(f"""
table {proto} m2i_block {{
    chain block_forward {{
        type filter hook forward priority 0; policy drop;
    }}
}}
""")


def drop_client_uplink(topo: Topology, ifname: str) -> None:
    """Make a client uplink go away (delete its veth pair), as when a modem
    or cable disappears; its routes and address go with it."""
    topo.client.ip("link", "del", ifname)


def add_loss(ns: Namespace, percent: int, table: str = "m2i_loss") -> None:
    """Drop percent % of the packets ns forwards, at random, both ways.

    (tc netem does not exist on these kernels; nftables numgen does.)
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"loss percent out of range: {percent}")
    # numgen yields 0..99, so "< 100" is out of its range: 100 % is a plain drop.
    rule = "counter drop" if percent == 100 else f"numgen random mod 100 < {percent} counter drop"
    ns.nft(f"""
table ip {table} {{
    chain forward_loss {{
        type filter hook forward priority 0; policy accept;
        {rule}
    }}
}}
""")


def nat() -> Topology:
    """(b) client <-> NAT router (nftables masquerade) <-> gateway."""
    return routed(nat=True)


def fragment_dropping() -> Topology:
    """(c) client <-> router that drops all IP fragments <-> gateway."""
    return routed(drop_fragments=True)


# -- probes -----------------------------------------------------------------------

_UDP_SINK = r"""
import os, select, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
linger = float(sys.argv[3])
print("ready", flush=True)
# Receive until stdin closes (the sender is done), then for linger seconds more.
deadline = None
watch = [s, sys.stdin]
while deadline is None or time.monotonic() < deadline:
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    ready = select.select(watch, [], [], left)[0]
    if sys.stdin in ready:
        if not os.read(sys.stdin.fileno(), 100):
            watch = [s]
            deadline = time.monotonic() + linger
    if s in ready:
        data, _ = s.recvfrom(65535)
        print(len(data), flush=True)
"""

_UDP_SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for size in sys.argv[3:]:
    s.sendto(b"x" * int(size), (sys.argv[1], int(sys.argv[2])))
"""


def udp_probe(src: Namespace, dst: Namespace, dst_addr: str, sizes: Sequence[int],
              port: int = 40000, wait_s: float = 1.0) -> list[int]:
    """Send one UDP datagram of each size from src to dst_addr (in dst).

    Returns the sizes that arrived within wait_s after the last was sent, in
    arrival order. Datagrams above the path
    MTU are fragmented by the sender's kernel, so this shows whether a path
    passes IP fragments.
    """
    sink = dst.popen([PYTHON, "-c", _UDP_SINK, dst_addr, str(port), str(wait_s)],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = sink.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"UDP sink in {dst.name} did not start: {line!r}")
        src.run(PYTHON, "-c", _UDP_SEND, dst_addr, str(port), *map(str, sizes))
        out, _ = sink.communicate(timeout=wait_s + 10)   # closes its stdin first
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    return [int(x) for x in out.split()]


_PING = r"""
import os, select, socket, struct, sys, time
v6 = ":" in sys.argv[1]
dst, count, size, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
source = sys.argv[5] if len(sys.argv) > 5 else ""
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
if v6:   # the kernel fills in the ICMPv6 checksum; no IP header comes up
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
echo, echo_reply = (128, 129) if v6 else (8, 0)
if source:
    s.bind((source, 0))
ident = os.getpid() & 0xffff
payload = bytes(i & 0xff for i in range(size))
replies = 0
deadline = time.monotonic() + timeout
for seq in range(1, count + 1):
    hdr = struct.pack("!BBHHH", echo, 0, 0, ident, seq)
    pkt = struct.pack("!BBHHH", echo, 0, 0 if v6 else csum(hdr + payload), ident, seq) + payload
    s.sendto(pkt, (dst, 0))
    wait_until = min(deadline, time.monotonic() + 1.0)
    while True:
        left = wait_until - time.monotonic()
        if left <= 0 or not select.select([s], [], [], left)[0]:
            break
        data, addr = s.recvfrom(65535)
        ihl = 0 if v6 else (data[0] & 0x0f) * 4
        t, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        ok = t == echo_reply and rid == ident and rseq == seq and \
            socket.inet_pton(s.family, addr[0]) == socket.inet_pton(s.family, dst)
        if ok and data[ihl + 8:] == payload:
            replies += 1
            break
    if time.monotonic() >= deadline:
        break
print(replies)
"""


def ping(ns: Namespace, addr: str, count: int = 3, size: int = 56,
         timeout_s: float = 10, source: str | None = None) -> int:
    """Send count ICMP echo requests from ns to addr; return how many came back.

    Each request waits up to 1 s for its reply; the whole run at most
    timeout_s. A raw socket in Python, because iputils ping is not installed
    everywhere. source: bind to this local address.
    """
    argv = [PYTHON, "-c", _PING, addr, str(count), str(size), str(timeout_s)]
    if source:
        argv.append(source)
    proc = ns.run(*argv, timeout=timeout_s + 10)
    return int(proc.stdout.strip() or 0)


_PING_FLOOD = r"""
import json, os, select, signal, socket, struct, sys, threading, time
dst, duration, interval, size = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xffff
payload = bytes(i & 0xff for i in range(size))
sent_at, got_at = {}, {}
done = threading.Event()
ending = threading.Event()   # SIGUSR1: stop sending now (PingFlood.finish)
signal.signal(signal.SIGUSR1, lambda *_: ending.set())
def receive():
    while not done.is_set():
        if not select.select([s], [], [], 0.1)[0]:
            continue
        data, addr = s.recvfrom(65535)
        now = time.monotonic()
        ihl = (data[0] & 0x0f) * 4
        t, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if t == 0 and rid == ident and addr[0] == dst and data[ihl + 8:] == payload:
            got_at.setdefault(rseq, now)
rx = threading.Thread(target=receive)
rx.start()
start = time.monotonic()
print("started", flush=True)
seq = 0
while time.monotonic() - start < duration and seq < 65535 and not ending.is_set():
    seq += 1
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + payload), ident, seq) + payload
    sent_at[seq] = time.monotonic()
    try:
        s.sendto(pkt, (dst, 0))
    except OSError:
        pass
    next_at = start + seq * interval
    left = next_at - time.monotonic()
    if left > 0:
        ending.wait(left)
time.sleep(2.0)   # late replies
done.set()
rx.join()
arrivals = sorted(got_at.values())
gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
lost = [q for q in sent_at if q not in got_at]
print(json.dumps({"sent": len(sent_at), "received": len(got_at), "lost": len(lost),
                  "lost_seqs": lost[:50],
                  "max_gap_ms": round(max(gaps) * 1000, 1) if gaps else None,
                  "max_gap_at_s": round(arrivals[gaps.index(max(gaps))] - start, 2) if gaps else None}),
      flush=True)
"""


class PingFlood:
    """ICMP echo requests from ns to addr every interval_s for duration_s, in
    the background (a raw socket in Python). result() waits for the end and
    returns {"sent", "received", "lost", "lost_seqs", "max_gap_ms"}: max_gap_ms
    is the longest time between two replies in a row (the interval when none
    was lost)."""

    def __init__(self, ns: Namespace, addr: str, duration_s: float, interval_s: float = 0.01,
                 size: int = 56):
        self.duration_s = duration_s
        self.proc = ns.popen([PYTHON, "-c", _PING_FLOOD, addr, str(duration_s), str(interval_s),
                              str(size)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "started":
            raise RuntimeError(f"ping flood did not start: {line!r} {self.proc.stderr.read()}")

    def result(self) -> dict:
        out, err = self.proc.communicate(timeout=self.duration_s + 30)
        if self.proc.returncode != 0:
            raise RuntimeError(f"ping flood failed: {err.strip()}")
        return json.loads(out.strip().splitlines()[-1])

    def finish(self) -> dict:
        """End the flood now (before duration_s) and return result(): the
        echoes already sent still get their time for late replies."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
        return self.result()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_TCP_PEER = r"""
import hashlib, os, socket, sys
role, addr, port, mode, nbytes, timeout = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                           sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))
if role == "listen":
    ls = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(1)
    ls.settimeout(timeout)
    print("ready", flush=True)
    s, _ = ls.accept()
else:
    s = socket.create_connection((addr, port), timeout=timeout)
s.settimeout(timeout)
h = hashlib.sha256()
n = 0
if mode == "send":
    data = os.urandom(nbytes)
    h.update(data)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    n = len(data)
    s.recv(1)   # wait for the receiver to close: everything arrived
else:
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        h.update(b)
        n += len(b)
s.close()
print(n, h.hexdigest(), flush=True)
"""


def tcp_transfer(client: Namespace, server: Namespace, server_addr: str, nbytes: int, *,
                 upload: bool = True, port: int = 40001,
                 timeout_s: float = 60) -> tuple[tuple[int, str], tuple[int, str]]:
    """One TCP connection from client to server_addr (listening in server);
    nbytes of random data go client -> server (upload) or server -> client.

    Returns ((bytes sent, SHA-256 sent), (bytes received, SHA-256 received)),
    as the two ends computed them; equal pairs mean the data arrived intact.
    """
    srv_mode, cl_mode = ("recv", "send") if upload else ("send", "recv")
    srv = server.popen([PYTHON, "-c", _TCP_PEER, "listen", server_addr, str(port), srv_mode,
                        str(nbytes), str(timeout_s)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"TCP peer in {server.name} did not start: {line!r} "
                               f"{srv.stderr.read() if srv.poll() is not None else ''}")
        cl = client.run(PYTHON, "-c", _TCP_PEER, "connect", server_addr, str(port), cl_mode,
                        str(nbytes), str(timeout_s), timeout=timeout_s + 10)
        out, err = srv.communicate(timeout=timeout_s + 10)
        if srv.returncode != 0:
            raise RuntimeError(f"TCP peer in {server.name} failed: {err.strip()}")
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()

    def parse(text: str) -> tuple[int, str]:
        n, digest = text.split()
        return int(n), digest
    srv_res, cl_res = parse(out), parse(cl.stdout)
    return (cl_res, srv_res) if upload else (srv_res, cl_res)


class Capture:
    """tcpdump on one interface of a namespace, written to a pcap file.

    start() returns once tcpdump says it is listening; stop() ends it (SIGINT,
    so the file is complete); read(filter) returns the matching packets as
    tcpdump -n prints them, one line each.
    marker (address, port): before stopping, send UDP datagrams there from ns
    until one is in the file, so everything sent before stop() is in it too
    (tcpdump may otherwise end with packets it has not written yet).
    """

    def __init__(self, ns: Namespace, ifname: str, path: "os.PathLike[str] | str",
                 marker: tuple[str, int] | None = None):
        self.ns = ns
        self.ifname = ifname
        self.path = str(path)
        self.marker = marker
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10) -> "Capture":
        # -Z root: write the file as root (Debian's tcpdump drops to user
        # tcpdump otherwise, who cannot write into a test's folder); -U: write
        # each packet at once.
        self.proc = self.ns.popen(["tcpdump", "-i", self.ifname, "-n", "-U", "-Z", "root",
                                   "--immediate-mode",
                                   "-s", "256", "-w", self.path],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise RuntimeError(f"tcpdump on {self.ns.name}/{self.ifname} did not start")
            if select.select([self.proc.stderr], [], [], left)[0]:
                line = self.proc.stderr.readline()
                if "listening on" in line:
                    return self
                if not line:
                    self.stop()
                    raise RuntimeError(f"tcpdump exited: {self.proc.returncode}")

    def stop(self) -> None:
        """End the capture and flush the file. Idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            if self.marker is not None:
                self._sync()
        finally:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def _sync(self, timeout_s: float = 5) -> None:
        addr, port = self.marker
        send = ("import socket, sys; s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] "
                "else socket.AF_INET, socket.SOCK_DGRAM); "
                "s.sendto(b'm2i-capture-marker', (sys.argv[1], int(sys.argv[2])))")
        deadline = time.monotonic() + timeout_s
        while True:
            self.ns.run(PYTHON, "-c", send, addr, str(port))
            time.sleep(0.05)
            if self.read(f"udp and dst host {addr} and dst port {port}", check=False):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"capture marker to {addr}:{port} never reached "
                                   f"{self.path}")

    def read(self, bpf_filter: str = "", check: bool = True) -> list[str]:
        """The captured packets matching a pcap filter (tcpdump -n -r)."""
        argv = ["tcpdump", "-n", "-r", self.path]
        if bpf_filter:
            argv.append(bpf_filter)
        out = _run(argv, check=check)
        return [line for line in out.stdout.splitlines() if line.strip()]

    def __enter__(self) -> "Capture":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    """`python3 netlab.py sweep`: remove namespaces left by killed runs."""
    if argv[1:] == ["sweep"]:
        for name in sweep_stale():
            print("removed", name)
        return 0
    print("usage: netlab.py sweep", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
