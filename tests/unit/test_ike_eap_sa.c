/* SPDX-License-Identifier: Apache-2.0 */
/*
 * EAP in IKE_AUTH (lib/ike/auth_eap.c, RFC 7296 §2.16) against the scripted
 * gateway of tests/unit/data/ike/fake_gateway.h, extended here with what an
 * EAP gateway does: it signs its first IKE_AUTH answer with an ECDSA
 * certificate (RFC 4754), runs EAP-MSCHAPv2 (as server: it checks our
 * NT-Response and answers with the authenticator response) and finally MACs
 * with the MSK. Each case checks what the engine reports (on_established /
 * on_down) and what went on the wire, above all what did NOT: no EAP answer
 * before the gateway's signature verified, nothing after a refusal.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <m2mvpn/m2mvpn.h>

#include "core/log.h"
#include "core/loop.h"
#include "crypto/pki.h"
#include "ike/eap.h"
#include "ike/ike.h"
#include "profile/profile.h"

/* This file uses only part of the fake gateway's helpers. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "data/ike/fake_gateway.h"
#pragma GCC diagnostic pop

#define GW_ID "gw.m2m.test"
#define OUR_ID "dev1.m2m.test"
#define USER "dev1"
#define PASSWORD "unit-Eap-pass"
#define OUR_PROPOSAL "aes256gcm16-prfsha384-x25519-ecp256"

static const char profile_json[] =
    "{\"version\": 1, \"name\": \"unit\", \"mode\": \"manual\","
    " \"gateways\": [{\"host\": \"198.51.100.1\"}],"
    " \"local_id\": \"" OUR_ID "\", \"remote_id\": \"" GW_ID "\","
    " \"auth\": {\"method\": \"eap\", \"eap\": {\"type\": \"mschapv2\", \"identity\": \"" USER "\"}},"
    " \"ike\": {\"proposals\": [\"" OUR_PROPOSAL "\"], \"dpd_s\": 0,"
    "  \"retransmit_timeout_s\": 1.0, \"retransmit_base\": 2.0, \"retransmit_tries\": 3},"
    " \"esp\": {\"proposals\": [\"aes256gcm16\"]},"
    " \"tunnel\": {\"request_vip\": true, \"dns\": true}}";

/* ------------------------------------------------------------- harness */

static uint64_t fake_now;
static uint64_t fake_clock(void)
{
    return fake_now;
}

typedef struct harness {
    core_loop loop;
    core_log log;
    profile_set *set;
    pki_trust *trust;
    ike_sa *sa;
    fake_gw gw;
    EVP_PKEY *gw_key;
    uint8_t *gw_cert_der;
    int gw_cert_len;
    unsigned n_established, n_down;
    int down_err;
    ike_fault down_fault;
    char down_detail[512];
    /* the gateway's MSCHAPv2 server side */
    uint8_t auth_challenge[16];
    uint8_t msk[32];
    uint32_t msg_id;               /* of the request answered next */
} harness;

static harness *T;

static int hook_send(void *arg, const uint8_t *msg, size_t len, bool natt)
{
    fg_capture(&((harness *)arg)->gw, msg, len, natt);
    return 0;
}

static void hook_established(void *arg, const ike_child_result *child)
{
    (void)child;
    ((harness *)arg)->n_established++;
}

static void hook_down(void *arg, int err, ike_fault fault, const char *detail)
{
    harness *h = arg;
    h->n_down++;
    h->down_err = err;
    h->down_fault = fault;
    snprintf(h->down_detail, sizeof(h->down_detail), "%s", detail ? detail : "");
}

static void set_addr(struct sockaddr_storage *ss, socklen_t *len, const char *ip, uint16_t port)
{
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof(*ss));
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    ck_assert_int_eq(inet_pton(AF_INET, ip, &in->sin_addr), 1);
    *len = sizeof(*in);
}

static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key, bool ca)
{
    X509 *x = X509_new();
    ck_assert_ptr_nonnull(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), ca ? 1 : 2);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 30);
    X509_set_pubkey(x, key);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    const char *exts[][2] = { { "basicConstraints", ca ? "critical,CA:TRUE" : "CA:FALSE" },
                              { "keyUsage", ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature" },
                              { "subjectAltName", ca ? NULL : "DNS:" GW_ID },
                              { "subjectKeyIdentifier", "hash" } };
    for (size_t i = 0; i < sizeof(exts) / sizeof(exts[0]); i++) {
        if (!exts[i][1])
            continue;
        X509_EXTENSION *e = X509V3_EXT_conf(NULL, &ctx, exts[i][0], exts[i][1]);
        ck_assert_ptr_nonnull(e);
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    ck_assert_int_gt(X509_sign(x, issuer_key, EVP_sha256()), 0);
    return x;
}

static void setup(void)
{
    T = calloc(1, sizeof(*T));
    ck_assert_ptr_nonnull(T);
    fake_now = 1000000;
    ck_assert_int_eq(core_loop_init(&T->loop, NULL, NULL), 0);
    T->loop.clock_ms = fake_clock;
    core_log_init(&T->log, NULL);
    char err[256];
    ck_assert_msg(profile_set_parse(profile_json, strlen(profile_json), NULL, &T->set, err, sizeof(err)) == 0,
                  "profile: %s", err);
    /* The gateway's PKI: a CA (our trust anchor) and its ECDSA certificate. */
    EVP_PKEY *ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    T->gw_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ck_assert(ca_key && T->gw_key);
    X509 *ca = make_cert(ca_key, "unit CA", NULL, ca_key, true);
    X509 *gw = make_cert(T->gw_key, GW_ID, ca, ca_key, false);
    T->gw_cert_len = i2d_X509(gw, &T->gw_cert_der);
    ck_assert_int_gt(T->gw_cert_len, 0);
    uint8_t *ca_der = NULL;
    int ca_len = i2d_X509(ca, &ca_der);
    pki_cert *anchor;
    ck_assert_int_eq(pki_cert_from_der(ca_der, (size_t)ca_len, &anchor, err, sizeof(err)), 0);
    ck_assert_int_eq(pki_trust_new(&T->trust), 0);
    ck_assert_int_eq(pki_trust_add_cert(T->trust, anchor), 0);
    pki_cert_free(anchor);
    OPENSSL_free(ca_der);
    X509_free(ca);
    X509_free(gw);
    EVP_PKEY_free(ca_key);

    fg_init(&T->gw, "unused", GW_ID);
    ike_config cfg = { .prof = &T->set->items[0], .trust = T->trust, .eap_identity = USER,
                       .eap_password = PASSWORD, .eap_password_len = strlen(PASSWORD) };
    set_addr(&cfg.remote, &cfg.remote_len, "198.51.100.1", 500);
    set_addr(&cfg.local, &cfg.local_len, "198.51.100.2", 500);
    ike_hooks hooks = { .arg = T, .send = hook_send, .on_established = hook_established, .on_down = hook_down };
    ck_assert_msg(ike_sa_new(&T->loop, &T->log, &cfg, &hooks, &T->sa, err, sizeof(err)) == 0, "%s", err);
    for (int i = 0; i < 16; i++)
        T->auth_challenge[i] = (uint8_t)(0x30 + i);
}

static void teardown(void)
{
    ike_sa_free(T->sa);
    fg_free(&T->gw);
    profile_set_free(T->set);
    pki_trust_free(T->trust);
    EVP_PKEY_free(T->gw_key);
    OPENSSL_free(T->gw_cert_der);
    core_log_destroy(&T->log);
    core_loop_destroy(&T->loop);
    free(T);
    T = NULL;
}

static void advance(uint64_t ms)
{
    fake_now += ms;
    ck_assert_int_eq(core_loop_run_once(&T->loop, 0), 0);
}

/* The gateway answers on the port our last datagram went to: 500 for
 * IKE_SA_INIT, 4500 (natt) after. */
static void deliver(const fg_msg *m)
{
    bool natt = T->gw.n_sent == 0 || T->gw.sent[T->gw.n_sent - 1].natt;
    ike_sa_input(T->sa, m->p, m->len, natt);
}

static void assert_down_fault(int err, ike_fault want, const char *detail_part)
{
    ck_assert_uint_eq(T->n_down, 1);
    ck_assert_msg(T->down_err == err, "on_down(%s) (\"%s\"), expected %s", m2mvpn_error_name(T->down_err),
                  T->down_detail, m2mvpn_error_name(err));
    ck_assert_msg(strstr(T->down_detail, detail_part), "detail \"%s\" lacks \"%s\"", T->down_detail, detail_part);
    ck_assert_msg(T->down_fault == want, "on_down fault %s, expected %s (\"%s\")", ike_fault_name(T->down_fault),
                  ike_fault_name(want), T->down_detail);
    ck_assert_ptr_null(strstr(T->down_detail, PASSWORD));
    ck_assert_uint_eq(T->n_established, 0);
}

/* Refused credentials are ours to fix (the supervisor must not retry
 * them); what the gateway sent wrong is its fault (retried). */
static void assert_down(int err, const char *detail_part)
{
    assert_down_fault(err, err == M2MVPN_E_AUTH_PEER || err == M2MVPN_E_PROTOCOL ? IKE_FAULT_PEER : IKE_FAULT_LOCAL,
                      detail_part);
}

/* Nothing more goes out, however long we wait. */
static void assert_quiet_from_now(void)
{
    size_t n = T->gw.n_sent;
    for (int i = 0; i < 10; i++)
        advance(60000);
    ck_assert_uint_eq(T->gw.n_sent, n);
}

/* ------------------------------------------------------ the gateway's side */

/* The octets a side signs (RFC 7296 §2.15). */
static size_t signed_octets(bool initiator, const uint8_t *id_body, size_t id_len, uint8_t *out, size_t cap)
{
    fake_gw *g = &T->gw;
    const crypto_key *skp = initiator ? &g->keys->sk_pi : &g->keys->sk_pr;
    size_t mac_len = crypto_prf_len(g->suite.prf_id);
    const uint8_t *msg = initiator ? g->init_req : g->init_resp;
    size_t msg_len = initiator ? g->init_req_len : g->init_resp_len;
    const uint8_t *nonce = initiator ? g->nr : g->ni;
    size_t nonce_len = initiator ? sizeof(g->nr) : g->ni_len;
    ck_assert_uint_le(msg_len + nonce_len + mac_len, cap);
    memcpy(out, msg, msg_len);
    memcpy(out + msg_len, nonce, nonce_len);
    crypto_span id = { id_body, id_len };
    ck_assert_int_eq(crypto_prf_oneshot(g->suite.prf_id, skp->b, skp->len, &id, 1, out + msg_len + nonce_len,
                                        mac_len), 0);
    return msg_len + nonce_len + mac_len;
}

static size_t idr_body(uint8_t *b)
{
    size_t n = strlen(GW_ID);
    b[0] = IKE_ID_FQDN;
    b[1] = b[2] = b[3] = 0;
    memcpy(b + 4, GW_ID, n);
    return 4 + n;
}

/* prf(prf(key, "Key Pad for IKEv2"), octets). */
static size_t mac_auth(const uint8_t *key, size_t key_len, bool initiator, const uint8_t *id_body, size_t id_len,
                       uint8_t out[CRYPTO_MAX_PRF_LEN])
{
    static uint8_t octets[FG_MSG_CAP];
    size_t n = signed_octets(initiator, id_body, id_len, octets, sizeof(octets));
    uint16_t prf = T->gw.suite.prf_id;
    uint8_t k[CRYPTO_MAX_PRF_LEN];
    crypto_span pad = { (const uint8_t *)FG_PSK_PAD, strlen(FG_PSK_PAD) };
    ck_assert_int_eq(crypto_prf_oneshot(prf, key, key_len, &pad, 1, k, sizeof(k)), 0);
    crypto_span o = { octets, n };
    ck_assert_int_eq(crypto_prf_oneshot(prf, k, crypto_prf_len(prf), &o, 1, out, CRYPTO_MAX_PRF_LEN), 0);
    return crypto_prf_len(prf);
}

/* ECDSA-256 AUTH (RFC 4754: r|s) of the gateway over its octets. */
static void ecdsa_auth(uint8_t out[64], bool corrupt)
{
    uint8_t idb[64], octets[FG_MSG_CAP];
    size_t n = signed_octets(false, idb, idr_body(idb), octets, sizeof(octets));
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    uint8_t der[128];
    size_t der_len = sizeof(der);
    ck_assert(md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, T->gw_key) == 1 &&
              EVP_DigestSign(md, der, &der_len, octets, n) == 1);
    EVP_MD_CTX_free(md);
    const uint8_t *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    ck_assert_ptr_nonnull(sig);
    ck_assert_int_eq(BN_bn2binpad(ECDSA_SIG_get0_r(sig), out, 32), 32);
    ck_assert_int_eq(BN_bn2binpad(ECDSA_SIG_get0_s(sig), out + 32, 32), 32);
    ECDSA_SIG_free(sig);
    if (corrupt)
        out[10] ^= 0x01;
}

static size_t eap_packet(uint8_t *b, uint8_t code, uint8_t ident, int type, const void *data, size_t len)
{
    size_t n = 4;
    b[0] = code;
    b[1] = ident;
    if (type >= 0)
        b[n++] = (uint8_t)type;
    if (len)
        memcpy(b + n, data, len);
    n += len;
    buf_store_be16(b + 2, (uint16_t)n);
    return n;
}

static size_t mschap_packet(uint8_t *b, uint8_t ident, uint8_t op, const void *body, size_t len)
{
    uint8_t d[256];
    d[0] = op;
    d[1] = 0x21;
    buf_store_be16(d + 2, (uint16_t)(4 + len));
    memcpy(d + 4, body, len);
    return eap_packet(b, 1, ident, EAP_TYPE_MSCHAPV2, d, 4 + len);
}

/* The gateway's answer to the request with ID T->msg_id: `first` adds IDr,
 * CERT and the signed AUTH (corrupted on request; none with no_auth);
 * auth_failed an AUTHENTICATION_FAILED notify. */
typedef struct answer {
    bool first, corrupt_sig, no_auth, auth_failed;
    const uint8_t *eap;
    size_t eap_len;
} answer;

static void gw_answer(const answer *a)
{
    fg_chain c;
    fg_chain_begin(&c);
    if (a->first) {
        ike_build_id(&c.cw, IKE_PL_IDR, IKE_ID_FQDN, GW_ID, strlen(GW_ID));
        ike_build_cert(&c.cw, IKE_CERT_X509_SIGNATURE, T->gw_cert_der, (size_t)T->gw_cert_len);
        if (!a->no_auth) {
            uint8_t sig[64];
            ecdsa_auth(sig, a->corrupt_sig);
            ike_build_auth(&c.cw, PKI_AUTH_ECDSA_SHA256_P256, sig, 64);
        }
    }
    if (a->eap)
        ike_build_eap(&c.cw, a->eap, a->eap_len);
    if (a->auth_failed)
        ike_build_notify(&c.cw, IKE_PROTO_NONE, IKE_N_AUTHENTICATION_FAILED, NULL, 0, NULL, 0);
    fg_msg *m = malloc(sizeof(*m));
    fg_chain_send(&T->gw, &c, IKE_EXCH_IKE_AUTH, true, T->msg_id, m);
    deliver(m);
    free(m);
}

/* Our last request, opened: its EAP payload into out (0 if none). */
static size_t our_eap(uint8_t *out, size_t cap)
{
    const fg_dgram *d = fg_last(&T->gw);
    ck_assert_int_eq(fg_open(&T->gw, d), 0);
    ck_assert_uint_eq(T->gw.rq_hdr.exchange, IKE_EXCH_IKE_AUTH);
    ck_assert_uint_eq(T->gw.rq_hdr.message_id, T->msg_id);
    const ike_payload *pl = ike_chain_find(&T->gw.rq_inner, IKE_PL_EAP, NULL);
    if (!pl)
        return 0;
    ck_assert_uint_le(pl->body.len, cap);
    memcpy(out, pl->body.p, pl->body.len);
    return pl->body.len;
}

/* IKE_SA_INIT answered; our first IKE_AUTH: IDi, SA, TS, no AUTH (§2.16). */
static void start_to_first_auth(void)
{
    ck_assert_int_eq(ike_sa_start(T->sa), 0);
    fg_msg *m = malloc(sizeof(*m));
    fg_init_response(&T->gw, fg_last(&T->gw), m);
    deliver(m);
    free(m);
    ck_assert_uint_eq(T->gw.n_sent, 2);
    ck_assert_int_eq(fg_open(&T->gw, fg_last(&T->gw)), 0);
    const ike_chain *c = &T->gw.rq_inner;
    ck_assert_ptr_nonnull(ike_chain_find(c, IKE_PL_IDI, NULL));
    ck_assert_ptr_nonnull(ike_chain_find(c, IKE_PL_SA, NULL));
    ck_assert_ptr_null(ike_chain_find(c, IKE_PL_AUTH, NULL));
    ck_assert_ptr_null(ike_chain_find(c, IKE_PL_EAP, NULL));
    T->msg_id = 1;
}

/* Identity request with the signed first answer, then the challenge: leaves
 * our MSCHAPv2 Response in resp. */
static size_t to_mschap_response(uint8_t *resp, size_t cap)
{
    uint8_t pkt[256], got[512];
    start_to_first_auth();
    gw_answer(&(answer){ .first = true, .eap = pkt, .eap_len = eap_packet(pkt, 1, 1, EAP_TYPE_IDENTITY, NULL, 0) });
    ck_assert_uint_eq(T->gw.n_sent, 3);
    T->msg_id = 2;
    size_t n = our_eap(got, sizeof(got));
    ck_assert_uint_eq(n, 5 + strlen(USER));
    ck_assert_mem_eq(got + 5, USER, strlen(USER));
    uint8_t body[1 + 16 + 2];
    body[0] = 16;
    memcpy(body + 1, T->auth_challenge, 16);
    memcpy(body + 17, "gw", 2);
    gw_answer(&(answer){ .eap = pkt, .eap_len = mschap_packet(pkt, 2, 1, body, sizeof(body)) });
    ck_assert_uint_eq(T->gw.n_sent, 4);
    T->msg_id = 3;
    n = our_eap(resp, cap);
    ck_assert_uint_eq(n, 5 + 4 + 1 + 49 + strlen(USER));
    return n;
}

/* The gateway checks our NT-Response (it knows the password) and sends its
 * Success request; corrupt: a wrong authenticator response. */
static void gw_mschap_success(const uint8_t *resp, bool corrupt)
{
    const uint8_t *peer = resp + 10, *nt = resp + 10 + 24;
    uint8_t hash[16], want_nt[24];
    ck_assert_int_eq(eap_mschapv2_nt_hash(PASSWORD, strlen(PASSWORD), hash), 0);
    ck_assert_int_eq(eap_mschapv2_nt_response(T->auth_challenge, peer, USER, hash, want_nt), 0);
    ck_assert_mem_eq(nt, want_nt, 24);
    char ar[43];
    ck_assert_int_eq(eap_mschapv2_authenticator_response(hash, nt, peer, T->auth_challenge, USER, ar), 0);
    ck_assert_int_eq(eap_mschapv2_msk(hash, nt, T->msk), 0);
    if (corrupt)
        ar[5] = ar[5] == '0' ? '1' : '0';
    uint8_t pkt[256];
    gw_answer(&(answer){ .eap = pkt, .eap_len = mschap_packet(pkt, 3, 3, ar, 42) });
}

/* The final answer: AUTH with the MSK (corrupted on request), CP, SA, TS. */
static void gw_final(bool corrupt)
{
    fg_chain c;
    fg_chain_begin(&c);
    uint8_t idb[64], auth[CRYPTO_MAX_PRF_LEN];
    size_t n = mac_auth(T->msk, 32, false, idb, idr_body(idb), auth);
    if (corrupt)
        auth[0] ^= 0x80;
    ike_build_auth(&c.cw, IKE_AUTH_SHARED_KEY_MIC, auth, n);
    ike_cp_attr attrs[1] = { { IKE_CP_INTERNAL_IP4_ADDRESS, buf_reader_make(T->gw.vip, 4) } };
    ike_build_cp(&c.cw, IKE_CFG_REPLY, attrs, 1);
    ike_sa_choice ch;
    memset(&ch, 0, sizeof(ch));
    ch.number = 1;
    ch.protocol = IKE_PROTO_ESP;
    ch.spi_len = 4;
    buf_store_be32(ch.spi, T->gw.child_spi_r);
    ch.present = (1u << IKE_TT_ENCR) | (1u << IKE_TT_ESN);
    ch.id[IKE_TT_ENCR] = ENCR_AES_GCM_16;
    ch.encr_key_bits = 256;
    ch.id[IKE_TT_ESN] = ESN_NO;
    ike_build_sa_choice(&c.cw, &ch);
    ike_ts tsi, tsr;
    ck_assert_int_eq(ike_ts_from_prefix(T->gw.vip, 4, 32, 0, 0, 65535, &tsi), 0);
    ck_assert_int_eq(ike_ts_from_prefix((uint8_t[]){ 0, 0, 0, 0 }, 4, 0, 0, 0, 65535, &tsr), 0);
    ike_build_ts(&c.cw, IKE_PL_TSI, &tsi, 1);
    ike_build_ts(&c.cw, IKE_PL_TSR, &tsr, 1);
    fg_msg *m = malloc(sizeof(*m));
    fg_chain_send(&T->gw, &c, IKE_EXCH_IKE_AUTH, true, T->msg_id, m);
    deliver(m);
    free(m);
}

/* Through EAP-Success: our AUTH (with the MSK) is the last request. */
static void to_final_auth(void)
{
    uint8_t resp[512], pkt[16], got[64];
    to_mschap_response(resp, sizeof(resp));
    gw_mschap_success(resp, false);
    ck_assert_uint_eq(T->gw.n_sent, 5);
    T->msg_id = 4;
    ck_assert_uint_eq(our_eap(got, sizeof(got)), 6); /* Response/MSCHAPv2 Success ack */
    ck_assert_uint_eq(got[5], 3);
    gw_answer(&(answer){ .eap = pkt, .eap_len = eap_packet(pkt, 3, 4, -1, NULL, 0) });
    ck_assert_uint_eq(T->gw.n_sent, 6);
    T->msg_id = 5;
    ck_assert_uint_eq(our_eap(got, sizeof(got)), 0);
    /* Our AUTH = prf(prf(MSK, pad), InitiatorSignedOctets), as the gateway computes it. */
    const ike_payload *idi = ike_chain_find(&T->gw.rq_inner, IKE_PL_IDI, NULL);
    ck_assert_ptr_null(idi); /* IDi went in the first request only */
    ck_assert_int_eq(fg_open(&T->gw, &T->gw.sent[1]), 0);
    idi = ike_chain_find(&T->gw.rq_inner, IKE_PL_IDI, NULL);
    uint8_t idb[300], want[CRYPTO_MAX_PRF_LEN];
    size_t idb_len = idi->body.len;
    memcpy(idb, idi->body.p, idb_len);
    size_t n = mac_auth(T->msk, 32, true, idb, idb_len, want);
    ck_assert_int_eq(fg_open(&T->gw, fg_last(&T->gw)), 0);
    const ike_payload *auth = ike_chain_find(&T->gw.rq_inner, IKE_PL_AUTH, NULL);
    ck_assert_ptr_nonnull(auth);
    ike_auth a;
    ike_diag d;
    ck_assert_int_eq(ike_auth_parse(auth->body, &a, &d), 0);
    ck_assert_uint_eq(a.method, IKE_AUTH_SHARED_KEY_MIC);
    ck_assert_uint_eq(a.data.len, n);
    ck_assert_msg(memcmp(a.data.p, want, n) == 0, "our MSK AUTH does not verify at the gateway");
}

/* ---------------------------------------------------------------- cases */

START_TEST(eap_mschapv2_establishes)
{
    to_final_auth();
    gw_final(false);
    ck_assert_uint_eq(T->n_established, 1);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

START_TEST(wrong_final_auth_is_refused)
{
    to_final_auth();
    gw_final(true);
    assert_down(M2MVPN_E_AUTH_PEER, "AUTH over the EAP key does not verify");
}
END_TEST

START_TEST(no_eap_answer_before_the_gateway_is_verified)
{
    uint8_t pkt[64];
    start_to_first_auth();
    size_t n = eap_packet(pkt, 1, 1, EAP_TYPE_IDENTITY, NULL, 0);
    gw_answer(&(answer){ .first = true, .corrupt_sig = true, .eap = pkt, .eap_len = n });
    assert_down(M2MVPN_E_AUTH_PEER, "could not be authenticated");
    /* Only the INFORMATIONAL that tells the gateway: no EAP payload in it. */
    for (size_t i = 2; i < T->gw.n_sent; i++) {
        ck_assert_int_eq(fg_open(&T->gw, &T->gw.sent[i]), 0);
        ck_assert_uint_eq(T->gw.rq_hdr.exchange, IKE_EXCH_INFORMATIONAL);
        ck_assert_ptr_null(ike_chain_find(&T->gw.rq_inner, IKE_PL_EAP, NULL));
    }
}
END_TEST

START_TEST(eap_without_gateway_auth_is_refused)
{
    uint8_t pkt[64];
    start_to_first_auth();
    size_t n = eap_packet(pkt, 1, 1, EAP_TYPE_IDENTITY, NULL, 0);
    gw_answer(&(answer){ .first = true, .no_auth = true, .eap = pkt, .eap_len = n });
    ck_assert_uint_eq(T->n_down, 1);
    ck_assert_int_ne(T->down_err, 0);
    for (size_t i = 2; i < T->gw.n_sent; i++) {
        ck_assert_int_eq(fg_open(&T->gw, &T->gw.sent[i]), 0);
        ck_assert_ptr_null(ike_chain_find(&T->gw.rq_inner, IKE_PL_EAP, NULL));
    }
}
END_TEST

START_TEST(premature_eap_success_is_refused)
{
    uint8_t resp[512], pkt[16];
    to_mschap_response(resp, sizeof(resp));
    size_t sent = T->gw.n_sent;
    gw_answer(&(answer){ .eap = pkt, .eap_len = eap_packet(pkt, 3, 3, -1, NULL, 0) });
    /* AUTH_LOCAL with the reason, but the gateway's protocol violation, not
     * a refused password: its fault, retried with the password kept. */
    assert_down_fault(M2MVPN_E_AUTH_LOCAL, IKE_FAULT_PEER, "premature EAP-Success");
    ck_assert_uint_eq(T->gw.n_sent, sent); /* no AUTH went out */
    assert_quiet_from_now();
}
END_TEST

START_TEST(wrong_authenticator_response_is_refused)
{
    uint8_t resp[512];
    to_mschap_response(resp, sizeof(resp));
    gw_mschap_success(resp, true);
    assert_down(M2MVPN_E_AUTH_PEER, "authenticator response is wrong");
    for (size_t i = 4; i < T->gw.n_sent; i++) { /* at most the notice to the gateway */
        ck_assert_int_eq(fg_open(&T->gw, &T->gw.sent[i]), 0);
        ck_assert_uint_eq(T->gw.rq_hdr.exchange, IKE_EXCH_INFORMATIONAL);
    }
}
END_TEST

START_TEST(refused_password_ends_it_quietly)
{
    uint8_t resp[512], pkt[128];
    to_mschap_response(resp, sizeof(resp));
    size_t sent = T->gw.n_sent;
    const char *msg = "E=691 R=1 C=000102030405060708090A0B0C0D0E0F V=3 M=Authentication failed";
    gw_answer(&(answer){ .eap = pkt, .eap_len = mschap_packet(pkt, 3, 4, msg, strlen(msg)) });
    assert_down(M2MVPN_E_AUTH_LOCAL, "E=691: wrong user name or password");
    ck_assert_uint_eq(T->gw.n_sent, sent); /* no retry, not even a Failure ack */
    assert_quiet_from_now();
}
END_TEST

START_TEST(unexpected_method_is_refused)
{
    uint8_t pkt[64], md5[17] = { 16 };
    start_to_first_auth();
    size_t n = eap_packet(pkt, 1, 1, EAP_TYPE_MD5, md5, sizeof(md5));
    gw_answer(&(answer){ .first = true, .eap = pkt, .eap_len = n });
    assert_down_fault(M2MVPN_E_AUTH_LOCAL, IKE_FAULT_PEER, "the profile allows only MSCHAPv2");
    for (size_t i = 2; i < T->gw.n_sent; i++) { /* at most the notice to the gateway: no EAP */
        ck_assert_int_eq(fg_open(&T->gw, &T->gw.sent[i]), 0);
        ck_assert_uint_eq(T->gw.rq_hdr.exchange, IKE_EXCH_INFORMATIONAL);
        ck_assert_ptr_null(ike_chain_find(&T->gw.rq_inner, IKE_PL_EAP, NULL));
    }
}
END_TEST

/* AUTHENTICATION_FAILED once the gateway has proved itself by its
 * certificate refuses our credentials: a local cause (the password is not
 * tried again). Before that anyone could have sent it: the gateway's fault. */
START_TEST(authentication_failed_after_the_gateway_proved_itself_is_ours)
{
    uint8_t resp[512];
    to_mschap_response(resp, sizeof(resp));
    size_t sent = T->gw.n_sent;
    gw_answer(&(answer){ .auth_failed = true });
    assert_down(M2MVPN_E_AUTH_LOCAL, "AUTHENTICATION_FAILED");
    ck_assert_uint_eq(T->gw.n_sent, sent);
    assert_quiet_from_now();
}
END_TEST

/* After EAP-Success the gateway accepted the password: an
 * AUTHENTICATION_FAILED for our final AUTH is its fault (retried), never a
 * refused password. */
START_TEST(authentication_failed_after_eap_success_is_the_gateways)
{
    to_final_auth();
    gw_answer(&(answer){ .auth_failed = true });
    assert_down(M2MVPN_E_AUTH_PEER, "AUTHENTICATION_FAILED after EAP-Success");
}
END_TEST

START_TEST(authentication_failed_before_the_gateway_proved_itself_is_the_gateways)
{
    start_to_first_auth();
    gw_answer(&(answer){ .auth_failed = true });
    ck_assert_uint_eq(T->n_down, 1);
    ck_assert_int_eq(T->down_err, M2MVPN_E_AUTH_LOCAL);
    ck_assert_msg(T->down_fault == IKE_FAULT_PEER, "fault %s: \"%s\"", ike_fault_name(T->down_fault),
                  T->down_detail);
    ck_assert_uint_eq(T->n_established, 0);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("ike_eap_sa");
    TCase *tc = tcase_create("eap_in_ike_auth");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, eap_mschapv2_establishes);
    tcase_add_test(tc, wrong_final_auth_is_refused);
    tcase_add_test(tc, no_eap_answer_before_the_gateway_is_verified);
    tcase_add_test(tc, eap_without_gateway_auth_is_refused);
    tcase_add_test(tc, premature_eap_success_is_refused);
    tcase_add_test(tc, wrong_authenticator_response_is_refused);
    tcase_add_test(tc, refused_password_ends_it_quietly);
    tcase_add_test(tc, unexpected_method_is_refused);
    tcase_add_test(tc, authentication_failed_after_eap_success_is_the_gateways);
    tcase_add_test(tc, authentication_failed_after_the_gateway_proved_itself_is_ours);
    tcase_add_test(tc, authentication_failed_before_the_gateway_proved_itself_is_the_gateways);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
