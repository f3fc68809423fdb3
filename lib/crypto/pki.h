/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Public-key side of IKEv2 authentication, over OpenSSL 3:
 *  - X.509 certificates: load (PEM/DER, a file may hold a chain), the DER for
 *    the CERT payload, the subject DN for ID_DER_ASN1_DN, the SHA-1 of the
 *    SubjectPublicKeyInfo for CERTREQ (RFC 7296 §3.7), notAfter for status;
 *  - chain verification of the gateway's certificate against the profile's
 *    trust anchors, with a human reason on failure;
 *  - IKE identities (RFC 7296 §3.5): derived from the profile's id strings,
 *    compared with received ID payloads and matched against certificates;
 *  - AUTH signature verification: method 1 (RSA PKCS#1 v1.5 SHA-1, RFC 7296),
 *    9/10/11 (ECDSA r||s, RFC 4754), 14 (RFC 7427 Digital Signature);
 *  - helpers for the signing side (which lives behind the credential provider,
 *    lib/cred/cred.h, because the key may sit in a smartcard or TPM): the RFC 7427
 *    AlgorithmIdentifier, ECDSA DER <-> r||s, AUTH data formatting, choosing
 *    the scheme from the peer's SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4).
 *
 * Errors: functions return 0 or a negative M2MVPN_E_* code and, where they take
 * `err`/`err_len`, write a one-line human reason (never a secret) there; `err`
 * may be NULL. Output parameters are written only on success.
 * No global mutable state; all objects are independent and not shared between
 * threads unless said so.
 */
#ifndef M2MVPN_CRYPTO_PKI_H
#define M2MVPN_CRYPTO_PKI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------ enumerations */

/** IKEv2 Authentication Method (IANA registry; RFC 7296 §3.8, RFC 4754, RFC 7427). */
typedef enum pki_auth_method {
    PKI_AUTH_RSA_SIG = 1,               /**< RSASSA-PKCS1-v1_5 with SHA-1 */
    PKI_AUTH_SHARED_KEY = 2,            /**< PSK: computed by the engine, not here */
    PKI_AUTH_ECDSA_SHA256_P256 = 9,     /**< RFC 4754, signature r||s (64 bytes) */
    PKI_AUTH_ECDSA_SHA384_P384 = 10,    /**< RFC 4754, signature r||s (96 bytes) */
    PKI_AUTH_ECDSA_SHA512_P521 = 11,    /**< RFC 4754, signature r||s (132 bytes) */
    PKI_AUTH_DIGITAL_SIGNATURE = 14     /**< RFC 7427: len | AlgorithmIdentifier | sig */
} pki_auth_method;

/** Signature schemes we can produce and verify. The "native" signature of a
 *  scheme is PKCS#1 / PSS bytes for RSA, a DER ECDSA-Sig-Value for ECDSA and
 *  the 64 bytes of RFC 8032 for Ed25519. */
typedef enum pki_sig_scheme {
    PKI_SIG_NONE = 0,
    PKI_SIG_RSA_PKCS1_SHA1,     /**< only within AUTH method 1 */
    PKI_SIG_RSA_PKCS1_SHA256,
    PKI_SIG_RSA_PKCS1_SHA384,
    PKI_SIG_RSA_PKCS1_SHA512,
    PKI_SIG_RSA_PSS_SHA256,     /**< MGF1 with the same hash, salt = hash length */
    PKI_SIG_RSA_PSS_SHA384,
    PKI_SIG_RSA_PSS_SHA512,
    PKI_SIG_ECDSA_SHA256,
    PKI_SIG_ECDSA_SHA384,
    PKI_SIG_ECDSA_SHA512,
    PKI_SIG_ED25519,            /**< RFC 8420: method 14 only, "Identity" hash */
    PKI_SIG_SCHEME_COUNT
} pki_sig_scheme;

/** IKEv2 Hash Algorithm identifiers for SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4,
 *  notify 16431; IANA "IKEv2 Hash Algorithms"). */
typedef enum pki_hash_alg {
    PKI_HASH_SHA1 = 1,
    PKI_HASH_SHA2_256 = 2,
    PKI_HASH_SHA2_384 = 3,
    PKI_HASH_SHA2_512 = 4,
    PKI_HASH_IDENTITY = 5
} pki_hash_alg;

/** Key types a certificate or credential may hold. */
typedef enum pki_key_type {
    PKI_KEY_UNKNOWN = 0,
    PKI_KEY_RSA,
    PKI_KEY_EC_P256,
    PKI_KEY_EC_P384,
    PKI_KEY_EC_P521,
    PKI_KEY_ED25519             /**< RFC 8420 */
} pki_key_type;

/** IKEv2 Identification types (RFC 7296 §3.5) that we produce or understand. */
typedef enum pki_id_type {
    PKI_ID_IPV4_ADDR = 1,
    PKI_ID_FQDN = 2,
    PKI_ID_RFC822_ADDR = 3,
    PKI_ID_IPV6_ADDR = 5,
    PKI_ID_DER_ASN1_DN = 9,
    PKI_ID_KEY_ID = 11
} pki_id_type;

/* Name tables: a short constant string for every value, "unknown" otherwise. */
const char *pki_auth_method_name(pki_auth_method m);
const char *pki_sig_scheme_name(pki_sig_scheme s);   /* e.g. "rsa-pss-sha256" */
const char *pki_hash_alg_name(pki_hash_alg h);       /* e.g. "sha2-256" */
const char *pki_key_type_name(pki_key_type t);       /* e.g. "ecdsa-p256" */
const char *pki_id_type_name(pki_id_type t);         /* e.g. "ID_FQDN" */

/* ------------------------------------------------------------ certificates */

/** One X.509 certificate (opaque; wraps an OpenSSL X509 and caches its DER). */
typedef struct pki_cert pki_cert;

/** SHA-1 length: CERTREQ entries and the "Certificate Authority" hashes. */
#define PKI_SHA1_LEN 20

/**
 * Parse one DER certificate (e.g. from a CERT payload, encoding 4). The bytes
 * are copied. Errors: INVAL (NULL), CERT (not a certificate, or trailing data),
 * NOMEM.
 */
int pki_cert_from_der(const uint8_t *der, size_t len, pki_cert **ret,
                      char *err, size_t err_len);

/**
 * Load all certificates of a file: PEM (one or more CERTIFICATE blocks, e.g. an
 * end-entity followed by its chain) or one DER certificate. On success *ret is
 * a new array of *ret_n >= 1 certificates in file order; free it with
 * pki_cert_array_free(). Errors: INVAL, IO (with path and strerror), CERT (no
 * certificate in the file / unparseable), NOMEM.
 */
int pki_cert_load_file(const char *path, pki_cert ***ret, size_t *ret_n,
                       char *err, size_t err_len);

/** A new reference to the same certificate (cheap). NULL on NOMEM. */
pki_cert *pki_cert_ref(pki_cert *c);
/** Drop one reference. NULL is fine. */
void pki_cert_free(pki_cert *c);
/** Free each certificate of an array and the array. NULL is fine. */
void pki_cert_array_free(pki_cert **certs, size_t n);

/** DER of the whole certificate (for the CERT payload). The bytes belong to
 *  `c` and live as long as it. */
void pki_cert_der(const pki_cert *c, const uint8_t **der, size_t *len);

/** DER of the subject Name (for ID_DER_ASN1_DN). Owned by `c`, as above. */
void pki_cert_subject_der(const pki_cert *c, const uint8_t **der, size_t *len);

/** Subject as text, "C=CH, O=m2m, CN=gw.m2m.test" (encoding order). Always
 *  NUL-terminates; truncates to fit. */
void pki_cert_subject_text(const pki_cert *c, char *buf, size_t len);

/** SHA-1 over the DER SubjectPublicKeyInfo: what the peer puts in CERTREQ to
 *  name a CA it trusts (RFC 7296 §3.7). Errors: CRYPTO. */
int pki_cert_spki_sha1(const pki_cert *c, uint8_t out[PKI_SHA1_LEN]);

/** notAfter as Unix time (for status: "certificate expires"). */
int64_t pki_cert_not_after(const pki_cert *c);

/** Key type and size in bits of the certificate's public key. Unsupported
 *  key algorithms give PKI_KEY_UNKNOWN and 0 bits. */
pki_key_type pki_cert_key_type(const pki_cert *c, unsigned *bits);

/* ---------------------------------------------------------- trust anchors */

/** A set of trust anchors (CA certificates) and a verification context. */
typedef struct pki_trust pki_trust;

/** Errors: INVAL, NOMEM. */
int pki_trust_new(pki_trust **ret);
/** Free. NULL is fine. */
void pki_trust_free(pki_trust *t);

/** Add every certificate of a PEM/DER file (a profile "ca" entry) as a trust
 *  anchor. Errors: as pki_cert_load_file(). */
int pki_trust_add_file(pki_trust *t, const char *path, char *err, size_t err_len);
/** Add one certificate as a trust anchor (a reference is taken). */
int pki_trust_add_cert(pki_trust *t, pki_cert *ca);
/** Number of anchors added. */
size_t pki_trust_count(const pki_trust *t);

/**
 * CERTREQ data (RFC 7296 §3.7): the concatenated 20-byte SHA-1 SPKI hashes of
 * all anchors, in the order added, into out[cap]; *ret_len = 20 * count.
 * Errors: INVAL (cap too small), CRYPTO.
 */
int pki_trust_certreq(const pki_trust *t, uint8_t *out, size_t cap, size_t *ret_len);

/**
 * Verify `ee` (the peer's end-entity certificate) up to one of the anchors,
 * with `untrusted[0..n_untrusted)` (intermediates the peer sent, any order) as
 * untrusted helpers. Validity dates are checked at `at_time` (Unix time; 0 =
 * now) for every certificate of the chain. Any anchor ends a chain, also one
 * that is not self-signed (an intermediate CA configured as "ca"); a
 * self-signed `ee` is only accepted if it is itself an anchor. Revocation
 * (CRL/OCSP) is not checked.
 * Policy beyond the chain: every key and signature of it at least 112-bit
 * strong (no RSA below 2048 bits, no SHA-1), and `ee` meant for an IKE peer:
 * keyUsage (if present) allows signatures, extendedKeyUsage (if present)
 * names serverAuth, id-kp-ipsecIKE or anyExtendedKeyUsage, and it is no CA
 * (RFC 4945 §5.1.3.2, §5.1.3.12).
 * Returns 0 when the chain is good; M2MVPN_E_AUTH_PEER with a reason such as
 *   "certificate has expired: CN=gw.m2m.test"
 *   "unable to get local issuer certificate for CN=gw.m2m.test"
 * otherwise; INVAL on NULL arguments or an empty trust set ("no trust anchors").
 */
int pki_verify_chain(const pki_trust *t, const pki_cert *ee,
                     pki_cert *const *untrusted, size_t n_untrusted,
                     int64_t at_time, char *err, size_t err_len);

/* ------------------------------------------------------------- identities */

/** Largest identity data we keep (a DER DN or an FQDN). */
#define PKI_ID_MAX 512

/** An IKE identity: type and the data as it goes in the ID payload. */
typedef struct pki_id {
    pki_id_type type;
    size_t len;
    uint8_t data[PKI_ID_MAX];
} pki_id;

/**
 * Derive an identity from a profile id string (local_id / remote_id):
 *   contains '='        -> ID_DER_ASN1_DN ("C=CH, O=m2m, CN=gw.m2m.test": RDNs
 *                          separated by ',' in encoding order, '\,' escapes)
 *   an IPv4/IPv6 literal -> ID_IPV4_ADDR / ID_IPV6_ADDR (4 / 16 bytes)
 *   contains '@'        -> ID_RFC822_ADDR (a leading '@' is dropped and the
 *                          rest taken as FQDN, as strongSwan does)
 *   otherwise           -> ID_FQDN
 * Errors: INVAL (empty, too long, a DN that does not parse: err names why).
 */
int pki_id_from_string(const char *text, pki_id *ret, char *err, size_t err_len);

/** Identity from a received ID payload (type + data). Checks the data is
 *  well-formed for the type (address length, DN DER parses, no NUL in names).
 *  Errors: PROTOCOL (malformed), NOTSUPP (other ID types). */
int pki_id_from_payload(uint8_t type, const uint8_t *data, size_t len, pki_id *ret,
                        char *err, size_t err_len);

/** The ID_DER_ASN1_DN identity of a certificate's subject (our default IDi). */
int pki_id_from_cert_subject(const pki_cert *c, pki_id *ret);

/** Text form for logs and status ("gw.m2m.test", "198.51.100.1",
 *  "C=CH, O=m2m, CN=gw"). Always NUL-terminates. */
void pki_id_to_string(const pki_id *id, char *buf, size_t len);

/**
 * Do two identities name the same entity? Types must agree; FQDN and
 * RFC822 compare case-insensitively (ASCII), addresses byte-wise, DNs as
 * X.500 names (OpenSSL's canonical form: case and inner whitespace folded),
 * never as text.
 */
bool pki_id_equal(const pki_id *a, const pki_id *b);

/**
 * Does certificate `c` carry identity `id`? FQDN: a subjectAltName dNSName equal
 * case-insensitively (no wildcards); IPv4/IPv6: a SAN iPAddress; RFC822: a SAN
 * rfc822Name; DN: the subject Name equals `id` as an X.500 name.
 * Returns true/false; never fails.
 */
bool pki_cert_matches_id(const pki_cert *c, const pki_id *id);

/* -------------------------------------------------- signatures (AUTH) */

/** Largest AUTH data we produce or accept (RSA-8192 + AlgorithmIdentifier). */
#define PKI_AUTH_MAX 1200

/**
 * Verify the AUTH payload of the peer: `method` and `auth[0..auth_len)` as
 * received (for method 14 including the length byte and the
 * AlgorithmIdentifier), over `signed_octets` (RFC 7296 §2.15), with the public
 * key of `signer` (already chain-verified). The key type must fit the method
 * (9: P-256, 10: P-384, 11: P-521, 1: RSA; 14: the AlgorithmIdentifier's key
 * type: RSA, ECDSA or Ed25519). If `ret_scheme` is non-NULL it receives the scheme that was used.
 * Returns 0 if the signature is valid; AUTH_PEER if it is not ("signature
 * invalid (ecdsa-sha256)") or the key does not fit; PROTOCOL for a malformed
 * AUTH payload; NOTSUPP for an unknown method or algorithm (err names it).
 */
int pki_auth_verify(const pki_cert *signer, uint8_t method,
                    const uint8_t *auth, size_t auth_len,
                    const uint8_t *signed_octets, size_t signed_len,
                    pki_sig_scheme *ret_scheme, char *err, size_t err_len);

/**
 * Verify a native signature (RSA bytes / DER ECDSA) with a certificate's key.
 * Returns 0 valid, AUTH_PEER invalid or key type mismatch, INVAL.
 */
int pki_verify_native(const pki_cert *signer, pki_sig_scheme scheme,
                      const uint8_t *data, size_t len,
                      const uint8_t *sig, size_t sig_len, char *err, size_t err_len);

/**
 * Parse a DER AlgorithmIdentifier (RFC 7427 §3, Appendix A) with bounds checks:
 * sha256/384/512WithRSAEncryption (NULL or absent parameters), RSASSA-PSS with
 * SHA-256/384/512 (MGF1 with the same hash, salt length = hash length, trailer
 * 1), ecdsa-with-SHA256/384/512 and id-Ed25519 (no parameters). The whole input
 * must be the one
 * AlgorithmIdentifier. Errors: PROTOCOL (malformed/truncated DER), NOTSUPP
 * (well-formed but not one of these; err names the OID).
 */
int pki_algid_parse(const uint8_t *der, size_t len, pki_sig_scheme *ret,
                    char *err, size_t err_len);

/**
 * DER AlgorithmIdentifier of `scheme` for RFC 7427 AUTH data, into out[cap].
 * Errors: INVAL (scheme without one, e.g. PKCS1_SHA1; cap too small).
 */
int pki_algid_encode(pki_sig_scheme scheme, uint8_t *out, size_t cap, size_t *ret_len);

/**
 * ECDSA-Sig-Value DER <-> fixed-size r||s (RFC 4754 §7: each integer
 * left-padded to `field_len` bytes: 32 / 48 / 66).
 * Errors: PROTOCOL (malformed input, an integer longer than field_len,
 * raw_len odd or zero), INVAL (cap too small).
 */
int pki_ecdsa_der_to_raw(const uint8_t *der, size_t der_len, size_t field_len,
                         uint8_t *out, size_t cap, size_t *ret_len);
int pki_ecdsa_raw_to_der(const uint8_t *raw, size_t raw_len,
                         uint8_t *out, size_t cap, size_t *ret_len);

/** Field length in bytes of an EC key type (32/48/66), 0 for others. */
size_t pki_key_field_len(pki_key_type t);

/**
 * Is `scheme` usable with AUTH `method` and a key of type `key`? (1: RSA
 * PKCS#1 SHA-1; 9/10/11: ECDSA with the curve's hash; 14: any scheme but
 * PKCS1_SHA1 whose key family fits.)
 */
bool pki_auth_scheme_fits(pki_auth_method method, pki_sig_scheme scheme, pki_key_type key);

/**
 * Turn a native signature into AUTH data for `method` into out[cap]:
 * method 1: the RSA signature as is; 9/10/11: r||s; 14: one length byte, the
 * AlgorithmIdentifier of `scheme`, then the signature (DER for ECDSA).
 * Errors: INVAL (scheme does not fit method/key, cap too small), PROTOCOL
 * (malformed ECDSA DER).
 */
int pki_auth_data_format(pki_auth_method method, pki_sig_scheme scheme, pki_key_type key,
                         const uint8_t *sig, size_t sig_len,
                         uint8_t *out, size_t cap, size_t *ret_len);

/**
 * Choose how we sign: the peer's SIGNATURE_HASH_ALGORITHMS list (`peer_hashes`,
 * n_peer entries as received; n_peer = 0 when the peer sent none) and our key.
 * With a common SHA-2 hash: method 14, preferring the hash that matches an EC
 * curve (P-256/SHA-256, ...) or SHA-256 for RSA, then the strongest; RSA uses
 * PSS if `rsa_pss` else PKCS#1 v1.5. Without: the classic method (P-256: 9,
 * P-384: 10, P-521: 11; RSA: 1, which is SHA-1, only if `allow_sha1`).
 * Ed25519 needs the peer's "Identity" (5) and method 14 (RFC 8420).
 * Errors: NOTSUPP (unknown key type; Ed25519 key but the peer did not
 * announce Identity; RSA key, no common SHA-2 hash and !allow_sha1).
 */
int pki_choose_auth(pki_key_type key, const uint16_t *peer_hashes, size_t n_peer,
                    bool rsa_pss, bool allow_sha1, pki_auth_method *ret_method,
                    pki_sig_scheme *ret_scheme);

/** The hash algorithms we announce in our SIGNATURE_HASH_ALGORITHMS notify:
 *  SHA2-256, SHA2-384, SHA2-512, Identity (RFC 8420, for Ed25519). Returns the
 *  count; *ret points to a constant. */
size_t pki_hash_algs_supported(const uint16_t **ret);

#endif
