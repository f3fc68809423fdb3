/* SPDX-License-Identifier: Apache-2.0 */
/*
 * server/pki: enrolment tokens. No secret is stored: SECRET is derived from
 * the server's token key and the token id, so the database only ever holds ids.
 */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <string.h>

#include "pki_srv.h"

#define TOKEN_LABEL "m2mvpn-enrol:"

static int is_token_id(const char *id)
{
    size_t n = 0;
    for (; id[n]; n++)
        if (!((id[n] >= '0' && id[n] <= '9') || (id[n] >= 'a' && id[n] <= 'f')))
            return 0;
    return n == 16;
}

int pki_token_secret(const unsigned char *token_key, size_t key_len, const char *token_id, char out[44])
{
    if (!token_key || key_len == 0 || !token_id || !is_token_id(token_id))
        return -1;
    unsigned char msg[sizeof(TOKEN_LABEL) - 1 + 16];
    memcpy(msg, TOKEN_LABEL, sizeof(TOKEN_LABEL) - 1);
    memcpy(msg + sizeof(TOKEN_LABEL) - 1, token_id, 16);
    unsigned char mac[32];
    unsigned int maclen = 0;
    if (!HMAC(EVP_sha256(), token_key, (int)key_len, msg, sizeof(msg), mac, &maclen) || maclen != 32)
        return -1;
    static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    /* 32 bytes = 10 groups of 3 + 2 left: 40 + 3 characters, no padding. */
    for (size_t i = 0; i < 32; i += 3) {
        unsigned v = (unsigned)mac[i] << 16;
        if (i + 1 < 32)
            v |= (unsigned)mac[i + 1] << 8;
        if (i + 2 < 32)
            v |= mac[i + 2];
        out[o++] = b64url[(v >> 18) & 63];
        out[o++] = b64url[(v >> 12) & 63];
        if (i + 1 < 32)
            out[o++] = b64url[(v >> 6) & 63];
        if (i + 2 < 32)
            out[o++] = b64url[v & 63];
    }
    out[o] = '\0';
    OPENSSL_cleanse(mac, sizeof(mac));
    return o == 43 ? 0 : -1;
}

int pki_token_id_new(char out[17])
{
    unsigned char r[8];
    if (RAND_bytes(r, sizeof(r)) != 1)
        return -1;
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < 8; i++) {
        out[2 * i] = hex[r[i] >> 4];
        out[2 * i + 1] = hex[r[i] & 15];
    }
    out[16] = '\0';
    return 0;
}
