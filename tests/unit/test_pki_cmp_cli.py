#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""server/pki's CMP handler against the real `openssl cmp` client (OpenSSL 3.0).

A tiny HTTP front (this script) passes each POSTed request to the harness
(pki_cmp_stdio), which runs pki_cmp_handle as the management server does. It
runs in a network namespace of its own (unshare -n, loopback only).
Usage: test_pki_cmp_cli.py PATH_TO_pki_cmp_stdio
"""
import http.server
import os
import subprocess
import sys
import tempfile
import threading

TOKEN_ID = "00112233aabbccdd"
TOKEN_KEY = "11" * 32


def token_secret(key_hex, token_id):
    import base64
    import hashlib
    import hmac
    mac = hmac.new(bytes.fromhex(key_hex), b"m2mvpn-enrol:" + token_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def run(cmd, **kw):
    # `openssl cmp` writes its log and errors to stdout: one stream for the checks
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, **kw)


def main():
    harness = os.path.abspath(sys.argv[1])
    if os.environ.get("PKI_CLI_NETNS") != "1":
        # our own network namespace: only its loopback, nothing outside is touched
        env = dict(os.environ, PKI_CLI_NETNS="1")
        return subprocess.call(["unshare", "-n", sys.executable, __file__, harness], env=env)
    subprocess.check_call(["ip", "link", "set", "lo", "up"])
    d = tempfile.mkdtemp(prefix="pki_cmp_cli.")
    ca_key, ca_crt, dev_key = (os.path.join(d, n) for n in ("ca.key", "ca.crt", "dev.key"))
    subprocess.check_call(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                           "-nodes", "-keyout", ca_key, "-out", ca_crt, "-subj", "/CN=m2mvpn test device CA",
                           "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
                           "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.check_call(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                           "-out", dev_key])
    state = {"verdict": "issue", "log": os.path.join(d, "hooks.log")}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            p = subprocess.run([harness, ca_crt, ca_key, TOKEN_KEY, TOKEN_ID, state["verdict"], state["log"]],
                               input=body, capture_output=True, timeout=30)
            if p.returncode != 0:
                self.send_response(400)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/pkixcmp")
            self.send_header("Content-Length", str(len(p.stdout)))
            self.end_headers()
            self.wfile.write(p.stdout)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    failures = []

    def check(name, ok, detail=""):
        print(("ok   " if ok else "FAIL ") + name + ("" if ok else ": " + detail))
        if not ok:
            failures.append(name)

    def hooks():
        try:
            with open(state["log"]) as f:
                return f.read().split("\n")
        finally:
            open(state["log"], "w").close()

    def cmp(secret, certout, *extra):
        return run(["openssl", "cmp", "-cmd", "ir", "-server", "127.0.0.1:%d" % port, "-path", ".well-known/cmp",
                    "-ref", TOKEN_ID, "-secret", "pass:" + secret, "-newkey", dev_key, "-subject", "/CN=hint",
                    "-certout", certout, "-total_timeout", "20", *extra])

    secret = token_secret(TOKEN_KEY, TOKEN_ID)
    open(state["log"], "w").close()
    # 1. issue, implicit confirmation asked: the CLI accepts the MAC-protected ip
    crt = os.path.join(d, "dev1.crt")
    p = cmp(secret, crt, "-implicit_confirm")
    check("ir implicit confirm: enrolled", p.returncode == 0 and os.path.exists(crt), p.stdout[-600:])
    if os.path.exists(crt):
        v = run(["openssl", "verify", "-CAfile", ca_crt, "-purpose", "sslclient", crt])
        check("certificate chains to the CA for clientAuth", v.returncode == 0, v.stdout)
        s = run(["openssl", "x509", "-in", crt, "-noout", "-subject"])
        check("subject", "CN = dev-0123456789abcdef, O = m2mvpn test" in s.stdout, s.stdout)
    check("hooks: issued once", hooks().count("issued dev-0123456789abcdef") == 1)
    # 2. issue with certConf (no implicit confirmation): the stateless certConf is answered
    crt = os.path.join(d, "dev2.crt")
    p = cmp(secret, crt)
    check("ir + certConf: enrolled", p.returncode == 0 and os.path.exists(crt), p.stdout[-600:])
    hooks()
    # 3. the operator rejected: the CLI shows the reason
    state["verdict"] = "reject"
    p = cmp(secret, os.path.join(d, "dev3.crt"))
    check("rejected with the reason", p.returncode != 0 and "enrolment rejected by the operator" in p.stdout,
          p.stdout[-600:])
    hooks()
    # 4. a wrong secret: refused, the store never asked to enrol
    state["verdict"] = "issue"
    bad = ("A" if secret[0] != "A" else "B") + secret[1:]
    p = cmp(bad, os.path.join(d, "dev4.crt"))
    h = hooks()
    check("wrong secret refused", p.returncode != 0 and not os.path.exists(os.path.join(d, "dev4.crt")),
          p.stdout[-600:])
    check("wrong secret: the server looked the token up", ("token_secret " + TOKEN_ID) in h, repr(h))
    check("wrong secret: enrol never called", not any(line.startswith("enrol") for line in h), repr(h))
    # 5. pending: the CLI polls (pollReq, answered with checkAfter) until its total timeout
    state["verdict"] = "pending"
    p = run(["openssl", "cmp", "-cmd", "ir", "-server", "127.0.0.1:%d" % port, "-path", ".well-known/cmp",
             "-ref", TOKEN_ID, "-secret", "pass:" + secret, "-newkey", dev_key, "-subject", "/CN=hint",
             "-certout", os.path.join(d, "dev5.crt"), "-total_timeout", "3"])
    h = hooks()
    check("pending: polled, no certificate", p.returncode != 0 and "received POLLREP" in p.stdout
          and h.count("enrol poll") >= 1
          and "issued" not in " ".join(h), repr(h) + p.stdout[-400:])
    srv.shutdown()
    subprocess.call(["rm", "-rf", d])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
