# SPDX-License-Identifier: Apache-2.0
"""Helpers of the management server tests: a PKI made with the openssl
command, a config, m2mvpn-mgmtd on loopback, m2mvpn-admin runs."""
import base64
import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time

MGMTD = os.environ.get("M2MVPN_MGMTD", "")
ADMIN = os.environ.get("M2MVPN_ADMIN", "")
TEST_STORE = os.environ.get("M2MVPN_TEST_STORE", "")
ADMIN_TOKEN = "adm-" + os.urandom(12).hex()


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def make_pki(d, ips=("127.0.0.1",)):
    """TLS CA + server certificate for the addresses ips, device CA, bundle signer, token key."""
    def key(name):
        sh("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{d}/{name}.key")

    def selfsigned(name, cn, usage="keyCertSign,cRLSign"):
        key(name)
        sh("openssl", "req", "-x509", "-new", "-key", f"{d}/{name}.key", "-subj", f"/CN={cn}", "-days", "30",
           "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical," + usage,
           "-out", f"{d}/{name}.pem")

    selfsigned("tls-ca", "test TLS CA")
    # digitalSignature: the device CA also signs the CMP answers to signed requests (KUR, RR)
    selfsigned("device-ca", "test device CA", "keyCertSign,cRLSign,digitalSignature")
    key("server")
    sh("openssl", "req", "-new", "-key", f"{d}/server.key", "-subj", "/CN=127.0.0.1", "-out", f"{d}/server.csr")
    with open(f"{d}/server.ext", "w") as f:
        f.write("subjectAltName=" + ",".join("IP:" + ip for ip in ips) + "\nextendedKeyUsage=serverAuth\n")
    sh("openssl", "x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/tls-ca.pem", "-CAkey", f"{d}/tls-ca.key",
       "-CAcreateserial", "-days", "30", "-extfile", f"{d}/server.ext", "-out", f"{d}/server.pem")
    key("signer")
    sh("openssl", "req", "-x509", "-new", "-key", f"{d}/signer.key", "-subj", "/CN=test bundle signer",
       "-days", "30", "-out", f"{d}/signer.pem")
    with open(f"{d}/token.key", "wb") as f:
        f.write(os.urandom(32))


def make_config(d, db_url, name="mgmtd.json", **extra):
    cfg = {"listen": "127.0.0.1:0", "tls_cert": "server.pem", "tls_key": "server.key",
           "device_ca_cert": "device-ca.pem", "device_ca_key": "file:device-ca.key",
           "bundle_signer_cert": "signer.pem", "bundle_signer_key": "file:signer.key",
           "token_key": "token.key",
           "admin_token_sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(),
           "database": db_url, "cert_days": 30, "org": "m2mvpn test"}
    cfg.update(extra)
    path = os.path.join(d, name)
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


class Mgmtd:
    """m2mvpn-mgmtd started on 127.0.0.1 (or host) with an ephemeral port (read from its log).
    wrap: a command prefix for it and for m2mvpn-admin (e.g. ip netns exec NS)."""

    def __init__(self, d, config, tag="mgmtd", wait=True, host="127.0.0.1", wrap=(), env=None):
        self.log = os.path.join(d, tag + ".log")
        self.logf = open(self.log, "w")
        self.host, self.wrap = host, list(wrap)
        self.proc = subprocess.Popen([*self.wrap, MGMTD, "--config", config], stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
        self.port = None
        if wait:
            self.wait_ready()

    def wait_ready(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"listening on " + re.escape(self.host) + r" port (\d+)", self.text())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise AssertionError("m2mvpn-mgmtd exited: " + self.text())
            time.sleep(0.05)
        assert self.port, "m2mvpn-mgmtd did not start within 30 s: " + self.text()
        self.url = f"https://{self.host}:{self.port}"

    def text(self):
        with open(self.log) as f:
            return f.read()

    def stop(self):
        """SIGTERM: a clean stop, exit 0 (a sanitizer build's report would make it fail)."""
        clean = self.proc.poll() is None
        if clean:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                clean = False
        self.logf.close()
        assert clean and self.proc.returncode == 0, "m2mvpn-mgmtd did not stop cleanly: " + self.text()[-3000:]


def sign_bundle(d, out, device, version, not_after, deployment, payload, type="profile"):
    """A bundle as the server makes one (CMS SignedData, DER, content attached,
    the day-0 manifest with "deployment") of payload (bytes), signed with the
    server's bundle key d/signer.key, written to out: for what the server never
    makes (an older version, an expired one), served with the test knob
    M2MVPN_MGMTD_TEST_BUNDLES (docs/mgmt.md)."""
    manifest = {"format": 1, "type": type, "device": device, "version": version, "not_after": not_after,
                "sha256": hashlib.sha256(payload).hexdigest(), "payload": base64.b64encode(payload).decode(),
                "deployment": deployment}
    src = out + ".json"
    with open(src, "w") as f:
        json.dump(manifest, f)
    sh("openssl", "cms", "-sign", "-signer", f"{d}/signer.pem", "-inkey", f"{d}/signer.key", "-in", src,
       "-binary", "-nodetach", "-outform", "DER", "-out", out)
    os.unlink(src)


def admin(d, srv, *args, token=ADMIN_TOKEN, check=True):
    env = dict(os.environ, M2MVPN_ADMIN_TOKEN=token)
    r = subprocess.run([*getattr(srv, "wrap", []), ADMIN, "--server", srv.url, "--ca", os.path.join(d, "tls-ca.pem"), *args],
                       capture_output=True, text=True, env=env, timeout=60)
    if check:
        assert r.returncode == 0, f"m2mvpn-admin {' '.join(args)}: {r.stderr}"
    return r


def admin_json(d, srv, *args):
    return json.loads(admin(d, srv, "--json", *args).stdout)


TEMPLATE = {
    "version": 1, "name": "fleet-${device_id}", "mode": "always-on",
    "gateways": [{"host": "198.51.100.1"}], "local_id": "${device_id}", "remote_id": "gw.m2m.test",
    "auth": {"method": "psk", "psk": "must-be-replaced"},
    "tunnel": {"request_vip": True, "remote_ts": ["198.18.0.0/15"]},
}


def pg_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(workdir, wrap=()):
    """A PostgreSQL of its own (initdb + pg_ctl in workdir/pg, as "nobody" when
    run as root) on 127.0.0.1; wrap: a command prefix (e.g. ip netns exec NS).
    Yields the libpq URL; None if the server binaries are missing."""
    bindir = pg_bin()
    if not bindir:
        yield None
        return
    run_as = list(wrap)
    if os.geteuid() == 0:
        run_as += ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    data = os.path.join(workdir, "pg")
    os.mkdir(data, 0o700)
    if os.geteuid() == 0:
        shutil.chown(data, "nobody", "nogroup")
    subprocess.run(run_as + [f"{bindir}/initdb", "-D", data, "-U", "m2m", "-A", "trust", "--no-sync"],
                   check=True, capture_output=True, timeout=120)
    port = free_port()
    opts = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off"
    subprocess.run(run_as + [f"{bindir}/pg_ctl", "-D", data, "-o", opts, "-l", f"{data}/log", "-w", "-t", "60",
                             "start"], check=True, capture_output=True, timeout=120)
    try:
        yield f"postgresql://m2m@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(run_as + [f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)


def cert_serial(path):
    """The serial number of the PEM certificate at path (norm_serial form)."""
    out = sh("openssl", "x509", "-in", str(path), "-noout", "-serial").stdout
    return norm_serial(out.strip().split("=", 1)[1])


def norm_serial(hexstr):
    """A hex serial as one form (lower case, no leading zeros) to compare the server's, openssl's and the device's."""
    return hexstr.strip().lower().lstrip("0")


def cert_matches_key(cert, key, password=""):
    """True when the PEM certificate's public key is the one of the PEM private key file."""
    pub = sh("openssl", "x509", "-in", str(cert), "-noout", "-pubkey").stdout
    pub2 = sh("openssl", "pkey", "-in", str(key), "-passin", "pass:" + password, "-pubout").stdout
    return bool(pub.strip()) and pub.strip() == pub2.strip()


def cert_not_after(path):
    """The notAfter of the PEM certificate at path, Unix time."""
    import calendar
    out = sh("openssl", "x509", "-in", str(path), "-noout", "-enddate").stdout.strip().split("=", 1)[1]
    return calendar.timegm(time.strptime(out.replace("  ", " "), "%b %d %H:%M:%S %Y GMT"))
