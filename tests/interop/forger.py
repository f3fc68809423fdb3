# SPDX-License-Identifier: Apache-2.0
"""An on-path forger for the interop tests (issue 8): it runs on the router
between client and gateway, sees what passes and answers faster than the
gateway can. Python standard library only (AF_PACKET to sniff, a raw IP socket
to send with the gateway's address).

The router's nftables hold back the real packets the forger watches (see
test_forgery.py), and the forger sends them on itself, right after its
forgery: the forgery then always arrives first, the worst case for the
client, and the test does not depend on who wins a race.

  forger.py init IFACE KIND [SWALLOW]   sniff IKE_SA_INIT requests arriving
      on IFACE (the router's client side); for each, send a forged IKE_SA_INIT
      response (KIND: keylen128, unknown-attr, truncated, or no-hash-notify:
      our first proposal as offered, but no SIGNATURE_HASH_ALGORITHMS), then
      the request itself on to the gateway, except the first SWALLOW requests
      (default 0): for those the gateway seems not to answer yet.
  forger.py frag IFACE        sniff the gateway's UDP 4500 datagrams arriving
      on IFACE (the router's gateway side) and send each on to the client;
      after each IKE fragment (SKF) of an IKE_AUTH response, also forged
      copies: the same message ID in the INFORMATIONAL exchange, and one with
      a broken ICV.

Prints "ready" once listening, then one line per forgery; runs until killed.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
IKE_SA_INIT, IKE_AUTH, INFORMATIONAL = 34, 35, 37
PL_SA, PL_KE, PL_NONCE, PL_NOTIFY, PL_SKF = 33, 34, 40, 41, 53
TT_ENCR = 1
ATTR_KEY_LENGTH = 14
N_NAT_SRC, N_NAT_DST = 16388, 16389


def say(text: str) -> None:
    print(text, flush=True)


def udp_packet(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """IPv4 + UDP (checksum 0: none, allowed for IPv4); the kernel fills in
    the IP checksum and total length of IP_HDRINCL packets."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), int.from_bytes(os.urandom(2), "big"),
                     0x4000, 64, socket.IPPROTO_UDP, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return ip + udp


def without_udp_checksum(pkt: bytes) -> bytes:
    """The packet with UDP checksum 0 ("none", IPv4): a sniffed packet from a
    veth may carry only the partial checksum its sender left to offload."""
    ihl = (pkt[0] & 15) * 4
    return pkt[:ihl + 6] + b"\0\0" + pkt[ihl + 8:]


def parse_udp(pkt: bytes):
    """(src, sport, dst, dport, payload) of an unfragmented IPv4 UDP packet, or None."""
    if len(pkt) < 28 or pkt[0] >> 4 != 4 or pkt[9] != socket.IPPROTO_UDP:
        return None
    ihl = (pkt[0] & 15) * 4
    if struct.unpack("!H", pkt[6:8])[0] & 0x3fff:
        return None
    src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
    sport, dport, ulen = struct.unpack("!HHH", pkt[ihl:ihl + 6])
    return src, sport, dst, dport, pkt[ihl + 8:ihl + ulen]


def payloads(msg: bytes):
    """(type, body) of the IKE payload chain, unencrypted messages only."""
    nxt, off = msg[16], 28
    while nxt and off + 4 <= len(msg):
        length = struct.unpack("!H", msg[off + 2:off + 4])[0]
        if length < 4:
            return
        yield nxt, msg[off + 4:off + length]
        nxt, off = msg[off], off + length


def first_transforms(sa_body: bytes) -> list[tuple[int, int, bytes]]:
    """The first transform of each type in the first proposal: (type, id, attrs)."""
    spi_size, n_tr = sa_body[6], sa_body[7]
    off, seen, out = 8 + spi_size, set(), []
    for _ in range(n_tr):
        length = struct.unpack("!H", sa_body[off + 2:off + 4])[0]
        ttype, tid = sa_body[off + 4], struct.unpack("!H", sa_body[off + 6:off + 8])[0]
        if ttype not in seen:
            seen.add(ttype)
            out.append((ttype, tid, sa_body[off + 8:off + length]))
        off += length
    return out


def build_sa(transforms: list[tuple[int, int, bytes]]) -> bytes:
    body = b""
    for i, (ttype, tid, attrs) in enumerate(transforms):
        last = i + 1 == len(transforms)
        body += struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), ttype, 0, tid) + attrs
    return struct.pack("!BBHBBBB", 0, 0, 8 + len(body), 1, 1, 0, len(transforms)) + body


def forged_init_response(req: bytes, kind: str) -> bytes:
    """An IKE_SA_INIT response to `req` that copies our first proposal
    except for what `kind` breaks; its own SPIr, a random KE value."""
    pls = dict(payloads(req))
    transforms = first_transforms(pls[PL_SA])
    group = struct.unpack("!H", pls[PL_KE][:2])[0]
    ke_len = len(pls[PL_KE]) - 4
    keylen = struct.pack("!HH", 0x8000 | ATTR_KEY_LENGTH, 128)
    if kind == "keylen128":      # e.g. ChaCha20-Poly1305 with a Key Length of 128
        transforms = [(t, i, keylen if t == TT_ENCR else a) for t, i, a in transforms]
    elif kind == "unknown-attr":  # an attribute nobody defined
        transforms = [(t, i, a + struct.pack("!HH", 0x8000 | 99, 1) if t == TT_ENCR else a)
                      for t, i, a in transforms]
    sa = build_sa(transforms)
    if kind == "truncated":      # the proposal's length runs past the payload
        sa = sa[:-2]
    chain = [(PL_SA, sa),
             (PL_KE, struct.pack("!HH", group, 0) + os.urandom(ke_len)),
             (PL_NONCE, os.urandom(32)),
             (PL_NOTIFY, struct.pack("!BBH", 0, 0, N_NAT_SRC) + os.urandom(20)),
             (PL_NOTIFY, struct.pack("!BBH", 0, 0, N_NAT_DST) + os.urandom(20))]
    body = b""
    for i, (_, data) in enumerate(chain):
        nxt = chain[i + 1][0] if i + 1 < len(chain) else 0
        body += struct.pack("!BBH", nxt, 0, 4 + len(data)) + data
    hdr = req[:8] + os.urandom(8) + struct.pack("!BBBBII", chain[0][0], 0x20, IKE_SA_INIT, 0x20, 0,
                                                28 + len(body))
    return hdr + body


def is_init_request(ike: bytes) -> bool:
    return (len(ike) >= 28 and ike[18] == IKE_SA_INIT and ike[19] & 0x08 and not ike[19] & 0x20
            and ike[20:24] == b"\0\0\0\0")


def is_auth_fragment(ike: bytes) -> bool:
    return len(ike) >= 28 and ike[16] == PL_SKF and ike[18] == IKE_AUTH and ike[19] & 0x20


def main() -> int:
    mode, iface = sys.argv[1], sys.argv[2]
    kind = sys.argv[3] if mode == "init" else ""
    swallow = int(sys.argv[4]) if mode == "init" and len(sys.argv) > 4 else 0
    sniff = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sniff.bind((iface, 0))
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    say("ready")
    while True:
        pkt, addr = sniff.recvfrom(65535)
        if addr[2] == PACKET_OUTGOING:
            continue
        u = parse_udp(pkt)
        if u is None:
            continue
        src, sport, dst, dport, data = u
        if mode == "init" and dport == 500:
            if is_init_request(data):
                forged = forged_init_response(data, kind)
                raw.sendto(udp_packet(dst, dport, src, sport, forged), (src, 0))
                say(f"forged IKE_SA_INIT response ({kind}) SPIi {data[:8].hex()}")
                if swallow > 0:
                    swallow -= 1
                    say("swallowed the request")
                    continue
            raw.sendto(without_udp_checksum(pkt), (dst, 0))   # the real request, now
        elif mode == "frag" and sport == 4500:
            raw.sendto(without_udp_checksum(pkt), (dst, 0))   # the real datagram, now
            ike = data[4:] if data[:4] == b"\0\0\0\0" else b""
            if is_auth_fragment(ike):
                other = bytearray(ike)
                other[18] = INFORMATIONAL      # same ID, another exchange
                bad_icv = bytearray(ike)
                bad_icv[-1] ^= 1
                for f in (other, bad_icv):
                    raw.sendto(udp_packet(src, sport, dst, dport, b"\0\0\0\0" + bytes(f)), (dst, 0))
                number = struct.unpack("!H", ike[32:34])[0]
                say(f"forged 2 copies of IKE_AUTH fragment {number}")


if __name__ == "__main__":
    sys.exit(main())
