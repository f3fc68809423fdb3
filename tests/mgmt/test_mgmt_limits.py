# SPDX-License-Identifier: Apache-2.0
"""Memory bounds of m2mvpn-mgmtd (security review): no request body larger than one
upload chunk is read before authentication, artifacts are uploaded in chunks, and
the open connections per listener are capped (config "max_connections")."""
import glob
import hashlib
import json
import os
import socket
import ssl
import threading
import time

from mgmt_helpers import ADMIN_TOKEN, Mgmtd, admin_json, make_config
from test_dayn import setup_group
from test_mgmt_server import https

MIB = 1024 * 1024
AUTH = {"Authorization": "Bearer " + ADMIN_TOKEN}


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmRSS:"))


def flood(d, srv, claimed, out):
    """One TLS connection: POST /healthz announcing `claimed` bytes, sending until the
    server answers or cuts it. out gets (bytes sent, status line or None)."""
    ctx = ssl.create_default_context(cafile=os.path.join(d, "tls-ca.pem"))
    sent, status = 0, None
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(f"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {claimed}\r\n\r\n".encode())
            block = b"A" * 65536
            try:
                while sent < claimed:
                    s.sendall(block)
                    sent += len(block)
            except OSError:
                pass
            try:
                status = s.recv(64).split(b"\r\n")[0].decode() or None
            except OSError:
                pass
    except OSError:
        pass
    out.append((sent, status))


def test_unauthenticated_body_flood_is_cut(pki):
    """Five unauthenticated connections each announcing and sending 60 MB to /healthz
    (the review's flood): each is answered 413 or closed after at most a few MiB, and
    the server's RSS stays bounded (before: ~400 MB more)."""
    d = pki
    srv = Mgmtd(d, make_config(d, "sqlite:mgmt.db"))
    try:
        base = rss(srv.proc.pid)
        out, peak = [], [base]
        threads = [threading.Thread(target=flood, args=(d, srv, 60_000_000, out)) for _ in range(5)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak.append(rss(srv.proc.pid))
            time.sleep(0.05)
        for t in threads:
            t.join()
        assert len(out) == 5
        for sent, status in out:
            # kernel and TLS buffers let a few MiB through before the cut; never the 60 MB
            assert sent < 16 * MIB, (sent, status)
            assert status is None or " 413 " in status + " ", status
        grown = max(peak) - base
        assert grown < 64 * MIB, f"RSS grew by {grown // MIB} MiB during the flood"
        st, _, body = https(d, srv, "/healthz")
        assert st == 200 and json.loads(body) == {"ok": True}
    finally:
        srv.stop()


def test_connection_cap_pauses_accepting(pki):
    """At max_connections open connections new ones wait in the backlog; served again once one ends."""
    d = pki
    srv = Mgmtd(d, make_config(d, "sqlite:mgmt.db", max_connections=4))
    idle = []
    try:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=30) for _ in range(4)]
        ctx = ssl.create_default_context(cafile=os.path.join(d, "tls-ca.pem"))
        with socket.create_connection(("127.0.0.1", srv.port), timeout=3) as raw:
            try:
                ctx.wrap_socket(raw, server_hostname="127.0.0.1").close()
                handshake = True
            except (socket.timeout, OSError):
                handshake = False
        assert not handshake, "a fifth connection was served with max_connections 4"
        assert "max_connections" in srv.text()
        idle.pop().close()
        deadline = time.monotonic() + 30
        while True:
            try:
                st, _, body = https(d, srv, "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline, "the server does not accept again after a connection ended"
                time.sleep(0.2)
        assert st == 200
    finally:
        for s in idle:
            s.close()
        srv.stop()


def test_chunked_upload(pki, server):
    d, srv = pki, server
    setup_group(d, srv, n=0)
    arts = os.path.join(d, "artifacts")
    # a multi-MiB file through m2mvpn-admin (several chunks)
    blob = os.urandom(5 * MIB + 12345)
    path = os.path.join(d, "big.bin")
    with open(path, "wb") as f:
        f.write(blob)
    sha = hashlib.sha256(blob).hexdigest()
    pub = admin_json(d, srv, "update", "publish", "--group", "fleet", "--file", path, "--version", "5.0")
    assert (pub["artifact"], pub["size"]) == (sha, len(blob))
    with open(os.path.join(arts, sha), "rb") as f:
        assert f.read() == blob
    assert not glob.glob(os.path.join(arts, ".upload-*"))

    def start():
        st, _, body = https(d, srv, "/api/v1/admin/artifacts", method="POST", body=b"", headers=AUTH)
        assert st == 201, body
        return json.loads(body)["upload"]

    def put(uid, off, data, headers=AUTH):
        return https(d, srv, f"/api/v1/admin/artifacts/{uid}?offset={off}", method="PUT", body=data,
                     headers=dict(headers, **{"Content-Type": "application/octet-stream"}))

    def finish(uid, sha, size):
        return https(d, srv, f"/api/v1/admin/artifacts/{uid}/finish", method="POST",
                     body=json.dumps({"sha256": sha, "size": size}).encode(),
                     headers=dict(AUTH, **{"Content-Type": "application/json"}))

    part = os.urandom(MIB)
    good = hashlib.sha256(part).hexdigest()
    # chunks need the bearer token; more than 1 MiB, a wrong offset are refused
    uid = start()
    assert put(uid, 0, part, headers={})[0] == 401
    try:   # above the evhttp body limit: 413, or the connection cut while still sending
        assert put(uid, 0, part + b"x")[0] == 413
    except OSError:
        pass
    assert put(uid, 5, part)[0] == 409
    assert put(uid, 0, part)[0] == 200
    # a wrong sha256 at finish: refused, nothing left (no artifact, no partial file)
    st, _, body = finish(uid, "0" * 64, MIB)
    assert st == 400 and b"refused" in body
    assert not os.path.exists(os.path.join(arts, good)) and not glob.glob(os.path.join(arts, ".upload-*"))
    assert finish(uid, good, MIB)[0] == 404   # gone
    # a wrong size at finish: the same
    uid = start()
    assert put(uid, 0, part)[0] == 200
    st, _, body = finish(uid, good, MIB + 1)
    assert st == 400 and b"refused" in body
    assert not os.path.exists(os.path.join(arts, good)) and not glob.glob(os.path.join(arts, ".upload-*"))
    assert sorted(os.listdir(arts)) == [sha]
