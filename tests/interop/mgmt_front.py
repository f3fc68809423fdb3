# SPDX-License-Identifier: Apache-2.0
"""A stand-in management server for the device-side tests (no real server):
HTTPS on ADDR:PORT that passes POST /.well-known/cmp on to `openssl cmp`'s
mock server (plain HTTP on 127.0.0.1:CMP_PORT) and answers
GET /api/v1/device/profile with the bundle file BUNDLE, to clients whose
certificate chains to DEVICE_CA (mutual TLS), with ETag / If-None-Match.
Requests are logged to stdout, one JSON line each.

    mgmt_front.py ADDR PORT CERT KEY DEVICE_CA CMP_PORT BUNDLE
"""
import hashlib
import http.server
import json
import ssl
import sys
import urllib.request


def main() -> None:
    addr, port, cert, key, device_ca, cmp_port, bundle = sys.argv[1:8]

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # our own log below
            pass

        def _log(self, status, **kw):
            print(json.dumps({"method": self.command, "path": self.path, "status": status, **kw}), flush=True)

        def _send(self, status, body=b"", ctype="application/json", headers=()):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
            self._log(status)

        def do_POST(self):
            if self.path != "/.well-known/cmp":
                return self._send(404, b'{"error": "no such route"}')
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            req = urllib.request.Request(f"http://127.0.0.1:{cmp_port}/pkix/", data=body,
                                         headers={"Content-Type": "application/pkixcmp"})
            with urllib.request.urlopen(req, timeout=20) as rsp:
                self._send(200, rsp.read(), "application/pkixcmp")

        def do_GET(self):
            if self.path != "/api/v1/device/profile":
                return self._send(404, b'{"error": "no such route"}')
            if not self.connection.getpeercert():
                return self._send(401, b'{"error": "client certificate required"}')
            data = open(bundle, "rb").read()
            etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
            if self.headers.get("If-None-Match") == etag:
                return self._send(304, headers=[("ETag", etag)])
            self._send(200, data, "application/pkcs7-mime", [("ETag", etag)])

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(device_ca)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    srv = http.server.ThreadingHTTPServer((addr, int(port)), Handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print(json.dumps({"listening": f"{addr}:{port}"}), flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
