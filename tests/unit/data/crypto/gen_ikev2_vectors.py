#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""
Independent computation of the IKEv2 derivations that have no published
known-answer vectors (CHILD SA KEYMAT, rekeyed SKEYSEED, the CBC+HMAC ICV of
an IKE message), with Python's hmac/hashlib only: a second implementation of
RFC 7296 §2.13/§2.17/§2.18/§3.14 to compare lib/crypto against.

Run with the Debian python3; prints the values tests/unit/test_crypto.c embeds.
"""
import hashlib
import hmac


def prf(key, data, h=hashlib.sha256):
    return hmac.new(key, data, h).digest()


def prf_plus(key, seed, n, h=hashlib.sha256):
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = prf(key, t + seed + bytes([i]), h)
        out += t
        i += 1
    return out[:n]


H = bytes.fromhex
# Inputs: SK_d = the first 32 bytes of the CAVP SP 800-135 IKEv2 SHA-256
# DKM (COUNT with 8-byte nonces), the nonces of that vector, and a made-up
# new g^ir.
sk_d = H("63d018a08f7a29daa7d1f92cb63f45fa39bbaf5e5f1a78139613bb891e3e6bf9")
ni = H("ed80dc79912c32a9")
nr = H("35fb6d1a3feac078")
g_ir_new = bytes(range(0x20, 0x60))  # 64 bytes

# CHILD SA, aes256gcm16 (keys 32 + 4 salt), no PFS: 72 bytes
print("child_gcm256", prf_plus(sk_d, ni + nr, 72).hex())
# CHILD SA, aes128-sha256 with PFS: (16 + 32) * 2 = 96 bytes
print("child_cbc128_sha256_pfs", prf_plus(sk_d, g_ir_new + ni + nr, 96).hex())
# Rekeyed IKE SA SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)
print("skeyseed_rekey", prf(sk_d, g_ir_new + ni + nr).hex())

# CBC+HMAC ICV of an IKE-like message: aad | iv | ciphertext, where the
# ciphertext is NIST SP 800-38A F.2.5 (AES-256-CBC) and the integrity key is
# 32 bytes 0x01..0x20; HMAC-SHA-256 truncated to 128 bits (RFC 4868).
aad = bytes(range(0xa0, 0xa0 + 32))
iv = H("000102030405060708090a0b0c0d0e0f")
ct = H("f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
       "39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b")
integ_key = bytes(range(1, 33))
print("cbc_icv", prf(integ_key, aad + iv + ct)[:16].hex())
# The same with an ESN-style trailer of 4 bytes after the ciphertext.
print("cbc_icv_trailer", prf(integ_key, aad + iv + ct + H("00000001"))[:16].hex())
