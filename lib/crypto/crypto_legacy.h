/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Old primitives that only EAP methods need, kept apart from crypto.h so that
 * nothing else picks them up by accident:
 *   MD4   NT password hash of MSCHAPv2 (RFC 2759 §8.3). Implemented here from
 *         RFC 1320: OpenSSL 3 has it only in the legacy provider, which many
 *         device images do not ship.
 *   DES   one 8-byte block, the ChallengeResponse of MSCHAPv2 (RFC 2759
 *         §8.5). OpenSSL 3 keeps single DES in the legacy provider too, but
 *         its default provider has DES-EDE3, and EDE with three equal keys is
 *         single DES (E_k(D_k(E_k(x))) = E_k(x)): that is what we use.
 *   MD5   EAP-MD5 (RFC 3748 §5.4 with RFC 1994's CHAP response).
 * None of these is used for anything but the EAP methods named.
 * Errors: 0 or M2MVPN_E_INVAL / M2MVPN_E_CRYPTO / M2MVPN_E_NOMEM.
 */
#ifndef M2MVPN_CRYPTO_LEGACY_H
#define M2MVPN_CRYPTO_LEGACY_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"

int crypto_md4(const uint8_t *data, size_t len, uint8_t out[16]);
int crypto_md5(const crypto_span *parts, size_t n_parts, uint8_t out[16]);
/* DES-encrypt one block with a 56-bit key given as 7 bytes (RFC 2759 §8.6
 * DesEncrypt: parity bits are added here). */
int crypto_des7_block(const uint8_t key7[7], const uint8_t in[8], uint8_t out[8]);

#endif
