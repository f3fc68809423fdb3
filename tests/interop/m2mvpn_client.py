# SPDX-License-Identifier: Apache-2.0
"""Our own client (the `m2mvpn` command-line tool) inside a netlab namespace.

The command-line contract is DESIGN.md section 5:

    m2mvpn run --profile FILE [--control SOCK] [--state-dir DIR] [-v]
    m2mvpn connect [NAME] | disconnect | status [--json]

The control socket of every instance lives in its own work folder and is
passed to the client commands with ``--control SOCK`` as well (the CLI takes
it on every command), so several clients can run side by side.

Profiles (DESIGN.md section 4) are built by ``make_profile()`` with absolute
paths into the generated test PKI.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

import charon as charonmod
import netlab
import pki as pkimod
import sanitizer

STATES = ("idle", "connecting", "connected", "reconnecting", "disconnecting")


class ClientError(RuntimeError):
    """A client command failed; the message ends with the client log tail."""


def find_binary() -> Path | None:
    """The m2mvpn binary under test: $M2MVPN_BINARY, if it exists."""
    path = os.environ.get("M2MVPN_BINARY")
    if path and Path(path).is_file() and os.access(path, os.X_OK):
        return Path(path)
    return None


def make_profile(pki: pkimod.Pki, auth: str, gw_addr: str, *, name: str = "interop",
                 ike_proposals: Sequence[str] = ("aes256gcm16-prfsha384-x25519",),
                 esp_proposals: Sequence[str] = ("aes256gcm16",),
                 remote_ts: Sequence[str] = (netlab.PROTECTED_NET,),
                 mode: str = "manual", p12: bool = False, p12_password: bool = True,
                 psk: str = charonmod.PSK, eap_password: str | None = charonmod.EAP_PASSWORD,
                 eap_type: str = "mschapv2",
                 fragmentation: bool = True, mobike: bool = True,
                 tun_name: str = "m2m0", kill_switch: bool = False,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A version-1 profile matching gateway_config()'s connection for auth.

    auth: psk | ecdsa | rsa | eap. For certificates: PEM cert + key by default,
    or the .p12 bundle (p12=True; p12_password=False takes the empty-password
    bundle, ECDSA only). eap_type: "mschapv2" or "md5". eap_password=None leaves it out (the client must ask
    through CREDENTIALS_REQUIRED). extra: merged at the top level.
    """
    prof: dict[str, Any] = {
        "version": 1, "name": name, "mode": mode,
        "gateways": [{"host": gw_addr, "port": 500}],
        "local_id": pkimod.CLIENT_ID, "remote_id": pkimod.GATEWAY_ID,
        "ca": [str(pki.root_ca)],
        "ike": {"proposals": list(ike_proposals), "fragmentation": fragmentation,
                "mobike": mobike},
        "esp": {"proposals": list(esp_proposals)},
        "tunnel": {"request_vip": True, "remote_ts": list(remote_ts),
                   "kill_switch": kill_switch, "tun_name": tun_name},
    }
    if kill_switch and os.environ.get("M2MVPN_NFTABLES", "1") == "0":
        # A build without the nftables layer (meson sets M2MVPN_NFTABLES):
        # its kill switch is refused unless the profile accepts routing alone.
        prof["tunnel"]["kill_switch_routing_only"] = True
    if auth == "psk":
        prof["auth"] = {"method": "psk", "psk": psk}
    elif auth in ("ecdsa", "rsa"):
        ck = pki.dev1_ecdsa if auth == "ecdsa" else pki.dev1_rsa
        if p12:
            if auth == "ecdsa":
                bundle = pki.dev1_ecdsa_p12 if p12_password else pki.dev1_ecdsa_p12_nopass
            else:
                bundle = pki.dev1_rsa_p12
            cert = {"source": "file", "file": str(bundle)}
            if p12_password:
                cert["pin"] = pkimod.P12_PASSWORD
        else:
            cert = {"source": "file", "file": str(ck.cert), "key": str(ck.key)}
        prof["auth"] = {"method": "cert", "cert": cert}
    elif auth == "eap":
        eap: dict[str, Any] = {"type": eap_type, "identity": charonmod.EAP_IDENTITY}
        if eap_password is not None:
            eap["password"] = eap_password
        prof["auth"] = {"method": "eap", "eap": eap}
    else:
        raise ValueError(f"unknown auth method {auth!r}")
    prof.update(extra or {})
    return prof


class M2mvpnClient:
    """`m2mvpn run` in a namespace plus its client commands.

    Owns the engine process: stop() (or leaving the with block) sends SIGTERM,
    then SIGKILL, and checks how the engine ended. All files (profile.json,
    control.sock, state/, client.log) are in workdir.
    """

    def __init__(self, ns: netlab.Namespace, binary: Path, workdir: Path,
                 profile: dict[str, Any] | str, *, verbose: bool = True,
                 env: dict[str, str] | None = None):
        self.ns = ns
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.profile = profile
        self.verbose = verbose
        self.profile_path = self.workdir / "profile.json"
        self.control = self.workdir / "control.sock"
        self.state_dir = self.workdir / "state"
        self.log_path = self.workdir / "client.log"
        self.proc: subprocess.Popen | None = None
        self.env = env  # the engine's environment (None: ours)
        self._checked = False

    def start(self, timeout_s: float = 10) -> "M2mvpnClient":
        """Write the profile, start the engine, wait for its control socket.

        On failure the engine is stopped again and ClientError raised.
        """
        try:
            return self._start(timeout_s)
        except BaseException:
            self._terminate(5)
            raise

    def _start(self, timeout_s: float) -> "M2mvpnClient":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)
        text = self.profile if isinstance(self.profile, str) else json.dumps(self.profile, indent=2)
        self.profile_path.write_text(text)
        self.profile_path.chmod(0o600)   # it may hold a PSK
        argv = [str(self.binary), "run", "--profile", str(self.profile_path),
                "--control", str(self.control), "--state-dir", str(self.state_dir)]
        if self.verbose:
            argv.append("-v")
        log = open(self.log_path, "w")
        try:
            self.proc = self.ns.popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=self.env)
        finally:
            log.close()
        self._checked = False
        deadline = time.monotonic() + timeout_s
        while not self.control.exists():
            if self.proc.poll() is not None:
                raise ClientError(self._exited())
            if time.monotonic() > deadline:
                raise ClientError(f"no control socket after {timeout_s}s" + self.log_tail())
            time.sleep(0.05)
        return self

    def _terminate(self, grace_s: float) -> bool:
        """SIGTERM, then SIGKILL after grace_s; True if it was still running."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        return True

    def stop(self, grace_s: float = 30) -> None:
        """SIGTERM, then SIGKILL after grace_s; idempotent. Then the exit is
        checked: a clean stop on SIGTERM exits 0 (tools/service.c leaves
        within its own 10 s stop timeout). Anything else, a sanitizer report
        of the engine included, raises ClientError with the report and the
        log tail. An engine that had already ended before stop() must have
        exited 0 too, or have been killed with SIGKILL (only a test does that,
        on purpose: a sanitizer aborts with SIGABRT)."""
        if self.proc is None or self._checked:
            return
        running = self._terminate(grace_s)
        self._checked = True
        code = self.proc.returncode
        expected = 0 if running or code != -signal.SIGKILL else code
        problem = sanitizer.exit_problem("m2mvpn run", self.proc.pid, code, expected)
        if problem:
            raise ClientError(problem + self.log_tail())

    def __enter__(self) -> "M2mvpnClient":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- client commands --------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 30,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run `m2mvpn <args>` against this instance's control socket."""
        argv = self.ns.argv(str(self.binary), *args, "--control", str(self.control))
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise ClientError(f"m2mvpn {' '.join(args)} exited {proc.returncode}: "
                              f"{proc.stderr.strip()}" + self.log_tail())
        return proc

    def connect(self, name: str | None = None) -> None:
        self.cli("connect", *([name] if name else []))

    def disconnect(self) -> None:
        self.cli("disconnect")

    def login(self, user: str, password: str) -> None:
        self.cli("login", "--user", user, input=password + "\n")

    def pin(self, pin: str) -> None:
        self.cli("pin", input=pin + "\n")

    def status(self) -> dict[str, Any]:
        """`status --json` parsed; its "state" is one of STATES."""
        out = self.cli("status", "--json").stdout
        try:
            st = json.loads(out)
        except json.JSONDecodeError as exc:
            raise ClientError(f"status --json is not JSON ({exc}): {out!r}") from exc
        if st.get("state") not in STATES:
            raise ClientError(f"status --json has no valid state: {st!r}")
        return st

    def wait_for_state(self, state: str = "connected", timeout_s: float = 20) -> dict[str, Any]:
        """Poll status until its state is `state`; returns that status."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        deadline = time.monotonic() + timeout_s
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ClientError(self._exited())
            st = self.status()
            if st["state"] == state:
                return st
            time.sleep(0.1)
        raise ClientError(f"state {state!r} not reached in {timeout_s}s; last {st!r}"
                          + self.log_tail())

    # -- diagnostics --------------------------------------------------------------------
    def _exited(self) -> str:
        """The engine ended by itself: how, its sanitizer report, its log."""
        assert self.proc is not None
        return (f"m2mvpn run ended by itself: {sanitizer.describe_code(self.proc.returncode)}"
                + sanitizer.report_of(self.proc.pid) + self.log_tail())

    def log_tail(self, lines: int = 60) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            tail = []
        return "\n--- m2mvpn log tail ---\n" + "\n".join(tail)

    def rss_kib(self) -> int:
        if self.proc is None:
            raise ClientError("engine not started")
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise ClientError("no VmRSS")


def start_m2mvpn_client(ns: netlab.Namespace, profile_json: dict[str, Any] | str,
                        binary_path: Path | str, workdir: Path | str) -> M2mvpnClient:
    """Write profile_json into workdir and start `<binary> run` in ns.

    Returns the started client; the caller stops it (or uses it in a with
    block after construction through M2mvpnClient directly).
    """
    return M2mvpnClient(ns, Path(binary_path), Path(workdir), profile_json).start()
