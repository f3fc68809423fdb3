/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Proposal strings (strongSwan syntax) <-> struct proposal. One table maps
 * every keyword to its transform type and IANA ID; the first row of an ID is
 * its canonical name, later rows are accepted aliases.
 */
#include "proposal.h"

#include <m2mvpn/m2mvpn.h>
#include <stdio.h>
#include <string.h>

/* Longest proposal string accepted; longer ones are refused, not cut. */
#define PROPOSAL_MAX_TEXT 255
/* Longest single keyword shown back in an error message. */
#define PROPOSAL_MAX_TOKEN_SHOWN 32

typedef enum alg_type { ALG_ENCR, ALG_PRF, ALG_INTEG, ALG_KE, ALG_ESN } alg_type;

typedef struct alg_keyword {
    const char *name;
    alg_type type;
    uint16_t id;
    uint16_t key_bits; /* ENCR only */
} alg_keyword;

static const alg_keyword alg_keywords[] = {
    { "aes128", ALG_ENCR, ENCR_AES_CBC, 128 },
    { "aes256", ALG_ENCR, ENCR_AES_CBC, 256 },
    { "aes128gcm16", ALG_ENCR, ENCR_AES_GCM_16, 128 },
    { "aes256gcm16", ALG_ENCR, ENCR_AES_GCM_16, 256 },
    { "aes128gcm128", ALG_ENCR, ENCR_AES_GCM_16, 128 }, /* alias: ICV of 128 bits */
    { "aes256gcm128", ALG_ENCR, ENCR_AES_GCM_16, 256 },
    { "chacha20poly1305", ALG_ENCR, ENCR_CHACHA20_POLY1305, 256 },
    { "sha256", ALG_INTEG, AUTH_HMAC_SHA2_256_128, 0 },
    { "sha384", ALG_INTEG, AUTH_HMAC_SHA2_384_192, 0 },
    { "sha512", ALG_INTEG, AUTH_HMAC_SHA2_512_256, 0 },
    { "sha2_256", ALG_INTEG, AUTH_HMAC_SHA2_256_128, 0 },
    { "sha2_384", ALG_INTEG, AUTH_HMAC_SHA2_384_192, 0 },
    { "sha2_512", ALG_INTEG, AUTH_HMAC_SHA2_512_256, 0 },
    { "prfsha256", ALG_PRF, PRF_HMAC_SHA2_256, 0 },
    { "prfsha384", ALG_PRF, PRF_HMAC_SHA2_384, 0 },
    { "prfsha512", ALG_PRF, PRF_HMAC_SHA2_512, 0 },
    { "x25519", ALG_KE, KE_X25519, 0 },
    { "curve25519", ALG_KE, KE_X25519, 0 },
    { "ecp256", ALG_KE, KE_ECP256, 0 },
    { "ecp384", ALG_KE, KE_ECP384, 0 },
    { "ecp521", ALG_KE, KE_ECP521, 0 },
    { "modp2048", ALG_KE, KE_MODP2048, 0 },
    { "modp3072", ALG_KE, KE_MODP3072, 0 },
    { "modp4096", ALG_KE, KE_MODP4096, 0 },
    { "esn", ALG_ESN, ESN_YES, 0 },
    { "noesn", ALG_ESN, ESN_NO, 0 },
};
#define N_ALG_KEYWORDS (sizeof(alg_keywords) / sizeof(alg_keywords[0]))

static const char *const proposal_kind_names[] = {
    [PROPOSAL_IKE] = "IKE",
    [PROPOSAL_ESP] = "ESP",
};

const char *proposal_kind_name(proposal_kind k)
{
    if ((size_t)k < sizeof(proposal_kind_names) / sizeof(proposal_kind_names[0]))
        return proposal_kind_names[k];
    return "unknown";
}

static const char *canonical_name(alg_type type, uint16_t id, uint16_t key_bits)
{
    for (size_t i = 0; i < N_ALG_KEYWORDS; i++) {
        const alg_keyword *k = &alg_keywords[i];
        if (k->type == type && k->id == id && (type != ALG_ENCR || k->key_bits == key_bits))
            return k->name;
    }
    return "unknown";
}

const char *proposal_encr_name(uint16_t id, uint16_t key_bits) { return canonical_name(ALG_ENCR, id, key_bits); }
const char *proposal_prf_name(uint16_t id) { return canonical_name(ALG_PRF, id, 0); }
const char *proposal_integ_name(uint16_t id) { return canonical_name(ALG_INTEG, id, 0); }
const char *proposal_ke_name(uint16_t id) { return canonical_name(ALG_KE, id, 0); }
const char *proposal_esn_name(uint16_t id) { return canonical_name(ALG_ESN, id, 0); }

bool proposal_encr_is_aead(uint16_t id)
{
    return id == ENCR_AES_GCM_16 || id == ENCR_CHACHA20_POLY1305;
}

/* strongSwan's rule: without an explicit PRF, an IKE proposal uses the PRF of
 * the same hash as each integrity algorithm. */
static uint16_t prf_for_integ(uint16_t integ)
{
    switch (integ) {
    case AUTH_HMAC_SHA2_256_128: return PRF_HMAC_SHA2_256;
    case AUTH_HMAC_SHA2_384_192: return PRF_HMAC_SHA2_384;
    case AUTH_HMAC_SHA2_512_256: return PRF_HMAC_SHA2_512;
    default: return 0;
    }
}

static const alg_keyword *find_keyword(const char *tok, size_t len)
{
    for (size_t i = 0; i < N_ALG_KEYWORDS; i++)
        if (strlen(alg_keywords[i].name) == len && memcmp(alg_keywords[i].name, tok, len) == 0)
            return &alg_keywords[i];
    return NULL;
}

static int fail(char *err, size_t err_len, const char *msg)
{
    if (err && err_len)
        snprintf(err, err_len, "%s", msg);
    return M2MVPN_E_PROFILE;
}

/* "unknown algorithm 'xyz'", with anything unprintable shown as '?' so a
 * profile cannot put control characters into logs through an error text. */
static int fail_unknown(char *err, size_t err_len, const char *tok, size_t len)
{
    char shown[PROPOSAL_MAX_TOKEN_SHOWN + 4];
    size_t n = len < PROPOSAL_MAX_TOKEN_SHOWN ? len : PROPOSAL_MAX_TOKEN_SHOWN;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)tok[i];
        shown[i] = (c >= 0x20 && c < 0x7f && c != '\'') ? (char)c : '?';
    }
    if (n < len) {
        memcpy(shown + n, "...", 3);
        n += 3;
    }
    shown[n] = '\0';
    if (err && err_len)
        snprintf(err, err_len, "unknown algorithm '%s'", shown);
    return M2MVPN_E_PROFILE;
}

static bool u16_listed(const uint16_t *list, size_t n, uint16_t v)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] == v)
            return true;
    return false;
}

/* Append unless already listed. The table has fewer distinct IDs of each
 * type than PROPOSAL_MAX_ALGS, so a list cannot overflow. */
static void add_u16(uint16_t *list, size_t *n, size_t cap, uint16_t v)
{
    if (!u16_listed(list, *n, v) && *n < cap)
        list[(*n)++] = v;
}

static void add_encr(proposal *p, uint16_t id, uint16_t key_bits)
{
    for (size_t i = 0; i < p->n_encr; i++)
        if (p->encr[i].id == id && p->encr[i].key_bits == key_bits)
            return;
    if (p->n_encr < PROPOSAL_MAX_ALGS)
        p->encr[p->n_encr++] = (proposal_encr){ id, key_bits };
}

static int add_keyword(proposal *p, proposal_kind kind, const alg_keyword *k, char *err, size_t err_len)
{
    char msg[96];
    switch (k->type) {
    case ALG_ENCR:
        add_encr(p, k->id, k->key_bits);
        break;
    case ALG_INTEG:
        add_u16(p->integ, &p->n_integ, PROPOSAL_MAX_ALGS, k->id);
        break;
    case ALG_PRF:
        if (kind != PROPOSAL_IKE) {
            snprintf(msg, sizeof(msg), "'%s' is a PRF, only used in IKE proposals", k->name);
            return fail(err, err_len, msg);
        }
        add_u16(p->prf, &p->n_prf, PROPOSAL_MAX_ALGS, k->id);
        break;
    case ALG_KE:
        add_u16(p->ke, &p->n_ke, PROPOSAL_MAX_ALGS, k->id);
        break;
    case ALG_ESN:
        if (kind != PROPOSAL_ESP) {
            snprintf(msg, sizeof(msg), "'%s' is only used in ESP proposals", k->name);
            return fail(err, err_len, msg);
        }
        add_u16(p->esn, &p->n_esn, 2, k->id);
        break;
    }
    return 0;
}

/* The rules that hold for a whole proposal once every keyword is in. */
static int check_complete(proposal *p, proposal_kind kind, char *err, size_t err_len)
{
    char msg[128];
    if (p->n_encr == 0)
        return fail(err, err_len, "needs an encryption algorithm, e.g. 'aes256gcm16'");

    const proposal_encr *aead = NULL, *plain = NULL;
    for (size_t i = 0; i < p->n_encr; i++) {
        if (proposal_encr_is_aead(p->encr[i].id)) {
            if (!aead)
                aead = &p->encr[i];
        } else if (!plain) {
            plain = &p->encr[i];
        }
    }
    if (aead && plain) {
        snprintf(msg, sizeof(msg), "mixes AEAD ('%s') and non-AEAD ('%s') ciphers; use two proposals",
                 proposal_encr_name(aead->id, aead->key_bits), proposal_encr_name(plain->id, plain->key_bits));
        return fail(err, err_len, msg);
    }

    if (kind == PROPOSAL_IKE && p->n_prf == 0)
        for (size_t i = 0; i < p->n_integ; i++)
            add_u16(p->prf, &p->n_prf, PROPOSAL_MAX_ALGS, prf_for_integ(p->integ[i]));

    if (plain && p->n_integ == 0) {
        snprintf(msg, sizeof(msg), "'%s' needs an integrity algorithm, e.g. 'sha256'",
                 proposal_encr_name(plain->id, plain->key_bits));
        return fail(err, err_len, msg);
    }
    /* As strongSwan does: integrity algorithms listed with an AEAD cipher
     * have no use (the cipher authenticates) and are dropped, so proposals
     * copied from a gateway's configuration still parse. */
    if (aead)
        p->n_integ = 0;

    if (kind == PROPOSAL_IKE) {
        if (p->n_prf == 0)
            return fail(err, err_len, "needs a PRF with an AEAD cipher, e.g. 'prfsha256'");
        if (p->n_ke == 0)
            return fail(err, err_len, "needs a key exchange method, e.g. 'x25519'");
    } else if (p->n_esn == 0) {
        p->esn[0] = ESN_NO;
        p->n_esn = 1;
    }
    return 0;
}

int proposal_parse(const char *s, proposal_kind kind, proposal *ret, char *err, size_t err_len)
{
    if (!s || !ret || (kind != PROPOSAL_IKE && kind != PROPOSAL_ESP)) {
        if (err && err_len)
            snprintf(err, err_len, "invalid argument");
        return M2MVPN_E_INVAL;
    }
    size_t len = strnlen(s, PROPOSAL_MAX_TEXT + 1);
    if (len == 0)
        return fail(err, err_len, "empty proposal");
    if (len > PROPOSAL_MAX_TEXT)
        return fail(err, err_len, "longer than 255 characters");

    proposal p;
    memset(&p, 0, sizeof(p));
    const char *tok = s, *end = s + len;
    while (tok <= end) {
        const char *dash = memchr(tok, '-', (size_t)(end - tok));
        const char *tok_end = dash ? dash : end;
        size_t tok_len = (size_t)(tok_end - tok);
        if (tok_len == 0)
            return fail(err, err_len, "empty algorithm name (two '-' in a row, or '-' at an end)");
        const alg_keyword *k = find_keyword(tok, tok_len);
        if (!k)
            return fail_unknown(err, err_len, tok, tok_len);
        int r = add_keyword(&p, kind, k, err, err_len);
        if (r < 0)
            return r;
        tok = tok_end + 1;
    }
    int r = check_complete(&p, kind, err, err_len);
    if (r < 0)
        return r;
    *ret = p;
    return 0;
}

/* Appends "-name" (or "name" first) while it fits; the output stays a
 * NUL-terminated prefix of the full text if out_len is too small. */
static void append_name(char *out, size_t out_len, size_t *pos, const char *name)
{
    int n = snprintf(out + *pos, out_len - *pos, "%s%s", *pos ? "-" : "", name);
    if (n < 0)
        return;
    *pos += (size_t)n < out_len - *pos ? (size_t)n : out_len - *pos - 1;
}

void proposal_format(const proposal *p, proposal_kind kind, char *out, size_t out_len)
{
    if (!out || out_len == 0)
        return;
    out[0] = '\0';
    if (!p)
        return;
    size_t pos = 0;
    for (size_t i = 0; i < p->n_encr && i < PROPOSAL_MAX_ALGS; i++)
        append_name(out, out_len, &pos, proposal_encr_name(p->encr[i].id, p->encr[i].key_bits));
    for (size_t i = 0; i < p->n_integ && i < PROPOSAL_MAX_ALGS; i++)
        append_name(out, out_len, &pos, proposal_integ_name(p->integ[i]));
    if (kind == PROPOSAL_IKE)
        for (size_t i = 0; i < p->n_prf && i < PROPOSAL_MAX_ALGS; i++)
            append_name(out, out_len, &pos, proposal_prf_name(p->prf[i]));
    for (size_t i = 0; i < p->n_ke && i < PROPOSAL_MAX_ALGS; i++)
        append_name(out, out_len, &pos, proposal_ke_name(p->ke[i]));
    /* {noesn} is the default and stays implicit, so parse(format(p)) == p. */
    bool default_esn = p->n_esn == 1 && p->esn[0] == ESN_NO;
    if (kind == PROPOSAL_ESP && !default_esn)
        for (size_t i = 0; i < p->n_esn && i < 2; i++)
            append_name(out, out_len, &pos, proposal_esn_name(p->esn[i]));
}
