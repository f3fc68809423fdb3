/* SPDX-License-Identifier: Apache-2.0 */
/* MD4 (RFC 1320) and a single-DES block for the EAP methods: crypto_legacy.h. */
#include "crypto_legacy.h"

#include <m2mvpn/m2mvpn.h>
#include <openssl/evp.h>
#include <string.h>

#include "core/secmem.h"

/* ------------------------------------------------------------------ MD4 */

static uint32_t rotl(uint32_t x, unsigned s)
{
    return (x << s) | (x >> (32 - s));
}

static uint32_t md4_f(uint32_t x, uint32_t y, uint32_t z) { return (x & y) | (~x & z); }
static uint32_t md4_g(uint32_t x, uint32_t y, uint32_t z) { return (x & y) | (x & z) | (y & z); }
static uint32_t md4_h(uint32_t x, uint32_t y, uint32_t z) { return x ^ y ^ z; }

/* One 64-byte block into the state (RFC 1320 §3.4). */
static void md4_block(uint32_t st[4], const uint8_t blk[64])
{
    static const uint8_t order2[16] = { 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15 };
    static const uint8_t order3[16] = { 0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15 };
    static const uint8_t shift1[4] = { 3, 7, 11, 19 }, shift2[4] = { 3, 5, 9, 13 }, shift3[4] = { 3, 9, 11, 15 };
    uint32_t x[16];
    for (int i = 0; i < 16; i++)
        x[i] = (uint32_t)blk[4 * i] | (uint32_t)blk[4 * i + 1] << 8 | (uint32_t)blk[4 * i + 2] << 16 |
               (uint32_t)blk[4 * i + 3] << 24;
    uint32_t v[4] = { st[0], st[1], st[2], st[3] };
    /* Each step updates a, d, c, b in turn: word (4 - i % 4) % 4 of v. */
    for (int i = 0; i < 16; i++) {
        int a = (4 - i % 4) % 4, b = (a + 1) % 4, c = (a + 2) % 4, d = (a + 3) % 4;
        v[a] = rotl(v[a] + md4_f(v[b], v[c], v[d]) + x[i], shift1[i % 4]);
    }
    for (int i = 0; i < 16; i++) {
        int a = (4 - i % 4) % 4, b = (a + 1) % 4, c = (a + 2) % 4, d = (a + 3) % 4;
        v[a] = rotl(v[a] + md4_g(v[b], v[c], v[d]) + x[order2[i]] + 0x5a827999u, shift2[i % 4]);
    }
    for (int i = 0; i < 16; i++) {
        int a = (4 - i % 4) % 4, b = (a + 1) % 4, c = (a + 2) % 4, d = (a + 3) % 4;
        v[a] = rotl(v[a] + md4_h(v[b], v[c], v[d]) + x[order3[i]] + 0x6ed9eba1u, shift3[i % 4]);
    }
    for (int i = 0; i < 4; i++)
        st[i] += v[i];
    secure_wipe(x, sizeof(x));
    secure_wipe(v, sizeof(v));
}

int crypto_md4(const uint8_t *data, size_t len, uint8_t out[16])
{
    if ((!data && len) || !out)
        return M2MVPN_E_INVAL;
    uint32_t st[4] = { 0x67452301u, 0xefcdab89u, 0x98badcfeu, 0x10325476u };
    size_t full = len / 64 * 64;
    for (size_t off = 0; off < full; off += 64)
        md4_block(st, data + off);
    /* Padding: 0x80, zeros, and the length in bits, little-endian (§3.1-3.2). */
    uint8_t tail[128];
    memset(tail, 0, sizeof(tail));
    size_t rest = len - full;
    if (rest)
        memcpy(tail, data + full, rest);
    tail[rest] = 0x80;
    size_t tail_len = rest < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        tail[tail_len - 8 + i] = (uint8_t)(bits >> (8 * i));
    md4_block(st, tail);
    if (tail_len == 128)
        md4_block(st, tail + 64);
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 4; k++)
            out[4 * i + k] = (uint8_t)(st[i] >> (8 * k));
    secure_wipe(tail, sizeof(tail));
    secure_wipe(st, sizeof(st));
    return 0;
}

/* ------------------------------------------------------------------ DES */

int crypto_des7_block(const uint8_t k7[7], const uint8_t in[8], uint8_t out[8])
{
    if (!k7 || !in || !out)
        return M2MVPN_E_INVAL;
    /* 56 key bits spread over 8 bytes, 7 each, the low bit left for parity
     * (RFC 2759 §8.6: DES ignores it; set odd parity all the same). */
    uint8_t key[24];
    for (int i = 0; i < 8; i++) {
        unsigned bitpos = 7u * (unsigned)i;
        unsigned hi = k7[bitpos / 8], lo = bitpos / 8 + 1 < 7 ? k7[bitpos / 8 + 1] : 0;
        uint8_t b = (uint8_t)((((hi << 8) | lo) >> (9 - bitpos % 8)) << 1);
        b &= 0xfe;
        unsigned ones = 0;
        for (int k = 1; k < 8; k++)
            ones += (b >> k) & 1u;
        key[i] = (uint8_t)(b | ((ones & 1u) ? 0 : 1));
    }
    memcpy(key + 8, key, 8);
    memcpy(key + 16, key, 8);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, ok = ctx != NULL;
    ok = ok && EVP_EncryptInit_ex(ctx, EVP_des_ede3_ecb(), NULL, key, NULL) &&
         EVP_CIPHER_CTX_set_padding(ctx, 0) && EVP_EncryptUpdate(ctx, out, &n, in, 8) && n == 8;
    EVP_CIPHER_CTX_free(ctx);
    secure_wipe(key, sizeof(key));
    return ctx ? (ok ? 0 : M2MVPN_E_CRYPTO) : M2MVPN_E_NOMEM;
}

/* MD5 is in crypto_hash.c, with the other digests. */
