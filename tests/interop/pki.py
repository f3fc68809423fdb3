# SPDX-License-Identifier: Apache-2.0
"""Test PKI, generated at test time with the openssl command-line tool.

    root CA (ECDSA P-256)
     |- intermediate CA (RSA-3072)
     |   |- gw-rsa     RSA-3072, SAN DNS:gw.m2m.test   (chain needs the intermediate)
     |   `- dev1-rsa   RSA-3072, SAN DNS:dev1.m2m.test
     |- gw-ecdsa       ECDSA P-256, SAN DNS:gw.m2m.test
     `- dev1-ecdsa     ECDSA P-256, SAN DNS:dev1.m2m.test
    untrusted CA (ECDSA P-256)
     `- gw-untrusted   ECDSA P-256, SAN DNS:gw.m2m.test  (for negative tests)

Keys are PEM PKCS#8 without a passphrase. The .p12 bundles hold a client key,
its certificate and the chain up to (not including) the root.

Nothing here is secret: a fresh PKI lives in a temporary folder for one test
session and is thrown away with it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

GATEWAY_ID = "gw.m2m.test"
CLIENT_ID = "dev1.m2m.test"
P12_PASSWORD = "m2m-p12-pass"
DAYS = 30


@dataclass(frozen=True)
class CertKey:
    """A certificate (PEM), its private key (PEM PKCS#8) and its issuer chain."""
    cert: Path
    key: Path
    chain: tuple[Path, ...] = ()   # intermediates between cert and root, nearest first


@dataclass(frozen=True)
class Pki:
    """File paths of one generated test PKI (see the module doc for the tree)."""
    dir: Path
    root_ca: Path
    intermediate_ca: Path
    untrusted_ca: Path
    gw_rsa: CertKey
    gw_ecdsa: CertKey
    gw_untrusted: CertKey
    dev1_rsa: CertKey
    dev1_ecdsa: CertKey
    dev1_ecdsa_p12: Path            # protected with P12_PASSWORD
    dev1_ecdsa_p12_nopass: Path     # empty password
    dev1_rsa_p12: Path              # protected with P12_PASSWORD


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _genkey(d: Path, name: str, kind: str) -> Path:
    key = d / f"{name}.key.pem"
    if kind == "ecdsa":
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", str(key), cwd=d)
    elif kind == "rsa":
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072",
                 "-out", str(key), cwd=d)
    elif kind == "ed25519":
        _openssl("genpkey", "-algorithm", "ED25519", "-out", str(key), cwd=d)
    else:
        raise ValueError(f"unknown key kind {kind!r}")
    return key


# `openssl req` wants a config with a distinguished_name section; -subj fills it.
_REQ_CONF = """[req]
distinguished_name = dn
[dn]
"""

_CA_EXT = """[ext]
basicConstraints = critical, CA:TRUE{pathlen}
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

# serverAuth + IKE intermediate (RFC 4945 5.1.3.12) for gateways; clientAuth for devices.
_LEAF_EXT = """[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = {eku}
subjectAltName = DNS:{san}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


def _self_signed_ca(d: Path, name: str, cn: str) -> tuple[Path, Path]:
    key = _genkey(d, name, "ecdsa")
    cert = d / f"{name}.pem"
    ext = d / f"{name}.ext"
    ext.write_text(_REQ_CONF + _CA_EXT.format(pathlen=""))
    _openssl("req", "-x509", "-new", "-key", str(key), "-sha256", "-days", str(DAYS),
             "-subj", f"/O=m2mvpn test/CN={cn}", "-config", str(ext),
             "-extensions", "ext", "-out", str(cert), cwd=d)
    return cert, key


def _issue(d: Path, name: str, kind: str, subject: str, ext_text: str,
           ca_cert: Path, ca_key: Path) -> tuple[Path, Path]:
    key = _genkey(d, name, kind)
    csr = d / f"{name}.csr"
    cert = d / f"{name}.pem"
    ext = d / f"{name}.ext"
    ext.write_text(_REQ_CONF + ext_text)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-config", str(ext),
             "-out", str(csr), cwd=d)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-sha256", "-days", str(DAYS), "-extfile", str(ext),
             "-extensions", "ext", "-out", str(cert), cwd=d)
    csr.unlink()
    return cert, key


def _leaf(d: Path, name: str, kind: str, san: str, gateway: bool,
          ca_cert: Path, ca_key: Path, chain: tuple[Path, ...] = ()) -> CertKey:
    eku = "serverAuth, 1.3.6.1.5.5.7.3.17" if gateway else "clientAuth"
    cert, key = _issue(d, name, kind, f"/O=m2mvpn test/CN={san}",
                       _LEAF_EXT.format(eku=eku, san=san), ca_cert, ca_key)
    return CertKey(cert, key, chain)


def _p12(d: Path, name: str, ck: CertKey, password: str) -> Path:
    out = d / f"{name}.p12"
    args = ["pkcs12", "-export", "-in", str(ck.cert), "-inkey", str(ck.key),
            "-name", name, "-passout", f"pass:{password}", "-out", str(out)]
    if ck.chain:
        chain = d / f"{name}.chain.pem"
        chain.write_text("".join(p.read_text() for p in ck.chain))
        args += ["-certfile", str(chain)]
    _openssl(*args, cwd=d)
    return out


def generate(d: Path) -> Pki:
    """Generate the whole PKI into folder d (created if missing); a few seconds."""
    d = Path(d).resolve()
    d.mkdir(parents=True, exist_ok=True)
    root, root_key = _self_signed_ca(d, "root-ca", "m2m test root CA")
    inter, inter_key = _issue(d, "intermediate-ca", "rsa",
                              "/O=m2mvpn test/CN=m2m test intermediate CA",
                              _CA_EXT.format(pathlen=", pathlen:0"), root, root_key)
    untrusted, untrusted_key = _self_signed_ca(d, "untrusted-ca", "m2m untrusted CA")

    gw_rsa = _leaf(d, "gw-rsa", "rsa", GATEWAY_ID, True, inter, inter_key, (inter,))
    gw_ecdsa = _leaf(d, "gw-ecdsa", "ecdsa", GATEWAY_ID, True, root, root_key)
    gw_untrusted = _leaf(d, "gw-untrusted", "ecdsa", GATEWAY_ID, True,
                         untrusted, untrusted_key)
    dev1_rsa = _leaf(d, "dev1-rsa", "rsa", CLIENT_ID, False, inter, inter_key, (inter,))
    dev1_ecdsa = _leaf(d, "dev1-ecdsa", "ecdsa", CLIENT_ID, False, root, root_key)

    return Pki(
        dir=d, root_ca=root, intermediate_ca=inter, untrusted_ca=untrusted,
        gw_rsa=gw_rsa, gw_ecdsa=gw_ecdsa, gw_untrusted=gw_untrusted,
        dev1_rsa=dev1_rsa, dev1_ecdsa=dev1_ecdsa,
        dev1_ecdsa_p12=_p12(d, "dev1-ecdsa", dev1_ecdsa, P12_PASSWORD),
        dev1_ecdsa_p12_nopass=_p12(d, "dev1-ecdsa-nopass", dev1_ecdsa, ""),
        dev1_rsa_p12=_p12(d, "dev1-rsa", dev1_rsa, P12_PASSWORD),
    )


def verify(pki: Pki) -> None:
    """Check every chain with `openssl verify`; raises RuntimeError if one fails."""
    checks = [
        (pki.gw_rsa.cert, pki.root_ca, pki.intermediate_ca),
        (pki.dev1_rsa.cert, pki.root_ca, pki.intermediate_ca),
        (pki.gw_ecdsa.cert, pki.root_ca, None),
        (pki.dev1_ecdsa.cert, pki.root_ca, None),
        (pki.gw_untrusted.cert, pki.untrusted_ca, None),
    ]
    for cert, root, untrusted in checks:
        args = ["verify", "-CAfile", str(root)]
        if untrusted:
            args += ["-untrusted", str(untrusted)]
        _openssl(*args, str(cert), cwd=pki.dir)


def issue_from_csr(pki: Pki, csr: Path, out: Path, *, san: str = CLIENT_ID,
                   issuer: str = "root") -> Path:
    """A client certificate for the key of a CSR (e.g. from `m2mvpn keygen`),
    issued by the root CA or (issuer="intermediate") the intermediate CA.
    The CSR's signature is checked first: only its key's holder made it."""
    ca, ca_key = {"root": (pki.root_ca, pki.dir / "root-ca.key.pem"),
                  "intermediate": (pki.intermediate_ca, pki.dir / "intermediate-ca.key.pem")}[issuer]
    _openssl("req", "-in", str(csr), "-verify", "-noout", cwd=pki.dir)
    ext = out.with_suffix(".ext")
    ext.write_text(_REQ_CONF + _LEAF_EXT.format(eku="clientAuth", san=san))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-sha256", "-days", str(DAYS), "-extfile", str(ext),
             "-extensions", "ext", "-out", str(out), cwd=pki.dir)
    return out
