# SPDX-License-Identifier: Apache-2.0
"""strongSwan 5.9 charon instances inside netlab namespaces.

The kernels here have no ESP, so every charon uses the userspace datapath
(kernel-libipsec, a TUN device ipsec0) with kernel-netlink for addresses and
routes. bypass-lan, forecast, farp and dhcp are never loaded: with libipsec,
bypass-lan routes the underlay into ipsec0 and nothing arrives.

Several charons run on one machine: each in its own network namespace and its
own mount namespace with a private tmpfs on /run (pid file and vici socket),
started as ``STRONGSWAN_CONF=<file> /usr/lib/ipsec/charon`` and driven with
``nsenter -t <pid> -m -n swanctl ...``. The mount namespace, and with it the
private /run, goes away with the charon process.

Configuration is generated: ``gateway_config()`` and ``client_config()`` build a
``SwanctlConfig`` (swanctl.conf tree + credential files); ``Charon`` writes it,
with a strongswan.conf that logs to a file, into its work folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import netlab
import pki as pkimod

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"

PSK = "m2m-interop-psk-0123456789abcdef"
EAP_IDENTITY = "dev1"
EAP_PASSWORD = "m2m-eap-pass"

# Plugins loaded explicitly (load_modular would read /etc/strongswan.d, where a
# package update could switch bypass-lan & co. back on).
PLUGINS = ("random nonce x509 revocation constraints pubkey pkcs1 pkcs8 pkcs12 pem "
           "openssl curve25519 chapoly aes sha1 sha2 hmac gcm kdf md5 "
           "kernel-libipsec kernel-netlink socket-default vici updown attr "
           "eap-identity eap-mschapv2 eap-md5")

# Broad gateway defaults: the client's first proposal decides. "default" keeps
# strongSwan's own default list as a fallback.
GATEWAY_IKE_PROPOSALS = ("aes256gcm16-prfsha384-x25519", "aes128gcm16-prfsha256-ecp256",
                         "chacha20poly1305-prfsha256-x25519", "aes256-sha256-modp2048",
                         "aes256-sha384-ecp384", "default")
GATEWAY_ESP_PROPOSALS = ("aes256gcm16", "aes128gcm16", "chacha20poly1305",
                         "aes256-sha256", "aes128-sha256", "default")

AUTH_METHODS = ("psk", "ecdsa", "rsa", "eap")  # "eap-md5" only when asked for


class CharonError(RuntimeError):
    """A charon or swanctl step failed; the message ends with the log tail."""


# -- swanctl.conf -------------------------------------------------------------------

def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v)
    s = str(v)
    if "\n" in s or "{" in s or "}" in s:
        raise ValueError(f"value not representable in swanctl.conf: {s!r}")
    return s


def render_conf(tree: dict[str, Any], indent: int = 0) -> str:
    """Serialise a nested dict in strongSwan's settings syntax.

    One ``key = value`` per line (swanctl rejects several on one line); dicts
    become sections, lists comma-separated values, bools yes/no.
    """
    pad = "    " * indent
    out = []
    for key, val in tree.items():
        if isinstance(val, dict):
            out.append(f"{pad}{key} {{\n{render_conf(val, indent + 1)}{pad}}}\n")
        elif val is not None:
            out.append(f"{pad}{key} = {_value(val)}\n")
    return "".join(out)


@dataclass
class SwanctlConfig:
    """A swanctl.conf tree plus the credential files it needs.

    files: (swanctl subfolder, source path) pairs copied into the charon's
    SWANCTL_DIR: x509 (own certs), x509ca (trust anchors), private (keys).
    """
    tree: dict[str, Any]
    files: list[tuple[str, Path]] = field(default_factory=list)

    def text(self) -> str:
        return render_conf(self.tree)


def _cert_auth(ck: pkimod.CertKey, files: list, *, send_chain: bool = True) -> dict:
    files.append(("x509", ck.cert))
    files.append(("private", ck.key))
    if send_chain:
        # Intermediates in x509/ (not x509ca/) are chain members strongSwan
        # sends in CERT payloads, not trust anchors.
        files.extend(("x509", c) for c in ck.chain)
    return {"auth": "pubkey", "certs": ck.cert.name}


def gateway_config(pki: pkimod.Pki, *, conns: Sequence[str] = AUTH_METHODS,
                   ike_proposals: Sequence[str] = GATEWAY_IKE_PROPOSALS,
                   esp_proposals: Sequence[str] = GATEWAY_ESP_PROPOSALS,
                   pool: str | None = netlab.VIP_POOL,
                   pool6: str | None = None,
                   local_ts: str = netlab.PROTECTED_NET,
                   send_cert: str = "ifasked",
                   ecdsa_cert: pkimod.CertKey | None = None,
                   fragmentation: bool = True, mobike: bool = True,
                   psk: str = PSK, eap_password: str = EAP_PASSWORD,
                   extra: dict[str, Any] | None = None,
                   child_extra: dict[str, Any] | None = None) -> SwanctlConfig:
    """The gateway: one connection per auth method in conns.

    psk    PSK both ways, IDs gw.m2m.test / dev1.m2m.test
    ecdsa  ECDSA gateway cert (signed by root; ecdsa_cert overrides, e.g.
           pki.gw_untrusted), requires an ECDSA client cert
    rsa    RSA-3072 gateway cert signed by the intermediate, which is sent;
           requires an RSA client cert
    eap    gateway ECDSA cert, client EAP-MSCHAPv2 (identity dev1)
    eap-md5  the same with EAP-MD5 (not in the default list: strongSwan
           cannot tell the two EAP connections apart before EAP starts)
    All hand out a virtual IP from pool (CP, RFC 7296 3.15) and offer local_ts.
    pool6: an IPv6 pool as well (or instead, with pool=None): a client that
    asks for both families gets one address of each. local_ts may list
    prefixes of both families, comma-separated.
    Connections for the same client ID are told apart by strongSwan after the
    client's AUTH (it switches to the candidate whose auth constraints match).
    extra: merged into every connection (e.g. {"dpd_delay": "5s"});
    child_extra: merged into every child (e.g. {"rekey_time": "10s"}).
    """
    files: list[tuple[str, Path]] = [("x509ca", pki.root_ca)]
    connections: dict[str, Any] = {}
    secrets: dict[str, Any] = {}

    def base() -> dict[str, Any]:
        c: dict[str, Any] = {
            "version": 2, "local_addrs": "%any", "proposals": list(ike_proposals),
            "fragmentation": fragmentation, "mobike": mobike,
            "send_certreq": True, "send_cert": send_cert, "unique": "replace",
        }
        pools = [n for n, v in (("vpool", pool), ("vpool6", pool6)) if v]
        if pools:
            c["pools"] = ", ".join(pools)
        c.update(extra or {})
        return c

    def children() -> dict[str, Any]:
        return {"net": {"local_ts": local_ts, "esp_proposals": list(esp_proposals),
                        **(child_extra or {})}}

    for method in conns:
        c = base()
        if method == "psk":
            c["local"] = {"auth": "psk", "id": pkimod.GATEWAY_ID}
            c["remote"] = {"auth": "psk", "id": pkimod.CLIENT_ID}
            secrets["ike-psk"] = {"id-gw": pkimod.GATEWAY_ID, "id-dev1": pkimod.CLIENT_ID,
                                  "secret": psk}
        elif method == "ecdsa":
            c["local"] = _cert_auth(ecdsa_cert or pki.gw_ecdsa, files) | {"id": pkimod.GATEWAY_ID}
            # Key type constraint: an RSA client moves on to the "rsa" candidate.
            c["remote"] = {"auth": "ecdsa-256", "id": pkimod.CLIENT_ID}
        elif method == "rsa":
            c["local"] = _cert_auth(pki.gw_rsa, files) | {"id": pkimod.GATEWAY_ID}
            # Client chains through the intermediate (dev1-rsa).
            c["remote"] = {"auth": "pubkey", "id": pkimod.CLIENT_ID,
                           "cacerts": pki.intermediate_ca.name}
            files.append(("x509ca", pki.intermediate_ca))
        elif method in ("eap", "eap-md5"):
            c["local"] = _cert_auth(ecdsa_cert or pki.gw_ecdsa, files) | {"id": pkimod.GATEWAY_ID}
            c["remote"] = {"auth": "eap-mschapv2" if method == "eap" else "eap-md5", "eap_id": "%any"}
            secrets["eap-dev1"] = {"id": EAP_IDENTITY, "secret": eap_password}
        else:
            raise ValueError(f"unknown auth method {method!r}")
        c["children"] = children()
        connections[method] = c

    tree: dict[str, Any] = {"connections": connections, "secrets": secrets}
    if pool or pool6:
        tree["pools"] = {n: {"addrs": v} for n, v in (("vpool", pool), ("vpool6", pool6)) if v}
    return SwanctlConfig(tree, _dedup(files))


def client_config(pki: pkimod.Pki, auth: str, gw_addr: str, *,
                  ike_proposals: Sequence[str] = ("aes256gcm16-prfsha384-x25519",),
                  esp_proposals: Sequence[str] = ("aes256gcm16",),
                  remote_ts: str = netlab.PROTECTED_NET,
                  vip: bool = True, fragmentation: bool = True, mobike: bool = True,
                  psk: str = PSK, trust: Sequence[Path] | None = None,
                  extra: dict[str, Any] | None = None,
                  child_extra: dict[str, Any] | None = None) -> SwanctlConfig:
    """A strongSwan client (the baseline peer), connection "gw", child "net".

    auth: psk | ecdsa | rsa | eap (see gateway_config). The client trusts only
    the root CA (trust overrides), so with rsa the gateway must send the
    intermediate. vip: request a virtual IP (CP) instead of using the underlay
    address as inner address. extra/child_extra: merged into the connection
    and its child "net".
    """
    files: list[tuple[str, Path]] = [("x509ca", p) for p in (trust or [pki.root_ca])]
    c: dict[str, Any] = {
        "version": 2, "remote_addrs": gw_addr, "proposals": list(ike_proposals),
        "fragmentation": fragmentation, "mobike": mobike, "send_certreq": True,
    }
    if vip:
        c["vips"] = "0.0.0.0"
    secrets: dict[str, Any] = {}
    remote: dict[str, Any] = {"id": pkimod.GATEWAY_ID}
    if auth == "psk":
        c["local"] = {"auth": "psk", "id": pkimod.CLIENT_ID}
        remote["auth"] = "psk"
        secrets["ike-psk"] = {"id-gw": pkimod.GATEWAY_ID, "id-dev1": pkimod.CLIENT_ID,
                              "secret": psk}
    elif auth in ("ecdsa", "rsa"):
        ck = pki.dev1_ecdsa if auth == "ecdsa" else pki.dev1_rsa
        # Without its intermediate the client knows only the root, so the
        # gateway has to send the intermediate (and the client cannot send
        # its own; the gateway trusts the intermediate directly).
        c["local"] = _cert_auth(ck, files, send_chain=False) | {"id": pkimod.CLIENT_ID}
        remote["auth"] = "pubkey"
    elif auth == "eap":
        c["local"] = {"auth": "eap-mschapv2", "id": pkimod.CLIENT_ID, "eap_id": EAP_IDENTITY}
        remote["auth"] = "pubkey"
        secrets["eap-dev1"] = {"id": EAP_IDENTITY, "secret": EAP_PASSWORD}
    else:
        raise ValueError(f"unknown auth method {auth!r}")
    c["remote"] = remote
    c["children"] = {"net": {"remote_ts": remote_ts, "esp_proposals": list(esp_proposals),
                             "start_action": "none", **(child_extra or {})}}
    c.update(extra or {})
    return SwanctlConfig({"connections": {"gw": c}, "secrets": secrets}, _dedup(files))


def _dedup(files: Iterable[tuple[str, Path]]) -> list[tuple[str, Path]]:
    seen, out = set(), []
    for f in files:
        if f not in seen:
            seen.add(f)
            out.append(f)
    return out


def strongswan_conf(log_path: Path, options: dict[str, Any] | None = None) -> str:
    """strongswan.conf for one charon: fixed plugin list, file log, libipsec."""
    charon: dict[str, Any] = {
        "load": PLUGINS,
        "install_virtual_ip": True,
        "filelog": {"m2i": {"path": str(log_path), "time_format": "%H:%M:%S",
                            "flush_line": True, "append": False, "default": 1,
                            "ike": 2, "cfg": 2, "knl": 1, "enc": 1, "net": 1}},
        "plugins": {"kernel-libipsec": {"load": True}},
    }
    charon.update(options or {})
    return render_conf({"charon": charon})


# -- list-sas parsing -----------------------------------------------------------------

def parse_pretty(text: str) -> list[dict[str, Any]]:
    """Parse `swanctl --list-sas --pretty` output into one dict per vici message.

    Lines are ``name {``, ``}``, ``key = value``, ``key = [`` ... ``]``.
    Values stay strings; lists become Python lists.
    """
    messages: list[dict[str, Any]] = []
    stack: list[dict[str, Any]] = []
    list_key: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if list_key is not None:
            if line == "]":
                list_key = None
            else:
                stack[-1][list_key].append(line)
            continue
        if line.endswith("{"):
            name = line[:-1].strip()
            node: dict[str, Any] = {}
            if stack:
                stack[-1][name] = node
            else:
                messages.append(node)
                node["_message"] = name
            stack.append(node)
        elif line == "}":
            if not stack:
                raise ValueError(f"unbalanced '}}' in list-sas output: {text!r}")
            stack.pop()
        elif " = " in line or line.endswith(" ="):
            key, _, val = line.partition(" =")
            val = val.strip()
            if not stack:
                raise ValueError(f"value outside a section: {line!r}")
            if val == "[":
                stack[-1][key] = []
                list_key = key
            else:
                stack[-1][key] = val
        else:
            raise ValueError(f"unexpected list-sas line: {line!r}")
    if stack:
        raise ValueError("unterminated section in list-sas output")
    return messages


def sas_from_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten list-sa events into a list of IKE SA dicts.

    Each IKE SA dict has "name" (connection) plus strongSwan's keys (state,
    encr-alg, prf-alg, dh-group, local-host, remote-host, nat-remote, ...);
    "child-sas" is a dict of CHILD SA dicts, each with "name" added (state,
    protocol, encap, encr-alg, integ-alg, bytes-in, bytes-out, local-ts, ...).
    """
    sas = []
    for msg in messages:
        for name, ike in msg.items():
            if name == "_message" or not isinstance(ike, dict):
                continue
            ike = dict(ike, name=name)
            children = {}
            for key, child in (ike.get("child-sas") or {}).items():
                children[key] = dict(child, key=key)
                children[key].setdefault("name", key)
            ike["child-sas"] = children
            sas.append(ike)
    return sas


# -- the process ------------------------------------------------------------------------

class Charon:
    """One charon in a namespace. Use as a context manager or call stop().

    workdir: a folder only this instance uses; it receives strongswan.conf,
    swanctl/ (SWANCTL_DIR with swanctl.conf and credentials) and charon.log.
    options: merged into the charon section of strongswan.conf.
    """

    def __init__(self, ns: netlab.Namespace, workdir: Path, config: SwanctlConfig, *,
                 name: str = "charon", options: dict[str, Any] | None = None):
        self.ns = ns
        self.name = name
        self.workdir = Path(workdir)
        self.config = config
        self.options = options or {}
        self.log_path = self.workdir / "charon.log"
        self.conf_path = self.workdir / "strongswan.conf"
        self.swanctl_dir = self.workdir / "swanctl"
        self.proc: subprocess.Popen | None = None

    # -- lifecycle ------------------------------------------------------------------
    def _write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(strongswan_conf(self.log_path, self.options))
        if self.swanctl_dir.exists():
            shutil.rmtree(self.swanctl_dir)
        for sub in ("x509", "x509ca", "private", "conf.d"):
            (self.swanctl_dir / sub).mkdir(parents=True)
        for sub, src in self.config.files:
            shutil.copy(src, self.swanctl_dir / sub / Path(src).name)
        (self.swanctl_dir / "swanctl.conf").write_text(self.config.text())

    def start(self, timeout_s: float = 10) -> "Charon":
        """Start charon, wait for its vici socket, load the configuration.

        On failure charon is stopped again and CharonError raised.
        """
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> "Charon":
        self._write_files()
        script = ("mount -t tmpfs none /run && "
                  f"exec env STRONGSWAN_CONF={self.conf_path} {CHARON}")
        out = open(self.workdir / "charon.stdout", "w")
        try:
            self.proc = self.ns.popen(["unshare", "-m", "--propagation", "private",
                                       "sh", "-c", script],
                                      stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        finally:
            out.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise CharonError(f"{self.name} exited with {self.proc.returncode}"
                                  + self.log_tail())
            if self.swanctl("--stats", check=False, timeout=5).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise CharonError(f"{self.name}: vici not up after {timeout_s}s"
                                  + self.log_tail())
            time.sleep(0.1)
        self.load_all()
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise CharonError(f"{self.name} not started")
        # ip netns exec, unshare and sh all exec, so the Popen pid is charon's.
        return self.proc.pid

    def stop(self, grace_s: float = 5) -> None:
        """SIGTERM, then SIGKILL after grace_s. Idempotent.

        The private /run mount lives in charon's own mount namespace and
        disappears with the process.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def __enter__(self) -> "Charon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- swanctl ---------------------------------------------------------------------
    def swanctl(self, *args: str, check: bool = True,
                timeout: float = 30) -> subprocess.CompletedProcess:
        """Run swanctl in charon's mount+network namespaces."""
        argv = ["nsenter", "-t", str(self.pid), "-m", "-n",
                "env", f"SWANCTL_DIR={self.swanctl_dir}", SWANCTL, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise CharonError(f"{self.name}: swanctl {' '.join(args)} exited "
                              f"{proc.returncode}\n{proc.stdout}{proc.stderr}"
                              + self.log_tail())
        return proc

    def load_all(self) -> None:
        self.swanctl("--load-all", "--file", str(self.swanctl_dir / "swanctl.conf"))

    def initiate(self, child: str = "net", ike: str | None = None,
                 timeout_s: int = 20) -> float:
        """Initiate child (and its IKE SA); return seconds until swanctl said done.

        Raises CharonError (with the log tail) when establishing fails.
        """
        args = ["--initiate", "--child", child, "--timeout", str(timeout_s)]
        if ike:
            args += ["--ike", ike]
        t0 = time.monotonic()
        self.swanctl(*args, timeout=timeout_s + 10)
        return time.monotonic() - t0

    def terminate(self, ike: str) -> None:
        """Delete the IKE SA(s) of connection ike (and their CHILD SAs)."""
        self.swanctl("--terminate", "--ike", ike, "--timeout", "10")

    def rekey(self, *, child: str | None = None, ike: str | None = None,
              reauth: bool = False) -> None:
        """Start rekeying the CHILD SA(s) called child, or the IKE SA(s) of
        connection ike (reauth: reauthenticate instead). Returns when queued;
        wait for the outcome with wait_for_sa()/wait_for_log()."""
        if (child is None) == (ike is None):
            raise ValueError("rekey: give exactly one of child or ike")
        args = ["--rekey", "--child", child] if child else ["--rekey", "--ike", ike]
        if reauth:
            args.append("--reauth")
        self.swanctl(*args)

    def wait_for_log(self, text: str, timeout_s: float = 10, after: int = 0) -> int:
        """Wait until text appears in charon's log at or after character
        offset `after`; returns the offset just past the match."""
        deadline = time.monotonic() + timeout_s
        while True:
            log = self.log_text()
            pos = log.find(text, after)
            if pos >= 0:
                return pos + len(text)
            if time.monotonic() > deadline:
                raise CharonError(f"{self.name}: {text!r} not logged within {timeout_s}s"
                                  + self.log_tail())
            time.sleep(0.1)

    def list_sas(self) -> list[dict[str, Any]]:
        """All IKE SAs with their CHILD SAs (see sas_from_messages)."""
        out = self.swanctl("--list-sas", "--pretty").stdout
        return sas_from_messages(parse_pretty(out))

    def wait_for_sa(self, ike: str | None = None, child: str | None = None,
                    timeout_s: float = 20) -> dict[str, Any]:
        """Wait until an IKE SA (named ike, or any) is ESTABLISHED and, if child
        is given, has that CHILD SA INSTALLED. Returns the IKE SA dict."""
        deadline = time.monotonic() + timeout_s
        last: list[dict[str, Any]] = []
        while True:
            last = self.list_sas()
            for sa in last:
                if ike is not None and sa["name"] != ike:
                    continue
                if sa.get("state") != "ESTABLISHED":
                    continue
                if child is None or any(c.get("name") == child and c.get("state") == "INSTALLED"
                                        for c in sa["child-sas"].values()):
                    return sa
            if time.monotonic() > deadline:
                raise CharonError(f"{self.name}: no established SA ike={ike} child={child} "
                                  f"after {timeout_s}s; SAs: {last}" + self.log_tail())
            time.sleep(0.2)

    # -- diagnostics -------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"\n--- {self.name} log tail ({self.log_path.name}) ---\n" + "\n".join(tail)

    def rss_kib(self) -> int:
        """Resident set size of the charon process in KiB."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise CharonError(f"{self.name}: no VmRSS")


def child_of(sa: dict[str, Any], name: str = "net") -> dict[str, Any]:
    """The CHILD SA called name of an IKE SA dict; KeyError if absent."""
    for child in sa["child-sas"].values():
        if child.get("name") == name:
            return child
    raise KeyError(f"no CHILD SA {name!r} in {sa.get('name')!r}: {list(sa['child-sas'])}")


def os_check() -> str | None:
    """Why charon cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in (CHARON, "/usr/sbin/swanctl", "/usr/bin/nsenter", "/usr/bin/unshare"):
        if not os.path.exists(tool):
            return f"{tool} not installed"
    return None
