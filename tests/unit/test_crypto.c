/* SPDX-License-Identifier: Apache-2.0 */
/*
 * lib/crypto: PRF/prf+, IKEv2 key derivation, AEAD and CBC+HMAC ciphers,
 * key exchange. Known answers come from published vectors (each cited beside
 * its data); where none are published, from an independent computation in
 * tests/unit/data/crypto/gen_ikev2_vectors.py.
 */
#include <check.h>
#include <ctype.h>
#include <openssl/bn.h>
#include <stdlib.h>
#include <string.h>

#include <m2mvpn/m2mvpn.h>
#include "crypto/crypto.h"
#include "data/crypto/crypto_vectors.h"

/* ---------------------------------------------------------------- helpers */

/* Hex (whitespace ignored) into out; returns the byte count. */
static size_t unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    int hi = -1;
    for (const char *p = hex; *p; p++) {
        if (isspace((unsigned char)*p))
            continue;
        int v = isdigit((unsigned char)*p) ? *p - '0' : tolower((unsigned char)*p) - 'a' + 10;
        ck_assert_msg(v >= 0 && v < 16, "bad hex in test data");
        if (hi < 0) {
            hi = v;
        } else {
            ck_assert_uint_lt(n, cap);
            out[n++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
    }
    ck_assert_int_eq(hi, -1);
    return n;
}

#define ck_assert_bytes_eq(a, b, n) ck_assert_mem_eq((a), (b), (n))

static uint64_t be64(const uint8_t p[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static bool is_all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* ------------------------------------------------------------------ names */

START_TEST(test_names)
{
    ck_assert_str_eq(crypto_encr_name(ENCR_AES_GCM_16), "ENCR_AES_GCM_16");
    ck_assert_str_eq(crypto_encr_name(ENCR_AES_CBC), "ENCR_AES_CBC");
    ck_assert_str_eq(crypto_encr_name(ENCR_CHACHA20_POLY1305), "ENCR_CHACHA20_POLY1305");
    ck_assert_str_eq(crypto_prf_name(PRF_HMAC_SHA2_384), "PRF_HMAC_SHA2_384");
    ck_assert_str_eq(crypto_integ_name(AUTH_HMAC_SHA2_512_256), "AUTH_HMAC_SHA2_512_256");
    ck_assert_str_eq(crypto_ke_name(KE_X25519), "Curve25519");
    ck_assert_str_eq(crypto_ke_name(KE_ECP521), "ECP_521");
    ck_assert_str_eq(crypto_ke_name(KE_MODP3072), "MODP_3072");
    ck_assert_str_eq(crypto_dir_name(CRYPTO_DIR_DECRYPT), "decrypt");
    ck_assert_str_eq(crypto_encr_name(3), "unknown");       /* 3DES: not supported */
    ck_assert_str_eq(crypto_prf_name(2), "unknown");        /* HMAC-SHA1 */
    ck_assert_str_eq(crypto_integ_name(0), "unknown");
    ck_assert_str_eq(crypto_ke_name(2), "unknown");         /* MODP 1024 */
    ck_assert_str_eq(crypto_dir_name((crypto_dir)7), "unknown");
}
END_TEST

/* ------------------------------------------------------ random, compare */

START_TEST(test_random)
{
    uint8_t a[32] = { 0 }, b[32] = { 0 };
    ck_assert_int_eq(crypto_random(a, sizeof(a)), 0);
    ck_assert_int_eq(crypto_random(b, sizeof(b)), 0);
    ck_assert(!is_all_zero(a, sizeof(a)));
    ck_assert(memcmp(a, b, sizeof(a)) != 0);
    ck_assert_int_eq(crypto_random(NULL, 1), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_random(NULL, 0), 0);
}
END_TEST

START_TEST(test_memeq)
{
    uint8_t a[20], b[20];
    memset(a, 0x5a, sizeof(a));
    memcpy(b, a, sizeof(b));
    ck_assert(crypto_memeq(a, b, sizeof(a)));
    b[19] ^= 1;
    ck_assert(!crypto_memeq(a, b, sizeof(a)));
    ck_assert(crypto_memeq(a, b, 19));
}
END_TEST

/* -------------------------------------------------------------- HMAC PRF */


START_TEST(test_hmac_rfc4231)
{
    static const uint16_t prfs[] = { PRF_HMAC_SHA2_256, PRF_HMAC_SHA2_384, PRF_HMAC_SHA2_512 };
    const int i = _i;
    uint8_t key[200], data[200], want[64], got[64];
    size_t key_len, data_len;
    if (rfc4231[i].key_hex) {
        key_len = unhex(rfc4231[i].key_hex, key, sizeof(key));
    } else {
        key_len = rfc4231[i].key_len;
        memset(key, rfc4231[i].key_fill, key_len);
    }
    if (rfc4231[i].data) {
        data_len = strlen(rfc4231[i].data);
        memcpy(data, rfc4231[i].data, data_len);
    } else {
        data_len = rfc4231[i].data_len;
        memset(data, rfc4231[i].data_fill, data_len);
    }
    for (size_t h = 0; h < 3; h++) {
        const char *hex = h == 0 ? rfc4231[i].sha256 : h == 1 ? rfc4231[i].sha384 : rfc4231[i].sha512;
        size_t n = unhex(hex, want, sizeof(want));
        ck_assert_uint_eq(crypto_prf_len(prfs[h]), n);

        /* one-shot, data split into three spans (concatenation) */
        crypto_span parts[] = { { data, 3 }, { data + 3, 0 }, { data + 3, data_len - 3 } };
        memset(got, 0, sizeof(got));
        ck_assert_int_eq(crypto_prf_oneshot(prfs[h], key, key_len, parts, 3, got, sizeof(got)), 0);
        ck_assert_bytes_eq(got, want, n);

        /* keyed object: twice with the same key, byte-wise updates the second time */
        crypto_prf *prf = NULL;
        ck_assert_int_eq(crypto_prf_new(prfs[h], key, key_len, &prf), 0);
        ck_assert_uint_eq(crypto_prf_out_len(prf), n);
        ck_assert_int_eq(crypto_prf_update(prf, data, data_len), 0);
        memset(got, 0, sizeof(got));
        ck_assert_int_eq(crypto_prf_final(prf, got, sizeof(got)), 0);
        ck_assert_bytes_eq(got, want, n);
        for (size_t k = 0; k < data_len; k++)
            ck_assert_int_eq(crypto_prf_update(prf, data + k, 1), 0);
        memset(got, 0, sizeof(got));
        ck_assert_int_eq(crypto_prf_final(prf, got, n), 0);
        ck_assert_bytes_eq(got, want, n);
        /* an output buffer too small is refused, nothing written */
        ck_assert_int_eq(crypto_prf_final(prf, got, n - 1), M2MVPN_E_INVAL);
        crypto_prf_free(prf);
    }
}
END_TEST

START_TEST(test_prf_args)
{
    crypto_prf *prf = (crypto_prf *)0x1;
    uint8_t key[4] = { 1, 2, 3, 4 }, out[64];
    ck_assert_uint_eq(crypto_prf_len(PRF_HMAC_SHA2_256), 32);
    ck_assert_uint_eq(crypto_prf_len(PRF_HMAC_SHA2_384), 48);
    ck_assert_uint_eq(crypto_prf_len(PRF_HMAC_SHA2_512), 64);
    ck_assert_uint_eq(crypto_prf_len(2 /* SHA1 */), 0);
    ck_assert_int_eq(crypto_prf_new(2, key, 4, &prf), M2MVPN_E_INVAL);
    ck_assert_ptr_eq(prf, (crypto_prf *)0x1); /* untouched on failure */
    ck_assert_int_eq(crypto_prf_new(PRF_HMAC_SHA2_256, NULL, 4, &prf), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_prf_oneshot(PRF_HMAC_SHA2_256, key, 4, NULL, 0, out, 31), M2MVPN_E_INVAL);
    /* empty key and empty data are valid HMAC inputs */
    ck_assert_int_eq(crypto_prf_oneshot(PRF_HMAC_SHA2_256, NULL, 0, NULL, 0, out, sizeof(out)), 0);
    crypto_prf_free(NULL);
}
END_TEST

/* ---------------------------------------------------- IKEv2 KDF (CAVP) */


typedef struct cavp_case {
    uint8_t g_ir[128], ni[8], nr[8], spi_i[8], spi_r[8], skeyseed[64], dkm[132];
    size_t g_ir_len, skeyseed_len;
} cavp_case;

static void cavp_load(int i, cavp_case *c)
{
    c->g_ir_len = unhex(cavp_ikev2[i].g_ir, c->g_ir, sizeof(c->g_ir));
    ck_assert_uint_eq(unhex(cavp_ikev2[i].ni, c->ni, 8), 8);
    ck_assert_uint_eq(unhex(cavp_ikev2[i].nr, c->nr, 8), 8);
    ck_assert_uint_eq(unhex(cavp_ikev2[i].spi_i, c->spi_i, 8), 8);
    ck_assert_uint_eq(unhex(cavp_ikev2[i].spi_r, c->spi_r, 8), 8);
    c->skeyseed_len = unhex(cavp_ikev2[i].skeyseed, c->skeyseed, sizeof(c->skeyseed));
    ck_assert_uint_eq(unhex(cavp_ikev2[i].dkm, c->dkm, sizeof(c->dkm)), 132);
}

START_TEST(test_kdf_cavp_skeyseed_and_dkm)
{
    const int i = _i;
    cavp_case c;
    cavp_load(i, &c);
    uint16_t prf = cavp_ikev2[i].prf;

    crypto_key skeyseed;
    ck_assert_int_eq(crypto_ike_skeyseed(prf, c.ni, 8, c.nr, 8, c.g_ir, c.g_ir_len, &skeyseed), 0);
    ck_assert_uint_eq(skeyseed.len, c.skeyseed_len);
    ck_assert_bytes_eq(skeyseed.b, c.skeyseed, c.skeyseed_len);

    uint8_t dkm[132];
    crypto_span seed[] = { { c.ni, 8 }, { c.nr, 8 }, { c.spi_i, 8 }, { c.spi_r, 8 } };
    ck_assert_int_eq(crypto_prf_plus(prf, skeyseed.b, skeyseed.len, seed, 4, dkm, sizeof(dkm)), 0);
    ck_assert_bytes_eq(dkm, c.dkm, sizeof(dkm));
}
END_TEST

/* IKE SA keys are the DKM cut in RFC 7296 §2.14 order; checked against the
 * CAVP DKM (132 bytes covers everything but the tail of SK_pr). */
START_TEST(test_kdf_ike_keys_split_aead)
{
    cavp_case c;
    cavp_load(0, &c);
    crypto_key skeyseed = { .len = c.skeyseed_len };
    memcpy(skeyseed.b, c.skeyseed, c.skeyseed_len);
    crypto_suite suite = { .encr_id = ENCR_AES_GCM_16, .encr_key_bits = 128, .integ_id = 0,
                           .prf_id = PRF_HMAC_SHA2_256 };
    crypto_ike_keys *k = NULL;
    ck_assert_int_eq(crypto_ike_keys_derive(&suite, &skeyseed, c.ni, 8, c.nr, 8, c.spi_i, c.spi_r, &k), 0);
    ck_assert_ptr_nonnull(k);
    ck_assert_uint_eq(k->sk_d.len, 32);
    ck_assert_uint_eq(k->sk_ai.len, 0);
    ck_assert_uint_eq(k->sk_ar.len, 0);
    ck_assert_uint_eq(k->sk_ei.len, 20); /* 16-byte key + 4-byte salt */
    ck_assert_uint_eq(k->sk_er.len, 20);
    ck_assert_uint_eq(k->sk_pi.len, 32);
    ck_assert_uint_eq(k->sk_pr.len, 32);
    ck_assert_bytes_eq(k->sk_d.b, c.dkm, 32);
    ck_assert_bytes_eq(k->sk_ei.b, c.dkm + 32, 20);
    ck_assert_bytes_eq(k->sk_er.b, c.dkm + 52, 20);
    ck_assert_bytes_eq(k->sk_pi.b, c.dkm + 72, 32);
    ck_assert_bytes_eq(k->sk_pr.b, c.dkm + 104, 28);
    crypto_ike_keys_free(k);
}
END_TEST

START_TEST(test_kdf_ike_keys_split_cbc)
{
    cavp_case c;
    cavp_load(1, &c); /* SHA-384 */
    crypto_key skeyseed = { .len = c.skeyseed_len };
    memcpy(skeyseed.b, c.skeyseed, c.skeyseed_len);
    crypto_suite suite = { .encr_id = ENCR_AES_CBC, .encr_key_bits = 256,
                           .integ_id = AUTH_HMAC_SHA2_384_192, .prf_id = PRF_HMAC_SHA2_384 };
    crypto_ike_keys *k = NULL;
    ck_assert_int_eq(crypto_ike_keys_derive(&suite, &skeyseed, c.ni, 8, c.nr, 8, c.spi_i, c.spi_r, &k), 0);
    ck_assert_uint_eq(k->sk_d.len, 48);
    ck_assert_uint_eq(k->sk_ai.len, 48);
    ck_assert_uint_eq(k->sk_ar.len, 48);
    ck_assert_uint_eq(k->sk_ei.len, 32);
    ck_assert_uint_eq(k->sk_er.len, 32);
    ck_assert_uint_eq(k->sk_pi.len, 48);
    ck_assert_bytes_eq(k->sk_d.b, c.dkm, 48);
    ck_assert_bytes_eq(k->sk_ai.b, c.dkm + 48, 48);
    ck_assert_bytes_eq(k->sk_ar.b, c.dkm + 96, 36);
    crypto_ike_keys_free(k);
}
END_TEST

START_TEST(test_kdf_invalid)
{
    cavp_case c;
    cavp_load(0, &c);
    crypto_key skeyseed = { .len = 32 };
    memcpy(skeyseed.b, c.skeyseed, 32);
    crypto_ike_keys *k = (crypto_ike_keys *)0x1;
    crypto_suite gcm_with_integ = { ENCR_AES_GCM_16, 128, AUTH_HMAC_SHA2_256_128, PRF_HMAC_SHA2_256 };
    crypto_suite cbc_without_integ = { ENCR_AES_CBC, 128, 0, PRF_HMAC_SHA2_256 };
    crypto_suite bad_prf = { ENCR_AES_GCM_16, 128, 0, 2 };
    crypto_suite bad_bits = { ENCR_AES_GCM_16, 192, 0, PRF_HMAC_SHA2_256 };
    ck_assert_int_eq(crypto_ike_keys_derive(&gcm_with_integ, &skeyseed, c.ni, 8, c.nr, 8, c.spi_i, c.spi_r, &k), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_ike_keys_derive(&cbc_without_integ, &skeyseed, c.ni, 8, c.nr, 8, c.spi_i, c.spi_r, &k), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_ike_keys_derive(&bad_prf, &skeyseed, c.ni, 8, c.nr, 8, c.spi_i, c.spi_r, &k), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_ike_keys_derive(&bad_bits, &skeyseed, c.ni, 8, c.nr, 8, c.spi_i, c.spi_r, &k), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_ike_keys_derive(&gcm_with_integ, &skeyseed, NULL, 0, c.nr, 8, c.spi_i, c.spi_r, &k), M2MVPN_E_INVAL);
    ck_assert_ptr_eq(k, (crypto_ike_keys *)0x1);
    crypto_key out = { .len = 99 };
    ck_assert_int_eq(crypto_ike_skeyseed(PRF_HMAC_SHA2_256, c.ni, 8, c.nr, 8, NULL, 0, &out), M2MVPN_E_INVAL);
    ck_assert_uint_eq(out.len, 99);
    crypto_ike_keys_free(NULL);
    crypto_child_keys_free(NULL);
}
END_TEST

/* ------------------------------------------------------------- prf+ */

START_TEST(test_prf_plus_behaviour)
{
    uint8_t key[32], seed[40], full[255 * 32 + 1], t[64], block_in[32 + 40 + 1];
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (uint8_t)(0x11 * i);
    for (size_t i = 0; i < sizeof(seed); i++)
        seed[i] = (uint8_t)(0xf0 - i);
    crypto_span s = { seed, sizeof(seed) };

    /* the longest allowed output: 255 blocks; one byte more is refused */
    ck_assert_int_eq(crypto_prf_plus(PRF_HMAC_SHA2_256, key, 32, &s, 1, full, 255 * 32), 0);
    ck_assert_int_eq(crypto_prf_plus(PRF_HMAC_SHA2_256, key, 32, &s, 1, full, 255 * 32 + 1), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_prf_plus(PRF_HMAC_SHA2_256, key, 32, &s, 1, full, 0), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_prf_plus(2, key, 32, &s, 1, full, 10), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_prf_plus(PRF_HMAC_SHA2_256, key, 32, &s, 1, full, 255 * 32), 0);

    /* T1 = prf(K, S | 0x01); T2 = prf(K, T1 | S | 0x02); T255 uses counter 0xff */
    memcpy(block_in, seed, sizeof(seed));
    block_in[sizeof(seed)] = 1;
    crypto_span in1 = { block_in, sizeof(seed) + 1 };
    ck_assert_int_eq(crypto_prf_oneshot(PRF_HMAC_SHA2_256, key, 32, &in1, 1, t, sizeof(t)), 0);
    ck_assert_bytes_eq(full, t, 32);
    crypto_span in2[] = { { full, 32 }, { seed, sizeof(seed) }, { (const uint8_t *)"\x02", 1 } };
    ck_assert_int_eq(crypto_prf_oneshot(PRF_HMAC_SHA2_256, key, 32, in2, 3, t, sizeof(t)), 0);
    ck_assert_bytes_eq(full + 32, t, 32);
    crypto_span in255[] = { { full + 253 * 32, 32 }, { seed, sizeof(seed) }, { (const uint8_t *)"\xff", 1 } };
    ck_assert_int_eq(crypto_prf_oneshot(PRF_HMAC_SHA2_256, key, 32, in255, 3, t, sizeof(t)), 0);
    ck_assert_bytes_eq(full + 254 * 32, t, 32);

    /* a shorter output is a prefix; the seed may come in any split */
    uint8_t part[45];
    crypto_span split[] = { { seed, 7 }, { seed + 7, 33 } };
    ck_assert_int_eq(crypto_prf_plus(PRF_HMAC_SHA2_256, key, 32, split, 2, part, sizeof(part)), 0);
    ck_assert_bytes_eq(part, full, sizeof(part));
}
END_TEST

/* --------------------------------------- CHILD SA KEYMAT, rekey SKEYSEED */


static void gen_g_ir_new(uint8_t g[64])
{
    for (int i = 0; i < 64; i++)
        g[i] = (uint8_t)(0x20 + i);
}

START_TEST(test_child_keys_aead_no_pfs)
{
    crypto_key sk_d = { .len = 32 };
    uint8_t ni[8], nr[8], want[72];
    unhex(gen_sk_d, sk_d.b, 32);
    unhex(gen_ni, ni, 8);
    unhex(gen_nr, nr, 8);
    unhex("1aa75030d18185338fb509c3822481bb1cc7cd96cfcc29e110287a4ea2798be3455edb260ab8b3d5"
          "03cfbd24f36833ff3506c741dd641d4c425087221e231dc6058ce3c620424c88", want, sizeof(want));
    crypto_suite suite = { ENCR_AES_GCM_16, 256, 0, PRF_HMAC_SHA2_256 };
    crypto_child_keys *k = NULL;
    ck_assert_int_eq(crypto_child_keys_derive(&suite, &sk_d, NULL, 0, ni, 8, nr, 8, &k), 0);
    ck_assert_uint_eq(k->encr_i.len, 36);
    ck_assert_uint_eq(k->integ_i.len, 0);
    ck_assert_uint_eq(k->encr_r.len, 36);
    ck_assert_uint_eq(k->integ_r.len, 0);
    ck_assert_bytes_eq(k->encr_i.b, want, 36);
    ck_assert_bytes_eq(k->encr_r.b, want + 36, 36);
    crypto_child_keys_free(k);
}
END_TEST

START_TEST(test_child_keys_cbc_pfs)
{
    crypto_key sk_d = { .len = 32 };
    uint8_t ni[8], nr[8], g[64], want[96];
    unhex(gen_sk_d, sk_d.b, 32);
    unhex(gen_ni, ni, 8);
    unhex(gen_nr, nr, 8);
    gen_g_ir_new(g);
    unhex("939f17c1878e5792cbb7fb61d6ee3d298513d19f6ea95e92edd0c77b371f245192df30146f86b366"
          "e525331724118d4e0409ec826d8ea409c2c0f18e2d258ea2d33548ab30d26344509b893df1f16dff"
          "1a77aefbe54fa162aa53b5c1170a56a4", want, sizeof(want));
    crypto_suite suite = { ENCR_AES_CBC, 128, AUTH_HMAC_SHA2_256_128, PRF_HMAC_SHA2_256 };
    crypto_child_keys *k = NULL;
    ck_assert_int_eq(crypto_child_keys_derive(&suite, &sk_d, g, 64, ni, 8, nr, 8, &k), 0);
    /* initiator->responder first, encryption before integrity (§2.17) */
    ck_assert_uint_eq(k->encr_i.len, 16);
    ck_assert_uint_eq(k->integ_i.len, 32);
    ck_assert_bytes_eq(k->encr_i.b, want, 16);
    ck_assert_bytes_eq(k->integ_i.b, want + 16, 32);
    ck_assert_bytes_eq(k->encr_r.b, want + 48, 16);
    ck_assert_bytes_eq(k->integ_r.b, want + 64, 32);
    crypto_child_keys_free(k);
}
END_TEST

START_TEST(test_skeyseed_rekey)
{
    crypto_key sk_d = { .len = 32 }, out;
    uint8_t ni[8], nr[8], g[64], want[32];
    unhex(gen_sk_d, sk_d.b, 32);
    unhex(gen_ni, ni, 8);
    unhex(gen_nr, nr, 8);
    gen_g_ir_new(g);
    unhex("68e340f14d68fd2718900924fed7ecf7eb4e2e22194a3b9fb2942d25a6dd5790", want, 32);
    ck_assert_int_eq(crypto_ike_skeyseed_rekey(PRF_HMAC_SHA2_256, &sk_d, g, 64, ni, 8, nr, 8, &out), 0);
    ck_assert_uint_eq(out.len, 32);
    ck_assert_bytes_eq(out.b, want, 32);
}
END_TEST

/* ------------------------------------------------------------- ciphers */

START_TEST(test_cipher_sizes)
{
    crypto_cipher_sizes s;
    ck_assert_int_eq(crypto_cipher_sizes_get(ENCR_AES_GCM_16, 256, 0, &s), 0);
    ck_assert(s.aead);
    ck_assert_uint_eq(s.encr_key_len, 36);
    ck_assert_uint_eq(s.integ_key_len, 0);
    ck_assert_uint_eq(s.iv_len, 8);
    ck_assert_uint_eq(s.icv_len, 16);
    ck_assert_uint_eq(s.block_len, 1);
    ck_assert_int_eq(crypto_cipher_sizes_get(ENCR_AES_GCM_16, 128, 0, &s), 0);
    ck_assert_uint_eq(s.encr_key_len, 20);
    ck_assert_int_eq(crypto_cipher_sizes_get(ENCR_CHACHA20_POLY1305, 256, 0, &s), 0);
    ck_assert_uint_eq(s.encr_key_len, 36);
    ck_assert_uint_eq(s.icv_len, 16);
    ck_assert_int_eq(crypto_cipher_sizes_get(ENCR_AES_CBC, 128, AUTH_HMAC_SHA2_256_128, &s), 0);
    ck_assert(!s.aead);
    ck_assert_uint_eq(s.encr_key_len, 16);
    ck_assert_uint_eq(s.integ_key_len, 32);
    ck_assert_uint_eq(s.iv_len, 16);
    ck_assert_uint_eq(s.icv_len, 16);
    ck_assert_uint_eq(s.block_len, 16);
    ck_assert_int_eq(crypto_cipher_sizes_get(ENCR_AES_CBC, 256, AUTH_HMAC_SHA2_384_192, &s), 0);
    ck_assert_uint_eq(s.integ_key_len, 48);
    ck_assert_uint_eq(s.icv_len, 24);
    ck_assert_int_eq(crypto_cipher_sizes_get(ENCR_AES_CBC, 256, AUTH_HMAC_SHA2_512_256, &s), 0);
    ck_assert_uint_eq(s.integ_key_len, 64);
    ck_assert_uint_eq(s.icv_len, 32);
    ck_assert_uint_eq(crypto_integ_key_len(AUTH_HMAC_SHA2_384_192), 48);
    ck_assert_uint_eq(crypto_integ_key_len(2), 0);
    ck_assert_int_eq(crypto_cipher_sizes_get(ENCR_AES_CBC, 192, AUTH_HMAC_SHA2_256_128, &s), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_cipher_sizes_get(ENCR_AES_CBC, 128, 0, &s), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_cipher_sizes_get(ENCR_AES_GCM_16, 128, AUTH_HMAC_SHA2_256_128, &s), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_cipher_sizes_get(3, 192, AUTH_HMAC_SHA2_256_128, &s), M2MVPN_E_INVAL);
}
END_TEST


typedef struct aead_bufs {
    uint8_t key[36], iv[8], aad[32], plain[128], ct_tag[160];
    size_t key_len, aad_len, plain_len, ct_len;
} aead_bufs;

static void aead_load(const aead_kat *k, aead_bufs *b)
{
    b->key_len = unhex(k->key_salt, b->key, sizeof(b->key));
    ck_assert_uint_eq(unhex(k->iv, b->iv, sizeof(b->iv)), 8);
    b->aad_len = unhex(k->aad, b->aad, sizeof(b->aad));
    b->plain_len = unhex(k->plain, b->plain, sizeof(b->plain));
    b->ct_len = unhex(k->ct_tag, b->ct_tag, sizeof(b->ct_tag));
    ck_assert_uint_eq(b->ct_len, b->plain_len + 16);
}

START_TEST(test_aead_kat)
{
    const aead_kat *k = &aead_kats[_i];
    aead_bufs b;
    aead_load(k, &b);
    crypto_cipher *enc = NULL, *dec = NULL;
    ck_assert_int_eq(crypto_cipher_new(k->encr, k->bits, 0, CRYPTO_DIR_ENCRYPT, b.key, b.key_len,
                                       NULL, 0, &enc), 0);
    ck_assert_int_eq(crypto_cipher_new(k->encr, k->bits, 0, CRYPTO_DIR_DECRYPT, b.key, b.key_len,
                                       NULL, 0, &dec), 0);
    ck_assert_uint_eq(crypto_cipher_get_sizes(enc)->icv_len, 16);

    /* encrypt in place */
    uint8_t data[128], icv[16];
    memcpy(data, b.plain, b.plain_len);
    crypto_msg m = { .aad = b.aad, .aad_len = b.aad_len, .iv = b.iv, .in = data, .out = data,
                     .data_len = b.plain_len, .icv = icv };
    ck_assert_int_eq(crypto_cipher_encrypt(enc, &m), 0);
    ck_assert_bytes_eq(data, b.ct_tag, b.plain_len);
    ck_assert_bytes_eq(icv, b.ct_tag + b.plain_len, 16);
    /* the decrypt object refuses to encrypt and vice versa */
    ck_assert_int_eq(crypto_cipher_encrypt(dec, &m), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_cipher_decrypt(enc, &m), M2MVPN_E_INVAL);

    /* decrypt out of place */
    uint8_t out[128];
    crypto_msg d = { .aad = b.aad, .aad_len = b.aad_len, .iv = b.iv, .in = b.ct_tag, .out = out,
                     .data_len = b.plain_len, .icv = b.ct_tag + b.plain_len };
    ck_assert_int_eq(crypto_cipher_decrypt(dec, &d), 0);
    ck_assert_bytes_eq(out, b.plain, b.plain_len);

    /* tampering anywhere is an integrity failure, and no plaintext is left */
    uint8_t *tamper[] = { b.ct_tag, b.ct_tag + b.plain_len + 15, b.aad, b.iv + 7 };
    for (size_t t = 0; t < 4; t++) {
        if (tamper[t] == b.aad && b.aad_len == 0)
            continue;
        if (tamper[t] == b.ct_tag && b.plain_len == 0)
            continue;
        *tamper[t] ^= 0x01;
        memset(out, 0xee, sizeof(out));
        ck_assert_int_eq(crypto_cipher_decrypt(dec, &d), M2MVPN_E_CRYPTO);
        ck_assert(is_all_zero(out, b.plain_len));
        *tamper[t] ^= 0x01;
    }
    /* and after failures the object still works */
    ck_assert_int_eq(crypto_cipher_decrypt(dec, &d), 0);
    ck_assert_bytes_eq(out, b.plain, b.plain_len);
    crypto_cipher_free(enc);
    crypto_cipher_free(dec);
}
END_TEST

/* Several messages through one prepared object each way, IVs from next_iv,
 * AAD only and empty payloads too. */
START_TEST(test_aead_many_messages)
{
    static const uint16_t encrs[][2] = { { ENCR_AES_GCM_16, 128 }, { ENCR_AES_GCM_16, 256 },
                                         { ENCR_CHACHA20_POLY1305, 256 } };
    for (size_t e = 0; e < 3; e++) {
        crypto_cipher_sizes s;
        ck_assert_int_eq(crypto_cipher_sizes_get(encrs[e][0], encrs[e][1], 0, &s), 0);
        uint8_t key[36];
        ck_assert_int_eq(crypto_random(key, s.encr_key_len), 0);
        crypto_cipher *enc, *dec;
        ck_assert_int_eq(crypto_cipher_new(encrs[e][0], encrs[e][1], 0, CRYPTO_DIR_ENCRYPT, key,
                                           s.encr_key_len, NULL, 0, &enc), 0);
        ck_assert_int_eq(crypto_cipher_new(encrs[e][0], encrs[e][1], 0, CRYPTO_DIR_DECRYPT, key,
                                           s.encr_key_len, NULL, 0, &dec), 0);
        uint8_t prev_iv[8] = { 0 }, dec_iv[8];
        ck_assert_int_eq(crypto_cipher_next_iv(dec, dec_iv), M2MVPN_E_INVAL);
        for (size_t n = 0; n < 20; n++) {
            uint8_t hdr[28], iv[8], msg[300], orig[300], icv[16];
            size_t len = n * 13;
            memset(hdr, (int)n, sizeof(hdr));
            for (size_t i = 0; i < len; i++)
                orig[i] = (uint8_t)(i * 7 + n);
            memcpy(msg, orig, len);
            ck_assert_int_eq(crypto_cipher_next_iv(enc, iv), 0);
            if (n > 0) /* a counter: each IV is the previous one + 1 (mod 2^64) */
                ck_assert_uint_eq(be64(iv), be64(prev_iv) + 1);
            memcpy(prev_iv, iv, 8);
            crypto_msg m = { hdr, sizeof(hdr), iv, msg, msg, len, icv, NULL, 0 };
            ck_assert_int_eq(crypto_cipher_encrypt(enc, &m), 0);
            if (len > 16)
                ck_assert(memcmp(msg, orig, len) != 0);
            ck_assert_int_eq(crypto_cipher_decrypt(dec, &m), 0);
            ck_assert_bytes_eq(msg, orig, len);
        }
        /* a second object on the same key does not restart the IV sequence */
        crypto_cipher *enc2;
        uint8_t iv2[8];
        ck_assert_int_eq(crypto_cipher_new(encrs[e][0], encrs[e][1], 0, CRYPTO_DIR_ENCRYPT, key,
                                           s.encr_key_len, NULL, 0, &enc2), 0);
        ck_assert_int_eq(crypto_cipher_next_iv(enc2, iv2), 0);
        ck_assert(memcmp(iv2, prev_iv, 8) != 0);
        crypto_cipher_free(enc2);
        crypto_cipher_free(enc);
        crypto_cipher_free(dec);
    }
}
END_TEST

START_TEST(test_cipher_new_invalid)
{
    uint8_t key[64] = { 0 };
    crypto_cipher *c = (crypto_cipher *)0x1;
    /* AES-GCM-128 needs 20 bytes (key + salt) */
    ck_assert_int_eq(crypto_cipher_new(ENCR_AES_GCM_16, 128, 0, CRYPTO_DIR_ENCRYPT, key, 16, NULL, 0, &c), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_cipher_new(ENCR_AES_GCM_16, 128, 0, CRYPTO_DIR_ENCRYPT, key, 20, key, 32, &c), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_cipher_new(ENCR_AES_CBC, 128, AUTH_HMAC_SHA2_256_128, CRYPTO_DIR_ENCRYPT, key, 16, key, 16, &c), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_cipher_new(ENCR_AES_CBC, 128, AUTH_HMAC_SHA2_256_128, CRYPTO_DIR_ENCRYPT, key, 16, NULL, 0, &c), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_cipher_new(ENCR_AES_CBC, 128, AUTH_HMAC_SHA2_256_128, (crypto_dir)5, key, 16, key, 32, &c), M2MVPN_E_INVAL);
    ck_assert_ptr_eq(c, (crypto_cipher *)0x1);
    crypto_cipher_free(NULL);
    ck_assert_ptr_null(crypto_cipher_get_sizes(NULL));
}
END_TEST

/* ------------------------------------------------------- AES-CBC + HMAC */


START_TEST(test_cbc_hmac_kat)
{
    uint8_t key[32], iv[16], plain[64], ct[64], integ[32], aad[32], icv[16], want_icv[16];
    unhex(f25_key, key, 32);
    unhex(f25_iv, iv, 16);
    unhex(f25_plain, plain, 64);
    unhex(f25_ct, ct, 64);
    for (int i = 0; i < 32; i++) {
        integ[i] = (uint8_t)(i + 1);
        aad[i] = (uint8_t)(0xa0 + i);
    }
    crypto_cipher *enc, *dec;
    ck_assert_int_eq(crypto_cipher_new(ENCR_AES_CBC, 256, AUTH_HMAC_SHA2_256_128, CRYPTO_DIR_ENCRYPT,
                                       key, 32, integ, 32, &enc), 0);
    ck_assert_int_eq(crypto_cipher_new(ENCR_AES_CBC, 256, AUTH_HMAC_SHA2_256_128, CRYPTO_DIR_DECRYPT,
                                       key, 32, integ, 32, &dec), 0);
    uint8_t data[64];
    memcpy(data, plain, 64);
    crypto_msg m = { aad, 32, iv, data, data, 64, icv, NULL, 0 };
    ck_assert_int_eq(crypto_cipher_encrypt(enc, &m), 0);
    ck_assert_bytes_eq(data, ct, 64);
    unhex("3207141e6c186cf66a1216304ce2a7df", want_icv, 16);
    ck_assert_bytes_eq(icv, want_icv, 16);

    ck_assert_int_eq(crypto_cipher_decrypt(dec, &m), 0);
    ck_assert_bytes_eq(data, plain, 64);

    /* with a trailer authenticated after the ciphertext (ESP ESN high bits) */
    uint8_t trailer[4] = { 0, 0, 0, 1 };
    memcpy(data, plain, 64);
    crypto_msg mt = { aad, 32, iv, data, data, 64, icv, trailer, 4 };
    ck_assert_int_eq(crypto_cipher_encrypt(enc, &mt), 0);
    unhex("ec8a1117101aca0177635372b2681958", want_icv, 16);
    ck_assert_bytes_eq(icv, want_icv, 16);
    trailer[3] = 2; /* a different sequence-number high half fails */
    uint8_t out[64];
    crypto_msg dt = { aad, 32, iv, data, out, 64, icv, trailer, 4 };
    ck_assert_int_eq(crypto_cipher_decrypt(dec, &dt), M2MVPN_E_CRYPTO);
    ck_assert(is_all_zero(out, 64));
    trailer[3] = 1;
    ck_assert_int_eq(crypto_cipher_decrypt(dec, &dt), 0);
    ck_assert_bytes_eq(out, plain, 64);
    crypto_cipher_free(enc);
    crypto_cipher_free(dec);
}
END_TEST

/* An IKE message laid out as on the wire, protected in place with spans into
 * the one buffer: for CBC+HMAC the ICV is the truncated HMAC of everything
 * from the IKE header up to the ICV (RFC 7296 §3.14). */
START_TEST(test_cbc_hmac_ike_message_layout)
{
    uint8_t key[16], integ[32], msg[28 + 4 + 16 + 48 + 16], plain[48];
    ck_assert_int_eq(crypto_random(key, sizeof(key)), 0);
    ck_assert_int_eq(crypto_random(integ, sizeof(integ)), 0);
    for (size_t i = 0; i < sizeof(msg); i++)
        msg[i] = (uint8_t)i;                         /* header, SK header, payloads */
    const size_t aad_len = 28 + 4, iv_off = aad_len, data_off = iv_off + 16, icv_off = data_off + 48;
    memcpy(plain, msg + data_off, sizeof(plain));
    crypto_cipher *enc, *dec;
    ck_assert_int_eq(crypto_cipher_new(ENCR_AES_CBC, 128, AUTH_HMAC_SHA2_256_128, CRYPTO_DIR_ENCRYPT,
                                       key, 16, integ, 32, &enc), 0);
    ck_assert_int_eq(crypto_cipher_new(ENCR_AES_CBC, 128, AUTH_HMAC_SHA2_256_128, CRYPTO_DIR_DECRYPT,
                                       key, 16, integ, 32, &dec), 0);
    ck_assert_int_eq(crypto_cipher_next_iv(enc, msg + iv_off), 0);
    crypto_msg m = { msg, aad_len, msg + iv_off, msg + data_off, msg + data_off, 48,
                     msg + icv_off, NULL, 0 };
    ck_assert_int_eq(crypto_cipher_encrypt(enc, &m), 0);
    ck_assert(memcmp(msg + data_off, plain, 48) != 0);

    uint8_t mac[32];
    crypto_span whole = { msg, icv_off };
    ck_assert_int_eq(crypto_prf_oneshot(PRF_HMAC_SHA2_256, integ, 32, &whole, 1, mac, sizeof(mac)), 0);
    ck_assert_bytes_eq(msg + icv_off, mac, 16);

    ck_assert_int_eq(crypto_cipher_decrypt(dec, &m), 0);
    ck_assert_bytes_eq(msg + data_off, plain, 48);
    crypto_cipher_free(enc);
    crypto_cipher_free(dec);
}
END_TEST

/* RFC 3602 §4 Case #2 (AES-128-CBC, 32 bytes): ciphertext; plus a round trip
 * and tampering with every part for each integrity algorithm. */
START_TEST(test_cbc_hmac_roundtrip_tamper)
{
    static const uint16_t integs[] = { AUTH_HMAC_SHA2_256_128, AUTH_HMAC_SHA2_384_192,
                                       AUTH_HMAC_SHA2_512_256 };
    const uint16_t integ_id = integs[_i];
    uint8_t key[16], iv[16], plain[32], want_ct[32], integ[64], aad[40], icv[32];
    unhex("c286696d887c9aa0611bbb3e2025a45a", key, 16);
    unhex("562e17996d093d28ddb3ba695a2e6f58", iv, 16);
    unhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", plain, 32);
    unhex("d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1", want_ct, 32);
    size_t ilen = crypto_integ_key_len(integ_id);
    ck_assert_int_eq(crypto_random(integ, ilen), 0);
    memset(aad, 0x42, sizeof(aad));

    crypto_cipher *enc, *dec;
    ck_assert_int_eq(crypto_cipher_new(ENCR_AES_CBC, 128, integ_id, CRYPTO_DIR_ENCRYPT, key, 16,
                                       integ, ilen, &enc), 0);
    ck_assert_int_eq(crypto_cipher_new(ENCR_AES_CBC, 128, integ_id, CRYPTO_DIR_DECRYPT, key, 16,
                                       integ, ilen, &dec), 0);
    size_t icv_len = crypto_cipher_get_sizes(enc)->icv_len;
    uint8_t ct[32], out[32];
    crypto_msg m = { aad, sizeof(aad), iv, plain, ct, 32, icv, NULL, 0 };
    ck_assert_int_eq(crypto_cipher_encrypt(enc, &m), 0);
    ck_assert_bytes_eq(ct, want_ct, 32);

    crypto_msg d = { aad, sizeof(aad), iv, ct, out, 32, icv, NULL, 0 };
    ck_assert_int_eq(crypto_cipher_decrypt(dec, &d), 0);
    ck_assert_bytes_eq(out, plain, 32);

    uint8_t *tamper[] = { ct + 31, ct, iv, aad + 39, icv, icv + icv_len - 1 };
    for (size_t t = 0; t < 6; t++) {
        *tamper[t] ^= 0x80;
        memset(out, 0xee, sizeof(out));
        ck_assert_int_eq(crypto_cipher_decrypt(dec, &d), M2MVPN_E_CRYPTO);
        ck_assert(is_all_zero(out, sizeof(out)));
        *tamper[t] ^= 0x80;
    }
    /* lengths: not a block multiple, empty, wrong direction, partial overlap */
    d.data_len = 31;
    ck_assert_int_eq(crypto_cipher_decrypt(dec, &d), M2MVPN_E_INVAL);
    d.data_len = 0;
    ck_assert_int_eq(crypto_cipher_decrypt(dec, &d), M2MVPN_E_INVAL);
    d.data_len = 32;
    ck_assert_int_eq(crypto_cipher_encrypt(dec, &d), M2MVPN_E_INVAL);
    uint8_t overlap[48];
    memcpy(overlap, ct, 32);
    crypto_msg o = { aad, sizeof(aad), iv, overlap, overlap + 16, 32, icv, NULL, 0 };
    ck_assert_int_eq(crypto_cipher_decrypt(dec, &o), M2MVPN_E_INVAL);
    ck_assert_int_eq(crypto_cipher_decrypt(dec, &d), 0);

    /* CBC IVs come from the RNG and differ */
    uint8_t iv1[16], iv2[16];
    ck_assert_int_eq(crypto_cipher_next_iv(enc, iv1), 0);
    ck_assert_int_eq(crypto_cipher_next_iv(enc, iv2), 0);
    ck_assert(memcmp(iv1, iv2, 16) != 0);
    crypto_cipher_free(enc);
    crypto_cipher_free(dec);
}
END_TEST

/* --------------------------------------------------------- key exchange */

START_TEST(test_ke_lengths)
{
    ck_assert_uint_eq(crypto_ke_public_len(KE_X25519), 32);
    ck_assert_uint_eq(crypto_ke_public_len(KE_ECP256), 64);
    ck_assert_uint_eq(crypto_ke_public_len(KE_ECP384), 96);
    ck_assert_uint_eq(crypto_ke_public_len(KE_ECP521), 132);
    ck_assert_uint_eq(crypto_ke_public_len(KE_MODP2048), 256);
    ck_assert_uint_eq(crypto_ke_public_len(KE_MODP3072), 384);
    ck_assert_uint_eq(crypto_ke_public_len(KE_MODP4096), 512);
    ck_assert_uint_eq(crypto_ke_shared_len(KE_ECP521), 66);
    ck_assert_uint_eq(crypto_ke_shared_len(KE_MODP2048), 256);
    ck_assert_uint_eq(crypto_ke_public_len(2), 0);
    crypto_ke *ke = (crypto_ke *)0x1;
    ck_assert_int_eq(crypto_ke_new(2, &ke), M2MVPN_E_INVAL);
    ck_assert_ptr_eq(ke, (crypto_ke *)0x1);
    crypto_ke_free(NULL);
}
END_TEST


/* Private from `priv_hex`: its public value must be `pub_hex`, and with the
 * peer's `peer_hex` it must derive `shared_hex`. */
static void ke_kat(uint16_t ke_id, const char *priv_hex, const char *pub_hex,
                   const char *peer_hex, const char *shared_hex)
{
    uint8_t priv[80], want_pub[140], peer[140], want_shared[70], pub[140], shared[70];
    size_t priv_len = unhex(priv_hex, priv, sizeof(priv));
    size_t pub_len = unhex(pub_hex, want_pub, sizeof(want_pub));
    size_t peer_len = unhex(peer_hex, peer, sizeof(peer));
    size_t shared_len = unhex(shared_hex, want_shared, sizeof(want_shared));
    crypto_ke *ke = NULL;
    ck_assert_int_eq(crypto_ke_new_from_private(ke_id, priv, priv_len, &ke), 0);
    ck_assert_uint_eq(crypto_ke_id(ke), ke_id);
    size_t n = 0;
    ck_assert_int_eq(crypto_ke_public(ke, pub, sizeof(pub), &n), 0);
    ck_assert_uint_eq(n, pub_len);
    ck_assert_bytes_eq(pub, want_pub, pub_len);
    char err[128] = "";
    ck_assert_int_eq(crypto_ke_derive(ke, peer, peer_len, shared, sizeof(shared), &n, err, sizeof(err)), 0);
    ck_assert_uint_eq(n, shared_len);
    ck_assert_bytes_eq(shared, want_shared, shared_len);
    crypto_ke_free(ke);
}

START_TEST(test_x25519_rfc7748)
{
    ke_kat(KE_X25519, x25519_a, x25519_a_pub, x25519_b_pub, x25519_k);
    ke_kat(KE_X25519, x25519_b, x25519_b_pub, x25519_a_pub, x25519_k);
}
END_TEST

START_TEST(test_x25519_invalid_peer)
{
    uint8_t priv[32], peer[33] = { 0 }, out[32];
    unhex(x25519_a, priv, 32);
    crypto_ke *ke;
    ck_assert_int_eq(crypto_ke_new_from_private(KE_X25519, priv, 32, &ke), 0);
    char err[128] = "";
    size_t n = 77;
    /* u = 0 and u = 1 are low-order points: the shared secret would be all zero */
    ck_assert_int_eq(crypto_ke_derive(ke, peer, 32, out, sizeof(out), &n, err, sizeof(err)), M2MVPN_E_PROTOCOL);
    ck_assert_ptr_nonnull(strstr(err, "zero"));
    peer[0] = 1;
    ck_assert_int_eq(crypto_ke_derive(ke, peer, 32, out, sizeof(out), &n, err, sizeof(err)), M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(crypto_ke_derive(ke, peer, 31, out, sizeof(out), &n, err, sizeof(err)), M2MVPN_E_PROTOCOL);
    ck_assert_ptr_nonnull(strstr(err, "length"));
    ck_assert_int_eq(crypto_ke_derive(ke, peer, 33, out, sizeof(out), &n, NULL, 0), M2MVPN_E_PROTOCOL);
    ck_assert_uint_eq(n, 77); /* untouched */
    ck_assert_int_eq(crypto_ke_new_from_private(KE_X25519, priv, 31, &ke), M2MVPN_E_INVAL);
    crypto_ke_free(ke);
}
END_TEST


START_TEST(test_ecp_rfc5903)
{
    const int i = _i;
    ke_kat(rfc5903[i].ke, rfc5903[i].i, rfc5903[i].gix_giy, rfc5903[i].grx_gry, rfc5903[i].girx);
    ke_kat(rfc5903[i].ke, rfc5903[i].r, rfc5903[i].grx_gry, rfc5903[i].gix_giy, rfc5903[i].girx);
}
END_TEST

START_TEST(test_ecp_invalid_peer)
{
    const int i = _i;
    uint16_t id = rfc5903[i].ke;
    size_t plen = crypto_ke_public_len(id), fl = plen / 2;
    uint8_t peer[140], bad[140], out[70];
    ck_assert_uint_eq(unhex(rfc5903[i].grx_gry, peer, sizeof(peer)), plen);
    crypto_ke *ke;
    ck_assert_int_eq(crypto_ke_new(id, &ke), 0);
    char err[128];
    size_t n = 0;

    /* the valid point works with a fresh key */
    ck_assert_int_eq(crypto_ke_derive(ke, peer, plen, out, sizeof(out), &n, err, sizeof(err)), 0);
    ck_assert_uint_eq(n, fl);

    /* y changed: not on the curve */
    memcpy(bad, peer, plen);
    bad[plen - 1] ^= 1;
    ck_assert_int_eq(crypto_ke_derive(ke, bad, plen, out, sizeof(out), &n, err, sizeof(err)), M2MVPN_E_PROTOCOL);
    ck_assert_ptr_nonnull(strstr(err, "not on the curve"));
    /* (0, 0): what an encoder might make of the point at infinity */
    memset(bad, 0, plen);
    ck_assert_int_eq(crypto_ke_derive(ke, bad, plen, out, sizeof(out), &n, err, sizeof(err)), M2MVPN_E_PROTOCOL);
    /* a coordinate >= p (all ones; for P-521 the field is 521 bits) */
    memcpy(bad, peer, plen);
    memset(bad, 0xff, fl);
    ck_assert_int_eq(crypto_ke_derive(ke, bad, plen, out, sizeof(out), &n, err, sizeof(err)), M2MVPN_E_PROTOCOL);
    ck_assert_ptr_nonnull(strstr(err, "field prime"));
    /* SEC1 form with the 0x04 byte, and a truncated value: wrong length */
    bad[0] = 0x04;
    memcpy(bad + 1, peer, plen);
    ck_assert_int_eq(crypto_ke_derive(ke, bad, plen + 1, out, sizeof(out), &n, err, sizeof(err)), M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(crypto_ke_derive(ke, peer, plen - 1, out, sizeof(out), &n, err, sizeof(err)), M2MVPN_E_PROTOCOL);
    /* our own key still works after all those */
    ck_assert_int_eq(crypto_ke_derive(ke, peer, plen, out, sizeof(out), &n, err, sizeof(err)), 0);
    crypto_ke_free(ke);

    /* a private scalar of zero is not a key */
    memset(bad, 0, fl);
    ck_assert_int_eq(crypto_ke_new_from_private(id, bad, fl, &ke), M2MVPN_E_INVAL);
}
END_TEST

/* Both sides of a fresh exchange agree, for every group. */
START_TEST(test_ke_agree)
{
    static const uint16_t groups[] = { KE_X25519, KE_ECP256, KE_ECP384, KE_ECP521,
                                       KE_MODP2048, KE_MODP3072, KE_MODP4096 };
    uint16_t id = groups[_i];
    crypto_ke *a, *b;
    ck_assert_int_eq(crypto_ke_new(id, &a), 0);
    ck_assert_int_eq(crypto_ke_new(id, &b), 0);
    uint8_t pa[512], pb[512], sa[512], sb[512];
    size_t la, lb, na, nb;
    ck_assert_int_eq(crypto_ke_public(a, pa, sizeof(pa), &la), 0);
    ck_assert_int_eq(crypto_ke_public(b, pb, sizeof(pb), &lb), 0);
    ck_assert_uint_eq(la, crypto_ke_public_len(id));
    ck_assert_uint_eq(lb, la);
    ck_assert(memcmp(pa, pb, la) != 0);
    ck_assert_int_eq(crypto_ke_public(a, pa, la - 1, &la), M2MVPN_E_INVAL);
    char err[128] = "";
    ck_assert_int_eq(crypto_ke_derive(a, pb, lb, sa, sizeof(sa), &na, err, sizeof(err)), 0);
    ck_assert_int_eq(crypto_ke_derive(b, pa, la, sb, sizeof(sb), &nb, err, sizeof(err)), 0);
    ck_assert_uint_eq(na, crypto_ke_shared_len(id));
    ck_assert_uint_eq(nb, na);
    ck_assert_bytes_eq(sa, sb, na);
    ck_assert(!is_all_zero(sa, na));
    crypto_ke_free(a);
    crypto_ke_free(b);
}
END_TEST

/* MODP: peer values 0, 1, p-1, p and above p are refused (RFC 3526 primes from OpenSSL). */
START_TEST(test_modp_invalid_peer)
{
    static const uint16_t groups[] = { KE_MODP2048, KE_MODP3072, KE_MODP4096 };
    uint16_t id = groups[_i];
    size_t len = crypto_ke_public_len(id);
    BIGNUM *p = id == KE_MODP2048 ? BN_get_rfc3526_prime_2048(NULL)
              : id == KE_MODP3072 ? BN_get_rfc3526_prime_3072(NULL)
                                  : BN_get_rfc3526_prime_4096(NULL);
    ck_assert_ptr_nonnull(p);
    uint8_t pbytes[512], v[512], out[512];
    ck_assert_int_eq(BN_bn2binpad(p, pbytes, (int)len), (int)len);
    BN_free(p);

    crypto_ke *ke;
    ck_assert_int_eq(crypto_ke_new(id, &ke), 0);
    char err[128];
    size_t n = 0;
    memset(v, 0, len); /* 0 */
    ck_assert_int_eq(crypto_ke_derive(ke, v, len, out, sizeof(out), &n, err, sizeof(err)), M2MVPN_E_PROTOCOL);
    ck_assert_ptr_nonnull(strstr(err, "out of range"));
    v[len - 1] = 1; /* 1 */
    ck_assert_int_eq(crypto_ke_derive(ke, v, len, out, sizeof(out), &n, err, sizeof(err)), M2MVPN_E_PROTOCOL);
    memcpy(v, pbytes, len); /* p - 1: p ends in ...ff */
    ck_assert_uint_eq(v[len - 1], 0xff);
    v[len - 1] = 0xfe;
    ck_assert_int_eq(crypto_ke_derive(ke, v, len, out, sizeof(out), &n, err, sizeof(err)), M2MVPN_E_PROTOCOL);
    memcpy(v, pbytes, len); /* p */
    ck_assert_int_eq(crypto_ke_derive(ke, v, len, out, sizeof(out), &n, err, sizeof(err)), M2MVPN_E_PROTOCOL);
    memset(v, 0xff, len); /* > p */
    ck_assert_int_eq(crypto_ke_derive(ke, v, len, out, sizeof(out), &n, err, sizeof(err)), M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(crypto_ke_derive(ke, v, len - 1, out, sizeof(out), &n, err, sizeof(err)), M2MVPN_E_PROTOCOL);
    /* 2 is a valid group element (the generator): accepted */
    memset(v, 0, len);
    v[len - 1] = 2;
    ck_assert_int_eq(crypto_ke_derive(ke, v, len, out, sizeof(out), &n, err, sizeof(err)), 0);
    ck_assert_uint_eq(n, len);
    crypto_ke_free(ke);
}
END_TEST

/* MODP from a known private exponent: x = 2 gives the public value g^2 = 4,
 * and with the peer value 2 (= g) the shared secret g^2 = 4, padded. */
START_TEST(test_modp_known_private)
{
    uint8_t x[1] = { 2 }, pub[256], out[256], two[256], want[256];
    crypto_ke *ke;
    ck_assert_int_eq(crypto_ke_new_from_private(KE_MODP2048, x, 1, &ke), 0);
    size_t n;
    ck_assert_int_eq(crypto_ke_public(ke, pub, sizeof(pub), &n), 0);
    memset(want, 0, sizeof(want));
    want[255] = 4;
    ck_assert_uint_eq(n, 256);
    ck_assert_bytes_eq(pub, want, 256);
    memset(two, 0, sizeof(two));
    two[255] = 2;
    ck_assert_int_eq(crypto_ke_derive(ke, two, 256, out, sizeof(out), &n, NULL, 0), 0);
    ck_assert_uint_eq(n, 256);
    ck_assert_bytes_eq(out, want, 256);
    crypto_ke_free(ke);
    x[0] = 1;
    ck_assert_int_eq(crypto_ke_new_from_private(KE_MODP2048, x, 1, &ke), M2MVPN_E_INVAL);
}
END_TEST

/* ------------------------------------------------------------------ main */

static Suite *crypto_suite_make(void)
{
    Suite *s = suite_create("crypto");
    TCase *tc = tcase_create("basics");
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_random);
    tcase_add_test(tc, test_memeq);
    suite_add_tcase(s, tc);

    tc = tcase_create("prf");
    tcase_add_loop_test(tc, test_hmac_rfc4231, 0, (int)(sizeof(rfc4231) / sizeof(rfc4231[0])));
    tcase_add_test(tc, test_prf_args);
    tcase_add_test(tc, test_prf_plus_behaviour);
    suite_add_tcase(s, tc);

    tc = tcase_create("kdf");
    tcase_add_loop_test(tc, test_kdf_cavp_skeyseed_and_dkm, 0, 3);
    tcase_add_test(tc, test_kdf_ike_keys_split_aead);
    tcase_add_test(tc, test_kdf_ike_keys_split_cbc);
    tcase_add_test(tc, test_kdf_invalid);
    tcase_add_test(tc, test_child_keys_aead_no_pfs);
    tcase_add_test(tc, test_child_keys_cbc_pfs);
    tcase_add_test(tc, test_skeyseed_rekey);
    suite_add_tcase(s, tc);

    tc = tcase_create("cipher");
    tcase_add_test(tc, test_cipher_sizes);
    tcase_add_loop_test(tc, test_aead_kat, 0, (int)(sizeof(aead_kats) / sizeof(aead_kats[0])));
    tcase_add_test(tc, test_aead_many_messages);
    tcase_add_test(tc, test_cipher_new_invalid);
    tcase_add_test(tc, test_cbc_hmac_kat);
    tcase_add_test(tc, test_cbc_hmac_ike_message_layout);
    tcase_add_loop_test(tc, test_cbc_hmac_roundtrip_tamper, 0, 3);
    suite_add_tcase(s, tc);

    tc = tcase_create("ke");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_ke_lengths);
    tcase_add_test(tc, test_x25519_rfc7748);
    tcase_add_test(tc, test_x25519_invalid_peer);
    tcase_add_loop_test(tc, test_ecp_rfc5903, 0, 3);
    tcase_add_loop_test(tc, test_ecp_invalid_peer, 0, 3);
    tcase_add_loop_test(tc, test_ke_agree, 0, 7);
    tcase_add_loop_test(tc, test_modp_invalid_peer, 0, 3);
    tcase_add_test(tc, test_modp_known_private);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(crypto_suite_make());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
