/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IKEv2 transform IDs from the IANA registry (RFC 7296 §3.3.2), for every
 * module that names an algorithm: profile (proposals), crypto, ike, esp.
 * Only the ones this library implements.
 */
#ifndef M2MVPN_CORE_IANA_H
#define M2MVPN_CORE_IANA_H

/* IANA "Transform Type 1 - Encryption Algorithm Transform IDs" */
enum { ENCR_AES_CBC = 12, ENCR_AES_GCM_16 = 20, ENCR_CHACHA20_POLY1305 = 28 };
/* IANA "Transform Type 2 - Pseudorandom Function Transform IDs" */
enum { PRF_HMAC_SHA2_256 = 5, PRF_HMAC_SHA2_384 = 6, PRF_HMAC_SHA2_512 = 7 };
/* IANA "Transform Type 3 - Integrity Algorithm Transform IDs" */
enum { AUTH_HMAC_SHA2_256_128 = 12, AUTH_HMAC_SHA2_384_192 = 13, AUTH_HMAC_SHA2_512_256 = 14 };
/* IANA "Transform Type 4 - Key Exchange Method Transform IDs" */
enum { KE_MODP2048 = 14, KE_MODP3072 = 15, KE_MODP4096 = 16, KE_ECP256 = 19,
       KE_ECP384 = 20, KE_ECP521 = 21, KE_X25519 = 31 };
/* Transform Type 5 - Extended Sequence Numbers */
enum { ESN_NO = 0, ESN_YES = 1 };

#endif
