/* SPDX-License-Identifier: Apache-2.0 */
/* The EAP peer of lib/ike (eap.h): MD4, MSCHAPv2 and EAP-MD5 against published
 * values, and the state machine against a scripted gateway that misbehaves. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <m2mvpn/m2mvpn.h>

#include "core/buf.h"
#include "crypto/crypto_legacy.h"
#include "ike/eap.h"

static void unhex(const char *h, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        ck_assert(sscanf(h + 2 * i, "%2x", &v) == 1);
        out[i] = (uint8_t)v;
    }
}

static void assert_hex(const uint8_t *got, const char *want_hex, size_t n)
{
    uint8_t want[64];
    unhex(want_hex, want, n);
    ck_assert_mem_eq(got, want, n);
}

/* RFC 1320 §A.5 test suite. */
START_TEST(test_md4_rfc1320)
{
    static const struct { const char *in, *md; } v[] = {
        { "", "31d6cfe0d16ae931b73c59d7e0c089c0" },
        { "a", "bde52cb31de33e46245e05fbdbd6fb24" },
        { "abc", "a448017aaf21d8525fc10ae87aa6729d" },
        { "message digest", "d9130a8164549fe818874806e1c7014b" },
        { "abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9" },
        { "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "043f8582f241db351ce627e153e7f0e4" },
        { "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
          "e33b4ddc9c38f2199c3e7b164fcc0536" },
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        uint8_t out[16];
        ck_assert_int_eq(crypto_md4((const uint8_t *)v[i].in, strlen(v[i].in), out), 0);
        assert_hex(out, v[i].md, 16);
    }
}
END_TEST

/* RFC 2759 §9.2 ("Examples of DES Key Generation" / hash example):
 *   UserName "User", Password "clientPass",
 *   AuthenticatorChallenge 5B5D7C7D7B3F2F3E3C2C602132262628,
 *   PeerChallenge          21402324255E262A28295F2B3A337C7E,
 *   Challenge              D02E4386BCE91226,
 *   PasswordHash           44EBBA8D5312B8D611474411F56989AE,
 *   NT-Response            82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF,
 *   PasswordHashHash       41C00C584BD2D91C4017A2A12FA59F3F,
 *   AuthenticatorResponse  S=407A5589115FD0D6209F510FE9C04566932CDA56.
 * RFC 3079 §3.5.3 (same inputs): MasterKey FDECE3717A8C838CB388E527AE3CDD31,
 *   the server's 128-bit send start key 8B7CDC149B993A1BA118CB153F56DCCB
 *   (the peer's receive key: the second half of our MSK). */
START_TEST(test_mschapv2_rfc2759)
{
    uint8_t auth[16], peer[16], hash[16], ch[8], nt[24], hh[16], mk[16], msk[32];
    unhex("5B5D7C7D7B3F2F3E3C2C602132262628", auth, 16);
    unhex("21402324255E262A28295F2B3A337C7E", peer, 16);
    ck_assert_int_eq(eap_mschapv2_nt_hash("clientPass", 10, hash), 0);
    assert_hex(hash, "44EBBA8D5312B8D611474411F56989AE", 16);
    ck_assert_int_eq(crypto_md4(hash, 16, hh), 0);
    assert_hex(hh, "41C00C584BD2D91C4017A2A12FA59F3F", 16);
    ck_assert_int_eq(eap_mschapv2_challenge_hash(peer, auth, "User", ch), 0);
    assert_hex(ch, "D02E4386BCE91226", 8);
    ck_assert_int_eq(eap_mschapv2_nt_response(auth, peer, "User", hash, nt), 0);
    assert_hex(nt, "82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF", 24);
    char ar[43];
    ck_assert_int_eq(eap_mschapv2_authenticator_response(hash, nt, peer, auth, "User", ar), 0);
    ck_assert_str_eq(ar, "S=407A5589115FD0D6209F510FE9C04566932CDA56");
    ck_assert_int_eq(eap_mschapv2_master_key(hash, nt, mk), 0);
    assert_hex(mk, "FDECE3717A8C838CB388E527AE3CDD31", 16);
    ck_assert_int_eq(eap_mschapv2_msk(hash, nt, msk), 0);
    assert_hex(msk + 16, "8B7CDC149B993A1BA118CB153F56DCCB", 16);
    /* A domain prefix is not part of the challenge hash (RFC 2759 §4). */
    uint8_t ch2[8];
    ck_assert_int_eq(eap_mschapv2_challenge_hash(peer, auth, "BIGCO\\User", ch2), 0);
    ck_assert_mem_eq(ch, ch2, 8);
    /* Invalid UTF-8 is refused rather than hashed some other way. */
    ck_assert_int_eq(eap_mschapv2_nt_hash("a\xff", 2, hash), M2MVPN_E_INVAL);
}
END_TEST

/* EAP-MD5 = MD5(Identifier | password | challenge) (RFC 1994 §4.1, RFC 3748
 * §5.4). Cross-checked with Python:
 *   hashlib.md5(bytes([0x2a]) + b"clientPass" + bytes(range(16))).hexdigest()
 *   == "902768991decf7e13b5231be953c74d8" */
START_TEST(test_md5_value)
{
    uint8_t chal[16], out[16];
    for (int i = 0; i < 16; i++)
        chal[i] = (uint8_t)i;
    ck_assert_int_eq(eap_md5_value(0x2a, "clientPass", 10, chal, 16, out), 0);
    assert_hex(out, "902768991decf7e13b5231be953c74d8", 16);
}
END_TEST

/* ------------------------------------------------------ the scripted gateway */

#define PASSWORD "s3cret-Pass"
#define USER "dev1"

typedef struct script {
    eap_peer *p;
    uint8_t out[EAP_MAX_PACKET];
    size_t out_len;
    char err[256];
} script;

static int feed(script *s, const uint8_t *pkt, size_t len)
{
    s->out_len = 0;
    int r = eap_peer_process(s->p, pkt, len, s->out, sizeof(s->out), &s->out_len, s->err, sizeof(s->err));
    /* No secret ever reaches an error text. */
    ck_assert_ptr_null(strstr(s->err, PASSWORD));
    return r;
}

static size_t request(uint8_t *b, uint8_t code, uint8_t ident, int type, const void *data, size_t dlen)
{
    size_t n = 4;
    b[0] = code;
    b[1] = ident;
    if (type >= 0)
        b[n++] = (uint8_t)type;
    if (dlen)
        memcpy(b + n, data, dlen);
    n += dlen;
    buf_store_be16(b + 2, (uint16_t)n);
    return n;
}

static size_t mschap(uint8_t *b, uint8_t ident, uint8_t op, uint8_t ms_id, const uint8_t *body, size_t blen)
{
    uint8_t d[512];
    d[0] = op;
    d[1] = ms_id;
    buf_store_be16(d + 2, (uint16_t)(4 + blen));
    memcpy(d + 4, body, blen);
    return request(b, 1, ident, EAP_TYPE_MSCHAPV2, d, 4 + blen);
}

static const uint8_t auth_chal[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };

/* Identity, then the challenge; leaves the peer in METHOD with its response in s->out. */
static void to_method(script *s)
{
    uint8_t b[600];
    ck_assert_int_eq(eap_peer_new(EAP_METHOD_MSCHAPV2, USER, PASSWORD, strlen(PASSWORD), &s->p), 0);
    ck_assert_int_eq(feed(s, b, request(b, 1, 7, EAP_TYPE_IDENTITY, NULL, 0)), EAP_STEP_SEND);
    ck_assert_uint_eq(s->out_len, 5 + strlen(USER));
    ck_assert_uint_eq(s->out[0], 2);
    ck_assert_uint_eq(s->out[1], 7);
    ck_assert_uint_eq(s->out[4], EAP_TYPE_IDENTITY);
    ck_assert_mem_eq(s->out + 5, USER, strlen(USER));
    uint8_t body[17 + 3];
    body[0] = 16;
    memcpy(body + 1, auth_chal, 16);
    memcpy(body + 17, "gw", 2);
    ck_assert_int_eq(feed(s, b, mschap(b, 8, 1, 0x33, body, 19)), EAP_STEP_SEND);
    ck_assert_uint_eq(eap_peer_get_state(s->p), EAP_PEER_METHOD);
    /* Response: type 26, OpCode 2, same MS-CHAPv2-ID, Value-Size 49, name. */
    ck_assert_uint_eq(s->out_len, 5 + 4 + 1 + 49 + strlen(USER));
    ck_assert_uint_eq(s->out[1], 8);
    ck_assert_uint_eq(s->out[5], 2);
    ck_assert_uint_eq(s->out[6], 0x33);
    ck_assert_uint_eq(s->out[9], 49);
}

/* The Success request a gateway that knows the password would send. */
static size_t good_success(script *s, uint8_t *b, bool corrupt)
{
    const uint8_t *peer = s->out + 10, *nt = s->out + 10 + 24;
    uint8_t hash[16];
    char ar[43], msg[64];
    ck_assert_int_eq(eap_mschapv2_nt_hash(PASSWORD, strlen(PASSWORD), hash), 0);
    ck_assert_int_eq(eap_mschapv2_authenticator_response(hash, nt, peer, auth_chal, USER, ar), 0);
    if (corrupt)
        ar[10] = ar[10] == 'A' ? 'B' : 'A';
    int n = snprintf(msg, sizeof(msg), "%s M=welcome", ar);
    return mschap(b, 9, 3, 0x33, (const uint8_t *)msg, (size_t)n);
}

START_TEST(test_mschapv2_happy_path)
{
    script s = { 0 };
    uint8_t b[600], hash[16], nt[24], want[32];
    to_method(&s);
    memcpy(nt, s.out + 10 + 24, 24);
    ck_assert_int_eq(feed(&s, b, good_success(&s, b, false)), EAP_STEP_SEND);
    ck_assert_uint_eq(s.out_len, 6); /* Response, type 26, OpCode Success */
    ck_assert_uint_eq(s.out[5], 3);
    ck_assert_uint_eq(eap_peer_get_state(s.p), EAP_PEER_SUCCESS_ACKED);
    const uint8_t *msk;
    size_t msk_len;
    eap_peer_msk(s.p, &msk, &msk_len);
    ck_assert_uint_eq(msk_len, 0); /* not before EAP-Success */
    ck_assert_int_eq(feed(&s, b, request(b, 3, 9, -1, NULL, 0)), EAP_STEP_DONE);
    eap_peer_msk(s.p, &msk, &msk_len);
    ck_assert_uint_eq(msk_len, 32);
    ck_assert_int_eq(eap_mschapv2_nt_hash(PASSWORD, strlen(PASSWORD), hash), 0);
    ck_assert_int_eq(eap_mschapv2_msk(hash, nt, want), 0);
    ck_assert_mem_eq(msk, want, 32);
    /* Nothing after the end. */
    ck_assert_int_eq(feed(&s, b, request(b, 3, 10, -1, NULL, 0)), M2MVPN_E_PROTOCOL);
    eap_peer_free(s.p);
}
END_TEST

START_TEST(test_mschapv2_wrong_authenticator_response)
{
    script s = { 0 };
    uint8_t b[600];
    to_method(&s);
    ck_assert_int_eq(feed(&s, b, good_success(&s, b, true)), M2MVPN_E_AUTH_PEER);
    ck_assert_ptr_nonnull(strstr(s.err, "authenticator response is wrong"));
    ck_assert_uint_eq(s.out_len, 0);
    /* And the EAP-Success that follows does not finish anything. */
    ck_assert_int_eq(feed(&s, b, request(b, 3, 9, -1, NULL, 0)), M2MVPN_E_PROTOCOL);
    ck_assert_uint_eq(eap_peer_get_state(s.p), EAP_PEER_FAILED);
    eap_peer_free(s.p);
    /* A Success without any S= value is no better. */
    to_method(&s);
    ck_assert_int_eq(feed(&s, b, mschap(b, 9, 3, 0x33, (const uint8_t *)"M=hi", 4)), M2MVPN_E_AUTH_PEER);
    eap_peer_free(s.p);
}
END_TEST

START_TEST(test_mschapv2_premature_success)
{
    script s = { 0 };
    uint8_t b[600];
    /* Right after our response, before the authenticator was verified
     * (the CVE-2021-45079 class). */
    to_method(&s);
    ck_assert_int_eq(feed(&s, b, request(b, 3, 9, -1, NULL, 0)), M2MVPN_E_AUTH_LOCAL);
    ck_assert_ptr_nonnull(strstr(s.err, "premature EAP-Success"));
    eap_peer_free(s.p);
    /* As the very first message. */
    ck_assert_int_eq(eap_peer_new(EAP_METHOD_MSCHAPV2, USER, PASSWORD, strlen(PASSWORD), &s.p), 0);
    ck_assert_int_eq(feed(&s, b, request(b, 3, 1, -1, NULL, 0)), M2MVPN_E_AUTH_LOCAL);
    eap_peer_free(s.p);
    /* An MSCHAPv2 Success request before any challenge. */
    ck_assert_int_eq(eap_peer_new(EAP_METHOD_MSCHAPV2, USER, PASSWORD, strlen(PASSWORD), &s.p), 0);
    ck_assert_int_eq(feed(&s, b, mschap(b, 1, 3, 0, (const uint8_t *)"S=00", 4)), M2MVPN_E_PROTOCOL);
    eap_peer_free(s.p);
}
END_TEST

START_TEST(test_mschapv2_failure_and_eap_failure)
{
    script s = { 0 };
    uint8_t b[600];
    to_method(&s);
    const char *msg = "E=691 R=1 C=00112233445566778899AABBCCDDEEFF V=3 M=bad";
    ck_assert_int_eq(feed(&s, b, mschap(b, 9, 4, 0x33, (const uint8_t *)msg, strlen(msg))), M2MVPN_E_AUTH_LOCAL);
    ck_assert_ptr_nonnull(strstr(s.err, "wrong user name or password"));
    ck_assert(eap_peer_refused(s.p)); /* about the credentials */
    ck_assert_uint_eq(s.out_len, 0); /* no retry with the retry challenge */
    /* The peer is finished: a new challenge is refused. */
    uint8_t body[17] = { 16 };
    ck_assert_int_eq(feed(&s, b, mschap(b, 10, 1, 0x34, body, 17)), M2MVPN_E_PROTOCOL);
    eap_peer_free(s.p);

    to_method(&s);
    ck_assert_int_eq(feed(&s, b, request(b, 4, 9, -1, NULL, 0)), M2MVPN_E_AUTH_LOCAL);
    ck_assert_ptr_nonnull(strstr(s.err, "EAP-Failure"));
    ck_assert(eap_peer_refused(s.p));
    eap_peer_free(s.p);
}
END_TEST

START_TEST(test_unexpected_method_and_state)
{
    script s = { 0 };
    uint8_t b[600];
    /* MD5 offered to a MSCHAPv2 peer: refused, no Nak down to a weaker method. */
    ck_assert_int_eq(eap_peer_new(EAP_METHOD_MSCHAPV2, USER, PASSWORD, strlen(PASSWORD), &s.p), 0);
    uint8_t md5[17] = { 16 };
    ck_assert_int_eq(feed(&s, b, request(b, 1, 1, EAP_TYPE_MD5, md5, 17)), M2MVPN_E_AUTH_LOCAL);
    ck_assert_ptr_nonnull(strstr(s.err, "MD5-Challenge"));
    ck_assert_uint_eq(s.out_len, 0);
    ck_assert(!eap_peer_refused(s.p)); /* the gateway's doing, not a refusal */
    eap_peer_free(s.p);
    /* A method switched after ours started. */
    to_method(&s);
    ck_assert_int_eq(feed(&s, b, request(b, 1, 9, 13 /* TLS */, NULL, 0)), M2MVPN_E_AUTH_LOCAL);
    eap_peer_free(s.p);
    /* A Notification is acknowledged and changes nothing: the Success that
     * follows is still premature. */
    to_method(&s);
    ck_assert_int_eq(feed(&s, b, request(b, 1, 9, EAP_TYPE_NOTIFICATION, "hello", 5)), EAP_STEP_SEND);
    ck_assert_uint_eq(s.out_len, 5);
    ck_assert_uint_eq(s.out[4], EAP_TYPE_NOTIFICATION);
    ck_assert_uint_eq(eap_peer_get_state(s.p), EAP_PEER_METHOD);
    ck_assert_int_eq(feed(&s, b, request(b, 3, 10, -1, NULL, 0)), M2MVPN_E_AUTH_LOCAL);
    eap_peer_free(s.p);
    /* A second challenge after our response. */
    to_method(&s);
    uint8_t body[17] = { 16 };
    ck_assert_int_eq(feed(&s, b, mschap(b, 9, 1, 0x33, body, 17)), M2MVPN_E_PROTOCOL);
    eap_peer_free(s.p);
    /* Identity after the method started. */
    to_method(&s);
    ck_assert_int_eq(feed(&s, b, request(b, 1, 9, EAP_TYPE_IDENTITY, NULL, 0)), M2MVPN_E_PROTOCOL);
    eap_peer_free(s.p);
    /* A Response from the "gateway" and a broken length. */
    ck_assert_int_eq(eap_peer_new(EAP_METHOD_MSCHAPV2, USER, PASSWORD, strlen(PASSWORD), &s.p), 0);
    ck_assert_int_eq(feed(&s, b, request(b, 2, 1, EAP_TYPE_IDENTITY, NULL, 0)), M2MVPN_E_PROTOCOL);
    eap_peer_free(s.p);
    ck_assert_int_eq(eap_peer_new(EAP_METHOD_MSCHAPV2, USER, PASSWORD, strlen(PASSWORD), &s.p), 0);
    size_t n = request(b, 1, 1, EAP_TYPE_IDENTITY, NULL, 0);
    buf_store_be16(b + 2, (uint16_t)(n + 1));
    ck_assert_int_eq(feed(&s, b, n), M2MVPN_E_PROTOCOL);
    eap_peer_free(s.p);
    /* Truncated MSCHAPv2 challenge. */
    ck_assert_int_eq(eap_peer_new(EAP_METHOD_MSCHAPV2, USER, PASSWORD, strlen(PASSWORD), &s.p), 0);
    uint8_t shortv[5] = { 16, 1, 2, 3, 4 };
    ck_assert_int_eq(feed(&s, b, mschap(b, 1, 1, 1, shortv, 5)), M2MVPN_E_PROTOCOL);
    eap_peer_free(s.p);
}
END_TEST

START_TEST(test_md5_machine)
{
    script s = { 0 };
    uint8_t b[600], chal[17] = { 16 };
    for (int i = 0; i < 16; i++)
        chal[1 + i] = (uint8_t)(0xa0 + i);
    ck_assert_int_eq(eap_peer_new(EAP_METHOD_MD5, USER, PASSWORD, strlen(PASSWORD), &s.p), 0);
    ck_assert_int_eq(feed(&s, b, request(b, 1, 4, EAP_TYPE_IDENTITY, NULL, 0)), EAP_STEP_SEND);
    /* Premature Success before the challenge. */
    eap_peer *keep = s.p;
    ck_assert_int_eq(eap_peer_new(EAP_METHOD_MD5, USER, PASSWORD, strlen(PASSWORD), &s.p), 0);
    ck_assert_int_eq(feed(&s, b, request(b, 1, 4, EAP_TYPE_IDENTITY, NULL, 0)), EAP_STEP_SEND);
    ck_assert_int_eq(feed(&s, b, request(b, 3, 4, -1, NULL, 0)), M2MVPN_E_AUTH_LOCAL);
    eap_peer_free(s.p);
    s.p = keep;
    ck_assert_int_eq(feed(&s, b, request(b, 1, 5, EAP_TYPE_MD5, chal, 17)), EAP_STEP_SEND);
    uint8_t want[16];
    ck_assert_int_eq(eap_md5_value(5, PASSWORD, strlen(PASSWORD), chal + 1, 16, want), 0);
    ck_assert_uint_eq(s.out_len, 5 + 1 + 16);
    ck_assert_uint_eq(s.out[4], EAP_TYPE_MD5);
    ck_assert_uint_eq(s.out[5], 16);
    ck_assert_mem_eq(s.out + 6, want, 16);
    /* MSCHAPv2 now: refused. */
    ck_assert_int_eq(feed(&s, b, request(b, 1, 6, EAP_TYPE_MSCHAPV2, chal, 17)), M2MVPN_E_AUTH_LOCAL);
    eap_peer_free(s.p);
    /* The same, ending in Success: no MSK (SK_pi/SK_pr are used then). */
    ck_assert_int_eq(eap_peer_new(EAP_METHOD_MD5, USER, PASSWORD, strlen(PASSWORD), &s.p), 0);
    ck_assert_int_eq(feed(&s, b, request(b, 1, 5, EAP_TYPE_MD5, chal, 17)), EAP_STEP_SEND);
    ck_assert_int_eq(feed(&s, b, request(b, 3, 5, -1, NULL, 0)), EAP_STEP_DONE);
    const uint8_t *msk;
    size_t ml;
    eap_peer_msk(s.p, &msk, &ml);
    ck_assert_uint_eq(ml, 0);
    eap_peer_free(s.p);
}
END_TEST

static Suite *eap_suite(void)
{
    Suite *s = suite_create("ike_eap");
    TCase *tc = tcase_create("eap");
    tcase_add_test(tc, test_md4_rfc1320);
    tcase_add_test(tc, test_mschapv2_rfc2759);
    tcase_add_test(tc, test_md5_value);
    tcase_add_test(tc, test_mschapv2_happy_path);
    tcase_add_test(tc, test_mschapv2_wrong_authenticator_response);
    tcase_add_test(tc, test_mschapv2_premature_success);
    tcase_add_test(tc, test_mschapv2_failure_and_eap_failure);
    tcase_add_test(tc, test_unexpected_method_and_state);
    tcase_add_test(tc, test_md5_machine);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(eap_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
