/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A scripted, in-process IKEv2 responder for tests/unit/test_ike_sa.c, built
 * from the same codec (lib/ike/codec.h) and crypto (lib/crypto/crypto.h) as
 * the engine, so the engine's state machine can be driven without sockets.
 *
 * It does not decide anything by itself: the test feeds it what the SA sent
 * (fg_capture, from the SA's send hook) and asks it for the answer it wants
 * (a normal IKE_SA_INIT response, a notify-only one, an IKE_AUTH response
 * with a good or a bad AUTH, a request of its own ...). Like a responder it
 * keeps SPIi/SPIr, Ni/Nr, its key pair, both IKE_SA_INIT messages and the
 * derived keys (RFC 7296 §2.14), so it can decrypt our requests, verify our
 * AUTH (§2.15) and derive the CHILD SA keys (§2.17) to compare with ours.
 *
 * Included once, by that test only (static functions).
 */
#ifndef M2MVPN_TEST_IKE_FAKE_GATEWAY_H
#define M2MVPN_TEST_IKE_FAKE_GATEWAY_H

#include <check.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "crypto/crypto.h"
#include "crypto/pki.h"
#include "ike/codec.h"

#define FG_MAX_SENT 64
#define FG_MSG_CAP 65536
#define FG_PSK_PAD "Key Pad for IKEv2"

/* One datagram the SA handed to its send hook. */
typedef struct fg_dgram {
    uint8_t *p;
    size_t len;
    bool natt;
} fg_dgram;

/* An answer the gateway built, ready for ike_sa_input(). */
typedef struct fg_msg {
    uint8_t p[FG_MSG_CAP];
    size_t len;
} fg_msg;

typedef struct fake_gw {
    /* what the SA sent, in order */
    fg_dgram sent[FG_MAX_SENT];
    size_t n_sent;

    /* configuration */
    const char *psk;               /* the gateway's pre-shared key */
    const char *id;                /* IDr (FQDN) */
    uint8_t vip[4];                /* INTERNAL_IP4_ADDRESS handed out */
    uint8_t dns[2][4];             /* INTERNAL_IP4_DNS handed out */
    uint32_t child_spi_r;          /* the gateway's ESP SPI */
    bool frag;                     /* announce IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383) */

    /* IKE SA state, as a responder holds it */
    uint8_t spi_i[8], spi_r[8];
    uint8_t ni[IKE_NONCE_MAX];
    size_t ni_len;
    uint8_t nr[32];
    uint16_t group;
    crypto_suite suite;
    uint8_t *init_req, *init_resp; /* RealMessage1 / RealMessage2 */
    size_t init_req_len, init_resp_len;
    crypto_ike_keys *keys;
    crypto_cipher *seal_ctx;       /* SK_er: what the gateway sends */
    crypto_cipher *open_ctx;       /* SK_ei: what the gateway receives */
    ike_sk_cipher sk_out, sk_in;
    bool initiator;                /* original initiator of the IKE SA it now holds
                                    * (after it rekeyed the IKE SA itself) */
    uint32_t child_spi_i;          /* our ESP SPI, from the IKE_AUTH request */
    uint32_t next_req_id;          /* the gateway's own requests */

    /* the last message opened with fg_open() */
    ike_header rq_hdr;
    uint8_t plain[FG_MSG_CAP];
    ike_chain rq_inner;
} fake_gw;

/* ------------------------------------------------------------- basics */

static void fg_init(fake_gw *gw, const char *psk, const char *id)
{
    memset(gw, 0, sizeof(*gw));
    gw->psk = psk;
    gw->id = id;
    memcpy(gw->vip, (uint8_t[]){ 198, 18, 0, 7 }, 4);
    memcpy(gw->dns[0], (uint8_t[]){ 198, 18, 0, 53 }, 4);
    memcpy(gw->dns[1], (uint8_t[]){ 198, 18, 1, 53 }, 4);
    gw->child_spi_r = 0xc1d2e3f4;
    for (int i = 0; i < 8; i++)
        gw->spi_r[i] = (uint8_t)(0xa0 + i);
    for (int i = 0; i < 32; i++)
        gw->nr[i] = (uint8_t)(0x40 + i);
}

static void fg_free(fake_gw *gw)
{
    for (size_t i = 0; i < gw->n_sent; i++)
        free(gw->sent[i].p);
    free(gw->init_req);
    free(gw->init_resp);
    crypto_ike_keys_free(gw->keys);
    crypto_cipher_free(gw->seal_ctx);
    crypto_cipher_free(gw->open_ctx);
    memset(gw, 0, sizeof(*gw));
}

/* The SA's send hook lands here. */
static void fg_capture(fake_gw *gw, const uint8_t *msg, size_t len, bool natt)
{
    ck_assert_uint_lt(gw->n_sent, FG_MAX_SENT);
    fg_dgram *d = &gw->sent[gw->n_sent++];
    d->p = malloc(len);
    ck_assert_ptr_nonnull(d->p);
    memcpy(d->p, msg, len);
    d->len = len;
    d->natt = natt;
}

static const fg_dgram *fg_last(const fake_gw *gw)
{
    ck_assert_uint_gt(gw->n_sent, 0);
    return &gw->sent[gw->n_sent - 1];
}

static uint64_t fg_be64(const uint8_t b[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | b[i];
    return v;
}

static void fg_parse(const fg_dgram *d, ike_message *m)
{
    ike_diag diag;
    ike_diag_clear(&diag);
    int r = ike_message_parse(buf_reader_make(d->p, d->len), m, &diag);
    ck_assert_msg(r == 0, "the SA sent a malformed message: %s", diag.text);
}

/* Header of a message from the gateway (the responder of this IKE SA: the
 * Initiator flag is clear, RFC 7296 §3.1). */
static ike_header fg_header(const fake_gw *gw, uint8_t exchange, bool response, uint32_t msg_id,
                            bool with_spi_r)
{
    ike_header h;
    memset(&h, 0, sizeof(h));
    h.spi_i = fg_be64(gw->spi_i);
    h.spi_r = with_spi_r ? fg_be64(gw->spi_r) : 0;
    h.exchange = exchange;
    h.flags = (response ? IKE_FLAG_RESPONSE : 0) | (gw->initiator ? IKE_FLAG_INITIATOR : 0);
    h.message_id = msg_id;
    return h;
}

/* --------------------------------------------------------- SK adapters */

static int fg_seal(void *ctx, const ike_sk_seal_io *io)
{
    crypto_cipher *c = ctx;
    int r = crypto_cipher_next_iv(c, io->iv);
    if (r < 0)
        return r;
    crypto_msg m = {
        .aad = io->aad, .aad_len = io->aad_len, .iv = io->iv,
        .in = io->text, .out = io->text, .data_len = io->text_len, .icv = io->icv,
    };
    return crypto_cipher_encrypt(c, &m);
}

static int fg_open_cb(void *ctx, const ike_sk_open_io *io)
{
    crypto_cipher *c = ctx;
    uint8_t icv[CRYPTO_MAX_ICV_LEN];
    memcpy(icv, io->icv, crypto_cipher_get_sizes(c)->icv_len);
    crypto_msg m = {
        .aad = io->aad, .aad_len = io->aad_len, .iv = io->iv,
        .in = io->ct, .out = io->out, .data_len = io->ct_len, .icv = icv,
    };
    return crypto_cipher_decrypt(c, &m);
}

static void fg_adapter(ike_sk_cipher *a, crypto_cipher *c, bool seal)
{
    const crypto_cipher_sizes *sz = crypto_cipher_get_sizes(c);
    a->iv_len = sz->iv_len;
    a->icv_len = sz->icv_len;
    a->block_len = sz->block_len;
    a->seal = seal ? fg_seal : NULL;
    a->open = seal ? NULL : fg_open_cb;
    a->ctx = c;
}

/* ----------------------------------------------------------- IKE_SA_INIT */

/* Take in our IKE_SA_INIT request: SPIi, Ni, the KE group and the request
 * bytes (RealMessage1 for the AUTH octets, §2.15). */
static void fg_take_init_request(fake_gw *gw, const fg_dgram *d, ike_message *m)
{
    fg_parse(d, m);
    ck_assert_uint_eq(m->hdr.exchange, IKE_EXCH_IKE_SA_INIT);
    ck_assert_uint_eq(m->hdr.message_id, 0);
    ck_assert_uint_eq(m->hdr.spi_r, 0);
    ck_assert(m->hdr.flags & IKE_FLAG_INITIATOR);
    ck_assert(!(m->hdr.flags & IKE_FLAG_RESPONSE));
    for (int i = 0; i < 8; i++)
        gw->spi_i[i] = (uint8_t)(m->hdr.spi_i >> (56 - 8 * i));
    ike_diag diag;
    const ike_payload *ke_pl = ike_chain_find(&m->chain, IKE_PL_KE, NULL);
    const ike_payload *ni_pl = ike_chain_find(&m->chain, IKE_PL_NONCE, NULL);
    ck_assert_ptr_nonnull(ke_pl);
    ck_assert_ptr_nonnull(ni_pl);
    ike_ke ke;
    buf_reader ni;
    ck_assert_int_eq(ike_ke_parse(ke_pl->body, &ke, &diag), 0);
    ck_assert_int_eq(ike_nonce_parse(ni_pl->body, &ni, &diag), 0);
    gw->group = ke.group;
    memcpy(gw->ni, ni.p, ni.len);
    gw->ni_len = ni.len;
    free(gw->init_req);
    gw->init_req = malloc(d->len);
    memcpy(gw->init_req, d->p, d->len);
    gw->init_req_len = d->len;
}

/* An IKE_SA_INIT response that only carries one notify (COOKIE §2.6,
 * INVALID_KE_PAYLOAD §1.3, NO_PROPOSAL_CHOSEN §2.7): SPIr stays zero. */
static void fg_init_notify(fake_gw *gw, const fg_dgram *req, uint16_t type, const void *data,
                           size_t len, fg_msg *out)
{
    ike_message m;
    fg_take_init_request(gw, req, &m);
    buf_writer w;
    buf_writer_init(&w, out->p, sizeof(out->p));
    ike_chain_writer cw;
    ike_header h = fg_header(gw, IKE_EXCH_IKE_SA_INIT, true, 0, false);
    ike_message_begin(&w, &h, &cw);
    ike_build_notify(&cw, IKE_PROTO_NONE, type, NULL, 0, data, len);
    ck_assert_int_eq(ike_message_end(&cw), 0);
    out->len = buf_writer_len(&w);
}

/* The normal answer: SA (the first of our proposals with the first ENCR and
 * PRF, and the group of our KE), KE, Nr, NAT detection; keys derived. */
static void fg_init_response(fake_gw *gw, const fg_dgram *req, fg_msg *out)
{
    ike_message m;
    fg_take_init_request(gw, req, &m);
    ike_diag diag;
    const ike_payload *sa_pl = ike_chain_find(&m.chain, IKE_PL_SA, NULL);
    const ike_payload *ke_pl = ike_chain_find(&m.chain, IKE_PL_KE, NULL);
    ck_assert_ptr_nonnull(sa_pl);
    ike_sa_view *v = malloc(sizeof(*v));
    ck_assert_int_eq(ike_sa_parse(sa_pl->body, v, &diag), 0);
    ike_sa_choice ch;
    memset(&ch, 0, sizeof(ch));
    ch.number = v->prop[0].number;
    ch.protocol = IKE_PROTO_IKE;
    for (size_t i = v->prop[0].first_transform + v->prop[0].n_transforms; i-- > v->prop[0].first_transform;) {
        const ike_transform *t = &v->tr[i]; /* backwards: the first of each type wins */
        ch.present |= (uint8_t)(1u << t->type);
        ch.id[t->type] = t->id;
        if (t->type == IKE_TT_ENCR)
            ch.encr_key_bits = t->key_bits;
    }
    free(v);
    ch.id[IKE_TT_KE] = gw->group;

    crypto_ke *ke_r = NULL;
    ck_assert_int_eq(crypto_ke_new(gw->group, &ke_r), 0);
    uint8_t pub[CRYPTO_MAX_KE_LEN], g_ir[CRYPTO_MAX_KE_LEN];
    size_t pub_len = 0, g_ir_len = 0;
    ck_assert_int_eq(crypto_ke_public(ke_r, pub, sizeof(pub), &pub_len), 0);
    ike_ke ke_i;
    ck_assert_int_eq(ike_ke_parse(ke_pl->body, &ke_i, &diag), 0);
    char err[128];
    ck_assert_int_eq(crypto_ke_derive(ke_r, ke_i.data.p, ke_i.data.len, g_ir, sizeof(g_ir), &g_ir_len,
                                      err, sizeof(err)), 0);
    crypto_ke_free(ke_r);

    buf_writer w;
    buf_writer_init(&w, out->p, sizeof(out->p));
    ike_chain_writer cw;
    ike_header h = fg_header(gw, IKE_EXCH_IKE_SA_INIT, true, 0, true);
    ike_message_begin(&w, &h, &cw);
    ike_build_sa_choice(&cw, &ch);
    ike_build_ke(&cw, gw->group, pub, pub_len);
    ike_build_nonce(&cw, gw->nr, sizeof(gw->nr));
    uint8_t natd[20];
    memset(natd, 0x5a, sizeof(natd)); /* values that match nothing: NAT on both sides */
    ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_NAT_DETECTION_SOURCE_IP, NULL, 0, natd, sizeof(natd));
    ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_NAT_DETECTION_DESTINATION_IP, NULL, 0, natd, sizeof(natd));
    if (gw->frag)
        ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_IKEV2_FRAGMENTATION_SUPPORTED, NULL, 0, NULL, 0);
    ck_assert_int_eq(ike_message_end(&cw), 0);
    out->len = buf_writer_len(&w);
    free(gw->init_resp);
    gw->init_resp = malloc(out->len);
    memcpy(gw->init_resp, out->p, out->len);
    gw->init_resp_len = out->len;

    /* Keys as a responder derives them (RFC 7296 §2.14). */
    gw->suite.encr_id = ch.id[IKE_TT_ENCR];
    gw->suite.encr_key_bits = ch.encr_key_bits ? ch.encr_key_bits : 256;
    gw->suite.integ_id = (ch.present & (1u << IKE_TT_INTEG)) ? ch.id[IKE_TT_INTEG] : 0;
    gw->suite.prf_id = ch.id[IKE_TT_PRF];
    crypto_key skeyseed;
    ck_assert_int_eq(crypto_ike_skeyseed(gw->suite.prf_id, gw->ni, gw->ni_len, gw->nr, sizeof(gw->nr),
                                         g_ir, g_ir_len, &skeyseed), 0);
    crypto_ike_keys_free(gw->keys);
    ck_assert_int_eq(crypto_ike_keys_derive(&gw->suite, &skeyseed, gw->ni, gw->ni_len, gw->nr,
                                            sizeof(gw->nr), gw->spi_i, gw->spi_r, &gw->keys), 0);
    const crypto_ike_keys *k = gw->keys;
    /* A second IKE_SA_INIT on the same gateway (a reauthentication) replaces the keys. */
    crypto_cipher_free(gw->seal_ctx);
    crypto_cipher_free(gw->open_ctx);
    ck_assert_int_eq(crypto_cipher_new(gw->suite.encr_id, gw->suite.encr_key_bits, gw->suite.integ_id,
                                       CRYPTO_DIR_ENCRYPT, k->sk_er.b, k->sk_er.len,
                                       k->sk_ar.len ? k->sk_ar.b : NULL, k->sk_ar.len, &gw->seal_ctx), 0);
    ck_assert_int_eq(crypto_cipher_new(gw->suite.encr_id, gw->suite.encr_key_bits, gw->suite.integ_id,
                                       CRYPTO_DIR_DECRYPT, k->sk_ei.b, k->sk_ei.len,
                                       k->sk_ai.len ? k->sk_ai.b : NULL, k->sk_ai.len, &gw->open_ctx), 0);
    fg_adapter(&gw->sk_out, gw->seal_ctx, true);
    fg_adapter(&gw->sk_in, gw->open_ctx, false);
}

/* ------------------------------------------------------ protected messages */

/* Decrypt a protected message from the SA into gw->rq_hdr / rq_inner.
 * Returns the codec's result (0, or E_CRYPTO when it does not verify). */
static int fg_open(fake_gw *gw, const fg_dgram *d)
{
    ike_message m;
    fg_parse(d, &m);
    ike_diag diag;
    ike_diag_clear(&diag);
    gw->rq_hdr = m.hdr;
    return ike_sk_open(&m, &gw->sk_in, gw->plain, sizeof(gw->plain), &gw->rq_inner, &diag);
}

/* Header + SK{inner} from the gateway, sealed with SK_er. */
static void fg_protected(fake_gw *gw, uint8_t exchange, bool response, uint32_t msg_id,
                         const uint8_t *inner, size_t inner_len, uint8_t first_type, fg_msg *out)
{
    ike_header h = fg_header(gw, exchange, response, msg_id, true);
    buf_writer w;
    buf_writer_init(&w, out->p, sizeof(out->p));
    ck_assert_int_eq(ike_sk_wrap(&h, inner, inner_len, first_type, &gw->sk_out, &w), 0);
    out->len = buf_writer_len(&w);
}

/* A free-standing inner chain under construction. */
typedef struct fg_chain {
    uint8_t buf[8192];
    buf_writer w;
    ike_chain_writer cw;
} fg_chain;

static void fg_chain_begin(fg_chain *c)
{
    buf_writer_init(&c->w, c->buf, sizeof(c->buf));
    ike_chain_writer_init(&c->cw, &c->w, SIZE_MAX);
}

static void fg_chain_send(fake_gw *gw, fg_chain *c, uint8_t exchange, bool response, uint32_t msg_id,
                          fg_msg *out)
{
    ike_chain_writer_finish(&c->cw);
    ck_assert(ike_chain_writer_ok(&c->cw));
    fg_protected(gw, exchange, response, msg_id, c->buf, buf_writer_len(&c->w), c->cw.first_type, out);
}

/* ------------------------------------------------------------ IKE_AUTH */

/* The octets one side signs (RFC 7296 §2.15): its IKE_SA_INIT message, the
 * other side's nonce, prf(SK_p, ID body); then the PSK AUTH value
 * prf(prf(PSK, "Key Pad for IKEv2"), octets). */
static size_t fg_psk_auth(const fake_gw *gw, bool initiator, const char *psk, const uint8_t *id_body,
                          size_t id_len, uint8_t out[CRYPTO_MAX_PRF_LEN])
{
    const crypto_key *skp = initiator ? &gw->keys->sk_pi : &gw->keys->sk_pr;
    size_t mac_len = crypto_prf_len(gw->suite.prf_id);
    uint8_t mac[CRYPTO_MAX_PRF_LEN], key[CRYPTO_MAX_PRF_LEN];
    crypto_span id = { id_body, id_len };
    ck_assert_int_eq(crypto_prf_oneshot(gw->suite.prf_id, skp->b, skp->len, &id, 1, mac, sizeof(mac)), 0);
    crypto_span octets[3] = {
        { initiator ? gw->init_req : gw->init_resp, initiator ? gw->init_req_len : gw->init_resp_len },
        { initiator ? gw->nr : gw->ni, initiator ? sizeof(gw->nr) : gw->ni_len },
        { mac, mac_len },
    };
    crypto_span pad = { (const uint8_t *)FG_PSK_PAD, strlen(FG_PSK_PAD) };
    ck_assert_int_eq(crypto_prf_oneshot(gw->suite.prf_id, (const uint8_t *)psk, strlen(psk), &pad, 1, key,
                                        sizeof(key)), 0);
    ck_assert_int_eq(crypto_prf_oneshot(gw->suite.prf_id, key, mac_len, octets, 3, out, CRYPTO_MAX_PRF_LEN), 0);
    return mac_len;
}

/* Open our IKE_AUTH request (the last datagram sent) and check it as a
 * responder would: IDi, our AUTH under the gateway's PSK, the ESP SA. */
static void fg_take_auth_request(fake_gw *gw, const fg_dgram *d, const char *want_idi)
{
    ck_assert_int_eq(fg_open(gw, d), 0);
    ck_assert_uint_eq(gw->rq_hdr.exchange, IKE_EXCH_IKE_AUTH);
    ck_assert_uint_eq(gw->rq_hdr.message_id, 1);
    const ike_chain *c = &gw->rq_inner;
    ike_diag diag;
    const ike_payload *idi = ike_chain_find(c, IKE_PL_IDI, NULL);
    const ike_payload *auth = ike_chain_find(c, IKE_PL_AUTH, NULL);
    const ike_payload *sa = ike_chain_find(c, IKE_PL_SA, NULL);
    ck_assert_ptr_nonnull(idi);
    ck_assert_ptr_nonnull(auth);
    ck_assert_ptr_nonnull(sa);
    ck_assert_ptr_nonnull(ike_chain_find(c, IKE_PL_TSI, NULL));
    ck_assert_ptr_nonnull(ike_chain_find(c, IKE_PL_TSR, NULL));
    ike_id id;
    ck_assert_int_eq(ike_id_parse(idi->body, &id, &diag), 0);
    ck_assert_uint_eq(id.type, IKE_ID_FQDN);
    ck_assert_uint_eq(id.data.len, strlen(want_idi));
    ck_assert_mem_eq(id.data.p, want_idi, id.data.len);
    ike_auth a;
    ck_assert_int_eq(ike_auth_parse(auth->body, &a, &diag), 0);
    ck_assert_uint_eq(a.method, IKE_AUTH_SHARED_KEY_MIC);
    uint8_t want[CRYPTO_MAX_PRF_LEN];
    size_t n = fg_psk_auth(gw, true, gw->psk, idi->body.p, idi->body.len, want);
    ck_assert_uint_eq(a.data.len, n);
    ck_assert_msg(memcmp(a.data.p, want, n) == 0, "our AUTH does not verify at the gateway");
    ike_sa_view *v = malloc(sizeof(*v));
    ck_assert_int_eq(ike_sa_parse(sa->body, v, &diag), 0);
    ck_assert_uint_eq(v->prop[0].protocol, IKE_PROTO_ESP);
    ck_assert_uint_eq(v->prop[0].spi_len, 4);
    gw->child_spi_i = buf_load_be32(v->prop[0].spi);
    free(v);
}

typedef struct fg_auth_opts {
    const char *psk;               /* NULL: the gateway's own */
    uint16_t child_error;          /* a CHILD SA error notify instead of SA/TS/CP */
    uint32_t msg_id;               /* 0: 1, the right one */
    const ike_ts *tsi, *tsr;       /* NULL: the VIP/32 and 0.0.0.0/0 */
    bool omit_tsi;                 /* no TSi payload at all */
    /* IPv6 as well: INTERNAL_IP6_ADDRESS 2001:db8:1a::7 with ip6_prefix_len
     * (as sent: set it, 128 is typical), INTERNAL_IP6_DNS 2001:db8:18::53; TSi adds the VIP6/128, TSr
     * ::/0. ip6_only: without the IPv4 VIP, its DNS and selectors. */
    bool ipv6, ip6_only;
    uint8_t ip6_prefix_len;
    /* MOBIKE (RFC 4555): MOBIKE_SUPPORTED and ADDITIONAL_IP4_ADDRESS 198.51.100.3 */
    bool mobike;
    bool mobike_no_addrs;          /* MOBIKE_SUPPORTED alone, no address list */
} fg_auth_opts;

/* The inner chain of the gateway's IKE_AUTH response to the request taken
 * last, finished in c. */
static void fg_auth_inner(fake_gw *gw, const fg_auth_opts *o, fg_chain *c)
{
    fg_chain_begin(c);
    uint8_t idb[4 + 64];
    size_t id_len = strlen(gw->id);
    idb[0] = IKE_ID_FQDN;
    idb[1] = idb[2] = idb[3] = 0;
    memcpy(idb + 4, gw->id, id_len);
    ike_build_id(&c->cw, IKE_PL_IDR, IKE_ID_FQDN, gw->id, id_len);
    uint8_t auth[CRYPTO_MAX_PRF_LEN];
    size_t n = fg_psk_auth(gw, false, o && o->psk ? o->psk : gw->psk, idb, 4 + id_len, auth);
    ike_build_auth(&c->cw, IKE_AUTH_SHARED_KEY_MIC, auth, n);
    if (o && o->mobike) {
        static const uint8_t other[4] = { 198, 51, 100, 3 };
        ike_build_notify(&c->cw, IKE_PROTO_NONE, IKE_N_MOBIKE_SUPPORTED, NULL, 0, NULL, 0);
        if (!o->mobike_no_addrs)
            ike_build_notify(&c->cw, IKE_PROTO_NONE, IKE_N_ADDITIONAL_IP4_ADDRESS, NULL, 0, other, 4);
    }
    if (o && o->child_error) {
        /* RFC 7296 §1.2: the IKE SA is set up, its first CHILD SA is not. */
        ike_build_notify(&c->cw, IKE_PROTO_NONE, o->child_error, NULL, 0, NULL, 0);
    } else {
        static const uint8_t dns6[16] = { 0x20, 0x01, 0x0d, 0xb8, 0, 0x18, [15] = 0x53 };
        uint8_t vip6[17] = { 0x20, 0x01, 0x0d, 0xb8, 0, 0x1a, [15] = 7 };
        vip6[16] = o ? o->ip6_prefix_len : 128;
        bool v4 = !(o && o->ip6_only), v6 = o && (o->ipv6 || o->ip6_only);
        ike_cp_attr attrs[5];
        size_t n_attrs = 0;
        if (v4) {
            attrs[n_attrs++] = (ike_cp_attr){ IKE_CP_INTERNAL_IP4_ADDRESS, buf_reader_make(gw->vip, 4) };
            attrs[n_attrs++] = (ike_cp_attr){ IKE_CP_INTERNAL_IP4_DNS, buf_reader_make(gw->dns[0], 4) };
            attrs[n_attrs++] = (ike_cp_attr){ IKE_CP_INTERNAL_IP4_DNS, buf_reader_make(gw->dns[1], 4) };
        }
        if (v6) {
            attrs[n_attrs++] = (ike_cp_attr){ IKE_CP_INTERNAL_IP6_ADDRESS, buf_reader_make(vip6, 17) };
            attrs[n_attrs++] = (ike_cp_attr){ IKE_CP_INTERNAL_IP6_DNS, buf_reader_make(dns6, 16) };
        }
        ike_build_cp(&c->cw, IKE_CFG_REPLY, attrs, n_attrs);
        ike_sa_choice ch;
        memset(&ch, 0, sizeof(ch));
        ch.number = 1;
        ch.protocol = IKE_PROTO_ESP;
        ch.spi_len = 4;
        buf_store_be32(ch.spi, gw->child_spi_r);
        ch.present = (1u << IKE_TT_ENCR) | (1u << IKE_TT_ESN);
        ch.id[IKE_TT_ENCR] = ENCR_AES_GCM_16;
        ch.encr_key_bits = 256;
        ch.id[IKE_TT_ESN] = ESN_NO;
        ike_build_sa_choice(&c->cw, &ch);
        ike_ts tsi[2], tsr[2];
        size_t n_ts = 0;
        if (v4) {
            ck_assert_int_eq(ike_ts_from_prefix(gw->vip, 4, 32, 0, 0, 65535, &tsi[n_ts]), 0);
            ck_assert_int_eq(ike_ts_from_prefix((uint8_t[]){ 0, 0, 0, 0 }, 4, 0, 0, 0, 65535,
                                                &tsr[n_ts]), 0);
            n_ts++;
        }
        if (v6) {
            ck_assert_int_eq(ike_ts_from_prefix(vip6, 16, 128, 0, 0, 65535, &tsi[n_ts]), 0);
            ck_assert_int_eq(ike_ts_from_prefix((uint8_t[16]){ 0 }, 16, 0, 0, 0, 65535, &tsr[n_ts]), 0);
            n_ts++;
        }
        if (!(o && o->omit_tsi))
            ike_build_ts(&c->cw, IKE_PL_TSI, o && o->tsi ? o->tsi : tsi, o && o->tsi ? 1 : n_ts);
        ike_build_ts(&c->cw, IKE_PL_TSR, o && o->tsr ? o->tsr : tsr, o && o->tsr ? 1 : n_ts);
    }
    ike_chain_writer_finish(&c->cw);
    ck_assert(ike_chain_writer_ok(&c->cw));
}

/* The gateway's IKE_AUTH response to the request taken last. */
static void fg_auth_response(fake_gw *gw, const fg_auth_opts *o, fg_msg *out)
{
    fg_chain c;
    fg_auth_inner(gw, o, &c);
    fg_protected(gw, IKE_EXCH_IKE_AUTH, true, o && o->msg_id ? o->msg_id : 1, c.buf, buf_writer_len(&c.w),
                 c.cw.first_type, out);
}

/* The same response as RFC 7383 fragments of at most max_len bytes each;
 * returns how many. */
static size_t fg_auth_response_frags(fake_gw *gw, size_t max_len, fg_msg *out, size_t max_out)
{
    fg_chain c;
    fg_auth_inner(gw, NULL, &c);
    ike_header h = fg_header(gw, IKE_EXCH_IKE_AUTH, true, 1, true);
    uint8_t *buf = malloc(FG_MSG_CAP);
    ike_span spans[16];
    size_t n = 0;
    ck_assert_int_eq(ike_frag_build(&h, c.buf, buf_writer_len(&c.w), c.cw.first_type, &gw->sk_out, max_len,
                                    buf, FG_MSG_CAP, spans, 16, &n), 0);
    ck_assert_uint_le(n, max_out);
    for (size_t i = 0; i < n; i++) {
        memcpy(out[i].p, buf + spans[i].off, spans[i].len);
        out[i].len = spans[i].len;
    }
    free(buf);
    return n;
}

/* An encrypted response that carries one notify only (AUTHENTICATION_FAILED
 * in IKE_AUTH, §2.21.2), or nothing (type 0: empty INFORMATIONAL answer). */
static void fg_notify_response(fake_gw *gw, uint8_t exchange, uint32_t msg_id, uint16_t type, fg_msg *out)
{
    fg_chain c;
    fg_chain_begin(&c);
    if (type)
        ike_build_notify(&c.cw, IKE_PROTO_NONE, type, NULL, 0, NULL, 0);
    fg_chain_send(gw, &c, exchange, true, msg_id, out);
}

/* The CHILD SA keys both sides must agree on (RFC 7296 §2.17). */
static size_t fg_child_keymat(const fake_gw *gw, uint8_t *out, size_t cap)
{
    crypto_suite cs = { ENCR_AES_GCM_16, 256, 0, gw->suite.prf_id };
    crypto_child_keys *k = NULL;
    ck_assert_int_eq(crypto_child_keys_derive(&cs, &gw->keys->sk_d, NULL, 0, gw->ni, gw->ni_len, gw->nr,
                                              sizeof(gw->nr), &k), 0);
    const crypto_key *parts[4] = { &k->encr_i, &k->integ_i, &k->encr_r, &k->integ_r };
    size_t n = 0;
    for (int i = 0; i < 4; i++) {
        ck_assert_uint_le(n + parts[i]->len, cap);
        memcpy(out + n, parts[i]->b, parts[i]->len);
        n += parts[i]->len;
    }
    crypto_child_keys_free(k);
    return n;
}

/* ------------------------------------------------------------ rekeying */

/* The IKE SA keys the gateway holds: swapped with fg_swap_keys() to answer
 * on a replaced IKE SA (RFC 7296 §2.18: the old one is deleted on itself). */
typedef struct fg_keys {
    bool initiator;
    uint8_t spi_i[8], spi_r[8];
    crypto_suite suite;
    crypto_ike_keys *keys;
    crypto_cipher *seal_ctx, *open_ctx;
    ike_sk_cipher sk_out, sk_in;
} fg_keys;

static void fg_swap_keys(fake_gw *gw, fg_keys *k)
{
    fg_keys cur = { gw->initiator, { 0 }, { 0 }, gw->suite, gw->keys, gw->seal_ctx, gw->open_ctx,
                    gw->sk_out, gw->sk_in };
    memcpy(cur.spi_i, gw->spi_i, 8);
    memcpy(cur.spi_r, gw->spi_r, 8);
    gw->initiator = k->initiator;
    memcpy(gw->spi_i, k->spi_i, 8);
    memcpy(gw->spi_r, k->spi_r, 8);
    gw->suite = k->suite;
    gw->keys = k->keys;
    gw->seal_ctx = k->seal_ctx;
    gw->open_ctx = k->open_ctx;
    gw->sk_out = k->sk_out;
    gw->sk_in = k->sk_in;
    *k = cur;
}

static void fg_keys_free(fg_keys *k)
{
    crypto_ike_keys_free(k->keys);
    crypto_cipher_free(k->seal_ctx);
    crypto_cipher_free(k->open_ctx);
    memset(k, 0, sizeof(*k));
}

/* Replace the gateway's IKE SA keys by a rekeyed SA's (§2.18): SKEYSEED =
 * prf(SK_d (old), g^ir | Ni | Nr); the old keys go into *old. */
static void fg_rekey_ike_keys(fake_gw *gw, bool gw_initiates, const uint8_t spi_i[8], const uint8_t spi_r[8],
                              const uint8_t *g_ir, size_t g_len, const uint8_t *ni, size_t ni_len,
                              const uint8_t *nr, size_t nr_len, fg_keys *old)
{
    crypto_key skeyseed;
    ck_assert_int_eq(crypto_ike_skeyseed_rekey(gw->suite.prf_id, &gw->keys->sk_d, g_ir, g_len, ni, ni_len, nr,
                                               nr_len, &skeyseed), 0);
    fg_keys n;
    memset(&n, 0, sizeof(n));
    n.initiator = gw_initiates;
    memcpy(n.spi_i, spi_i, 8);
    memcpy(n.spi_r, spi_r, 8);
    n.suite = gw->suite;
    ck_assert_int_eq(crypto_ike_keys_derive(&n.suite, &skeyseed, ni, ni_len, nr, nr_len, spi_i, spi_r, &n.keys), 0);
    const crypto_ike_keys *k = n.keys;
    /* The gateway sends with SK_e?/SK_a? of its role in the new SA. */
    const crypto_key *se = gw_initiates ? &k->sk_ei : &k->sk_er, *sa = gw_initiates ? &k->sk_ai : &k->sk_ar;
    const crypto_key *oe = gw_initiates ? &k->sk_er : &k->sk_ei, *oa = gw_initiates ? &k->sk_ar : &k->sk_ai;
    ck_assert_int_eq(crypto_cipher_new(n.suite.encr_id, n.suite.encr_key_bits, n.suite.integ_id, CRYPTO_DIR_ENCRYPT,
                                       se->b, se->len, sa->len ? sa->b : NULL, sa->len, &n.seal_ctx), 0);
    ck_assert_int_eq(crypto_cipher_new(n.suite.encr_id, n.suite.encr_key_bits, n.suite.integ_id, CRYPTO_DIR_DECRYPT,
                                       oe->b, oe->len, oa->len ? oa->b : NULL, oa->len, &n.open_ctx), 0);
    fg_adapter(&n.sk_out, n.seal_ctx, true);
    fg_adapter(&n.sk_in, n.open_ctx, false);
    *old = n;
    fg_swap_keys(gw, old); /* gw: the new SA; old: the one it replaced */
}

/* KEYMAT of a CHILD SA (§2.17) with the gateway's current SK_d, as the
 * engine hands it out: what the client sends with first (swap: the gateway
 * initiated the exchange). */
static size_t fg_rekey_keymat(const fake_gw *gw, const uint8_t *g_ir, size_t g_len, const uint8_t *ni, size_t ni_len,
                              const uint8_t *nr, size_t nr_len, bool swap, uint8_t *out, size_t cap)
{
    crypto_suite cs = { ENCR_AES_GCM_16, 256, 0, gw->suite.prf_id };
    crypto_child_keys *k = NULL;
    ck_assert_int_eq(crypto_child_keys_derive(&cs, &gw->keys->sk_d, g_ir, g_len, ni, ni_len, nr, nr_len, &k), 0);
    const crypto_key *parts[4] = { &k->encr_i, &k->integ_i, &k->encr_r, &k->integ_r };
    size_t n = 0;
    for (int i = 0; i < 4; i++) {
        const crypto_key *p = parts[swap ? (i + 2) % 4 : i];
        ck_assert_uint_le(n + p->len, cap);
        memcpy(out + n, p->b, p->len);
        n += p->len;
    }
    crypto_child_keys_free(k);
    return n;
}

/* A key pair of `group`, its public value, and g^ir with the peer's value. */
static void fg_ke(uint16_t group, const ike_ke *peer, uint8_t *pub, size_t *pub_len, uint8_t *g_ir, size_t *g_len)
{
    crypto_ke *ke = NULL;
    char err[128];
    ck_assert_int_eq(crypto_ke_new(group, &ke), 0);
    ck_assert_int_eq(crypto_ke_public(ke, pub, CRYPTO_MAX_KE_LEN, pub_len), 0);
    if (peer)
        ck_assert_int_eq(crypto_ke_derive(ke, peer->data.p, peer->data.len, g_ir, CRYPTO_MAX_KE_LEN, g_len, err,
                                          sizeof(err)), 0);
    crypto_ke_free(ke);
}

/* The gateway's CHILD SA choice: AES-GCM-256, no ESN, [KE group]. */
static ike_sa_choice fg_esp_choice(uint8_t number, uint32_t spi, uint16_t group)
{
    ike_sa_choice ch;
    memset(&ch, 0, sizeof(ch));
    ch.number = number;
    ch.protocol = IKE_PROTO_ESP;
    ch.spi_len = 4;
    buf_store_be32(ch.spi, spi);
    ch.present = (1u << IKE_TT_ENCR) | (1u << IKE_TT_ESN);
    ch.id[IKE_TT_ENCR] = ENCR_AES_GCM_16;
    ch.encr_key_bits = 256;
    ch.id[IKE_TT_ESN] = ESN_NO;
    if (group) {
        ch.present |= 1u << IKE_TT_KE;
        ch.id[IKE_TT_KE] = group;
    }
    return ch;
}

/* TSi (client side: the virtual IP) and TSr (everything), or the other way
 * round when the gateway initiates. */
static void fg_build_ts_pair(const fake_gw *gw, ike_chain_writer *cw, bool gw_initiates)
{
    ike_ts vip, any;
    ck_assert_int_eq(ike_ts_from_prefix(gw->vip, 4, 32, 0, 0, 65535, &vip), 0);
    ck_assert_int_eq(ike_ts_from_prefix((uint8_t[]){ 0, 0, 0, 0 }, 4, 0, 0, 0, 65535, &any), 0);
    ike_build_ts(cw, IKE_PL_TSI, gw_initiates ? &any : &vip, 1);
    ike_build_ts(cw, IKE_PL_TSR, gw_initiates ? &vip : &any, 1);
}

/* ---------------------------------------------- looking at what was sent */

/* Index of the first notify of `type` in a chain, or -1. */
static int fg_notify_at(const ike_chain *c, uint16_t type, ike_notify *ret)
{
    ike_diag diag;
    for (size_t i = 0; i < c->n; i++) {
        ike_notify n;
        if (c->pl[i].type == IKE_PL_NOTIFY && ike_notify_parse(c->pl[i].body, &n, &diag) == 0 &&
            n.type == type) {
            if (ret)
                *ret = n;
            return (int)i;
        }
    }
    return -1;
}

/* Does the opened message hold Delete(IKE)? */
static bool fg_has_ike_delete(const ike_chain *c)
{
    ike_diag diag;
    for (const ike_payload *pl = ike_chain_find(c, IKE_PL_DELETE, NULL); pl; pl = ike_chain_find(c, IKE_PL_DELETE, pl)) {
        ike_delete del;
        if (ike_delete_parse(pl->body, &del, &diag) == 0 && del.protocol == IKE_PROTO_IKE)
            return true;
    }
    return false;
}

#endif
