/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Symmetric crypto, PRF/prf+, IKEv2 key derivation and key exchange: a thin
 * layer over OpenSSL 3 EVP for the IKE engine (lib/ike) and usable by ESP.
 *
 * Algorithms are named by their IANA IKEv2 transform IDs (lib/core/iana.h;
 * ENCR_*, PRF_*, AUTH_*, KE_*), so a negotiated proposal maps onto this module
 * without translation tables elsewhere.
 *
 * Conventions:
 *  - Functions return 0 or a negative M2MVPN_E_* code. INVAL: bad argument or
 *    length, or an algorithm/combination this module does not implement;
 *    NOMEM; CRYPTO: OpenSSL failed, or a decryption failed its integrity check
 *    (the caller drops the message either way); PROTOCOL: the peer's key
 *    exchange value is invalid.
 *  - Output parameters (`ret`, `ret_len`) are written only on success.
 *    Output buffers may be partly written on failure; where they would hold
 *    key material or unauthenticated plaintext they are zeroed.
 *  - Every object that holds key material wipes it when freed; *_free(NULL)
 *    is fine. Objects are not thread-safe: use one per thread/direction.
 *  - Nothing here logs; secrets never leave except through the documented
 *    output buffers.
 */
#ifndef M2MVPN_CRYPTO_CRYPTO_H
#define M2MVPN_CRYPTO_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/iana.h"

/* Largest sizes any supported transform needs (buffers may use these). */
#define CRYPTO_MAX_PRF_LEN   64   /* HMAC-SHA2-512 output */
#define CRYPTO_MAX_KEY_LEN   64   /* any single key: SK_d, SK_a*, SK_e* (+salt), SK_p* */
#define CRYPTO_MAX_IV_LEN    16
#define CRYPTO_MAX_ICV_LEN   32
#define CRYPTO_MAX_KE_LEN    512  /* MODP 4096 public value / shared secret */
#define CRYPTO_AEAD_SALT_LEN 4    /* AES-GCM (RFC 4106 §8.1), ChaCha20-Poly1305 (RFC 7634 §2) */

/** A read-only byte span; arrays of spans are hashed/authenticated as their concatenation. */
typedef struct crypto_span {
    const uint8_t *p;
    size_t len;
} crypto_span;

/* ------------------------------------------------------------- names */

/* IANA names for logs ("ENCR_AES_GCM_16", "PRF_HMAC_SHA2_256", "AUTH_HMAC_SHA2_256_128",
 * "ECP_256", "Curve25519", "MODP_2048"); "unknown" for IDs not in the table.
 * lib/profile/proposal.h has the strongSwan-style short names. */
const char *crypto_encr_name(uint16_t encr_id);
const char *crypto_prf_name(uint16_t prf_id);
const char *crypto_integ_name(uint16_t integ_id);
const char *crypto_ke_name(uint16_t ke_id);

/* ------------------------------------------------------------ random */

/** Fill buf with len bytes from the OpenSSL CSPRNG. Errors: INVAL (buf NULL
 *  with len > 0), CRYPTO (RNG failure: buf must then not be used). */
int crypto_random(void *buf, size_t len);

/** SHA-1 over the concatenation of the spans (NAT_DETECTION hashes, RFC 7296
 *  §2.23; not for signatures). Errors: INVAL, CRYPTO. */
int crypto_sha1(const crypto_span *parts, size_t n_parts, uint8_t out[20]);

/** Constant-time equality of two n-byte buffers (ICV, AUTH values). */
bool crypto_memeq(const void *a, const void *b, size_t n);

/* --------------------------------------------------------------- PRF */

/** Output length of a PRF (32/48/64 for HMAC-SHA2-256/384/512); 0 if unsupported.
 *  For these HMAC PRFs this is also the preferred key length (RFC 7296 §2.13). */
size_t crypto_prf_len(uint16_t prf_id);

/**
 * A keyed PRF for many computations with one key (e.g. AUTH payloads, prf+).
 * Feed data with crypto_prf_update() (any number of parts, concatenated),
 * finish with crypto_prf_final(); the object is then ready for the next
 * computation with the same key. The key is copied and wiped on free.
 */
typedef struct crypto_prf crypto_prf;

/** Errors: INVAL (unsupported prf_id, key NULL with key_len > 0), NOMEM, CRYPTO. */
int crypto_prf_new(uint16_t prf_id, const uint8_t *key, size_t key_len, crypto_prf **ret);
void crypto_prf_free(crypto_prf *prf);
size_t crypto_prf_out_len(const crypto_prf *prf);
int crypto_prf_update(crypto_prf *prf, const void *data, size_t len);
/** Writes crypto_prf_out_len() bytes; out_cap must be at least that. Errors: INVAL, CRYPTO. */
int crypto_prf_final(crypto_prf *prf, uint8_t *out, size_t out_cap);

/** One-shot prf(key, data[0] | data[1] | ...). Writes crypto_prf_len(prf_id)
 *  bytes to out (out_cap must be at least that). */
int crypto_prf_oneshot(uint16_t prf_id, const uint8_t *key, size_t key_len,
                       const crypto_span *data, size_t n_data, uint8_t *out, size_t out_cap);

/**
 * prf+ (RFC 7296 §2.13): T1 = prf(K, S | 0x01), Tn = prf(K, T(n-1) | S | n),
 * output T1 | T2 | ... truncated to out_len. S is the concatenation of the seed
 * spans. Errors: INVAL (out_len 0 or > 255 * crypto_prf_len(prf_id)), NOMEM, CRYPTO.
 */
int crypto_prf_plus(uint16_t prf_id, const uint8_t *key, size_t key_len,
                    const crypto_span *seed, size_t n_seed, uint8_t *out, size_t out_len);

/* ------------------------------------------------- transform sizes */

/** Sizes of an encryption(+integrity) transform, for key derivation and framing. */
typedef struct crypto_cipher_sizes {
    bool aead;            /* AES-GCM-16, ChaCha20-Poly1305: no separate integrity key */
    size_t encr_key_len;  /* bytes of keying material for the cipher, incl. the 4-byte salt for AEAD */
    size_t integ_key_len; /* 0 for AEAD */
    size_t iv_len;        /* explicit IV sent in each message: 8 (AEAD) or 16 (AES-CBC) */
    size_t icv_len;       /* 16 (AEAD) or the truncated HMAC length (RFC 4868) */
    size_t block_len;     /* plaintext must be a multiple of this: 16 for CBC, 1 for AEAD.
                           * ESP adds its own 4-byte alignment (RFC 4303 §2.4). */
} crypto_cipher_sizes;

/**
 * Sizes for ENCR_* `encr_id` with `key_bits` (128/256 for AES; 256 for
 * ChaCha20-Poly1305, 0 also accepted there) and AUTH_* `integ_id` (0 for AEAD,
 * required for AES-CBC). Errors: INVAL (unknown or invalid combination).
 */
int crypto_cipher_sizes_get(uint16_t encr_id, uint16_t key_bits, uint16_t integ_id,
                            crypto_cipher_sizes *ret);

/** Integrity key length for AUTH_* (32/48/64); 0 if unsupported. */
size_t crypto_integ_key_len(uint16_t integ_id);

/* ------------------------------------------- IKEv2 key derivation */

/** One derived key: bytes and how many of them are used. */
typedef struct crypto_key {
    uint8_t b[CRYPTO_MAX_KEY_LEN];
    size_t len;
} crypto_key;

/** The seven IKE SA keys (RFC 7296 §2.14). For AEAD sk_ai/sk_ar have len 0
 *  and sk_ei/sk_er end in the 4-byte salt. Free with crypto_ike_keys_free(). */
typedef struct crypto_ike_keys {
    crypto_key sk_d, sk_ai, sk_ar, sk_ei, sk_er, sk_pi, sk_pr;
} crypto_ike_keys;

/** CHILD SA keys (RFC 7296 §2.17): *_i protect initiator->responder traffic,
 *  *_r responder->initiator. AEAD: integ_* have len 0 and encr_* end in the salt. */
typedef struct crypto_child_keys {
    crypto_key encr_i, integ_i, encr_r, integ_r;
} crypto_child_keys;

/** The negotiated transforms a derivation depends on. integ_id 0 for AEAD. */
typedef struct crypto_suite {
    uint16_t encr_id;
    uint16_t encr_key_bits;
    uint16_t integ_id;
    uint16_t prf_id;     /* IKE SA PRF; for CHILD keys: the IKE SA's PRF (prf+ with SK_d) */
} crypto_suite;

/** SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 §2.14). ret->len = crypto_prf_len(prf_id). */
int crypto_ike_skeyseed(uint16_t prf_id, const uint8_t *ni, size_t ni_len,
                        const uint8_t *nr, size_t nr_len,
                        const uint8_t *g_ir, size_t g_ir_len, crypto_key *ret);

/** Rekeyed IKE SA (RFC 7296 §2.18): SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr),
 *  with the OLD SA's PRF `old_prf_id`. */
int crypto_ike_skeyseed_rekey(uint16_t old_prf_id, const crypto_key *old_sk_d,
                              const uint8_t *g_ir, size_t g_ir_len,
                              const uint8_t *ni, size_t ni_len,
                              const uint8_t *nr, size_t nr_len, crypto_key *ret);

/**
 * {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} =
 *     prf+(SKEYSEED, Ni | Nr | SPIi | SPIr), lengths from `suite`.
 * SPIs are 8 bytes each. On success *ret is a new object the caller frees
 * with crypto_ike_keys_free(). Errors: INVAL, NOMEM, CRYPTO.
 */
int crypto_ike_keys_derive(const crypto_suite *suite, const crypto_key *skeyseed,
                           const uint8_t *ni, size_t ni_len, const uint8_t *nr, size_t nr_len,
                           const uint8_t spi_i[8], const uint8_t spi_r[8],
                           crypto_ike_keys **ret);
/** Wipe and free. NULL is fine. */
void crypto_ike_keys_free(crypto_ike_keys *keys);

/**
 * KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (RFC 7296 §2.17), split as
 * encr_i | integ_i | encr_r | integ_r with lengths from `suite` (suite->prf_id
 * is the IKE SA's PRF). g_ir NULL/0 without PFS. Free with crypto_child_keys_free().
 */
int crypto_child_keys_derive(const crypto_suite *suite, const crypto_key *sk_d,
                             const uint8_t *g_ir, size_t g_ir_len,
                             const uint8_t *ni, size_t ni_len, const uint8_t *nr, size_t nr_len,
                             crypto_child_keys **ret);
void crypto_child_keys_free(crypto_child_keys *keys);

/* -------------------------------------- encryption + integrity */

typedef enum crypto_dir {
    CRYPTO_DIR_ENCRYPT = 0,  /* outbound: protect messages we send */
    CRYPTO_DIR_DECRYPT = 1   /* inbound: verify and decrypt messages we receive */
} crypto_dir;
const char *crypto_dir_name(crypto_dir dir);

/**
 * One direction of one SA, prepared once (ciphers fetched, keys scheduled);
 * encrypting/decrypting a message then does no allocation of ours.
 * Holds copies of the keys; wiped on free.
 */
typedef struct crypto_cipher crypto_cipher;

/**
 * encr_key: crypto_cipher_sizes.encr_key_len bytes (AEAD: key then 4-byte salt,
 * as derived); integ_key: integ_key_len bytes (NULL/0 for AEAD).
 * Errors: INVAL (unsupported combination, wrong key lengths), NOMEM, CRYPTO.
 */
int crypto_cipher_new(uint16_t encr_id, uint16_t key_bits, uint16_t integ_id, crypto_dir dir,
                      const uint8_t *encr_key, size_t encr_key_len,
                      const uint8_t *integ_key, size_t integ_key_len, crypto_cipher **ret);
void crypto_cipher_free(crypto_cipher *c);
/** The sizes this cipher was created with (never NULL for a valid object). */
const crypto_cipher_sizes *crypto_cipher_get_sizes(const crypto_cipher *c);

/**
 * A fresh IV for the next message (iv_len bytes): for AEAD a 64-bit counter
 * from a random start, never repeating within the object (RFC 4106 §3.1,
 * RFC 7634 §2: unique per key); for AES-CBC random (unpredictable,
 * RFC 7296 §3.14). Only for CRYPTO_DIR_ENCRYPT objects.
 * Errors: INVAL (also: a DECRYPT object), CRYPTO (RNG failure, or 2^64 IVs used: rekey).
 */
int crypto_cipher_next_iv(crypto_cipher *c, uint8_t *iv);

/**
 * One protected message as its parts. On the wire they usually lie as
 *     [ aad ][ iv ][ data (ciphertext) ][ icv ]
 * but the spans need not be contiguous.
 *   IKE SK payload (RFC 7296 §3.14, RFC 5282 §5.1): aad = IKE header through the
 *     end of the SK generic payload header (or, with RFC 7383 fragments, the
 *     SKF header), with the message and payload Length fields already final;
 *     data = inner payloads | padding | pad length.
 *   ESP (RFC 4303/4106/7634): aad = SPI | seq (AEAD with ESN: SPI | seq-hi | seq-lo);
 *     trailer (non-AEAD with ESN only) = seq-hi.
 * AEAD: nonce = salt | iv; AAD = aad; tag = icv.
 * AES-CBC + HMAC: icv = truncated HMAC(aad | iv | ciphertext | trailer).
 * `in` and `out` hold data_len bytes and may be the same buffer (in place);
 * partial overlap is not allowed.
 */
typedef struct crypto_msg {
    const uint8_t *aad;     size_t aad_len;
    const uint8_t *iv;      /* iv_len bytes */
    const uint8_t *in;      /* plaintext (encrypt) / ciphertext (decrypt) */
    uint8_t *out;           /* ciphertext (encrypt) / plaintext (decrypt); may == in */
    size_t data_len;        /* multiple of block_len; may be 0 for AEAD */
    uint8_t *icv;           /* icv_len bytes: written by encrypt, read by decrypt */
    const uint8_t *trailer; size_t trailer_len; /* non-AEAD only; else NULL/0 */
} crypto_msg;

/** Encrypt in->out and write the ICV. Errors: INVAL (wrong direction, lengths), CRYPTO. */
int crypto_cipher_encrypt(crypto_cipher *c, const crypto_msg *m);

/**
 * Verify the ICV (constant time) and decrypt in->out. On an integrity failure
 * returns M2MVPN_E_CRYPTO and `out` is zeroed (no unauthenticated plaintext
 * escapes; for CBC the ICV is checked before any decryption).
 * Errors: INVAL (wrong direction, lengths), CRYPTO.
 */
int crypto_cipher_decrypt(crypto_cipher *c, const crypto_msg *m);

/* ------------------------------------------------------ key exchange */

/** One ephemeral key exchange (RFC 7296 §3.4 KE payload data). Private key wiped on free. */
typedef struct crypto_ke crypto_ke;

/** Public value length in the KE payload: 32 (x25519), 64/96/132 (ECP x||y,
 *  RFC 5903 §7), 256/384/512 (MODP); 0 if unsupported. */
size_t crypto_ke_public_len(uint16_t ke_id);
/** Shared secret length: 32, 32/48/66 (x only), modulus length; 0 if unsupported. */
size_t crypto_ke_shared_len(uint16_t ke_id);

/** Generate a fresh key pair for KE_* `ke_id`. Errors: INVAL (unsupported), NOMEM, CRYPTO. */
int crypto_ke_new(uint16_t ke_id, crypto_ke **ret);

/**
 * A key pair from a known private value, for known-answer tests: 32-byte
 * scalar (x25519, RFC 7748), big-endian scalar of the field size (ECP), or
 * big-endian exponent up to the modulus length (MODP). Errors: INVAL, NOMEM, CRYPTO.
 */
int crypto_ke_new_from_private(uint16_t ke_id, const uint8_t *priv, size_t priv_len,
                               crypto_ke **ret);
void crypto_ke_free(crypto_ke *ke);
uint16_t crypto_ke_id(const crypto_ke *ke);

/** Our public value as sent in the KE payload; out_cap >= crypto_ke_public_len().
 *  *ret_len receives the length. Errors: INVAL, CRYPTO. */
int crypto_ke_public(const crypto_ke *ke, uint8_t *out, size_t out_cap, size_t *ret_len);

/**
 * Validate the peer's public value and compute the shared secret g^ir into out
 * (out_cap >= crypto_ke_shared_len()); *ret_len receives its length.
 * Rejected with PROTOCOL (and a reason in err, if err_len > 0): wrong length,
 * x25519 all-zero result (RFC 7748 §6.1), ECP point not on the curve or at
 * infinity, MODP y <= 1 or y >= p-1 (RFC 7296 §5 / NIST SP 800-56A).
 * The shared secret is a secret: the caller wipes it (secure_wipe) after use.
 */
int crypto_ke_derive(crypto_ke *ke, const uint8_t *peer, size_t peer_len,
                     uint8_t *out, size_t out_cap, size_t *ret_len,
                     char *err, size_t err_len);

#endif
