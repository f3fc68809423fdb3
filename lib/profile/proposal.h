/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Proposal strings in strongSwan syntax ("aes256gcm16-prfsha384-x25519",
 * "aes128-sha256-modp2048", "chacha20poly1305") parsed into algorithm sets
 * with IANA IKEv2 transform IDs (RFC 7296 §3.3.2 and the IANA registry).
 *
 * A proposal string lists any number of algorithms of each kind, joined by
 * '-'; the result keeps them in the order given (a repeat is dropped). Rules:
 *  - at least one encryption algorithm; AEAD (GCM, ChaCha20-Poly1305) and
 *    non-AEAD (CBC) ciphers may not be mixed in one proposal;
 *  - a non-AEAD cipher needs an integrity algorithm; integrity algorithms
 *    listed with an AEAD cipher are dropped (as strongSwan does);
 *  - IKE: a PRF, explicit ("prfsha256") or, without one, the PRF of each
 *    integrity algorithm's hash (strongSwan's rule); a key exchange method;
 *    "esn"/"noesn" are refused;
 *  - ESP: PRFs are refused; key exchange methods are PFS groups (optional);
 *    "esn"/"noesn" choose extended sequence numbers (default: noesn only).
 * Keywords are lower case; docs/profile.md lists them with their aliases.
 */
#ifndef M2MVPN_PROFILE_PROPOSAL_H
#define M2MVPN_PROFILE_PROPOSAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROPOSAL_MAX_ALGS 8

/* The IANA transform IDs (ENCR_*, PRF_*, AUTH_*, KE_*, ESN_*). */
#include "core/iana.h"


typedef struct proposal_encr {
    uint16_t id;        /* ENCR_* */
    uint16_t key_bits;  /* 128/256; 256 for ChaCha20-Poly1305 */
} proposal_encr;

typedef enum proposal_kind { PROPOSAL_IKE, PROPOSAL_ESP } proposal_kind;
/* "IKE", "ESP" */
const char *proposal_kind_name(proposal_kind k);

typedef struct proposal {
    proposal_encr encr[PROPOSAL_MAX_ALGS];
    size_t n_encr;
    uint16_t prf[PROPOSAL_MAX_ALGS];   size_t n_prf;    /* IKE only */
    uint16_t integ[PROPOSAL_MAX_ALGS]; size_t n_integ;  /* empty for AEAD-only */
    uint16_t ke[PROPOSAL_MAX_ALGS];    size_t n_ke;     /* IKE: >= 1; ESP: PFS groups */
    uint16_t esn[2];                   size_t n_esn;    /* ESP only; default {ESN_NO} */
} proposal;

/* Parse one proposal string (at most 255 characters). On success fills *ret
 * and returns 0. On failure *ret is untouched, a negative M2MVPN_E_PROFILE is
 * returned (M2MVPN_E_INVAL for NULL arguments) and err (may be NULL) gets
 * "unknown algorithm 'xyz'" or what else is wrong, without a key path. */
int proposal_parse(const char *s, proposal_kind kind, proposal *ret, char *err, size_t err_len);
/* Back to strongSwan-style text, e.g. "aes256gcm16-prfsha384-x25519": ENCR,
 * INTEG, PRF (IKE), KE, then ESN (ESP, only when not the default "noesn"),
 * canonical names. proposal_parse() of the text gives back the same proposal.
 * 256 bytes suffice for any proposal from proposal_parse(); a smaller out
 * gets a NUL-terminated prefix. */
void proposal_format(const proposal *p, proposal_kind kind, char *out, size_t out_len);
/* Names for logs and status ("aes256gcm16", "prfsha384", "sha256", "x25519",
 * "esn"); "unknown" for an ID this module does not know. Static strings. */
const char *proposal_encr_name(uint16_t id, uint16_t key_bits);
const char *proposal_prf_name(uint16_t id);
const char *proposal_integ_name(uint16_t id);
const char *proposal_ke_name(uint16_t id);
const char *proposal_esn_name(uint16_t id);
bool proposal_encr_is_aead(uint16_t id);

#endif
