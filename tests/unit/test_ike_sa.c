/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The IKE SA engine (lib/ike/ike.h) in isolation, in the strongSwan style:
 * a mocked sender (the send hook captures datagrams into a scripted fake
 * gateway, tests/unit/data/ike/fake_gateway.h), a mocked clock (core_loop's
 * clock_ms) and timers fired by core_loop_run_once(l, 0). No sockets, no
 * sleeps. Each case checks what a user of the engine sees (on_established /
 * on_down with the error and the detail text) and what went on the wire.
 *
 * The cases are the ones a real gateway rarely plays on demand: silence,
 * retransmitted and stray messages, its own requests, COOKIE, INVALID_KE,
 * refusals, a wrong PSK, a critical payload we do not know, a flipped bit.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <m2mvpn/m2mvpn.h>

#include "core/log.h"
#include "cred/cred.h"
#include "core/loop.h"
#include "ike/ike.h"
#include "ike/sa_internal.h" /* IKE_INIT_ERROR_GRACE_MS */
#include "profile/profile.h"

#include "data/ike/fake_gateway.h"

#define PSK "unit test psk, 32 bytes or so.."
#define GW_ID "gw.m2m.test"
#define OUR_ID "dev1.m2m.test"
#define GW_500 "198.51.100.1:500"
#define GW_4500 "198.51.100.1:4500"
#define OUR_PROPOSAL "aes256gcm16-prfsha384-x25519-ecp256"

/* Short retransmissions: 1 s, then doubling (1, 2, 4 s), 3 tries; no DPD. */
static const char profile_json[] =
    "{\"version\": 1, \"name\": \"unit\", \"mode\": \"manual\","
    " \"gateways\": [{\"host\": \"198.51.100.1\"}],"
    " \"local_id\": \"" OUR_ID "\", \"remote_id\": \"" GW_ID "\","
    " \"auth\": {\"method\": \"psk\", \"psk\": \"" PSK "\"},"
    " \"ike\": {\"proposals\": [\"" OUR_PROPOSAL "\"], \"dpd_s\": 0,"
    "  \"retransmit_timeout_s\": 1.0, \"retransmit_base\": 2.0, \"retransmit_tries\": 3},"
    " \"esp\": {\"proposals\": [\"aes256gcm16\"]},"
    " \"tunnel\": {\"request_vip\": true, \"dns\": true}}";

#define TRIES 3
#define TIMEOUT_MS 1000u

/* ------------------------------------------------------------- harness */

/* core_loop's clock takes no argument, so the fake one lives here. */
static uint64_t fake_now;
static uint64_t fake_clock(void)
{
    return fake_now;
}

typedef struct harness {
    core_loop loop;
    core_log log;
    profile_set *set;
    ike_sa *sa;
    fake_gw gw;
    unsigned n_established, n_down;
    int down_err;
    ike_fault down_fault;
    char down_detail[512];
    ike_child_result child;
    uint8_t keymat[4 * CRYPTO_MAX_KEY_LEN];
    /* rekeys reported */
    unsigned n_rekeyed, n_child_deleted, n_ike_rekeyed;
    uint32_t rekeyed_old[8];
    bool rekeyed_out[8];
    ike_child_result rekeyed[8];
    uint8_t rekeyed_keymat[8][4 * CRYPTO_MAX_KEY_LEN];
    uint32_t child_deleted[8];
    /* address updates reported (MOBIKE) */
    unsigned n_updated;
    int updated_err;
    bool updated_ours;
    char updated_detail[256];
    /* datagrams sent to another gateway address (send_to, failover): its
     * index in gw.sent and where it went */
    unsigned n_sent_to;
    size_t sent_to_index[16];
    char sent_to[16][64];
    /* the source of the datagrams deliver() hands over (from_len 0: unknown) */
    struct sockaddr_storage from;
    socklen_t from_len;
} harness;

static harness *T;

static int hook_send(void *arg, const uint8_t *msg, size_t len, bool natt)
{
    harness *h = arg;
    fg_capture(&h->gw, msg, len, natt);
    return 0;
}

static int hook_send_to(void *arg, const uint8_t *msg, size_t len, const struct sockaddr *to, socklen_t to_len)
{
    harness *h = arg;
    ck_assert_uint_lt(h->n_sent_to, 16);
    ck_assert_int_eq(to->sa_family, AF_INET);
    ck_assert_uint_eq(to_len, sizeof(struct sockaddr_in));
    const struct sockaddr_in *in = (const struct sockaddr_in *)to;
    char host[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    h->sent_to_index[h->n_sent_to] = h->gw.n_sent;
    snprintf(h->sent_to[h->n_sent_to++], sizeof(h->sent_to[0]), "%s:%u", host, ntohs(in->sin_port));
    fg_capture(&h->gw, msg, len, true);
    return 0;
}

static void hook_established(void *arg, const ike_child_result *child)
{
    harness *h = arg;
    h->n_established++;
    h->child = *child;
    ck_assert_uint_le(child->keymat_len, sizeof(h->keymat));
    memcpy(h->keymat, child->keymat, child->keymat_len); /* wiped after the call */
    h->child.keymat = h->keymat;
}

static void hook_rekeyed(void *arg, uint32_t old_spi_in, const ike_child_result *child, bool outbound)
{
    harness *h = arg;
    ck_assert_uint_lt(h->n_rekeyed, 8);
    h->rekeyed_old[h->n_rekeyed] = old_spi_in;
    h->rekeyed_out[h->n_rekeyed] = outbound;
    h->rekeyed[h->n_rekeyed] = *child;
    ck_assert_uint_le(child->keymat_len, sizeof(h->rekeyed_keymat[0]));
    memcpy(h->rekeyed_keymat[h->n_rekeyed], child->keymat, child->keymat_len);
    h->rekeyed[h->n_rekeyed].keymat = h->rekeyed_keymat[h->n_rekeyed];
    h->n_rekeyed++;
}

static void hook_child_deleted(void *arg, uint32_t spi_in)
{
    harness *h = arg;
    ck_assert_uint_lt(h->n_child_deleted, 8);
    h->child_deleted[h->n_child_deleted++] = spi_in;
}

static void hook_ike_rekeyed(void *arg)
{
    harness *h = arg;
    h->n_ike_rekeyed++;
}

static void hook_addresses_updated(void *arg, int err, bool ours, const char *detail)
{
    harness *h = arg;
    h->n_updated++;
    h->updated_err = err;
    h->updated_ours = ours;
    snprintf(h->updated_detail, sizeof(h->updated_detail), "%s", detail ? detail : "");
}

static void hook_down(void *arg, int err, ike_fault fault, const char *detail)
{
    harness *h = arg;
    h->n_down++;
    h->down_err = err;
    h->down_fault = fault;
    snprintf(h->down_detail, sizeof(h->down_detail), "%s", detail ? detail : "");
}

static void print_log(m2mvpn *h, int level, const char *sub, const char *msg, void *ud)
{
    (void)h;
    (void)ud;
    fprintf(stderr, "  [%d %s] %s\n", level, sub, msg);
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

static void setup(void)
{
    T = calloc(1, sizeof(*T));
    ck_assert_ptr_nonnull(T);
    fake_now = 1000000;
    ck_assert_int_eq(core_loop_init(&T->loop, NULL, NULL), 0);
    T->loop.clock_ms = fake_clock;
    core_log_init(&T->log, NULL);
    if (getenv("M2MVPN_TEST_LOG")) /* set it to see the engine's log */
        core_log_set(&T->log, print_log, M2MVPN_LOG_DEBUG, NULL);
    char err[256];
    ck_assert_msg(profile_set_parse(profile_json, strlen(profile_json), NULL, &T->set, err, sizeof(err)) == 0,
                  "profile: %s", err);
    fg_init(&T->gw, PSK, GW_ID);
    ike_config cfg = { .prof = &T->set->items[0] };
    set_addr(&cfg.remote, &cfg.remote_len, "198.51.100.1", 500);
    set_addr(&cfg.local, &cfg.local_len, "198.51.100.2", 500);
    ike_hooks hooks = { .arg = T, .send = hook_send, .on_established = hook_established, .on_down = hook_down,
                        .on_child_rekeyed = hook_rekeyed, .on_child_deleted = hook_child_deleted,
                        .on_ike_rekeyed = hook_ike_rekeyed, .on_addresses_updated = hook_addresses_updated,
                        .send_to = hook_send_to };
    ck_assert_msg(ike_sa_new(&T->loop, &T->log, &cfg, &hooks, &T->sa, err, sizeof(err)) == 0, "%s", err);
}

static void teardown(void)
{
    ike_sa_free(T->sa);
    fg_free(&T->gw);
    profile_set_free(T->set);
    core_log_destroy(&T->log);
    core_loop_destroy(&T->loop);
    free(T);
    T = NULL;
}

/* Let `ms` pass and run what is due. */
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
    if (T->from_len)
        ike_sa_input_from(T->sa, m->p, m->len, natt, (const struct sockaddr *)&T->from, T->from_len);
    else
        ike_sa_input(T->sa, m->p, m->len, natt);
}

/* What deliver() hands over comes from ip, port 4500, from now on. */
static void deliver_from(const char *ip)
{
    set_addr(&T->from, &T->from_len, ip, 4500);
}

/* The same as a dual-stack socket reports it: ::ffff:ip. */
static void deliver_from_mapped(const char *ip)
{
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&T->from;
    memset(&T->from, 0, sizeof(T->from));
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(4500);
    in6->sin6_addr.s6_addr[10] = 0xff;
    in6->sin6_addr.s6_addr[11] = 0xff;
    ck_assert_int_eq(inet_pton(AF_INET, ip, &in6->sin6_addr.s6_addr[12]), 1);
    T->from_len = sizeof(*in6);
}

static size_t n_sent(void)
{
    return T->gw.n_sent;
}

static const fg_dgram *sent(size_t i)
{
    ck_assert_uint_lt(i, T->gw.n_sent);
    return &T->gw.sent[i];
}

static void assert_same_bytes(const fg_dgram *a, const fg_dgram *b)
{
    ck_assert_uint_eq(a->len, b->len);
    ck_assert_mem_eq(a->p, b->p, a->len);
    ck_assert(a->natt == b->natt);
}

#define assert_detail_has(s)                                                                        \
    ck_assert_msg(strstr(T->down_detail, (s)) != NULL, "on_down detail \"%s\" lacks \"%s\"",         \
                  T->down_detail, (s))

/* An error answer to IKE_SA_INIT is unauthenticated (RFC 7296 §2.21.1): the
 * SA waits IKE_INIT_ERROR_GRACE_MS for a valid answer before it gives up. */
static void wait_out_init_error_grace(void)
{
    ck_assert_uint_eq(T->n_down, 0);
    advance(IKE_INIT_ERROR_GRACE_MS - 1);
    ck_assert_uint_eq(T->n_down, 0);
    advance(1);
}

static void assert_down(int err)
{
    ck_assert_uint_eq(T->n_down, 1);
    ck_assert_msg(T->down_err == err, "on_down(%s) (\"%s\"), expected %s", m2mvpn_error_name(T->down_err),
                  T->down_detail, m2mvpn_error_name(err));
}

/* Nothing more goes out, however long we wait (no timer left behind). */
static void assert_quiet_from_now(void)
{
    size_t n = n_sent();
    unsigned down = T->n_down;
    for (int i = 0; i < 10; i++)
        advance(60000);
    ck_assert_uint_eq(n_sent(), n);
    ck_assert_uint_eq(T->n_down, down);
}

static void start(void)
{
    ck_assert_int_eq(ike_sa_start(T->sa), 0);
    ck_assert_uint_eq(n_sent(), 1);
}

/* The gateway answers the last IKE_SA_INIT normally; IKE_AUTH goes out. */
static void answer_init(void)
{
    size_t n = n_sent();
    fg_msg *m = malloc(sizeof(*m));
    fg_init_response(&T->gw, fg_last(&T->gw), m);
    deliver(m);
    free(m);
    ck_assert_uint_eq(n_sent(), n + 1);
    ck_assert(fg_last(&T->gw)->natt); /* NAT-T: IKE_AUTH goes to 4500 (RFC 3948) */
    fg_take_auth_request(&T->gw, fg_last(&T->gw), OUR_ID);
}

static void answer_auth(const fg_auth_opts *o)
{
    fg_msg *m = malloc(sizeof(*m));
    fg_auth_response(&T->gw, o, m);
    deliver(m);
    free(m);
}

static void establish(void)
{
    start();
    answer_init();
    answer_auth(NULL);
    ck_assert_uint_eq(T->n_established, 1);
    ck_assert_uint_eq(T->n_down, 0);
}

/* Open a protected datagram the SA sent and check its header. */
static const ike_chain *open_sent(const fg_dgram *d, uint8_t exchange, bool response, uint32_t msg_id)
{
    ck_assert_int_eq(fg_open(&T->gw, d), 0);
    const ike_header *h = &T->gw.rq_hdr;
    ck_assert_uint_eq(h->exchange, exchange);
    ck_assert_uint_eq(h->message_id, msg_id);
    ck_assert(h->flags & IKE_FLAG_INITIATOR);
    ck_assert_uint_eq(!!(h->flags & IKE_FLAG_RESPONSE), response);
    ck_assert(d->natt);
    return &T->gw.rq_inner;
}

/* ------------------------------------------------------- 1. happy path */

START_TEST(test_psk_happy_path)
{
    start();
    /* IKE_SA_INIT (RFC 7296 §1.2): SA, KE of the first group, Ni, NAT-D; on 500. */
    ike_message m;
    fg_parse(sent(0), &m);
    ck_assert(!sent(0)->natt);
    ck_assert_uint_eq(m.hdr.exchange, IKE_EXCH_IKE_SA_INIT);
    ck_assert_uint_eq(m.chain.pl[0].type, IKE_PL_SA);
    ike_ke ke;
    ike_diag d;
    ck_assert_int_eq(ike_ke_parse(ike_chain_find(&m.chain, IKE_PL_KE, NULL)->body, &ke, &d), 0);
    ck_assert_uint_eq(ke.group, KE_X25519);
    ck_assert_uint_eq(ke.data.len, 32);
    ck_assert_int_ge(fg_notify_at(&m.chain, IKE_N_NAT_DETECTION_SOURCE_IP, NULL), 0);
    ck_assert_int_ge(fg_notify_at(&m.chain, IKE_N_NAT_DETECTION_DESTINATION_IP, NULL), 0);

    /* IKE_AUTH: the gateway verified our AUTH in answer_init(); the request
     * asks for a virtual IP and DNS (CP, §3.15). */
    answer_init();
    const ike_payload *cp_pl = ike_chain_find(&T->gw.rq_inner, IKE_PL_CP, NULL);
    ck_assert_ptr_nonnull(cp_pl);
    ike_cp cp;
    ck_assert_int_eq(ike_cp_parse(cp_pl->body, &cp, &d), 0);
    ck_assert_uint_eq(cp.cfg_type, IKE_CFG_REQUEST);
    ck_assert_ptr_nonnull(ike_cp_find(&cp, IKE_CP_INTERNAL_IP4_ADDRESS, NULL));
    ck_assert_ptr_nonnull(ike_cp_find(&cp, IKE_CP_INTERNAL_IP4_DNS, NULL));
    ck_assert_int_ge(fg_notify_at(&T->gw.rq_inner, IKE_N_INITIAL_CONTACT, NULL), 0);
    answer_auth(NULL);

    ck_assert_uint_eq(T->n_established, 1);
    ck_assert_uint_eq(T->n_down, 0);
    const ike_child_result *c = &T->child;
    ck_assert_uint_eq(c->spi_in, T->gw.child_spi_i);
    ck_assert_uint_eq(c->spi_out, 0xc1d2e3f4);
    ck_assert_uint_eq(c->encr_id, ENCR_AES_GCM_16);
    ck_assert_uint_eq(c->encr_key_bits, 256);
    ck_assert_uint_eq(c->integ_id, 0);
    ck_assert(!c->esn);
    ck_assert(c->natt);
    ck_assert(c->has_vip);
    ck_assert_mem_eq(c->vip, ((uint8_t[]){ 198, 18, 0, 7 }), 4);
    ck_assert_uint_eq(c->n_dns, 2);
    ck_assert_mem_eq(c->dns[0], ((uint8_t[]){ 198, 18, 0, 53 }), 4);
    ck_assert_mem_eq(c->dns[1], ((uint8_t[]){ 198, 18, 1, 53 }), 4);
    ck_assert_uint_eq(c->n_remote_ts, 1);
    ck_assert_uint_eq(c->remote_ts[0].prefix_len, 0);
    /* TSi as granted (the datapath's inbound destination filter): the VIP. */
    ck_assert_uint_eq(c->n_local_ts, 1);
    ck_assert_int_eq(c->local_ts[0].family, AF_INET);
    ck_assert_uint_eq(c->local_ts[0].prefix_len, 32);
    ck_assert_mem_eq(c->local_ts[0].addr, ((uint8_t[]){ 198, 18, 0, 7 }), 4);
    /* KEYMAT (§2.17): AES-256-GCM, 32 key + 4 salt bytes each way, as the gateway derives it. */
    uint8_t want[4 * CRYPTO_MAX_KEY_LEN];
    size_t want_len = fg_child_keymat(&T->gw, want, sizeof(want));
    ck_assert_uint_eq(c->keymat_len, 2 * (32 + 4));
    ck_assert_uint_eq(want_len, c->keymat_len);
    ck_assert_mem_eq(c->keymat, want, want_len);
    char ike_alg[96], esp_alg[96];
    ike_sa_describe(T->sa, ike_alg, sizeof(ike_alg), esp_alg, sizeof(esp_alg));
    ck_assert_str_eq(ike_alg, "aes256gcm16-prfsha384-x25519");
    ck_assert_str_eq(esp_alg, "aes256gcm16");
    ck_assert_uint_eq(n_sent(), 2);

    /* Close: INFORMATIONAL{D(IKE)} (§1.4.1), on_down(0) once the gateway answers. */
    ike_sa_close(T->sa);
    ck_assert_uint_eq(n_sent(), 3);
    const ike_chain *inner = open_sent(sent(2), IKE_EXCH_INFORMATIONAL, false, 2);
    ck_assert_uint_eq(inner->n, 1);
    ck_assert(fg_has_ike_delete(inner));
    ck_assert_uint_eq(T->n_down, 0);
    fg_msg *r = malloc(sizeof(*r));
    fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, 2, 0, r);
    deliver(r);
    free(r);
    assert_down(0);
    assert_detail_has("deleted");
    assert_quiet_from_now();
}
END_TEST

/* --------------------------------------------------- 2. retransmission */

/* The gateway stays silent: retransmissions of the identical bytes at
 * timeout * base^n (RFC 7296 §2.1 leaves the schedule to us; the profile
 * sets it), then TIMEOUT. */
static void expect_retransmits(size_t first, const char *gw)
{
    uint64_t delay = TIMEOUT_MS;
    for (unsigned n = 0; n < TRIES; n++) {
        advance(delay - 1);
        ck_assert_uint_eq(n_sent(), first + 1 + n);
        advance(1);
        ck_assert_uint_eq(n_sent(), first + 2 + n);
        assert_same_bytes(sent(first + 1 + n), sent(first));
        delay *= 2;
    }
    advance(delay - 1);
    ck_assert_uint_eq(T->n_down, 0);
    advance(1);
    assert_down(M2MVPN_E_TIMEOUT);
    char want[128];
    snprintf(want, sizeof(want), "no answer from %s after %u retransmits", gw, TRIES);
    ck_assert_str_eq(T->down_detail, want);
    ck_assert_uint_eq(n_sent(), first + 1 + TRIES);
    assert_quiet_from_now();
}

/* A reauthentication's IKE SA (RFC 7296 §2.8.3, make-before-break): the
 * SA it replaces lives on until it carries the traffic, so IKE_AUTH has no
 * INITIAL_CONTACT (the gateway would delete the old SA at once), and it
 * asks for the virtual IP the tunnel has. */
START_TEST(test_reauth_request)
{
    ike_sa_free(T->sa);
    char err[256];
    ike_config cfg = { .prof = &T->set->items[0], .reauth = true, .want_vip = true, .vip = { 198, 18, 1, 7 } };
    set_addr(&cfg.remote, &cfg.remote_len, "198.51.100.1", 500);
    set_addr(&cfg.local, &cfg.local_len, "198.51.100.2", 500);
    ike_hooks hooks = { .arg = T, .send = hook_send, .on_established = hook_established, .on_down = hook_down };
    ck_assert_msg(ike_sa_new(&T->loop, &T->log, &cfg, &hooks, &T->sa, err, sizeof(err)) == 0, "%s", err);
    start();
    answer_init();
    ck_assert_int_lt(fg_notify_at(&T->gw.rq_inner, IKE_N_INITIAL_CONTACT, NULL), 0);
    const ike_payload *cp_pl = ike_chain_find(&T->gw.rq_inner, IKE_PL_CP, NULL);
    ck_assert_ptr_nonnull(cp_pl);
    ike_cp cp;
    ike_diag d;
    ck_assert_int_eq(ike_cp_parse(cp_pl->body, &cp, &d), 0);
    const ike_cp_attr *a = ike_cp_find(&cp, IKE_CP_INTERNAL_IP4_ADDRESS, NULL);
    ck_assert_ptr_nonnull(a);
    ck_assert_uint_eq(a->value.len, 4);
    ck_assert_mem_eq(a->value.p, cfg.vip, 4);
    answer_auth(NULL);
    ck_assert_uint_eq(T->n_established, 1);
}
END_TEST

START_TEST(test_retransmit_init)
{
    start();
    expect_retransmits(0, GW_500);
    ck_assert_uint_eq(T->n_established, 0);
}
END_TEST

START_TEST(test_retransmit_auth)
{
    start();
    answer_init();
    expect_retransmits(1, GW_4500);
    ck_assert_uint_eq(T->n_established, 0);
}
END_TEST

/* ------------------------------------- 3. stray and duplicate messages */

START_TEST(test_stray_responses_ignored)
{
    start();
    fg_msg *init = malloc(sizeof(*init)), *m = malloc(sizeof(*m));
    fg_init_response(&T->gw, sent(0), init);
    deliver(init);
    ck_assert_uint_eq(n_sent(), 2);
    fg_take_auth_request(&T->gw, sent(1), OUR_ID);

    /* The IKE_SA_INIT response again (late duplicate of message 0). */
    deliver(init);
    /* An authentic IKE_AUTH response with the wrong message ID (§2.3). */
    fg_auth_opts wrong_id = { .msg_id = 5 };
    fg_auth_response(&T->gw, &wrong_id, m);
    deliver(m);
    /* An authentic response for another IKE SA (different SPIi, §2.6). */
    T->gw.spi_i[7] ^= 1;
    fg_auth_response(&T->gw, NULL, m);
    T->gw.spi_i[7] ^= 1;
    deliver(m);
    ck_assert_uint_eq(T->n_established, 0);
    ck_assert_uint_eq(T->n_down, 0);
    ck_assert_uint_eq(n_sent(), 2);

    /* The right one completes the exchange ... */
    fg_auth_response(&T->gw, NULL, m);
    deliver(m);
    ck_assert_uint_eq(T->n_established, 1);
    /* ... and neither it nor the IKE_SA_INIT response does anything again. */
    deliver(m);
    deliver(init);
    ck_assert_uint_eq(T->n_established, 1);
    ck_assert_uint_eq(T->n_down, 0);
    ck_assert_uint_eq(n_sent(), 2);
    free(init);
    free(m);
}
END_TEST

/* ------------------------------------------- 4. the gateway's requests */

START_TEST(test_gateway_liveness_and_delete)
{
    establish();
    size_t n0 = n_sent();
    fg_msg *m = malloc(sizeof(*m));
    fg_chain c;

    /* Liveness check: empty INFORMATIONAL, message ID 0 of the gateway's own
     * counter (§2.2, §2.4), answered with an empty response. */
    fg_chain_begin(&c);
    fg_chain_send(&T->gw, &c, IKE_EXCH_INFORMATIONAL, false, 0, m);
    deliver(m);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    ck_assert_uint_eq(open_sent(sent(n0), IKE_EXCH_INFORMATIONAL, true, 0)->n, 0);

    /* The same request again (our answer got lost): the cached response,
     * byte for byte (§2.1). */
    deliver(m);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    assert_same_bytes(sent(n0 + 1), sent(n0));

    /* A request out of the window (message ID 5, expected 1) is ignored. */
    fg_chain_begin(&c);
    fg_chain_send(&T->gw, &c, IKE_EXCH_INFORMATIONAL, false, 5, m);
    deliver(m);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    ck_assert_uint_eq(T->n_down, 0);

    /* Delete(IKE) (§1.4.1): answered, then the SA is gone. errors.md:
     * "M2MVPN_E_PROTOCOL ... The gateway deleted the IKE SA". */
    fg_chain_begin(&c);
    ike_build_delete(&c.cw, IKE_PROTO_IKE, 0, NULL, 0);
    fg_chain_send(&T->gw, &c, IKE_EXCH_INFORMATIONAL, false, 1, m);
    deliver(m);
    ck_assert_uint_eq(n_sent(), n0 + 3);
    ck_assert_uint_eq(open_sent(sent(n0 + 2), IKE_EXCH_INFORMATIONAL, true, 1)->n, 0);
    assert_down(M2MVPN_E_PROTOCOL);
    ck_assert_str_eq(T->down_detail, "the gateway " GW_4500 " deleted the IKE SA");
    free(m);
    assert_quiet_from_now();
}
END_TEST

/* Delete of our only CHILD SA (§1.4.1): answered with the Delete of our
 * half; the IKE SA has nothing left to carry. */
START_TEST(test_gateway_deletes_child)
{
    establish();
    size_t n0 = n_sent();
    fg_msg *m = malloc(sizeof(*m));
    fg_chain c;
    fg_chain_begin(&c);
    uint8_t spi[4];
    buf_store_be32(spi, T->gw.child_spi_r);
    ike_build_delete(&c.cw, IKE_PROTO_ESP, 4, spi, 1);
    fg_chain_send(&T->gw, &c, IKE_EXCH_INFORMATIONAL, false, 0, m);
    deliver(m);
    free(m);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    const ike_chain *inner = open_sent(sent(n0), IKE_EXCH_INFORMATIONAL, true, 0);
    const ike_payload *pl = ike_chain_find(inner, IKE_PL_DELETE, NULL);
    ck_assert_ptr_nonnull(pl);
    ike_delete del;
    ike_diag d;
    ck_assert_int_eq(ike_delete_parse(pl->body, &del, &d), 0);
    ck_assert_uint_eq(del.protocol, IKE_PROTO_ESP);
    ck_assert_uint_eq(del.n_spi, 1);
    ck_assert_uint_eq(buf_load_be32(del.spis.p), T->gw.child_spi_i);
    assert_down(M2MVPN_E_PROTOCOL);
    assert_detail_has("deleted");
}
END_TEST

/* A CREATE_CHILD_SA from the gateway that is no rekey (another CHILD SA):
 * refused with NO_ADDITIONAL_SAS (§1.3), the SA stays. */
START_TEST(test_gateway_create_child_refused)
{
    establish();
    size_t n0 = n_sent();
    fg_msg *m = malloc(sizeof(*m));
    fg_chain c;
    fg_chain_begin(&c);
    ike_build_nonce(&c.cw, T->gw.nr, sizeof(T->gw.nr));
    fg_chain_send(&T->gw, &c, IKE_EXCH_CREATE_CHILD_SA, false, 0, m);
    deliver(m);
    free(m);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    const ike_chain *inner = open_sent(sent(n0), IKE_EXCH_CREATE_CHILD_SA, true, 0);
    ck_assert_int_eq(fg_notify_at(inner, IKE_N_NO_ADDITIONAL_SAS, NULL), 0);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* --------------------------------------------------------- 5. COOKIE */

START_TEST(test_cookie)
{
    start();
    uint8_t cookie[24];
    for (size_t i = 0; i < sizeof(cookie); i++)
        cookie[i] = (uint8_t)(0xc0 + i);
    fg_msg *m = malloc(sizeof(*m));
    fg_init_notify(&T->gw, sent(0), IKE_N_COOKIE, cookie, sizeof(cookie), m);
    deliver(m);
    free(m);
    ck_assert_uint_eq(n_sent(), 2);
    ck_assert_uint_eq(T->n_down, 0);

    /* RFC 7296 §2.6: N(COOKIE) first, with the data as received, "and all
     * other payloads unchanged". */
    ike_message first, retry;
    fg_parse(sent(0), &first);
    fg_parse(sent(1), &retry);
    ike_notify n;
    ck_assert_int_eq(fg_notify_at(&retry.chain, IKE_N_COOKIE, &n), 0);
    ck_assert_uint_eq(n.data.len, sizeof(cookie));
    ck_assert_mem_eq(n.data.p, cookie, sizeof(cookie));
    ck_assert_uint_eq(retry.chain.n, first.chain.n + 1);
    for (size_t i = 0; i < first.chain.n; i++) {
        const ike_payload *a = &first.chain.pl[i], *b = &retry.chain.pl[i + 1];
        ck_assert_uint_eq(a->type, b->type);
        ck_assert_uint_eq(a->body.len, b->body.len);
        ck_assert_msg(memcmp(a->body.p, b->body.p, a->body.len) == 0,
                      "payload %zu (%s) changed in the COOKIE retry", i, ike_payload_name(a->type));
    }
    /* The first request is not retransmitted any more; the new one is. */
    advance(TIMEOUT_MS - 1);
    ck_assert_uint_eq(n_sent(), 2);

    /* The exchange completes; the gateway's check of our AUTH in
     * answer_init() proves the retry is RealMessage1 (§2.15). */
    answer_init();
    answer_auth(NULL);
    ck_assert_uint_eq(T->n_established, 1);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* ----------------------------------------------- 6. INVALID_KE_PAYLOAD */

static void invalid_ke(size_t req, uint16_t group)
{
    uint8_t data[2];
    buf_store_be16(data, group);
    fg_msg *m = malloc(sizeof(*m));
    fg_init_notify(&T->gw, sent(req), IKE_N_INVALID_KE_PAYLOAD, data, 2, m);
    deliver(m);
    free(m);
}

static uint16_t sent_ke_group(size_t i)
{
    ike_message m;
    fg_parse(sent(i), &m);
    ike_ke ke;
    ike_diag d;
    ck_assert_int_eq(ike_ke_parse(ike_chain_find(&m.chain, IKE_PL_KE, NULL)->body, &ke, &d), 0);
    ck_assert_uint_eq(ke.data.len, crypto_ke_public_len(ke.group));
    return ke.group;
}

START_TEST(test_invalid_ke_retry)
{
    start();
    ck_assert_uint_eq(sent_ke_group(0), KE_X25519);
    /* §1.3: the responder names the group it wants; we offered ecp256 too. */
    invalid_ke(0, KE_ECP256);
    ck_assert_uint_eq(n_sent(), 2);
    ck_assert_uint_eq(T->n_down, 0);
    ck_assert_uint_eq(sent_ke_group(1), KE_ECP256);
    answer_init();
    answer_auth(NULL);
    ck_assert_uint_eq(T->n_established, 1);
    char ike_alg[96], esp_alg[96];
    ike_sa_describe(T->sa, ike_alg, sizeof(ike_alg), esp_alg, sizeof(esp_alg));
    ck_assert_str_eq(ike_alg, "aes256gcm16-prfsha384-ecp256");
}
END_TEST

/* An INVALID_KE_PAYLOAD is not authenticated: one forged by someone on the
 * path, naming a weaker group we also offer, must neither downgrade the
 * group nor throw away the real answer to our first request, which still
 * counts (and our AUTH is then over that first request). */
START_TEST(test_forged_invalid_ke_then_real_answer)
{
    start();
    invalid_ke(0, KE_ECP256);                 /* forged */
    ck_assert_uint_eq(n_sent(), 2);
    ck_assert_uint_eq(sent_ke_group(1), KE_ECP256);
    size_t n = n_sent();
    fg_msg *m = malloc(sizeof(*m));
    fg_init_response(&T->gw, sent(0), m);     /* the gateway's answer to the first */
    deliver(m);
    free(m);
    ck_assert_uint_eq(n_sent(), n + 1);
    fg_take_auth_request(&T->gw, fg_last(&T->gw), OUR_ID); /* AUTH over request 1 */
    answer_auth(NULL);
    ck_assert_uint_eq(T->n_established, 1);
    char ike_alg[96], esp_alg[96];
    ike_sa_describe(T->sa, ike_alg, sizeof(ike_alg), esp_alg, sizeof(esp_alg));
    ck_assert_str_eq(ike_alg, "aes256gcm16-prfsha384-x25519");
}
END_TEST

START_TEST(test_invalid_ke_twice)
{
    start();
    invalid_ke(0, KE_ECP256);
    ck_assert_uint_eq(n_sent(), 2);
    invalid_ke(1, KE_X25519); /* offered, but we already followed one hint */
    wait_out_init_error_grace();
    assert_down(M2MVPN_E_NO_PROPOSAL);
    ck_assert_str_eq(T->down_detail, "gateway " GW_500 " refused our key exchange ecp256 and asks for "
                                     "x25519 (INVALID_KE_PAYLOAD again after one retry)");
    ck_assert_uint_eq(n_sent(), 2);
    assert_quiet_from_now();
}
END_TEST

START_TEST(test_invalid_ke_same_group)
{
    start();
    invalid_ke(0, KE_X25519); /* the group we sent: nothing to retry with */
    wait_out_init_error_grace();
    assert_down(M2MVPN_E_NO_PROPOSAL);
    ck_assert_str_eq(T->down_detail, "gateway " GW_500 " refused our key exchange x25519 and asks for "
                                     "x25519 (INVALID_KE_PAYLOAD for the group we sent)");
    ck_assert_uint_eq(n_sent(), 1);
    assert_quiet_from_now();
}
END_TEST

START_TEST(test_invalid_ke_not_offered)
{
    start();
    invalid_ke(0, KE_MODP2048);
    wait_out_init_error_grace();
    assert_down(M2MVPN_E_NO_PROPOSAL);
    ck_assert_str_eq(T->down_detail,
                     "gateway " GW_500 " wants key exchange modp2048, which the profile does not offer");
    ck_assert_uint_eq(n_sent(), 1);
    assert_quiet_from_now();
}
END_TEST

/* ------------------------------------------------ 7. NO_PROPOSAL_CHOSEN */

START_TEST(test_no_proposal_chosen)
{
    start();
    fg_msg *m = malloc(sizeof(*m));
    fg_init_notify(&T->gw, sent(0), IKE_N_NO_PROPOSAL_CHOSEN, NULL, 0, m);
    deliver(m);
    free(m);
    wait_out_init_error_grace();
    assert_down(M2MVPN_E_NO_PROPOSAL);
    assert_detail_has(GW_500);
    assert_detail_has(OUR_PROPOSAL); /* the gateway does not say what it wants (§2.7) */
    ck_assert_uint_eq(n_sent(), 1);
    assert_quiet_from_now();
}
END_TEST

/* A forged NO_PROPOSAL_CHOSEN (anyone on the path can send one: nothing
 * authenticates IKE_SA_INIT) does not end the attempt when the real answer
 * follows within the grace period. */
START_TEST(test_forged_init_error_then_real_answer)
{
    start();
    fg_msg *m = malloc(sizeof(*m));
    fg_init_notify(&T->gw, sent(0), IKE_N_NO_PROPOSAL_CHOSEN, NULL, 0, m);
    deliver(m);
    free(m);
    advance(IKE_INIT_ERROR_GRACE_MS / 2);
    ck_assert_uint_eq(T->n_down, 0);
    answer_init();
    answer_auth(NULL);
    ck_assert_uint_eq(T->n_established, 1);
    ck_assert_uint_eq(T->n_down, 0);
    advance(IKE_INIT_ERROR_GRACE_MS); /* the grace timer must not fire any more */
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* An IKE_SA_INIT answer (nothing in it authenticated) counts only from
 * the gateway's port we sent the request to, on our port-500 socket: the
 * same answer, valid as it is, on port 4500 (the datapath's socket, open
 * to any sender) or from another sender is ignored, and so is an error
 * notify there (it would start the grace, §2.21.1); the real one then
 * sets the SA up. */
START_TEST(test_init_answer_only_from_gateway_port_500)
{
    start();
    fg_msg *err = malloc(sizeof(*err)), *m = malloc(sizeof(*m));
    fg_init_notify(&T->gw, sent(0), IKE_N_NO_PROPOSAL_CHOSEN, NULL, 0, err);
    fg_init_response(&T->gw, sent(0), m);
    struct sockaddr_storage gw500, other500, other4500;
    socklen_t gw500_len, other500_len, other4500_len;
    set_addr(&gw500, &gw500_len, "198.51.100.1", 500);
    set_addr(&other500, &other500_len, "198.51.100.66", 500);
    set_addr(&other4500, &other4500_len, "198.51.100.66", 4500);
    /* On port 4500 (sender unknown, or another one). */
    ike_sa_input(T->sa, err->p, err->len, true);
    ike_sa_input(T->sa, m->p, m->len, true);
    ike_sa_input_from(T->sa, m->p, m->len, true, (const struct sockaddr *)&other4500, other4500_len);
    ck_assert_uint_eq(n_sent(), 1);
    /* On port 500 from another sender. */
    ike_sa_input_from(T->sa, m->p, m->len, false, (const struct sockaddr *)&other500, other500_len);
    ck_assert_uint_eq(n_sent(), 1);
    advance(IKE_INIT_ERROR_GRACE_MS); /* no grace ran out: retransmitted */
    ck_assert_uint_eq(T->n_down, 0);
    ck_assert_uint_eq(n_sent(), 2);
    assert_same_bytes(sent(1), sent(0));
    ike_sa_input_from(T->sa, m->p, m->len, false, (const struct sockaddr *)&gw500, gw500_len);
    ck_assert_uint_eq(n_sent(), 3);
    fg_take_auth_request(&T->gw, sent(2), OUR_ID);
    answer_auth(NULL);
    ck_assert_uint_eq(T->n_established, 1);
    ck_assert_uint_eq(T->n_down, 0);
    free(err);
    free(m);
}
END_TEST

/* ------------------------------- 7b. forged IKE_SA_INIT answers (issue 8) */

/*
 * Anyone who sees our IKE_SA_INIT request (SPIi and message ID travel in the
 * clear) can answer it first. Nothing in the answer is authenticated, so a
 * malformed or unacceptable one must neither end the attempt nor be kept:
 * the real answer that follows is accepted. Each case is one forgery.
 */
typedef struct forged_tr {
    uint8_t type;
    uint16_t id;
    uint8_t attrs[8];       /* raw attributes */
    size_t attrs_len;
} forged_tr;

#define KL(bits) { 0x80, 14, (uint8_t)((bits) >> 8), (uint8_t)(bits) }, 4 /* TV Key Length */

typedef struct forgery {
    const char *name;
    const char *offer;      /* our IKE proposal, NULL: the profile's */
    uint8_t number;         /* proposal number; 0: 1 */
    forged_tr tr[6];
    size_t n_tr;
    bool truncate_sa;       /* SA payload cut inside its last transform */
    bool no_ke;
    bool zero_ke;           /* an X25519 public value of all zeros */
    bool no_natd;
    const char *why;        /* in the detail when no valid answer follows */
    bool hash_identity;     /* SIGNATURE_HASH_ALGORITHMS with Identity (RFC 8420) */
} forgery;

#define GCM256 { IKE_TT_ENCR, ENCR_AES_GCM_16, KL(256) }
#define P384 { IKE_TT_PRF, PRF_HMAC_SHA2_384, { 0 }, 0 }
#define X25519 { IKE_TT_KE, KE_X25519, { 0 }, 0 }

static const forgery forgeries[] = {
    { "chacha20 key length 128", "chacha20poly1305-prfsha384-x25519", 0,
      { { IKE_TT_ENCR, ENCR_CHACHA20_POLY1305, KL(128) }, P384, X25519 }, 3,
      false, false, false, false, "did not offer", false },
    { "aes-gcm key length 128 (256 offered)", NULL, 0,
      { { IKE_TT_ENCR, ENCR_AES_GCM_16, KL(128) }, P384, X25519 }, 3, false, false, false, false,
      "did not offer", false },
    { "aes-gcm without key length", NULL, 0,
      { { IKE_TT_ENCR, ENCR_AES_GCM_16, { 0 }, 0 }, P384, X25519 }, 3, false, false, false, false,
      "did not offer", false },
    { "unknown attribute", NULL, 0,
      { { IKE_TT_ENCR, ENCR_AES_GCM_16, { 0x80, 14, 1, 0, 0x80, 99, 0, 1 }, 8 }, P384, X25519 }, 3,
      false, false, false, false, "unknown attribute", false },
    { "key length twice", NULL, 0,
      { { IKE_TT_ENCR, ENCR_AES_GCM_16, { 0x80, 14, 1, 0, 0x80, 14, 1, 0 }, 8 }, P384, X25519 }, 3,
      false, false, false, false, "unknown attribute", false },
    { "prf not offered", NULL, 0,
      { GCM256, { IKE_TT_PRF, PRF_HMAC_SHA2_256, { 0 }, 0 }, X25519 }, 3, false, false, false, false,
      "did not offer", false },
    { "esn in an IKE proposal", NULL, 0,
      { GCM256, P384, X25519, { IKE_TT_ESN, 0, { 0 }, 0 } }, 4, false, false, false, false,
      "did not offer", false },
    { "two encryption transforms", NULL, 0,
      { GCM256, GCM256, P384, X25519 }, 4, false, false, false, false, "more than one", false },
    { "proposal number we did not send", NULL, 2,
      { GCM256, P384, X25519 }, 3, false, false, false, false, "did not offer", false },
    { "truncated SA payload", NULL, 0,
      { GCM256, P384, X25519 }, 3, true, false, false, false, "malformed", false },
    { "no KE payload", NULL, 0,
      { GCM256, P384, X25519 }, 3, false, true, false, false, "lacks SA, KE", false },
    { "invalid key exchange value", NULL, 0,
      { GCM256, P384, X25519 }, 3, false, false, true, false, "invalid key exchange value", false },
    { "no NAT detection", NULL, 0,
      { GCM256, P384, X25519 }, 3, false, false, false, true, "NAT traversal", false },
};

/* Replace the profile's IKE proposal (the SA borrows the profile). */
static void offer_ike(const char *s)
{
    char err[128];
    proposal *p = &T->set->items[0].ike.proposals[0];
    ck_assert_msg(proposal_parse(s, PROPOSAL_IKE, p, err, sizeof(err)) == 0, "%s", err);
    T->set->items[0].ike.n_proposals = 1;
}

/* The forger's answer to our request `req`: its own SPIr and key pair. */
static void forge_init(const forgery *f, const fg_dgram *req, fg_msg *out)
{
    ike_message m;
    fg_parse(req, &m);
    uint8_t sa[128];
    size_t n = 8;
    for (size_t i = 0; i < f->n_tr; i++) {
        const forged_tr *t = &f->tr[i];
        size_t len = 8 + t->attrs_len;
        sa[n] = i + 1 == f->n_tr ? 0 : 3;
        sa[n + 1] = 0;
        buf_store_be16(sa + n + 2, (uint16_t)len);
        sa[n + 4] = t->type;
        sa[n + 5] = 0;
        buf_store_be16(sa + n + 6, t->id);
        memcpy(sa + n + 8, t->attrs, t->attrs_len);
        n += len;
    }
    sa[0] = 0;
    sa[1] = 0;
    buf_store_be16(sa + 2, (uint16_t)n);
    sa[4] = f->number ? f->number : 1;
    sa[5] = IKE_PROTO_IKE;
    sa[6] = 0;
    sa[7] = (uint8_t)f->n_tr;
    if (f->truncate_sa) {
        n -= 2; /* the proposal's length now runs past the payload */
    }

    ike_header h;
    memset(&h, 0, sizeof(h));
    h.spi_i = m.hdr.spi_i;
    h.spi_r = 0xf0f1f2f3f4f5f6f7ull;
    h.exchange = IKE_EXCH_IKE_SA_INIT;
    h.flags = IKE_FLAG_RESPONSE;
    buf_writer w;
    buf_writer_init(&w, out->p, sizeof(out->p));
    ike_chain_writer cw;
    ike_message_begin(&w, &h, &cw);
    ike_build_raw(&cw, IKE_PL_SA, false, sa, n);
    if (!f->no_ke) {
        crypto_ke *ke = NULL;
        ck_assert_int_eq(crypto_ke_new(KE_X25519, &ke), 0);
        uint8_t pub[CRYPTO_MAX_KE_LEN];
        size_t pub_len = 0;
        ck_assert_int_eq(crypto_ke_public(ke, pub, sizeof(pub), &pub_len), 0);
        crypto_ke_free(ke);
        if (f->zero_ke)
            memset(pub, 0, pub_len);
        ike_build_ke(&cw, KE_X25519, pub, pub_len);
    }
    uint8_t nonce[32];
    memset(nonce, 0x77, sizeof(nonce));
    ike_build_nonce(&cw, nonce, sizeof(nonce));
    if (!f->no_natd) {
        uint8_t natd[20];
        memset(natd, 0x66, sizeof(natd));
        ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_NAT_DETECTION_SOURCE_IP, NULL, 0, natd, sizeof(natd));
        ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_NAT_DETECTION_DESTINATION_IP, NULL, 0, natd, sizeof(natd));
    }
    if (f->hash_identity) {
        uint8_t hashes[4];
        buf_store_be16(hashes, PKI_HASH_SHA2_256);
        buf_store_be16(hashes + 2, PKI_HASH_IDENTITY);
        ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_SIGNATURE_HASH_ALGORITHMS, NULL, 0, hashes, sizeof(hashes));
    }
    ck_assert_int_eq(ike_message_end(&cw), 0);
    out->len = buf_writer_len(&w);
}

/* The forgery first, the real gateway's answer second: established. */
START_TEST(test_forged_init_then_real_answer)
{
    const forgery *f = &forgeries[_i];
    if (f->offer)
        offer_ike(f->offer);
    start();
    fg_msg *m = malloc(sizeof(*m));
    forge_init(f, sent(0), m);
    deliver(m);
    deliver(m); /* twice: the first bad answer counts, no more */
    free(m);
    ck_assert_msg(T->n_down == 0, "%s: on_down(\"%s\")", f->name, T->down_detail);
    ck_assert_uint_eq(n_sent(), 1); /* nothing kept, no IKE_AUTH with the forger's keys */
    advance(IKE_INIT_ERROR_GRACE_MS / 2);
    ck_assert_uint_eq(T->n_down, 0);
    answer_init();
    answer_auth(NULL);
    ck_assert_msg(T->n_established == 1, "%s: not established", f->name);
    ck_assert_uint_eq(T->n_down, 0);
    advance(IKE_INIT_ERROR_GRACE_MS); /* the grace timer is gone */
    ck_assert_uint_eq(T->n_down, 0);
    if (f->offer) {
        char ike_alg[96], esp_alg[96];
        ike_sa_describe(T->sa, ike_alg, sizeof(ike_alg), esp_alg, sizeof(esp_alg));
        ck_assert_str_eq(ike_alg, "chacha20poly1305-prfsha384-x25519");
    }
}
END_TEST

/* The forgery and no valid answer: the attempt fails after the grace period
 * with the forgery's reason, as the gateway's fault (the supervisor retries). */
START_TEST(test_forged_init_alone)
{
    const forgery *f = &forgeries[_i];
    if (f->offer)
        offer_ike(f->offer);
    start();
    fg_msg *m = malloc(sizeof(*m));
    forge_init(f, sent(0), m);
    deliver(m);
    free(m);
    wait_out_init_error_grace();
    ck_assert_uint_eq(T->n_down, 1);
    ck_assert_msg(T->down_err == M2MVPN_E_PROTOCOL, "%s: on_down(%s, \"%s\")", f->name,
                  m2mvpn_error_name(T->down_err), T->down_detail);
    ck_assert_msg(T->down_fault == IKE_FAULT_PEER, "%s: a local fault", f->name);
    assert_detail_has(f->why);
    ck_assert_uint_eq(n_sent(), 1);
    assert_quiet_from_now();
}
END_TEST

/* Forged fragments interleaved with the real fragmented IKE_AUTH response:
 * the same message ID in another exchange (what an injector sees of the
 * real one), a broken ICV, another message ID. None of them may throw away
 * the fragments already received. */
START_TEST(test_forged_fragments_interleaved)
{
    start();
    answer_init();
    fg_msg *f = malloc(16 * sizeof(*f)), *forged = malloc(3 * sizeof(*forged));
    size_t n = fg_auth_response_frags(&T->gw, 120, f, 16);
    ck_assert_uint_ge(n, 3);
    forged[0] = f[1];
    forged[0].p[18] = IKE_EXCH_INFORMATIONAL;  /* exchange type, header byte 18 */
    forged[1] = f[1];
    forged[1].p[forged[1].len - 1] ^= 0x01;     /* ICV */
    forged[2] = f[1];
    forged[2].p[23] ^= 0x07;                    /* message ID (low byte) */
    for (size_t i = 0; i < n; i++) {
        deliver(&f[i]);
        if (i + 1 < n)
            for (size_t k = 0; k < 3; k++)
                deliver(&forged[k]);
    }
    ck_assert_uint_eq(T->n_established, 1);
    ck_assert_uint_eq(T->n_down, 0);
    ck_assert_uint_eq(T->child.spi_out, 0xc1d2e3f4);
    free(f);
    free(forged);
}
END_TEST

/*
 * An Ed25519 key signs only with the "Identity" hash the gateway announces
 * (RFC 8420). A forged answer that leaves SIGNATURE_HASH_ALGORITHMS out is
 * otherwise valid (the forger has its own key pair), so it is unacceptable
 * for what it lacks: the real answer that follows is used; alone, it fails
 * as the gateway's fault (NOTSUPP, retried), not as our key's.
 */
typedef struct ed25519_setup {
    char dir[64], cert[96], key[96];
    cred_provider *cred;
} ed25519_setup;

static void write_ed25519_cred(ed25519_setup *e)
{
    snprintf(e->dir, sizeof(e->dir), "/tmp/m2mvpn-ike-sa-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(e->dir));
    snprintf(e->cert, sizeof(e->cert), "%s/cert.pem", e->dir);
    snprintf(e->key, sizeof(e->key), "%s/key.pem", e->dir);
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    X509 *x = X509_new();
    ck_assert(k && x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)OUR_ID, -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509_set_pubkey(x, k);
    ck_assert_int_gt(X509_sign(x, k, NULL), 0);
    FILE *f = fopen(e->cert, "w");
    ck_assert_ptr_nonnull(f);
    PEM_write_X509(f, x);
    fclose(f);
    f = fopen(e->key, "w");
    ck_assert_ptr_nonnull(f);
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(k);
    char err[256];
    ck_assert_msg(cred_file_open(e->cert, e->key, NULL, 0, &e->cred, err, sizeof(err)) == 0, "%s", err);
}

static void remove_ed25519_cred(ed25519_setup *e)
{
    cred_free(e->cred);
    unlink(e->cert);
    unlink(e->key);
    rmdir(e->dir);
}

/* Replace the harness's SA by one that authenticates with `cred`. */
static void use_cert_sa(cred_provider *cred)
{
    ike_sa_free(T->sa);
    T->set->items[0].auth = PROFILE_AUTH_CERT;
    ike_config cfg = { .prof = &T->set->items[0], .cred = cred };
    set_addr(&cfg.remote, &cfg.remote_len, "198.51.100.1", 500);
    set_addr(&cfg.local, &cfg.local_len, "198.51.100.2", 500);
    ike_hooks hooks = { .arg = T, .send = hook_send, .on_established = hook_established, .on_down = hook_down,
                        .on_child_rekeyed = hook_rekeyed, .on_child_deleted = hook_child_deleted,
                        .on_ike_rekeyed = hook_ike_rekeyed, .on_addresses_updated = hook_addresses_updated };
    char err[256];
    ck_assert_msg(ike_sa_new(&T->loop, &T->log, &cfg, &hooks, &T->sa, err, sizeof(err)) == 0, "%s", err);
}

static const forgery no_hash_notify = {
    "no SIGNATURE_HASH_ALGORITHMS", NULL, 0, { GCM256, P384, X25519 }, 3,
    false, false, false, false, "signature hash", false,
};

START_TEST(test_forged_init_without_hash_notify_ed25519)
{
    ed25519_setup e;
    write_ed25519_cred(&e);
    use_cert_sa(e.cred);
    start();
    fg_msg *m = malloc(sizeof(*m));
    forge_init(&no_hash_notify, sent(0), m);
    deliver(m);
    ck_assert_uint_eq(T->n_down, 0);
    ck_assert_uint_eq(n_sent(), 1); /* not taken: no IKE_AUTH */
    /* A valid answer that announces Identity: taken, IKE_AUTH signed with
     * Ed25519 (method 14, RFC 7427) goes out. */
    forgery with_hash = no_hash_notify;
    with_hash.hash_identity = true;
    forge_init(&with_hash, sent(0), m);
    deliver(m);
    free(m);
    ck_assert_msg(T->n_down == 0, "on_down(\"%s\")", T->down_detail);
    ck_assert_uint_eq(n_sent(), 2);
    ck_assert(sent(1)->natt);
    advance(IKE_INIT_ERROR_GRACE_MS); /* the grace timer is gone */
    ck_assert_uint_eq(T->n_down, 0);
    remove_ed25519_cred(&e);
}
END_TEST

START_TEST(test_forged_init_without_hash_notify_alone)
{
    ed25519_setup e;
    write_ed25519_cred(&e);
    use_cert_sa(e.cred);
    start();
    fg_msg *m = malloc(sizeof(*m));
    forge_init(&no_hash_notify, sent(0), m);
    deliver(m);
    free(m);
    advance(IKE_INIT_ERROR_GRACE_MS);
    assert_down(M2MVPN_E_NOTSUPP);
    ck_assert_msg(T->down_fault == IKE_FAULT_PEER, "a local fault: \"%s\"", T->down_detail);
    assert_detail_has("signature hash");
    assert_detail_has("ed25519");
    remove_ed25519_cred(&e);
}
END_TEST

/* ------------------------------------------------- 8. authentication */

START_TEST(test_auth_failed_notify)
{
    start();
    answer_init();
    /* §2.21.2: the responder refuses our AUTH in the IKE_AUTH response. */
    fg_msg *m = malloc(sizeof(*m));
    fg_notify_response(&T->gw, IKE_EXCH_IKE_AUTH, 1, IKE_N_AUTHENTICATION_FAILED, m);
    deliver(m);
    free(m);
    assert_down(M2MVPN_E_AUTH_LOCAL);
    assert_detail_has("AUTHENTICATION_FAILED");
    assert_detail_has(OUR_ID);
    ck_assert_uint_eq(T->n_established, 0);
    ck_assert_uint_eq(n_sent(), 2); /* the gateway has no SA left to delete */
    assert_quiet_from_now();
}
END_TEST

START_TEST(test_auth_peer_wrong_psk)
{
    start();
    answer_init();
    fg_auth_opts o = { .psk = "not the profile's psk" };
    answer_auth(&o);
    assert_down(M2MVPN_E_AUTH_PEER);
    assert_detail_has(GW_4500);
    assert_detail_has("pre-shared key");
    ck_assert_uint_eq(T->n_established, 0);
    /* §2.21.2: the initiator reports it in a separate INFORMATIONAL. */
    ck_assert_uint_eq(n_sent(), 3);
    const ike_chain *inner = open_sent(sent(2), IKE_EXCH_INFORMATIONAL, false, 2);
    ck_assert_int_eq(fg_notify_at(inner, IKE_N_AUTHENTICATION_FAILED, NULL), 0);
    ck_assert(fg_has_ike_delete(inner));
    assert_quiet_from_now();
}
END_TEST

/* With a PSK the AUTH proves only that the gateway knows the key; the IDr
 * check is what pins which gateway it is. strongSwan as responder always
 * answers with the IDr we sent (or refuses), so this is played here: a
 * gateway that knows the PSK but presents another identity. */
START_TEST(test_auth_peer_other_identity)
{
    T->gw.id = "other-gw.m2m.test";
    start();
    answer_init();
    answer_auth(NULL); /* the right PSK */
    assert_down(M2MVPN_E_AUTH_PEER);
    assert_detail_has("gateway identified itself as 'other-gw.m2m.test', the profile expects '" GW_ID "'");
    ck_assert_uint_eq(T->n_established, 0);
    ck_assert_uint_eq(n_sent(), 3); /* AUTHENTICATION_FAILED and Delete, as for a wrong PSK */
    const ike_chain *inner = open_sent(sent(2), IKE_EXCH_INFORMATIONAL, false, 2);
    ck_assert_int_eq(fg_notify_at(inner, IKE_N_AUTHENTICATION_FAILED, NULL), 0);
    assert_quiet_from_now();
}
END_TEST

/* --------------------------------------------------- 9. TS_UNACCEPTABLE */

START_TEST(test_ts_unacceptable)
{
    start();
    answer_init();
    fg_auth_opts o = { .child_error = IKE_N_TS_UNACCEPTABLE };
    answer_auth(&o);
    assert_down(M2MVPN_E_TS_UNACCEPTABLE);
    assert_detail_has(GW_4500);
    assert_detail_has("TS_UNACCEPTABLE");
    ck_assert_uint_eq(T->n_established, 0);
    /* The IKE SA stands without its CHILD SA (§1.2); we have no use for it. */
    ck_assert_uint_eq(n_sent(), 3);
    const ike_chain *inner = open_sent(sent(2), IKE_EXCH_INFORMATIONAL, false, 2);
    ck_assert(fg_has_ike_delete(inner));
    ck_assert_int_lt(fg_notify_at(inner, IKE_N_AUTHENTICATION_FAILED, NULL), 0);
    assert_quiet_from_now();
}
END_TEST

/* The gateway's selectors may only narrow ours, and each must be a prefix
 * (the datapath filters inbound packets by prefix, RFC 4301 §5.2): a range
 * it skipped, or a TSi it did not check, would let the gateway send to
 * destinations we never offered. Each refused before anything is installed. */
static void ts_range(ike_ts *t, const char *from, const char *to)
{
    memset(t, 0, sizeof(*t));
    t->type = IKE_TS_IPV4_ADDR_RANGE;
    t->port_end = 65535;
    ck_assert_int_eq(inet_pton(AF_INET, from, t->addr_start), 1);
    ck_assert_int_eq(inet_pton(AF_INET, to, t->addr_end), 1);
}

START_TEST(test_ts_answers_refused)
{
    ike_ts t;
    fg_auth_opts o = { 0 };
    const char *want = "not a prefix";
    int want_err = M2MVPN_E_TS_UNACCEPTABLE;
    switch (_i) {
    case 0: /* TSi a range, not a prefix */
        ts_range(&t, "198.18.0.7", "198.18.0.9");
        o.tsi = &t;
        break;
    case 1: /* TSr a range, not a prefix */
        ts_range(&t, "198.18.1.0", "198.18.1.2");
        o.tsr = &t;
        break;
    case 2: /* no TSi */
        o.omit_tsi = true;
        want = "without a valid TSi";
        want_err = M2MVPN_E_PROTOCOL;
        break;
    case 3: /* without a virtual IP we offer our own address: the VIP/32 the
             * fake gateway answers with lies outside it */
        T->set->items[0].tunnel.request_vip = false;
        want = "outside what we proposed";
        break;
    }
    start();
    answer_init();
    answer_auth(&o);
    assert_down(want_err);
    assert_detail_has(want);
    ck_assert_uint_eq(T->n_established, 0);
}
END_TEST

/* ------------------------------------------------- IPv6 inside (CP, TS) */

/* The default profile (a full IPv4 tunnel, so IPv6 too: profile.h) asks for
 * a virtual IP and DNS of each family and proposes TSi 0.0.0.0/0 and ::/0. */
START_TEST(test_dual_stack_request)
{
    start();
    answer_init();
    ike_diag d;
    ike_cp cp;
    const ike_payload *cp_pl = ike_chain_find(&T->gw.rq_inner, IKE_PL_CP, NULL);
    ck_assert_ptr_nonnull(cp_pl);
    ck_assert_int_eq(ike_cp_parse(cp_pl->body, &cp, &d), 0);
    static const uint16_t want[] = { IKE_CP_INTERNAL_IP4_ADDRESS, IKE_CP_INTERNAL_IP6_ADDRESS,
                                     IKE_CP_INTERNAL_IP4_DNS, IKE_CP_INTERNAL_IP6_DNS };
    ck_assert_uint_eq(cp.n, 4);
    for (size_t i = 0; i < 4; i++) {
        ck_assert_uint_eq(cp.attr[i].type, want[i]);
        ck_assert_uint_eq(cp.attr[i].value.len, 0);
    }
    for (int k = 0; k < 2; k++) {
        ike_ts_list l;
        const ike_payload *pl = ike_chain_find(&T->gw.rq_inner, k ? IKE_PL_TSR : IKE_PL_TSI, NULL);
        ck_assert_ptr_nonnull(pl);
        ck_assert_int_eq(ike_ts_parse(pl->body, &l, &d), 0);
        ck_assert_uint_eq(l.n, 2);
        ck_assert_uint_eq(l.ts[0].type, IKE_TS_IPV4_ADDR_RANGE);
        ck_assert_uint_eq(l.ts[1].type, IKE_TS_IPV6_ADDR_RANGE);
        uint8_t addr[16];
        unsigned plen;
        ck_assert_int_eq(ike_ts_to_prefix(&l.ts[1], addr, &plen), 0);
        ck_assert_uint_eq(plen, 0);
    }
}
END_TEST

/* An IPv6-only profile asks for IPv6 only (no IPv4 attributes or TSi). */
START_TEST(test_ipv6_only_request)
{
    profile *p = &T->set->items[0];
    memset(&p->tunnel.remote_ts[0], 0, sizeof(p->tunnel.remote_ts[0]));
    p->tunnel.remote_ts[0].family = AF_INET6;
    inet_pton(AF_INET6, "2001:db8:18::", p->tunnel.remote_ts[0].addr);
    p->tunnel.remote_ts[0].prefix_len = 48;
    p->tunnel.n_remote_ts = 1;
    start();
    answer_init();
    ike_diag d;
    ike_cp cp;
    ck_assert_int_eq(ike_cp_parse(ike_chain_find(&T->gw.rq_inner, IKE_PL_CP, NULL)->body, &cp, &d), 0);
    ck_assert_uint_eq(cp.n, 2);
    ck_assert_uint_eq(cp.attr[0].type, IKE_CP_INTERNAL_IP6_ADDRESS);
    ck_assert_uint_eq(cp.attr[1].type, IKE_CP_INTERNAL_IP6_DNS);
    ike_ts_list l;
    ck_assert_int_eq(ike_ts_parse(ike_chain_find(&T->gw.rq_inner, IKE_PL_TSI, NULL)->body, &l, &d), 0);
    ck_assert_uint_eq(l.n, 1);
    ck_assert_uint_eq(l.ts[0].type, IKE_TS_IPV6_ADDR_RANGE);
    /* A gateway that assigns only an IPv6 address is enough. */
    fg_auth_opts o = { .ip6_only = true, .ip6_prefix_len = 128 };
    ike_ts tsr;
    uint8_t net[16];
    inet_pton(AF_INET6, "2001:db8:18::", net);
    ck_assert_int_eq(ike_ts_from_prefix(net, 16, 64, 0, 0, 65535, &tsr), 0);
    o.tsr = &tsr;
    answer_auth(&o);
    ck_assert_uint_eq(T->n_established, 1);
    ck_assert(!T->child.has_vip);
    ck_assert(T->child.has_vip6);
    ck_assert_uint_eq(T->child.n_remote_ts, 1);
    ck_assert_int_eq(T->child.remote_ts[0].family, AF_INET6);
    ck_assert_uint_eq(T->child.remote_ts[0].prefix_len, 64);
}
END_TEST

/* The reply's INTERNAL_IP6_ADDRESS (address and prefix length) and
 * INTERNAL_IP6_DNS reach the result, next to the IPv4 ones; TSi/TSr of
 * both families are kept. A prefix length of 0 or above 128 is no usable
 * assignment (ignored). */
START_TEST(test_dual_stack_reply)
{
    static const uint8_t prefix_lens[] = { 128, 64, 0, 129 };
    uint8_t plen = prefix_lens[_i];
    fg_auth_opts o = { .ipv6 = true, .ip6_prefix_len = plen };
    start();
    answer_init();
    answer_auth(&o);
    ck_assert_uint_eq(T->n_established, 1);
    const ike_child_result *c = &T->child;
    ck_assert(c->has_vip);
    uint8_t vip6[16], dns6[16];
    inet_pton(AF_INET6, "2001:db8:1a::7", vip6);
    inet_pton(AF_INET6, "2001:db8:18::53", dns6);
    ck_assert_int_eq(c->has_vip6, plen >= 1 && plen <= 128);
    if (c->has_vip6) {
        ck_assert_mem_eq(c->vip6, vip6, 16);
        ck_assert_uint_eq(c->vip6_prefix_len, plen);
    }
    ck_assert_uint_eq(c->n_dns, 2);
    ck_assert_uint_eq(c->n_dns6, 1);
    ck_assert_mem_eq(c->dns6[0], dns6, 16);
    ck_assert_uint_eq(c->n_remote_ts, 2);
    ck_assert_int_eq(c->remote_ts[1].family, AF_INET6);
    ck_assert_uint_eq(c->n_local_ts, 2);
    ck_assert_int_eq(c->local_ts[1].family, AF_INET6);
    ck_assert_uint_eq(c->local_ts[1].prefix_len, 128);
    ck_assert_mem_eq(c->local_ts[1].addr, vip6, 16);
}
END_TEST

/* ---------------------------------- 10. unknown critical inner payload */

START_TEST(test_unsupported_critical_payload)
{
    establish();
    size_t n0 = n_sent();
    fg_msg *m = malloc(sizeof(*m));
    fg_chain c;
    const uint8_t junk[3] = { 1, 2, 3 };

    /* Unknown, not critical: skipped (§2.5); the empty request gets an
     * empty answer. */
    fg_chain_begin(&c);
    ike_build_raw(&c.cw, 200, false, junk, sizeof(junk));
    fg_chain_send(&T->gw, &c, IKE_EXCH_INFORMATIONAL, false, 0, m);
    deliver(m);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    ck_assert_uint_eq(open_sent(sent(n0), IKE_EXCH_INFORMATIONAL, true, 0)->n, 0);

    /* Unknown and critical: refused with UNSUPPORTED_CRITICAL_PAYLOAD whose
     * data is the payload type (§2.5, §3.10.1). */
    fg_chain_begin(&c);
    ike_build_raw(&c.cw, 201, true, junk, sizeof(junk));
    fg_chain_send(&T->gw, &c, IKE_EXCH_INFORMATIONAL, false, 1, m);
    deliver(m);
    free(m);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    const ike_chain *inner = open_sent(sent(n0 + 1), IKE_EXCH_INFORMATIONAL, true, 1);
    ike_notify n;
    ck_assert_int_eq(fg_notify_at(inner, IKE_N_UNSUPPORTED_CRITICAL_PAYLOAD, &n), 0);
    ck_assert_uint_eq(n.data.len, 1);
    ck_assert_uint_eq(n.data.p[0], 201);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* ------------------------------------------- 11. tampered IKE_AUTH response */

START_TEST(test_tampered_response_dropped)
{
    start();
    answer_init();
    fg_msg *good = malloc(sizeof(*good)), *bad = malloc(sizeof(*bad));
    fg_auth_response(&T->gw, NULL, good);
    *bad = *good;
    /* One bit of ciphertext: after header (28), SK header (4) and IV (8). */
    bad->p[IKE_HEADER_LEN + 4 + T->gw.sk_out.iv_len + 5] ^= 0x10;
    deliver(bad);
    /* §2.21.2 / §3.14: fails its integrity check, so it is dropped without
     * an answer and without giving up. */
    ck_assert_uint_eq(T->n_down, 0);
    ck_assert_uint_eq(T->n_established, 0);
    ck_assert_uint_eq(n_sent(), 2);
    advance(TIMEOUT_MS); /* still waiting: the request goes out again */
    ck_assert_uint_eq(n_sent(), 3);
    assert_same_bytes(sent(2), sent(1));
    deliver(good);
    ck_assert_uint_eq(T->n_established, 1);
    ck_assert_uint_eq(T->n_down, 0);
    free(good);
    free(bad);
}
END_TEST

/* ------------------------------------- fragmented IKE_AUTH response */

START_TEST(test_fragmented_auth_response)
{
    start();
    answer_init();
    fg_msg *f = malloc(16 * sizeof(*f)), *bad = malloc(sizeof(*bad));
    size_t n = fg_auth_response_frags(&T->gw, 120, f, 16);
    ck_assert_uint_ge(n, 3);
    *bad = f[0];
    bad->p[bad->len - 1] ^= 0x01; /* ICV of fragment 1 */
    /* RFC 7383 §2.6: fragments in any order, duplicates ignored, each one
     * authenticated on its own before it counts. */
    for (size_t i = n; i-- > 1;) {
        deliver(&f[i]);
        deliver(&f[i]);
        deliver(bad);
    }
    ck_assert_uint_eq(T->n_established, 0);
    ck_assert_uint_eq(T->n_down, 0);
    deliver(&f[0]);
    ck_assert_uint_eq(T->n_established, 1);
    ck_assert_uint_eq(T->n_down, 0);
    ck_assert_uint_eq(T->child.spi_out, 0xc1d2e3f4);
    ck_assert(T->child.has_vip);
    ck_assert_uint_eq(n_sent(), 2);
    /* Late copies of the fragments change nothing. */
    for (size_t i = 0; i < n; i++)
        deliver(&f[i]);
    ck_assert_uint_eq(T->n_established, 1);
    ck_assert_uint_eq(n_sent(), 2);
    free(f);
    free(bad);
}
END_TEST

/* ------------------------------------------- our own liveness checks */

/* DPD every 10 s of silence (RFC 7296 §2.4): an empty INFORMATIONAL request. */
static void enable_dpd(void)
{
    T->set->items[0].ike.dpd_s = 10; /* the SA borrows the profile */
}

START_TEST(test_dpd_answered_then_close)
{
    enable_dpd();
    establish();
    size_t n0 = n_sent();
    advance(10000 - 1);
    ck_assert_uint_eq(n_sent(), n0);
    advance(1);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    ck_assert_uint_eq(open_sent(sent(n0), IKE_EXCH_INFORMATIONAL, false, 2)->n, 0);
    fg_msg *m = malloc(sizeof(*m));
    fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, 2, 0, m);
    deliver(m);
    free(m);
    /* The next check uses the next message ID (§2.2). */
    advance(10000);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    ck_assert_uint_eq(open_sent(sent(n0 + 1), IKE_EXCH_INFORMATIONAL, false, 3)->n, 0);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* §2.4: only cryptographically protected messages show the gateway alive.
 * A forged datagram with the right SPIs (they travel in the clear) must not
 * postpone the liveness check. */
START_TEST(test_dpd_not_postponed_by_forgery)
{
    enable_dpd();
    establish();
    size_t n0 = n_sent();
    fg_msg *m = malloc(sizeof(*m));
    fg_chain c;
    fg_chain_begin(&c);
    fg_chain_send(&T->gw, &c, IKE_EXCH_INFORMATIONAL, false, 0, m);
    m->p[m->len - 1] ^= 0x01; /* ICV */
    advance(5000);
    deliver(m);
    free(m);
    ck_assert_uint_eq(n_sent(), n0); /* not answered */
    advance(5000);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    ck_assert_uint_eq(open_sent(sent(n0), IKE_EXCH_INFORMATIONAL, false, 2)->n, 0);
}
END_TEST

/*
 * ike_sa_close() while our liveness check (message ID 2) is unanswered: the
 * check is abandoned and the Delete gets the next ID, 3. With the same ID a
 * gateway that got the check would take the Delete for its retransmission
 * and answer with the cached empty response (§2.1) without deleting
 * anything, and that late answer would pass as the Delete's confirmation.
 */
START_TEST(test_close_during_dpd)
{
    enable_dpd();
    establish();
    size_t n0 = n_sent();
    advance(10000);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    ck_assert_uint_eq(open_sent(sent(n0), IKE_EXCH_INFORMATIONAL, false, 2)->n, 0);
    ike_sa_close(T->sa);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    /* The abandoned check keeps ID 2; the Delete takes the next one. */
    const ike_chain *inner = open_sent(sent(n0 + 1), IKE_EXCH_INFORMATIONAL, false, 3);
    ck_assert(fg_has_ike_delete(inner));
    /* The liveness check's late answer is not the Delete's confirmation. */
    fg_msg *m = malloc(sizeof(*m));
    fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, 2, 0, m);
    deliver(m);
    ck_assert_uint_eq(T->n_down, 0);
    fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, 3, 0, m);
    deliver(m);
    free(m);
    assert_down(0);
}
END_TEST

START_TEST(test_dpd_unanswered_times_out)
{
    enable_dpd();
    establish();
    size_t n0 = n_sent();
    advance(10000);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    expect_retransmits(n0, GW_4500);
}
END_TEST


/* An authentic response with our request's message ID but of another
 * exchange type (§3.1) answers nothing: our liveness check (INFORMATIONAL)
 * stays in flight and is retransmitted; its real answer still counts. */
START_TEST(test_response_of_another_exchange_ignored)
{
    enable_dpd();
    establish();
    size_t n0 = n_sent();
    advance(10000);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    open_sent(sent(n0), IKE_EXCH_INFORMATIONAL, false, 2);
    fg_msg *m = malloc(sizeof(*m));
    fg_notify_response(&T->gw, IKE_EXCH_CREATE_CHILD_SA, 2, 0, m);
    deliver(m);
    advance(1000);
    ck_assert_uint_eq(n_sent(), n0 + 2); /* still unanswered: retransmitted */
    assert_same_bytes(sent(n0 + 1), sent(n0));
    fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, 2, 0, m);
    deliver(m);
    free(m);
    advance(2000);
    ck_assert_uint_eq(n_sent(), n0 + 2); /* answered: no more retransmissions */
    advance(8000); /* a period after the answer: the next check, next message ID */
    ck_assert_uint_eq(n_sent(), n0 + 3);
    open_sent(sent(n0 + 2), IKE_EXCH_INFORMATIONAL, false, 3);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* ------------------------------------------------------ MOBIKE (RFC 4555) */

static void establish_mobike(void)
{
    start();
    answer_init();
    fg_auth_opts o = { .mobike = true };
    answer_auth(&o);
    ck_assert_uint_eq(T->n_established, 1);
    ck_assert(ike_sa_mobike(T->sa));
}

/* The gateway's answer to our UPDATE_SA_ADDRESSES (message ID id): COOKIE2
 * as given (NULL: none) and NAT detection. */
static void answer_update(uint32_t id, const uint8_t *cookie, size_t cookie_len)
{
    static const uint8_t natd[20] = { 0x42 };
    fg_chain c;
    fg_chain_begin(&c);
    ike_build_notify(&c.cw, IKE_PROTO_NONE, IKE_N_NAT_DETECTION_SOURCE_IP, NULL, 0, natd, sizeof(natd));
    ike_build_notify(&c.cw, IKE_PROTO_NONE, IKE_N_NAT_DETECTION_DESTINATION_IP, NULL, 0, natd, sizeof(natd));
    if (cookie)
        ike_build_notify(&c.cw, IKE_PROTO_NONE, IKE_N_COOKIE2, NULL, 0, cookie, cookie_len);
    fg_msg *m = malloc(sizeof(*m));
    fg_chain_send(&T->gw, &c, IKE_EXCH_INFORMATIONAL, true, id, m);
    deliver(m);
    free(m);
}

/* Our update as the gateway reads it; its COOKIE2 into cookie (16 bytes). */
static void take_update(size_t i, uint32_t id, uint8_t cookie[16])
{
    const ike_chain *c = open_sent(sent(i), IKE_EXCH_INFORMATIONAL, false, id);
    ike_notify n;
    ck_assert_int_ge(fg_notify_at(c, IKE_N_UPDATE_SA_ADDRESSES, &n), 0);
    ck_assert_int_ge(fg_notify_at(c, IKE_N_NAT_DETECTION_SOURCE_IP, &n), 0);
    ck_assert_int_ge(fg_notify_at(c, IKE_N_NAT_DETECTION_DESTINATION_IP, &n), 0);
    ck_assert_uint_eq(n.data.len, 20);
    ck_assert_int_ge(fg_notify_at(c, IKE_N_COOKIE2, &n), 0);
    ck_assert_uint_eq(n.data.len, 16);
    memcpy(cookie, n.data.p, 16);
}

START_TEST(test_mobike_announced_and_update)
{
    establish_mobike();
    /* IKE_AUTH said MOBIKE_SUPPORTED (§4.2.1) */
    const ike_chain *auth = open_sent(sent(1), IKE_EXCH_IKE_AUTH, false, 1);
    ike_notify n;
    ck_assert_int_ge(fg_notify_at(auth, IKE_N_MOBIKE_SUPPORTED, &n), 0);
    /* the gateway's other address, from its authenticated answer */
    struct sockaddr_storage addrs[4];
    ck_assert_uint_eq(ike_sa_peer_addresses(T->sa, addrs, 4), 1);
    ck_assert_uint_eq(((struct sockaddr_in *)&addrs[0])->sin_addr.s_addr, htonl(0xc6336403));
    /* our address moved */
    struct sockaddr_storage now;
    socklen_t now_len;
    set_addr(&now, &now_len, "198.51.100.77", 4500);
    size_t n0 = n_sent();
    ck_assert_int_eq(ike_sa_update_addresses(T->sa, &now, now_len, "moved to eth1"), 0);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    uint8_t cookie[16];
    take_update(n0, 2, cookie);
    ck_assert_uint_eq(T->n_updated, 0);
    answer_update(2, cookie, sizeof(cookie));
    ck_assert_uint_eq(T->n_updated, 1);
    ck_assert_int_eq(T->updated_err, 0);
    ck_assert(T->updated_ours);
    ck_assert_msg(strstr(T->updated_detail, "moved to eth1") != NULL, "%s", T->updated_detail);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* §3.5 return routability: an answer that does not echo our COOKIE2 (or has
 * none) does not confirm the new path. */
START_TEST(test_mobike_cookie2_must_match)
{
    establish_mobike();
    struct sockaddr_storage now;
    socklen_t now_len;
    set_addr(&now, &now_len, "198.51.100.77", 4500);
    size_t n0 = n_sent();
    ck_assert_int_eq(ike_sa_update_addresses(T->sa, &now, now_len, "moved"), 0);
    uint8_t cookie[16];
    take_update(n0, 2, cookie);
    cookie[5] ^= 0x01;
    answer_update(2, cookie, sizeof(cookie));
    ck_assert_uint_eq(T->n_updated, 1);
    ck_assert_int_eq(T->updated_err, M2MVPN_E_PROTOCOL);
    ck_assert_msg(strstr(T->updated_detail, "without our COOKIE2") != NULL, "%s", T->updated_detail);
    /* none at all: the same */
    ck_assert_int_eq(ike_sa_update_addresses(T->sa, &now, now_len, "moved again"), 0);
    take_update(n0 + 1, 3, cookie);
    answer_update(3, NULL, 0);
    ck_assert_uint_eq(T->n_updated, 2);
    ck_assert_int_eq(T->updated_err, M2MVPN_E_PROTOCOL);
}
END_TEST

/* A reauthentication's IKE SA announces MOBIKE too (and no
 * INITIAL_CONTACT); when its IKE_AUTH answer lists no addresses, the
 * gateway's list from the SA it replaces is kept. */
START_TEST(test_mobike_reauth_keeps_addresses)
{
    establish_mobike();
    ike_sa *old = T->sa;
    T->sa = NULL;
    char err[256];
    ike_config cfg = { .prof = &T->set->items[0], .reauth = true, .want_vip = true, .vip = { 198, 18, 1, 7 } };
    set_addr(&cfg.remote, &cfg.remote_len, "198.51.100.1", 500);
    set_addr(&cfg.local, &cfg.local_len, "198.51.100.2", 500);
    ike_hooks hooks = { .arg = T, .send = hook_send, .on_established = hook_established, .on_down = hook_down };
    ck_assert_msg(ike_sa_new(&T->loop, &T->log, &cfg, &hooks, &T->sa, err, sizeof(err)) == 0, "%s", err);
    size_t n0 = n_sent();
    ck_assert_int_eq(ike_sa_start(T->sa), 0);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    answer_init();
    ck_assert_int_ge(fg_notify_at(&T->gw.rq_inner, IKE_N_MOBIKE_SUPPORTED, NULL), 0);
    ck_assert_int_lt(fg_notify_at(&T->gw.rq_inner, IKE_N_INITIAL_CONTACT, NULL), 0);
    fg_auth_opts o = { .mobike = true, .mobike_no_addrs = true };
    answer_auth(&o);
    ck_assert_uint_eq(T->n_established, 2);
    ck_assert(ike_sa_mobike(T->sa));
    struct sockaddr_storage addrs[4];
    ck_assert_uint_eq(ike_sa_peer_addresses(T->sa, addrs, 4), 0);
    ike_sa_mobike_inherit(T->sa, old);
    ck_assert_uint_eq(ike_sa_peer_addresses(T->sa, addrs, 4), 1);
    ck_assert_uint_eq(((struct sockaddr_in *)&addrs[0])->sin_addr.s_addr, htonl(0xc6336403));
    ike_sa_free(old);
}
END_TEST

/* Without the gateway's MOBIKE_SUPPORTED there is nothing to update. */
START_TEST(test_mobike_not_announced_by_the_gateway)
{
    establish();
    ck_assert(!ike_sa_mobike(T->sa));
    struct sockaddr_storage now;
    socklen_t now_len;
    set_addr(&now, &now_len, "198.51.100.77", 4500);
    size_t n0 = n_sent();
    ck_assert_int_eq(ike_sa_update_addresses(T->sa, &now, now_len, "moved"), M2MVPN_E_NOTSUPP);
    ck_assert_uint_eq(n_sent(), n0);
}
END_TEST

/* The gateway's address list changes only with an authenticated request:
 * a forged one (its ICV flipped) is dropped, the authentic one replaces
 * the list, NO_ADDITIONAL_ADDRESSES empties it. */
START_TEST(test_mobike_addresses_only_authenticated)
{
    establish_mobike();
    static const uint8_t evil[4] = { 198, 51, 100, 66 };
    struct sockaddr_storage addrs[4];
    fg_msg *m = malloc(sizeof(*m));
    fg_chain c;
    fg_chain_begin(&c);
    ike_build_notify(&c.cw, IKE_PROTO_NONE, IKE_N_ADDITIONAL_IP4_ADDRESS, NULL, 0, evil, 4);
    fg_chain_send(&T->gw, &c, IKE_EXCH_INFORMATIONAL, false, 0, m);
    m->p[m->len - 1] ^= 0x01; /* ICV */
    deliver(m);
    ck_assert_uint_eq(ike_sa_peer_addresses(T->sa, addrs, 4), 1);
    ck_assert_uint_eq(((struct sockaddr_in *)&addrs[0])->sin_addr.s_addr, htonl(0xc6336403));
    m->p[m->len - 1] ^= 0x01; /* the authentic one */
    deliver(m);
    ck_assert_uint_eq(ike_sa_peer_addresses(T->sa, addrs, 4), 1);
    ck_assert_uint_eq(((struct sockaddr_in *)&addrs[0])->sin_addr.s_addr, htonl(0xc6336442));
    fg_chain_begin(&c);
    ike_build_notify(&c.cw, IKE_PROTO_NONE, IKE_N_NO_ADDITIONAL_ADDRESSES, NULL, 0, NULL, 0);
    fg_chain_send(&T->gw, &c, IKE_EXCH_INFORMATIONAL, false, 1, m);
    deliver(m);
    free(m);
    ck_assert_uint_eq(ike_sa_peer_addresses(T->sa, addrs, 4), 0);
}
END_TEST

/* ADDITIONAL_IP6_ADDRESS with an IPv4-mapped or IPv4-compatible address
 * (::ffff:127.0.0.1 reaches loopback over the dual-stack socket) is
 * refused, the list kept; a plain IPv6 address is taken. */
START_TEST(test_mobike_mapped_addresses_refused)
{
    establish_mobike();
    static const uint8_t bad[][16] = {
        { [10] = 0xff, [11] = 0xff, [12] = 127, [15] = 1 },        /* ::ffff:127.0.0.1 */
        { [10] = 0xff, [11] = 0xff, [12] = 198, 51, 100, 66 },     /* ::ffff:198.51.100.66 */
        { [12] = 198, 51, 100, 66 },                               /* ::198.51.100.66 */
    };
    static const uint8_t good[16] = { 0x20, 0x01, 0x0d, 0xb8, [15] = 3 };
    struct sockaddr_storage addrs[4];
    fg_msg *m = malloc(sizeof(*m));
    uint32_t id = 0;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        fg_chain c;
        fg_chain_begin(&c);
        ike_build_notify(&c.cw, IKE_PROTO_NONE, IKE_N_ADDITIONAL_IP6_ADDRESS, NULL, 0, bad[i], 16);
        fg_chain_send(&T->gw, &c, IKE_EXCH_INFORMATIONAL, false, id++, m);
        deliver(m);
        ck_assert_uint_eq(ike_sa_peer_addresses(T->sa, addrs, 4), 1);
        ck_assert_int_eq(addrs[0].ss_family, AF_INET);
        ck_assert_uint_eq(((struct sockaddr_in *)&addrs[0])->sin_addr.s_addr, htonl(0xc6336403));
    }
    fg_chain c;
    fg_chain_begin(&c);
    ike_build_notify(&c.cw, IKE_PROTO_NONE, IKE_N_ADDITIONAL_IP6_ADDRESS, NULL, 0, good, 16);
    fg_chain_send(&T->gw, &c, IKE_EXCH_INFORMATIONAL, false, id++, m);
    deliver(m);
    free(m);
    ck_assert_uint_eq(ike_sa_peer_addresses(T->sa, addrs, 4), 1);
    ck_assert_int_eq(addrs[0].ss_family, AF_INET6);
    ck_assert_int_eq(memcmp(&((struct sockaddr_in6 *)&addrs[0])->sin6_addr, good, 16), 0);
}
END_TEST

/* A liveness check carries NAT detection under MOBIKE; an answer that sees
 * us at another address (the NAT mapping changed) starts an update of our
 * own, reported as not asked for. */
START_TEST(test_mobike_nat_mapping_change)
{
    enable_dpd();
    establish_mobike();
    size_t n0 = n_sent();
    advance(10000);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    const ike_chain *dpd = open_sent(sent(n0), IKE_EXCH_INFORMATIONAL, false, 2);
    ike_notify n;
    ck_assert_int_ge(fg_notify_at(dpd, IKE_N_NAT_DETECTION_DESTINATION_IP, &n), 0);
    answer_update(2, NULL, 0); /* its NAT_DETECTION_DESTINATION_IP differs from IKE_SA_INIT's */
    ck_assert_uint_eq(n_sent(), n0 + 2);
    uint8_t cookie[16];
    take_update(n0 + 1, 3, cookie);
    answer_update(3, cookie, sizeof(cookie));
    ck_assert_uint_eq(T->n_updated, 1);
    ck_assert_int_eq(T->updated_err, 0);
    ck_assert(!T->updated_ours);
    /* the same mapping in the next check: no update */
    advance(10000);
    ck_assert_uint_eq(n_sent(), n0 + 3);
    answer_update(4, NULL, 0);
    ck_assert_uint_eq(n_sent(), n0 + 3);
}
END_TEST


/* A move while a request is under way: that request goes again at once
 * (from the new path), unchanged, and the update follows its answer; a
 * move while the update itself is under way sends it again, one answer. */
/* The gateway's address of the SA now, "host:port". */
static const char *peer_text(void)
{
    static char text[64];
    struct sockaddr_storage ss;
    socklen_t len;
    ike_sa_peer(T->sa, &ss, &len);
    char host[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof(host));
    snprintf(text, sizeof(text), "%s:%u", host, ntohs(((struct sockaddr_in *)&ss)->sin_port));
    return text;
}

/* Our liveness check (message ID 2) goes unanswered: its retransmissions
 * to the gateway's address, then the same request to its other address
 * (ADDITIONAL_IP4_ADDRESS 198.51.100.3 from IKE_AUTH); returns the index
 * of the check in gw.sent. */
static size_t dpd_unanswered_then_failover(void)
{
    enable_dpd();
    establish_mobike();
    size_t n0 = n_sent();
    advance(10000);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    uint64_t delay = TIMEOUT_MS;
    for (unsigned n = 0; n < TRIES; n++, delay *= 2)
        advance(delay);
    ck_assert_uint_eq(n_sent(), n0 + 1 + TRIES);
    ck_assert_uint_eq(T->n_sent_to, 0);
    advance(delay);
    ck_assert_uint_eq(T->n_down, 0);
    ck_assert_uint_eq(n_sent(), n0 + 2 + TRIES);
    ck_assert_uint_eq(T->n_sent_to, 1);
    ck_assert_str_eq(T->sent_to[0], "198.51.100.3:4500");
    assert_same_bytes(sent(n0 + 1 + TRIES), sent(n0)); /* the same request, same message ID */
    ck_assert_str_eq(peer_text(), "198.51.100.1:500"); /* nothing moved yet */
    return n0;
}

/* Failover (RFC 4555 §3.5): the other address answers, authenticated: it
 * becomes the gateway's, and UPDATE_SA_ADDRESSES goes there (NAT
 * detection, COOKIE2); its answer reports the move. A forged answer before
 * (ICV flipped) and one that was never protected change nothing. */
START_TEST(test_mobike_failover)
{
    dpd_unanswered_then_failover();
    deliver_from("198.51.100.3");
    fg_msg *m = malloc(sizeof(*m));
    fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, 2, 0, m);
    m->p[m->len - 1] ^= 0x01; /* ICV */
    size_t n1 = n_sent();
    deliver(m);
    ck_assert_str_eq(peer_text(), "198.51.100.1:500");
    ck_assert_uint_eq(n_sent(), n1);
    /* unprotected: an INFORMATIONAL response with no SK payload at all */
    fg_msg *plain = malloc(sizeof(*plain));
    memcpy(plain, m, sizeof(*m));
    plain->len = IKE_HEADER_LEN;
    plain->p[16] = 0; /* next payload: none */
    plain->p[24] = 0;
    plain->p[25] = 0;
    plain->p[26] = 0;
    plain->p[27] = IKE_HEADER_LEN;
    deliver(plain);
    free(plain);
    ck_assert_str_eq(peer_text(), "198.51.100.1:500");
    ck_assert_uint_eq(n_sent(), n1);
    ck_assert_uint_eq(T->n_updated, 0);
    m->p[m->len - 1] ^= 0x01; /* the authentic answer */
    deliver(m);
    free(m);
    /* tentative: the update goes there, the gateway moves once it succeeds */
    ck_assert_str_eq(peer_text(), "198.51.100.1:500");
    ck_assert_uint_eq(n_sent(), n1 + 1);
    ck_assert_uint_eq(T->n_sent_to, 2);
    ck_assert_str_eq(T->sent_to[1], "198.51.100.3:4500");
    uint8_t cookie[16];
    take_update(n1, 3, cookie);
    answer_update(3, cookie, sizeof(cookie));
    ck_assert_str_eq(peer_text(), "198.51.100.3:500");
    ck_assert_uint_eq(T->n_updated, 1);
    ck_assert_int_eq(T->updated_err, 0);
    ck_assert(!T->updated_ours);
    ck_assert_msg(strstr(T->updated_detail, "failover to its address 198.51.100.3:4500") != NULL, "%s",
                  T->updated_detail);
    ck_assert_uint_eq(T->n_down, 0);
    /* the next liveness check goes to the new address */
    advance(10000);
    ck_assert_uint_eq(T->n_sent_to, 3);
    ck_assert_str_eq(T->sent_to[2], "198.51.100.3:4500");
    ck_assert_uint_eq(T->sent_to_index[2], n_sent() - 1);
}
END_TEST

/* No other address answers either: the SA goes down as before (TIMEOUT),
 * the detail says the other addresses were tried. */
START_TEST(test_mobike_failover_none_answers)
{
    dpd_unanswered_then_failover();
    advance(TIMEOUT_MS);
    advance(2 * TIMEOUT_MS);
    ck_assert_uint_eq(T->n_sent_to, 3);
    ck_assert_uint_eq(T->n_down, 0);
    advance(4 * TIMEOUT_MS);
    assert_down(M2MVPN_E_TIMEOUT);
    ck_assert_msg(strstr(T->down_detail, "nor from the gateway's other addresses") != NULL, "%s", T->down_detail);
    ck_assert_str_eq(peer_text(), "198.51.100.1:500");
}
END_TEST

/* The failover's update refused (or answered without our COOKIE2): the
 * gateway does not move, and the SA ends (IKE on one address, ESP on the
 * dead one, would look up and carry nothing); lib/conn reconnects. */
static void failover_update_answered_badly(bool refuse)
{
    dpd_unanswered_then_failover();
    deliver_from("198.51.100.3");
    fg_msg *m = malloc(sizeof(*m));
    fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, 2, 0, m);
    size_t n1 = n_sent();
    deliver(m);
    uint8_t cookie[16];
    take_update(n1, 3, cookie);
    ck_assert_str_eq(T->sent_to[T->n_sent_to - 1], "198.51.100.3:4500");
    if (refuse) {
        fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, 3, IKE_N_UNACCEPTABLE_ADDRESSES, m);
        deliver(m);
    } else {
        answer_update(3, NULL, 0);
    }
    free(m);
    assert_down(M2MVPN_E_PROTOCOL);
    ck_assert_msg(strstr(T->down_detail, "failover to its address 198.51.100.3:4500") != NULL &&
                  strstr(T->down_detail, refuse ? "UNACCEPTABLE_ADDRESSES" : "COOKIE2") != NULL,
                  "%s", T->down_detail);
    ck_assert_str_eq(peer_text(), "198.51.100.1:500");
    ck_assert_uint_eq(T->n_updated, 0);
    assert_quiet_from_now();
}

START_TEST(test_mobike_failover_update_refused)
{
    failover_update_answered_badly(true);
}
END_TEST

START_TEST(test_mobike_failover_update_without_cookie2)
{
    failover_update_answered_badly(false);
}
END_TEST

/* While the other address is probed, an authentic answer from elsewhere
 * (the gateway's first address, held back and replayed) counts for
 * nothing; the one from the address probed does (as ::ffff:A from the
 * dual-stack socket too). */
START_TEST(test_mobike_failover_answer_from_elsewhere)
{
    dpd_unanswered_then_failover();
    fg_msg *m = malloc(sizeof(*m));
    fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, 2, 0, m);
    size_t n1 = n_sent();
    deliver_from("198.51.100.1");
    deliver(m);
    deliver_from_mapped("198.51.100.1");
    deliver(m);
    T->from_len = 0; /* source unknown (the port 500 socket) */
    deliver(m);
    ck_assert_uint_eq(n_sent(), n1);
    ck_assert_uint_eq(T->n_updated, 0);
    advance(TIMEOUT_MS); /* still probing: the retransmission goes to the other address */
    ck_assert_uint_eq(n_sent(), n1 + 1);
    ck_assert_str_eq(T->sent_to[T->n_sent_to - 1], "198.51.100.3:4500");
    deliver_from_mapped("198.51.100.3"); /* the same host as 198.51.100.3 */
    deliver(m);
    free(m);
    ck_assert_uint_eq(n_sent(), n1 + 2);
    uint8_t cookie[16];
    take_update(n1 + 1, 3, cookie);
    answer_update(3, cookie, sizeof(cookie));
    ck_assert_uint_eq(T->n_updated, 1);
    ck_assert_int_eq(T->updated_err, 0);
    ck_assert_str_eq(peer_text(), "198.51.100.3:500");
}
END_TEST

/* We move ourselves while the other address is probed (and again while
 * the update is under way): the update covers both, goes to the address
 * probed, and is reported as ours, naming the failover too. */
START_TEST(test_mobike_failover_roam_during_probe)
{
    dpd_unanswered_then_failover();
    struct sockaddr_storage now;
    socklen_t now_len;
    set_addr(&now, &now_len, "198.51.100.77", 4500);
    ck_assert_int_eq(ike_sa_update_addresses(T->sa, &now, now_len, "moved"), 0);
    ck_assert_str_eq(T->sent_to[T->n_sent_to - 1], "198.51.100.3:4500");
    deliver_from("198.51.100.3");
    fg_msg *m = malloc(sizeof(*m));
    fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, 2, 0, m);
    size_t n1 = n_sent();
    deliver(m);
    free(m);
    uint8_t cookie[16];
    take_update(n1, 3, cookie);
    /* and again while the update is under way: the same update, there */
    ck_assert_int_eq(ike_sa_update_addresses(T->sa, &now, now_len, "moved again"), 0);
    ck_assert_uint_eq(n_sent(), n1 + 2);
    assert_same_bytes(sent(n1), sent(n1 + 1));
    ck_assert_str_eq(T->sent_to[T->n_sent_to - 1], "198.51.100.3:4500");
    answer_update(3, cookie, sizeof(cookie));
    ck_assert_uint_eq(T->n_updated, 1);
    ck_assert_int_eq(T->updated_err, 0);
    ck_assert(T->updated_ours);
    ck_assert_msg(strstr(T->updated_detail, "moved again") != NULL &&
                  strstr(T->updated_detail, "failover to its address 198.51.100.3:4500") != NULL,
                  "%s", T->updated_detail);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* Only our request under way probes: our answer to the gateway's own
 * request goes where the gateway is, and once the request is abandoned
 * (close) nothing goes to the unverified address. */
START_TEST(test_mobike_failover_probe_ends_with_its_request)
{
    dpd_unanswered_then_failover();
    unsigned to0 = T->n_sent_to;
    size_t n1 = n_sent();
    fg_msg *m = malloc(sizeof(*m));
    fg_chain c;
    fg_chain_begin(&c);
    fg_chain_send(&T->gw, &c, IKE_EXCH_INFORMATIONAL, false, 0, m); /* the gateway's liveness check */
    deliver(m);
    free(m);
    ck_assert_uint_eq(n_sent(), n1 + 1);
    ck_assert_uint_eq(T->n_sent_to, to0); /* answered where the gateway is */
    open_sent(sent(n1), IKE_EXCH_INFORMATIONAL, true, 0);
    ike_sa_close(T->sa);
    ck_assert_uint_eq(n_sent(), n1 + 2);
    ck_assert_uint_eq(T->n_sent_to, to0); /* the Delete too */
    open_sent(sent(n1 + 1), IKE_EXCH_INFORMATIONAL, false, 3);
}
END_TEST

START_TEST(test_mobike_move_during_request)
{
    enable_dpd();
    establish_mobike();
    size_t n0 = n_sent();
    advance(10000); /* a liveness check goes out and is lost */
    ck_assert_uint_eq(n_sent(), n0 + 1);
    struct sockaddr_storage now;
    socklen_t now_len;
    set_addr(&now, &now_len, "198.51.100.77", 4500);
    ck_assert_int_eq(ike_sa_update_addresses(T->sa, &now, now_len, "moved"), 0);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    assert_same_bytes(sent(n0), sent(n0 + 1));
    fg_msg *m = malloc(sizeof(*m));
    fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, 2, 0, m); /* the check's answer */
    deliver(m);
    free(m);
    ck_assert_uint_eq(n_sent(), n0 + 3);
    uint8_t cookie[16];
    take_update(n0 + 2, 3, cookie);
    /* moved again before the answer: the same update again */
    ck_assert_int_eq(ike_sa_update_addresses(T->sa, &now, now_len, "moved again"), 0);
    ck_assert_uint_eq(n_sent(), n0 + 4);
    assert_same_bytes(sent(n0 + 2), sent(n0 + 3));
    answer_update(3, cookie, sizeof(cookie));
    ck_assert_uint_eq(T->n_updated, 1);
    ck_assert_int_eq(T->updated_err, 0);
    ck_assert(T->updated_ours);
    ck_assert_msg(strstr(T->updated_detail, "moved again") != NULL, "%s", T->updated_detail);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* The NAT detection in an update sent again from a new path names no
 * address of ours, old or new: NAT_DETECTION_SOURCE_IP is random (as in
 * IKE_SA_INIT), so the gateway keeps encapsulating ESP in UDP whatever the
 * path (our datapath has nothing else); a hash of the address actually
 * used would let it detect "no NAT" on a direct path and switch to plain
 * ESP. The destination hash names the gateway as it is reached. */
START_TEST(test_mobike_resent_update_natd)
{
    establish_mobike();
    struct sockaddr_storage old_local = T->sa->cfg.local, now, again;
    socklen_t now_len, again_len;
    set_addr(&now, &now_len, "198.51.100.77", 4500);
    set_addr(&again, &again_len, "198.51.100.78", 4500);
    size_t n0 = n_sent();
    ck_assert_int_eq(ike_sa_update_addresses(T->sa, &now, now_len, "moved"), 0);
    ck_assert_int_eq(ike_sa_update_addresses(T->sa, &again, again_len, "moved again"), 0);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    const ike_chain *c = open_sent(sent(n0 + 1), IKE_EXCH_INFORMATIONAL, false, 2);
    ike_notify n;
    ck_assert_int_ge(fg_notify_at(c, IKE_N_NAT_DETECTION_SOURCE_IP, &n), 0);
    ck_assert_uint_eq(n.data.len, 20);
    uint8_t src[20], h[20];
    memcpy(src, n.data.p, 20);
    const struct sockaddr_storage *ours[] = { &old_local, &now, &again };
    for (size_t i = 0; i < 3; i++) {
        for (uint16_t port = 500; port <= 4500; port += 4000) {
            struct sockaddr_storage a = *ours[i];
            ((struct sockaddr_in *)&a)->sin_port = htons(port);
            ck_assert_int_eq(ike_natd_hash(T->sa, T->sa->spi_r, &a, h), 0);
            ck_assert_msg(memcmp(h, src, 20) != 0, "NAT_DETECTION_SOURCE_IP names our address %zu:%u", i,
                          (unsigned)port);
        }
    }
    ck_assert_int_ge(fg_notify_at(c, IKE_N_NAT_DETECTION_DESTINATION_IP, &n), 0);
    struct sockaddr_storage gw = T->sa->cfg.remote;
    if (T->sa->natt)
        ((struct sockaddr_in *)&gw)->sin_port = htons(4500);
    ck_assert_int_eq(ike_natd_hash(T->sa, T->sa->spi_r, &gw, h), 0);
    ck_assert_mem_eq(n.data.p, h, 20);
}
END_TEST

/* ------------------------------------------------------------ rekeying */

/* Open a protected datagram whatever the roles (after an IKE SA rekey the
 * gateway may be the original initiator). */
static const ike_chain *open_any(const fg_dgram *d, uint8_t exchange, bool response, uint32_t msg_id)
{
    ck_assert_int_eq(fg_open(&T->gw, d), 0);
    const ike_header *h = &T->gw.rq_hdr;
    ck_assert_uint_eq(h->exchange, exchange);
    ck_assert_uint_eq(h->message_id, msg_id);
    ck_assert_uint_eq(!!(h->flags & IKE_FLAG_RESPONSE), response);
    /* Our messages carry the Initiator flag exactly when we are the original initiator. */
    ck_assert_uint_eq(!!(h->flags & IKE_FLAG_INITIATOR), !T->gw.initiator);
    ck_assert_uint_eq(h->spi_i, fg_be64(T->gw.spi_i));
    ck_assert_uint_eq(h->spi_r, fg_be64(T->gw.spi_r));
    return &T->gw.rq_inner;
}

static void use_pfs(void)
{
    char err[128];
    proposal *p = &T->set->items[0].esp.proposals[0]; /* the SA borrows the profile */
    ck_assert_int_eq(proposal_parse("aes256gcm16-x25519", PROPOSAL_ESP, p, err, sizeof(err)), 0);
}

static void deliver_chain(fg_chain *c, uint8_t exchange, bool response, uint32_t id)
{
    fg_msg *m = malloc(sizeof(*m));
    fg_chain_send(&T->gw, c, exchange, response, id, m);
    deliver(m);
    free(m);
}

/* Our CHILD SA rekey request as the gateway reads it. */
typedef struct rekey_req {
    uint32_t old_spi, new_spi;
    uint8_t ni[IKE_NONCE_MAX];
    size_t ni_len;
    bool has_ke;
    ike_ke ke;
    uint8_t ke_data[CRYPTO_MAX_KE_LEN];
} rekey_req;

static void take_child_rekey(const fg_dgram *d, uint32_t msg_id, rekey_req *r)
{
    const ike_chain *c = open_any(d, IKE_EXCH_CREATE_CHILD_SA, false, msg_id);
    ike_notify n;
    ck_assert_int_ge(fg_notify_at(c, IKE_N_REKEY_SA, &n), 0);
    ck_assert_uint_eq(n.protocol, IKE_PROTO_ESP);
    ck_assert_uint_eq(n.spi.len, 4);
    memset(r, 0, sizeof(*r));
    r->old_spi = buf_load_be32(n.spi.p);
    ike_diag diag;
    const ike_payload *sa = ike_chain_find(c, IKE_PL_SA, NULL);
    const ike_payload *ni = ike_chain_find(c, IKE_PL_NONCE, NULL);
    const ike_payload *ke = ike_chain_find(c, IKE_PL_KE, NULL);
    ck_assert_ptr_nonnull(sa);
    ck_assert_ptr_nonnull(ni);
    ck_assert_ptr_nonnull(ike_chain_find(c, IKE_PL_TSI, NULL));
    ck_assert_ptr_nonnull(ike_chain_find(c, IKE_PL_TSR, NULL));
    ike_sa_view *v = malloc(sizeof(*v));
    ck_assert_int_eq(ike_sa_parse(sa->body, v, &diag), 0);
    ck_assert_uint_eq(v->prop[0].protocol, IKE_PROTO_ESP);
    r->new_spi = buf_load_be32(v->prop[0].spi);
    free(v);
    buf_reader nb;
    ck_assert_int_eq(ike_nonce_parse(ni->body, &nb, &diag), 0);
    memcpy(r->ni, nb.p, nb.len);
    r->ni_len = nb.len;
    r->has_ke = ke != NULL;
    if (ke) {
        ck_assert_int_eq(ike_ke_parse(ke->body, &r->ke, &diag), 0);
        memcpy(r->ke_data, r->ke.data.p, r->ke.data.len);
        r->ke.data.p = r->ke_data;
    }
}

/* The gateway answers our CHILD SA rekey: its SPI, nonce nr (32 bytes of
 * nr_byte), KE when we sent one. Returns the KEYMAT it derived (ours-first). */
static size_t answer_child_rekey(const rekey_req *r, uint32_t msg_id, uint32_t gw_spi, uint8_t nr_byte,
                                 uint8_t *keymat, size_t cap)
{
    uint8_t nr[32], pub[CRYPTO_MAX_KE_LEN], g_ir[CRYPTO_MAX_KE_LEN];
    size_t pub_len = 0, g_len = 0;
    memset(nr, nr_byte, sizeof(nr));
    if (r->has_ke)
        fg_ke(r->ke.group, &r->ke, pub, &pub_len, g_ir, &g_len);
    fg_chain c;
    fg_chain_begin(&c);
    ike_sa_choice ch = fg_esp_choice(1, gw_spi, r->has_ke ? r->ke.group : 0);
    ike_build_sa_choice(&c.cw, &ch);
    ike_build_nonce(&c.cw, nr, sizeof(nr));
    if (r->has_ke)
        ike_build_ke(&c.cw, r->ke.group, pub, pub_len);
    fg_build_ts_pair(&T->gw, &c.cw, false);
    size_t n = fg_rekey_keymat(&T->gw, g_len ? g_ir : NULL, g_len, r->ni, r->ni_len, nr, sizeof(nr), false,
                               keymat, cap);
    deliver_chain(&c, IKE_EXCH_CREATE_CHILD_SA, true, msg_id);
    return n;
}

/* The Delete(ESP) in an opened message: its single SPI. */
static uint32_t esp_delete_spi(const ike_chain *c)
{
    const ike_payload *pl = ike_chain_find(c, IKE_PL_DELETE, NULL);
    ck_assert_ptr_nonnull(pl);
    ike_delete del;
    ike_diag d;
    ck_assert_int_eq(ike_delete_parse(pl->body, &del, &d), 0);
    ck_assert_uint_eq(del.protocol, IKE_PROTO_ESP);
    ck_assert_uint_eq(del.n_spi, 1);
    return buf_load_be32(del.spis.p);
}

static void gw_deletes_esp(uint32_t gw_spi, uint32_t msg_id)
{
    fg_chain c;
    fg_chain_begin(&c);
    uint8_t spi[4];
    buf_store_be32(spi, gw_spi);
    ike_build_delete(&c.cw, IKE_PROTO_ESP, 4, spi, 1);
    deliver_chain(&c, IKE_EXCH_INFORMATIONAL, false, msg_id);
}

/* We rekey the CHILD SA (with or without PFS, §1.3.3): the new SA is
 * reported with keys the gateway derives alike and sends at once; the old
 * one is deleted, and leaves the datapath a grace period after the Delete. */
static void our_child_rekey(bool pfs)
{
    if (pfs)
        use_pfs();
    establish();
    uint32_t old_in = T->child.spi_in, old_out = T->child.spi_out;
    size_t n0 = n_sent();
    ck_assert_int_eq(ike_sa_rekey_child(T->sa, old_out), M2MVPN_E_STATE); /* not ours: refused */
    ck_assert_int_eq(ike_sa_rekey_child(T->sa, old_in), 0);
    ck_assert_int_eq(ike_sa_rekey_child(T->sa, old_in), 0); /* under way: nothing more */
    ck_assert_uint_eq(n_sent(), n0 + 1);
    rekey_req r;
    take_child_rekey(sent(n0), 2, &r);
    ck_assert_uint_eq(r.old_spi, old_in);
    ck_assert_uint_ne(r.new_spi, old_in);
    ck_assert(r.has_ke == pfs);
    if (pfs)
        ck_assert_uint_eq(r.ke.group, KE_X25519);
    uint8_t want[4 * CRYPTO_MAX_KEY_LEN];
    size_t wl = answer_child_rekey(&r, 2, 0x5a5a0001, 0x77, want, sizeof(want));
    ck_assert_uint_eq(T->n_rekeyed, 1);
    ck_assert_uint_eq(T->rekeyed_old[0], old_in);
    ck_assert(T->rekeyed_out[0]); /* we initiated: it sends at once */
    ck_assert_uint_eq(T->rekeyed[0].spi_in, r.new_spi);
    ck_assert_uint_eq(T->rekeyed[0].spi_out, 0x5a5a0001);
    ck_assert_uint_eq(T->rekeyed[0].keymat_len, wl);
    ck_assert_mem_eq(T->rekeyed[0].keymat, want, wl);
    uint8_t first[4 * CRYPTO_MAX_KEY_LEN];
    ck_assert_uint_eq(fg_child_keymat(&T->gw, first, sizeof(first)), wl);
    ck_assert(memcmp(first, want, wl) != 0); /* new keys (§2.17: new nonces) */
    /* The old SA is deleted (INFORMATIONAL, message 3). */
    ck_assert_uint_eq(n_sent(), n0 + 2);
    ck_assert_uint_eq(esp_delete_spi(open_any(sent(n0 + 1), IKE_EXCH_INFORMATIONAL, false, 3)), old_in);
    fg_chain c;
    fg_chain_begin(&c);
    uint8_t spi[4];
    buf_store_be32(spi, old_out);
    ike_build_delete(&c.cw, IKE_PROTO_ESP, 4, spi, 1);
    deliver_chain(&c, IKE_EXCH_INFORMATIONAL, true, 3);
    ck_assert_uint_eq(T->n_child_deleted, 0); /* packets in flight still arrive */
    advance(1000);
    ck_assert_uint_eq(T->n_child_deleted, 1);
    ck_assert_uint_eq(T->child_deleted[0], old_in);
    /* The new SA is the current one: its rekey works, the old one's is refused. */
    ck_assert_int_eq(ike_sa_rekey_child(T->sa, old_in), M2MVPN_E_STATE);
    ck_assert_int_eq(ike_sa_rekey_child(T->sa, r.new_spi), 0);
    take_child_rekey(fg_last(&T->gw), 4, &r);
    ck_assert_uint_eq(T->n_down, 0);
}

START_TEST(test_rekey_child_ours)
{
    our_child_rekey(false);
}
END_TEST

START_TEST(test_rekey_child_ours_pfs)
{
    our_child_rekey(true);
}
END_TEST

/* The gateway's CHILD SA rekey request (with PFS: KEi); returns its nonce. */
static void gw_child_rekey_request(uint32_t msg_id, uint32_t rekeyed_gw_spi, uint32_t new_gw_spi, uint8_t ni_byte,
                                   uint8_t *pub, size_t *pub_len, uint8_t *ni)
{
    fg_chain c;
    fg_chain_begin(&c);
    uint8_t spi[4];
    buf_store_be32(spi, rekeyed_gw_spi);
    ike_build_notify(&c.cw, IKE_PROTO_ESP, IKE_N_REKEY_SA, spi, 4, NULL, 0);
    ike_sa_choice ch = fg_esp_choice(1, new_gw_spi, KE_X25519);
    ike_build_sa_choice(&c.cw, &ch); /* one proposal: as an offer too */
    memset(ni, ni_byte, 32);
    ike_build_nonce(&c.cw, ni, 32);
    fg_ke(KE_X25519, NULL, pub, pub_len, NULL, NULL);
    ike_build_ke(&c.cw, KE_X25519, pub, *pub_len);
    fg_build_ts_pair(&T->gw, &c.cw, true);
    deliver_chain(&c, IKE_EXCH_CREATE_CHILD_SA, false, msg_id);
}

/* The gateway rekeys the CHILD SA without a key exchange although our
 * proposal asks for PFS (x25519): refused (NO_PROPOSAL_CHOSEN), nothing
 * installed, the SA stays as it is. */
START_TEST(test_rekey_child_by_gateway_without_pfs)
{
    use_pfs();
    establish();
    fg_chain c;
    fg_chain_begin(&c);
    uint8_t spi[4], ni[32];
    buf_store_be32(spi, T->gw.child_spi_r);
    ike_build_notify(&c.cw, IKE_PROTO_ESP, IKE_N_REKEY_SA, spi, 4, NULL, 0);
    ike_sa_choice ch = fg_esp_choice(1, 0x7c7c0001, 0);
    ike_build_sa_choice(&c.cw, &ch);
    memset(ni, 0x42, sizeof(ni));
    ike_build_nonce(&c.cw, ni, sizeof(ni));
    fg_build_ts_pair(&T->gw, &c.cw, true);
    deliver_chain(&c, IKE_EXCH_CREATE_CHILD_SA, false, 0);
    const ike_chain *a = open_any(fg_last(&T->gw), IKE_EXCH_CREATE_CHILD_SA, true, 0);
    ike_notify n;
    ike_diag d;
    ck_assert_int_eq(ike_chain_find_notify(a, IKE_N_NO_PROPOSAL_CHOSEN, &n, &d), 0);
    ck_assert_uint_eq(T->n_rekeyed, 0);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* Our answer to the gateway's CHILD SA rekey: checks it and returns our new
 * SPI and the KEYMAT the gateway derives (ours-first). */
static uint32_t take_child_rekey_answer(const fg_dgram *d, uint32_t msg_id, const uint8_t *ni, uint8_t *keymat,
                                        size_t cap, size_t *kl, uint8_t *nr_out)
{
    const ike_chain *c = open_any(d, IKE_EXCH_CREATE_CHILD_SA, true, msg_id);
    ike_diag diag;
    ike_sa_choice ch;
    const ike_payload *sa = ike_chain_find(c, IKE_PL_SA, NULL);
    const ike_payload *nr = ike_chain_find(c, IKE_PL_NONCE, NULL);
    const ike_payload *ke = ike_chain_find(c, IKE_PL_KE, NULL);
    ck_assert_ptr_nonnull(sa);
    ck_assert_ptr_nonnull(nr);
    ck_assert_ptr_nonnull(ke);
    ck_assert_ptr_nonnull(ike_chain_find(c, IKE_PL_TSI, NULL));
    ck_assert_ptr_nonnull(ike_chain_find(c, IKE_PL_TSR, NULL));
    ck_assert_int_eq(ike_sa_parse_choice(sa->body, &ch, &diag), 0);
    ck_assert_uint_eq(ch.id[IKE_TT_KE], KE_X25519);
    ck_assert_uint_eq(ch.id[IKE_TT_ENCR], ENCR_AES_GCM_16);
    buf_reader nb;
    ike_ke kr;
    ck_assert_int_eq(ike_nonce_parse(nr->body, &nb, &diag), 0);
    ck_assert_int_eq(ike_ke_parse(ke->body, &kr, &diag), 0);
    if (nr_out)
        memcpy(nr_out, nb.p, 32);
    (void)keymat;
    (void)cap;
    (void)kl;
    (void)ni;
    return buf_load_be32(ch.spi);
}

/* The gateway rekeys the CHILD SA (§1.3.3, with PFS): the new SA is
 * installed inbound only before the answer leaves, sends once the gateway
 * deleted the old one; the gateway's Delete is answered with our half. */
START_TEST(test_rekey_child_by_gateway)
{
    use_pfs();
    establish();
    uint32_t old_in = T->child.spi_in;
    size_t n0 = n_sent();
    uint8_t pub[CRYPTO_MAX_KE_LEN], ni[32], nr[32];
    size_t pub_len = 0;
    /* We keep our half of the key exchange to check the keys. */
    crypto_ke *gke = NULL;
    ck_assert_int_eq(crypto_ke_new(KE_X25519, &gke), 0);
    ck_assert_int_eq(crypto_ke_public(gke, pub, sizeof(pub), &pub_len), 0);
    fg_chain c;
    fg_chain_begin(&c);
    uint8_t spi[4];
    buf_store_be32(spi, T->gw.child_spi_r);
    ike_build_notify(&c.cw, IKE_PROTO_ESP, IKE_N_REKEY_SA, spi, 4, NULL, 0);
    ike_sa_choice ch = fg_esp_choice(1, 0x6b6b0001, KE_X25519);
    ike_build_sa_choice(&c.cw, &ch);
    memset(ni, 0x33, sizeof(ni));
    ike_build_nonce(&c.cw, ni, sizeof(ni));
    ike_build_ke(&c.cw, KE_X25519, pub, pub_len);
    fg_build_ts_pair(&T->gw, &c.cw, true);
    deliver_chain(&c, IKE_EXCH_CREATE_CHILD_SA, false, 0);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    ck_assert_uint_eq(T->n_rekeyed, 1);
    ck_assert_uint_eq(T->rekeyed_old[0], old_in);
    ck_assert(!T->rekeyed_out[0]); /* inbound only until the gateway deletes the old SA */
    ck_assert_uint_eq(T->rekeyed[0].spi_out, 0x6b6b0001);
    uint32_t new_in = take_child_rekey_answer(sent(n0), 0, ni, NULL, 0, NULL, nr);
    ck_assert_uint_eq(T->rekeyed[0].spi_in, new_in);
    /* Keys: g^ir from our KE and the answer's, Ni the gateway's. */
    const ike_payload *ke = ike_chain_find(&T->gw.rq_inner, IKE_PL_KE, NULL);
    ike_ke kr;
    ike_diag d;
    ck_assert_int_eq(ike_ke_parse(ke->body, &kr, &d), 0);
    uint8_t g_ir[CRYPTO_MAX_KE_LEN], want[4 * CRYPTO_MAX_KEY_LEN];
    size_t g_len = 0;
    char err[128];
    ck_assert_int_eq(crypto_ke_derive(gke, kr.data.p, kr.data.len, g_ir, sizeof(g_ir), &g_len, err, sizeof(err)), 0);
    crypto_ke_free(gke);
    size_t wl = fg_rekey_keymat(&T->gw, g_ir, g_len, ni, sizeof(ni), nr, sizeof(nr), true, want, sizeof(want));
    ck_assert_uint_eq(T->rekeyed[0].keymat_len, wl);
    ck_assert_mem_eq(T->rekeyed[0].keymat, want, wl);
    /* The gateway deletes the old SA: answered with our half, removed now. */
    gw_deletes_esp(T->gw.child_spi_r, 1);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    ck_assert_uint_eq(esp_delete_spi(open_any(sent(n0 + 1), IKE_EXCH_INFORMATIONAL, true, 1)), old_in);
    ck_assert_uint_eq(T->n_child_deleted, 1);
    ck_assert_uint_eq(T->child_deleted[0], old_in);
    ck_assert_uint_eq(T->n_down, 0);
    /* A Delete of the new SA now ends the IKE SA, as for the first one. */
    gw_deletes_esp(0x6b6b0001, 2);
    ck_assert_uint_eq(esp_delete_spi(open_any(fg_last(&T->gw), IKE_EXCH_INFORMATIONAL, true, 2)), new_in);
    assert_down(M2MVPN_E_PROTOCOL);
}
END_TEST

/* The gateway's CHILD SA rekey (message 0, in m for its retransmission),
 * answered in RFC 7383 fragments: too big for one datagram with PFS and 16
 * IPv6 selectors each way (a split tunnel). Returns how many, from sent(*n0). */
static size_t fragmented_child_rekey_answer(fg_msg *m, size_t *n0)
{
    use_pfs();
    T->gw.frag = true;
    establish();
    /* The CHILD SA's selectors as negotiated (what a rekey answer repeats). */
    for (size_t i = 0; i < IKE_MAX_TS; i++) {
        uint8_t a[16] = { 0x20, 0x01, 0x0d, 0xb8, 0x10, (uint8_t)i };
        ck_assert_int_eq(ike_ts_from_prefix(a, 16, 48, 0, 0, 65535, &T->sa->child_tsr[i]), 0);
        a[4] = 0x20;
        ck_assert_int_eq(ike_ts_from_prefix(a, 16, 48, 0, 0, 65535, &T->sa->child_tsi[i]), 0);
    }
    T->sa->n_child_tsi = T->sa->n_child_tsr = IKE_MAX_TS;
    uint8_t ni[32], pub[CRYPTO_MAX_KE_LEN];
    size_t pub_len = 0;
    fg_chain c;
    fg_chain_begin(&c);
    uint8_t spi[4];
    buf_store_be32(spi, T->gw.child_spi_r);
    ike_build_notify(&c.cw, IKE_PROTO_ESP, IKE_N_REKEY_SA, spi, 4, NULL, 0);
    ike_sa_choice ch = fg_esp_choice(1, 0x6b6b0001, KE_X25519);
    ike_build_sa_choice(&c.cw, &ch);
    memset(ni, 0x33, sizeof(ni));
    ike_build_nonce(&c.cw, ni, sizeof(ni));
    fg_ke(KE_X25519, NULL, pub, &pub_len, NULL, NULL);
    ike_build_ke(&c.cw, KE_X25519, pub, pub_len);
    fg_build_ts_pair(&T->gw, &c.cw, true);
    fg_chain_send(&T->gw, &c, IKE_EXCH_CREATE_CHILD_SA, false, 0, m);
    *n0 = n_sent();
    deliver(m);
    size_t nf = n_sent() - *n0;
    ck_assert_uint_ge(nf, 2);
    ck_assert_uint_eq(T->n_rekeyed, 1);
    /* The gateway reassembles them into the answer. */
    ike_frag_reasm *ra = malloc(sizeof(*ra));
    ike_frag_reasm_init(ra);
    ike_chain inner;
    ike_diag d;
    for (size_t i = 0; i < nf; i++) {
        ike_message fm;
        fg_parse(sent(*n0 + i), &fm);
        ck_assert_uint_eq(fm.chain.pl[fm.chain.n - 1].type, IKE_PL_SKF);
        ck_assert(fm.hdr.flags & IKE_FLAG_RESPONSE);
        ck_assert_uint_eq(fm.hdr.message_id, 0);
        ck_assert_int_eq(ike_frag_add(ra, &fm, &T->gw.sk_in, &inner, &d), i + 1 == nf ? 1 : 0);
    }
    ck_assert_ptr_nonnull(ike_chain_find(&inner, IKE_PL_SA, NULL));
    ck_assert_ptr_nonnull(ike_chain_find(&inner, IKE_PL_KE, NULL));
    ike_frag_reasm_reset(ra);
    free(ra);
    return nf;
}

/* The gateway retransmitted request m: every fragment of our answer goes
 * again, byte for byte, sent(first) on being the original ones. */
static void expect_answer_again(const fg_msg *m, size_t first, size_t nf)
{
    size_t n = n_sent();
    deliver(m);
    ck_assert_uint_eq(n_sent(), n + nf);
    for (size_t i = 0; i < nf; i++)
        assert_same_bytes(sent(n + i), sent(first + i));
}

/*
 * Our answer to the gateway's CHILD SA rekey went out in fragments and one
 * was lost: the gateway retransmits its request and gets every fragment
 * again (RFC 7296 §2.1, RFC 7383 §2.6), while nothing is rekeyed twice.
 * Left unanswered, it gives up on an SA we already moved to SPIs it never
 * installed.
 */
START_TEST(test_fragmented_answer_resent_whole)
{
    fg_msg *m = malloc(sizeof(*m));
    size_t n0;
    size_t nf = fragmented_child_rekey_answer(m, &n0);
    expect_answer_again(m, n0, nf);
    expect_answer_again(m, n0, nf);
    /* The request retransmitted in fragments (RFC 7383 §2.6.1): the answer
     * goes again for its fragment 1 only, not once per fragment. */
    for (uint16_t frag = 2; frag >= 1; frag--) {
        fg_msg *f = malloc(sizeof(*f));
        memcpy(f->p, m->p, IKE_HEADER_LEN); /* its SPIs, exchange, flags, message ID */
        f->p[16] = IKE_PL_SKF;
        /* SKF: generic header, Fragment Number, Total Fragments 2, then
         * bytes never opened (a resend comes before any check) */
        uint8_t *q = f->p + IKE_HEADER_LEN;
        memset(q, 0xa5, 60);
        static const uint8_t head[8] = { 0, 0, 0, 60, 0, 0, 0, 2 };
        memcpy(q, head, sizeof(head));
        q[0] = frag == 1 ? IKE_PL_SA : 0;
        q[5] = (uint8_t)frag;
        f->len = IKE_HEADER_LEN + 60;
        f->p[24] = 0;
        f->p[25] = 0;
        f->p[26] = (uint8_t)(f->len >> 8);
        f->p[27] = (uint8_t)f->len;
        size_t n = n_sent();
        deliver(f);
        ck_assert_uint_eq(n_sent(), n + (frag == 1 ? nf : 0));
        free(f);
    }
    free(m);
    ck_assert_uint_eq(T->n_rekeyed, 1);
    /* The next request is answered anew, the cache replaced (one datagram). */
    size_t n1 = n_sent();
    fg_chain c;
    fg_chain_begin(&c);
    deliver_chain(&c, IKE_EXCH_INFORMATIONAL, false, 1);
    ck_assert_uint_eq(n_sent(), n1 + 1);
    open_any(fg_last(&T->gw), IKE_EXCH_INFORMATIONAL, true, 1);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

static ike_sa_choice ike_choice(uint8_t number, const uint8_t spi[8]);

/* We rekey the IKE SA (our request id on the current SA), the gateway
 * answers; it moves to the new SA, its old keys in old. Returns the index
 * of the old SA's Delete in sent(). */
static size_t our_ike_rekey(fg_keys *old, uint32_t id)
{
    size_t n1 = n_sent();
    unsigned k = T->n_ike_rekeyed;
    ck_assert_int_eq(ike_sa_rekey_ike(T->sa), 0);
    ck_assert_uint_eq(n_sent(), n1 + 1);
    const ike_chain *c = open_any(sent(n1), IKE_EXCH_CREATE_CHILD_SA, false, id);
    ike_diag d;
    ike_sa_view *v = malloc(sizeof(*v));
    ck_assert_int_eq(ike_sa_parse(ike_chain_find(c, IKE_PL_SA, NULL)->body, v, &d), 0);
    uint8_t spi_i[8], spi_r[8] = { 0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7 };
    memcpy(spi_i, v->prop[0].spi, 8);
    free(v);
    buf_reader ni;
    ike_ke ke;
    ck_assert_int_eq(ike_nonce_parse(ike_chain_find(c, IKE_PL_NONCE, NULL)->body, &ni, &d), 0);
    ck_assert_int_eq(ike_ke_parse(ike_chain_find(c, IKE_PL_KE, NULL)->body, &ke, &d), 0);
    uint8_t ni_copy[IKE_NONCE_MAX], nr[32], pub[CRYPTO_MAX_KE_LEN], g_ir[CRYPTO_MAX_KE_LEN];
    size_t ni_len = ni.len, pub_len = 0, g_len = 0;
    memcpy(ni_copy, ni.p, ni.len);
    memset(nr, 0x55, sizeof(nr));
    fg_ke(KE_X25519, &ke, pub, &pub_len, g_ir, &g_len);
    fg_chain a;
    fg_chain_begin(&a);
    ike_sa_choice ch = ike_choice(1, spi_r);
    ike_build_sa_choice(&a.cw, &ch);
    ike_build_nonce(&a.cw, nr, sizeof(nr));
    ike_build_ke(&a.cw, KE_X25519, pub, pub_len);
    deliver_chain(&a, IKE_EXCH_CREATE_CHILD_SA, true, id);
    fg_rekey_ike_keys(&T->gw, false, spi_i, spi_r, g_ir, g_len, ni_copy, ni_len, nr, sizeof(nr), old);
    ck_assert_uint_eq(T->n_ike_rekeyed, k + 1);
    ck_assert_uint_eq(n_sent(), n1 + 2); /* the old SA's Delete */
    return n1 + 1;
}

/* The same after we rekeyed the IKE SA: the replaced SA (kept to finish
 * its Delete) answers the retransmission with every fragment too. */
START_TEST(test_fragmented_answer_resent_by_replaced_ike_sa)
{
    fg_msg *m = malloc(sizeof(*m));
    size_t n0;
    size_t nf = fragmented_child_rekey_answer(m, &n0);
    fg_keys old;
    our_ike_rekey(&old, 2);
    expect_answer_again(m, n0, nf);
    expect_answer_again(m, n0, nf);
    free(m);
    ck_assert_uint_eq(T->n_rekeyed, 1);
    ck_assert_uint_eq(T->n_down, 0);
    fg_keys_free(&old);
}
END_TEST

/* The replaced IKE SA's Delete (INFORMATIONAL, message 3 on it) is
 * answered only by an INFORMATIONAL response (§3.1): an authentic response
 * with its message ID but of another exchange leaves it in flight, and it
 * is retransmitted until its own answer comes. */
START_TEST(test_replaced_ike_sa_response_of_another_exchange)
{
    establish();
    fg_keys old;
    size_t del = our_ike_rekey(&old, 2);
    fg_swap_keys(&T->gw, &old); /* gw: the old SA */
    ck_assert(fg_has_ike_delete(open_any(sent(del), IKE_EXCH_INFORMATIONAL, false, 3)));
    fg_msg *m = malloc(sizeof(*m));
    fg_notify_response(&T->gw, IKE_EXCH_CREATE_CHILD_SA, 3, 0, m);
    deliver(m);
    size_t n = n_sent();
    advance(2000);
    ck_assert_uint_eq(n_sent(), n + 1); /* still unanswered: retransmitted */
    assert_same_bytes(sent(n), sent(del));
    fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, 3, 0, m);
    deliver(m);
    free(m);
    for (int i = 0; i < 4; i++)
        advance(16000);
    ck_assert_uint_eq(n_sent(), n + 1); /* answered: no more */
    ck_assert_uint_eq(T->n_down, 0);
    fg_keys_free(&old);
}
END_TEST

/*
 * Both sides rekey the CHILD SA at once (§2.8.1): our request is out when the
 * gateway's arrives; each answers the other. The exchange with the lowest of
 * the four nonces made the redundant SA, which its initiator deletes; the
 * initiator of the other deletes the old SA.
 */
static void child_collision(bool we_win)
{
    use_pfs();
    establish();
    uint32_t old_in = T->child.spi_in;
    size_t n0 = n_sent();
    ck_assert_int_eq(ike_sa_rekey_child(T->sa, old_in), 0);
    rekey_req r;
    take_child_rekey(sent(n0), 2, &r);
    /* The gateway's own rekey of the same SA, with nonces that decide: to
     * make its SA redundant its Ni is all 0x00 (the lowest of the four); to
     * make ours redundant its Nr in our exchange is all 0x00. The other one
     * is all 0xff, our two nonces are random. */
    uint8_t pub[CRYPTO_MAX_KE_LEN], ni[32];
    size_t pub_len;
    uint8_t b = we_win ? 0x00 : 0xff;
    gw_child_rekey_request(0, T->gw.child_spi_r, 0x7c7c0001, b, pub, &pub_len, ni);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    uint8_t nr_ours[32];
    uint32_t gw_sa_in = take_child_rekey_answer(sent(n0 + 1), 0, ni, NULL, 0, NULL, nr_ours);
    ck_assert(nr_ours[0] != 0x00 || nr_ours[1] != 0x00); /* (random: all-zero is out of the question) */
    ck_assert_uint_eq(T->n_rekeyed, 1); /* the gateway's, inbound only */
    ck_assert(!T->rekeyed_out[0]);
    ck_assert_uint_eq(T->rekeyed[0].spi_in, gw_sa_in);
    uint8_t km[4 * CRYPTO_MAX_KEY_LEN];
    answer_child_rekey(&r, 2, 0x7c7c0002, (uint8_t)~b, km, sizeof(km));
    ck_assert_uint_eq(n_sent(), n0 + 3);
    uint32_t deleted = esp_delete_spi(open_any(sent(n0 + 2), IKE_EXCH_INFORMATIONAL, false, 3));
    if (we_win) {
        /* Ours stands: installed, sending; we delete the old SA; the
         * gateway deletes its redundant one. */
        ck_assert_uint_eq(T->n_rekeyed, 2);
        ck_assert(T->rekeyed_out[1]);
        ck_assert_uint_eq(T->rekeyed[1].spi_in, r.new_spi);
        ck_assert_uint_eq(deleted, old_in);
        gw_deletes_esp(0x7c7c0001, 1);
        ck_assert_uint_eq(esp_delete_spi(open_any(fg_last(&T->gw), IKE_EXCH_INFORMATIONAL, true, 1)), gw_sa_in);
        ck_assert_uint_eq(T->n_child_deleted, 1);
        ck_assert_uint_eq(T->child_deleted[0], gw_sa_in);
        ck_assert_int_eq(ike_sa_rekey_child(T->sa, r.new_spi), 0); /* the current one */
    } else {
        /* Ours is redundant: never installed, deleted; the gateway's
         * stands and the gateway deletes the old SA. */
        ck_assert_uint_eq(T->n_rekeyed, 1);
        ck_assert_uint_eq(deleted, r.new_spi);
        gw_deletes_esp(T->gw.child_spi_r, 1);
        ck_assert_uint_eq(esp_delete_spi(open_any(fg_last(&T->gw), IKE_EXCH_INFORMATIONAL, true, 1)), old_in);
        ck_assert_uint_eq(T->n_child_deleted, 1);
        ck_assert_uint_eq(T->child_deleted[0], old_in);
        ck_assert_int_eq(ike_sa_rekey_child(T->sa, gw_sa_in), 0); /* the current one */
    }
    ck_assert_uint_eq(T->n_down, 0);
}

/* The gateway rekeys the same CHILD SA twice while ours is unanswered: the
 * second one is refused (TEMPORARY_FAILURE) and never installed, so every
 * SA installed inbound is retired in the end (none leaks in the datapath). */
START_TEST(test_rekey_child_double_collision)
{
    use_pfs();
    establish();
    uint32_t old_in = T->child.spi_in;
    size_t n0 = n_sent();
    ck_assert_int_eq(ike_sa_rekey_child(T->sa, old_in), 0);
    rekey_req r;
    take_child_rekey(sent(n0), 2, &r);
    uint8_t pub[CRYPTO_MAX_KE_LEN], ni[32];
    size_t pub_len;
    gw_child_rekey_request(0, T->gw.child_spi_r, 0x7c7c0001, 0x00, pub, &pub_len, ni);
    ck_assert_uint_eq(T->n_rekeyed, 1);
    uint32_t gw_sa_in = T->rekeyed[0].spi_in;
    gw_child_rekey_request(1, T->gw.child_spi_r, 0x7c7c0011, 0x00, pub, &pub_len, ni);
    ck_assert_uint_eq(T->n_rekeyed, 1); /* not installed */
    const ike_chain *c = open_any(fg_last(&T->gw), IKE_EXCH_CREATE_CHILD_SA, true, 1);
    ike_notify n;
    ike_diag d;
    ck_assert_int_eq(ike_chain_find_notify(c, IKE_N_TEMPORARY_FAILURE, &n, &d), 0);
    ck_assert_ptr_null(ike_chain_find(c, IKE_PL_SA, NULL));
    /* Ours wins: the gateway deletes its redundant SA, then the old one. */
    uint8_t km[4 * CRYPTO_MAX_KEY_LEN];
    answer_child_rekey(&r, 2, 0x7c7c0002, 0xff, km, sizeof(km));
    ck_assert_uint_eq(T->n_rekeyed, 2);
    ck_assert_uint_eq(T->rekeyed[1].spi_in, r.new_spi);
    gw_deletes_esp(0x7c7c0001, 2);
    gw_deletes_esp(T->gw.child_spi_r, 3);
    advance(1000);
    bool gw_seen = false, old_seen = false;
    for (unsigned i = 0; i < T->n_child_deleted; i++) {
        gw_seen |= T->child_deleted[i] == gw_sa_in;
        old_seen |= T->child_deleted[i] == old_in;
    }
    ck_assert_msg(gw_seen, "the gateway's redundant SA %08x is never reported deleted", gw_sa_in);
    ck_assert_msg(old_seen, "the old SA %08x is never reported deleted", old_in);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

START_TEST(test_rekey_child_collision_we_win)
{
    child_collision(true);
}
END_TEST

START_TEST(test_rekey_child_collision_we_lose)
{
    child_collision(false);
}
END_TEST

/* ---------------------------------------------------------------- suite */


/* The gateway's IKE proposal for a rekey: AES-GCM-256, PRF SHA-384, X25519
 * (what OUR_PROPOSAL starts with), SPI spi. */
static ike_sa_choice ike_choice(uint8_t number, const uint8_t spi[8])
{
    ike_sa_choice ch;
    memset(&ch, 0, sizeof(ch));
    ch.number = number;
    ch.protocol = IKE_PROTO_IKE;
    ch.spi_len = 8;
    memcpy(ch.spi, spi, 8);
    ch.present = (1u << IKE_TT_ENCR) | (1u << IKE_TT_PRF) | (1u << IKE_TT_KE);
    ch.id[IKE_TT_ENCR] = ENCR_AES_GCM_16;
    ch.encr_key_bits = 256;
    ch.id[IKE_TT_PRF] = PRF_HMAC_SHA2_384;
    ch.id[IKE_TT_KE] = KE_X25519;
    return ch;
}

/* After an IKE SA rekey: the new SA carries requests both ways, and CHILD SA
 * keys now come from its SK_d (§2.17, §2.18). */
static void new_ike_sa_works(fg_keys *old, uint32_t our_id)
{
    unsigned k = T->n_rekeyed;
    /* Liveness check from the gateway on the new SA: message 0. */
    size_t n0 = n_sent();
    fg_chain c;
    fg_chain_begin(&c);
    deliver_chain(&c, IKE_EXCH_INFORMATIONAL, false, 0);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    ck_assert_uint_eq(open_any(sent(n0), IKE_EXCH_INFORMATIONAL, true, 0)->n, 0);
    /* A request of ours: message 0 of the new SA, keys from the new SK_d. */
    uint32_t cur = k ? T->rekeyed[k - 1].spi_in : T->child.spi_in;
    ck_assert_int_eq(ike_sa_rekey_child(T->sa, cur), 0);
    rekey_req r;
    take_child_rekey(fg_last(&T->gw), our_id, &r);
    uint8_t want[4 * CRYPTO_MAX_KEY_LEN];
    size_t wl = answer_child_rekey(&r, our_id, 0x5a5a0009, 0x42, want, sizeof(want));
    ck_assert_uint_eq(T->n_rekeyed, k + 1);
    ck_assert_mem_eq(T->rekeyed[k].keymat, want, wl);
    /* The old SA's SK_d would have given other keys. */
    uint8_t other[4 * CRYPTO_MAX_KEY_LEN];
    fg_swap_keys(&T->gw, old);
    fg_rekey_keymat(&T->gw, NULL, 0, r.ni, r.ni_len, (uint8_t[32]){ 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
                    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
                    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42 }, 32, false, other, sizeof(other));
    fg_swap_keys(&T->gw, old);
    ck_assert(memcmp(other, want, wl) != 0);
    ck_assert_uint_eq(T->n_down, 0);
}

/* We rekey the IKE SA (§1.3.2): new SPIs and SKEYSEED from the old SK_d
 * (§2.18); the old IKE SA is deleted on itself; the CHILD SA moves over. */
START_TEST(test_rekey_ike_ours)
{
    establish();
    uint32_t child_in = T->child.spi_in;
    size_t n0 = n_sent();
    ck_assert_int_eq(ike_sa_rekey_ike(T->sa), 0);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    const ike_chain *c = open_any(sent(n0), IKE_EXCH_CREATE_CHILD_SA, false, 2);
    ck_assert_int_lt(fg_notify_at(c, IKE_N_REKEY_SA, NULL), 0);
    ike_diag d;
    const ike_payload *sa_pl = ike_chain_find(c, IKE_PL_SA, NULL), *ni_pl = ike_chain_find(c, IKE_PL_NONCE, NULL),
                      *ke_pl = ike_chain_find(c, IKE_PL_KE, NULL);
    ck_assert_ptr_nonnull(sa_pl);
    ck_assert_ptr_nonnull(ni_pl);
    ck_assert_ptr_nonnull(ke_pl);
    ike_sa_view *v = malloc(sizeof(*v));
    ck_assert_int_eq(ike_sa_parse(sa_pl->body, v, &d), 0);
    ck_assert_uint_eq(v->prop[0].protocol, IKE_PROTO_IKE);
    ck_assert_uint_eq(v->prop[0].spi_len, 8);
    uint8_t spi_i[8], spi_r[8] = { 0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7 };
    memcpy(spi_i, v->prop[0].spi, 8);
    free(v);
    ck_assert(memcmp(spi_i, T->gw.spi_i, 8) != 0);
    buf_reader ni;
    ike_ke ke;
    ck_assert_int_eq(ike_nonce_parse(ni_pl->body, &ni, &d), 0);
    ck_assert_int_eq(ike_ke_parse(ke_pl->body, &ke, &d), 0);
    ck_assert_uint_eq(ke.group, KE_X25519);
    uint8_t ni_copy[IKE_NONCE_MAX], nr[32], pub[CRYPTO_MAX_KE_LEN], g_ir[CRYPTO_MAX_KE_LEN];
    size_t ni_len = ni.len, pub_len = 0, g_len = 0;
    memcpy(ni_copy, ni.p, ni.len);
    memset(nr, 0x55, sizeof(nr));
    fg_ke(KE_X25519, &ke, pub, &pub_len, g_ir, &g_len);
    fg_chain a;
    fg_chain_begin(&a);
    ike_sa_choice ch = ike_choice(1, spi_r);
    ike_build_sa_choice(&a.cw, &ch);
    ike_build_nonce(&a.cw, nr, sizeof(nr));
    ike_build_ke(&a.cw, KE_X25519, pub, pub_len);
    deliver_chain(&a, IKE_EXCH_CREATE_CHILD_SA, true, 2);
    fg_keys old;
    fg_rekey_ike_keys(&T->gw, false, spi_i, spi_r, g_ir, g_len, ni_copy, ni_len, nr, sizeof(nr), &old);
    ck_assert_uint_eq(T->n_ike_rekeyed, 1);
    ck_assert_uint_eq(T->n_rekeyed, 0); /* the CHILD SA is untouched */
    /* The old IKE SA is deleted on itself (message 3), confirmed there. */
    ck_assert_uint_eq(n_sent(), n0 + 2);
    fg_swap_keys(&T->gw, &old);
    ck_assert(fg_has_ike_delete(open_any(sent(n0 + 1), IKE_EXCH_INFORMATIONAL, false, 3)));
    fg_msg *m = malloc(sizeof(*m));
    fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, 3, 0, m);
    deliver(m);
    free(m);
    fg_swap_keys(&T->gw, &old);
    advance(20000);
    ck_assert_uint_eq(n_sent(), n0 + 2); /* confirmed: not retransmitted */
    ck_assert_uint_eq(T->n_down, 0);
    ck_assert_uint_eq(T->child.spi_in, child_in);
    new_ike_sa_works(&old, 0);
    fg_keys_free(&old);
}
END_TEST

/* The gateway rekeys the IKE SA (§1.3.2): we answer, the new SA has the
 * gateway as its original initiator (flags and key directions follow,
 * §2.18), its Delete of the old SA is answered there and the SA stays up. */
/* The gateway rekeys the IKE SA (request 0 on the current one, answered);
 * the fake gateway moves to the new SA, its old keys in old. */
static void gw_rekeys_ike(fg_keys *old)
{
    size_t n0 = n_sent();
    uint8_t gw_spi[8] = { 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7 }, ni[32], pub[CRYPTO_MAX_KE_LEN];
    size_t pub_len = 0;
    crypto_ke *gke = NULL;
    ck_assert_int_eq(crypto_ke_new(KE_X25519, &gke), 0);
    ck_assert_int_eq(crypto_ke_public(gke, pub, sizeof(pub), &pub_len), 0);
    memset(ni, 0x21, sizeof(ni));
    fg_chain c;
    fg_chain_begin(&c);
    ike_sa_choice offer = ike_choice(1, gw_spi);
    ike_build_sa_choice(&c.cw, &offer);
    ike_build_nonce(&c.cw, ni, sizeof(ni));
    ike_build_ke(&c.cw, KE_X25519, pub, pub_len);
    deliver_chain(&c, IKE_EXCH_CREATE_CHILD_SA, false, 0);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    const ike_chain *ans = open_any(sent(n0), IKE_EXCH_CREATE_CHILD_SA, true, 0);
    ike_diag d;
    ike_sa_choice ch;
    buf_reader nr;
    ike_ke kr;
    ck_assert_int_eq(ike_sa_parse_choice(ike_chain_find(ans, IKE_PL_SA, NULL)->body, &ch, &d), 0);
    ck_assert_int_eq(ike_nonce_parse(ike_chain_find(ans, IKE_PL_NONCE, NULL)->body, &nr, &d), 0);
    ck_assert_int_eq(ike_ke_parse(ike_chain_find(ans, IKE_PL_KE, NULL)->body, &kr, &d), 0);
    ck_assert_uint_eq(ch.protocol, IKE_PROTO_IKE);
    ck_assert_uint_eq(ch.spi_len, 8);
    ck_assert_uint_eq(ch.id[IKE_TT_KE], KE_X25519);
    ck_assert_uint_eq(kr.group, KE_X25519);
    uint8_t g_ir[CRYPTO_MAX_KE_LEN], nr_copy[IKE_NONCE_MAX], spi_r[8];
    size_t g_len = 0, nr_len = nr.len;
    char err[128];
    memcpy(nr_copy, nr.p, nr.len);
    memcpy(spi_r, ch.spi, 8);
    ck_assert_int_eq(crypto_ke_derive(gke, kr.data.p, kr.data.len, g_ir, sizeof(g_ir), &g_len, err, sizeof(err)), 0);
    crypto_ke_free(gke);
    ck_assert_uint_eq(T->n_ike_rekeyed, 1);
    fg_rekey_ike_keys(&T->gw, true, gw_spi, spi_r, g_ir, g_len, ni, sizeof(ni), nr_copy, nr_len, old);
}

START_TEST(test_rekey_ike_by_gateway)
{
    establish();
    size_t n0 = n_sent();
    fg_keys old;
    gw_rekeys_ike(&old);
    /* A request of ours waits until the gateway shows it has the new SA
     * (else it may arrive first and be dropped as for an unknown SA). */
    ck_assert_int_eq(ike_sa_rekey_child(T->sa, T->child.spi_in), 0);
    advance(500);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    /* The gateway deletes the old IKE SA on it: answered there, nothing
     * ends, and our request goes out on the new SA. */
    fg_swap_keys(&T->gw, &old);
    fg_chain del;
    fg_chain_begin(&del);
    ike_build_delete(&del.cw, IKE_PROTO_IKE, 0, NULL, 0);
    deliver_chain(&del, IKE_EXCH_INFORMATIONAL, false, 1);
    ck_assert_uint_eq(n_sent(), n0 + 3);
    ck_assert_uint_eq(open_any(sent(n0 + 1), IKE_EXCH_INFORMATIONAL, true, 1)->n, 0);
    fg_swap_keys(&T->gw, &old);
    ck_assert_uint_eq(T->n_down, 0);
    rekey_req r;
    take_child_rekey(sent(n0 + 2), 0, &r);
    uint8_t km[4 * CRYPTO_MAX_KEY_LEN];
    answer_child_rekey(&r, 0, 0x5a5a0008, 0x43, km, sizeof(km));
    ck_assert_uint_eq(T->n_rekeyed, 1);
    ck_assert_uint_eq(esp_delete_spi(open_any(fg_last(&T->gw), IKE_EXCH_INFORMATIONAL, false, 1)), r.old_spi);
    fg_msg *m = malloc(sizeof(*m));
    fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, 1, 0, m);
    deliver(m);
    free(m);
    new_ike_sa_works(&old, 2);
    fg_keys_free(&old);
}
END_TEST

/* CREATE_CHILD_SA requests that must change nothing: forged (bad ICV: not
 * answered), malformed or unacceptable (answered with an error notify),
 * and answers to our rekey that are not acceptable (nothing installed,
 * tried again later). The SA stays up and a valid rekey still works. */
START_TEST(test_rekey_forged_and_malformed)
{
    use_pfs();
    establish();
    uint32_t id = 0;
    size_t n0 = n_sent();
    uint8_t pub[CRYPTO_MAX_KE_LEN], ni[32];
    size_t pub_len;
    /* 1. Forged: a valid-looking rekey with a flipped ICV bit. */
    {
        fg_chain c;
        fg_chain_begin(&c);
        uint8_t spi[4];
        buf_store_be32(spi, T->gw.child_spi_r);
        ike_build_notify(&c.cw, IKE_PROTO_ESP, IKE_N_REKEY_SA, spi, 4, NULL, 0);
        ike_sa_choice ch = fg_esp_choice(1, 0x12340001, KE_X25519);
        ike_build_sa_choice(&c.cw, &ch);
        memset(ni, 1, sizeof(ni));
        ike_build_nonce(&c.cw, ni, sizeof(ni));
        fg_ke(KE_X25519, NULL, pub, &pub_len, NULL, NULL);
        ike_build_ke(&c.cw, KE_X25519, pub, pub_len);
        fg_build_ts_pair(&T->gw, &c.cw, true);
        fg_msg *m = malloc(sizeof(*m));
        fg_chain_send(&T->gw, &c, IKE_EXCH_CREATE_CHILD_SA, false, id, m);
        m->p[m->len - 1] ^= 0x01;
        deliver(m);
        free(m);
        ck_assert_uint_eq(n_sent(), n0);
    }
    /* 2..5: authentic, but malformed or unacceptable: an error answer each. */
    struct { const char *what; uint16_t want; } cases[] = {
        { "no SA payload", IKE_N_INVALID_SYNTAX },
        { "unknown SPI", IKE_N_CHILD_SA_NOT_FOUND },
        { "AES-CBC only", IKE_N_NO_PROPOSAL_CHOSEN },
        { "KE of another group", IKE_N_INVALID_KE_PAYLOAD },
        { "truncated TS", IKE_N_INVALID_SYNTAX },
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        fg_chain c;
        fg_chain_begin(&c);
        uint8_t spi[4];
        buf_store_be32(spi, k == 1 ? 0xdeadbeef : T->gw.child_spi_r);
        ike_build_notify(&c.cw, IKE_PROTO_ESP, IKE_N_REKEY_SA, spi, 4, NULL, 0);
        ike_sa_choice ch = fg_esp_choice(1, 0x12340002, KE_X25519);
        if (k == 2) {
            ch.id[IKE_TT_ENCR] = ENCR_AES_CBC;
            ch.present |= 1u << IKE_TT_INTEG;
            ch.id[IKE_TT_INTEG] = 12; /* HMAC-SHA2-256-128 */
        }
        if (k != 0)
            ike_build_sa_choice(&c.cw, &ch);
        ike_build_nonce(&c.cw, ni, sizeof(ni));
        uint16_t g = k == 3 ? KE_ECP256 : KE_X25519;
        fg_ke(g, NULL, pub, &pub_len, NULL, NULL);
        ike_build_ke(&c.cw, g, pub, pub_len);
        if (k == 4) {
            uint8_t bad[8] = { 1, 0, 0, 0, 7, 0, 0, 16 }; /* one TS, cut short */
            ike_build_raw(&c.cw, IKE_PL_TSI, false, bad, sizeof(bad));
            ike_build_raw(&c.cw, IKE_PL_TSR, false, bad, sizeof(bad));
        } else {
            fg_build_ts_pair(&T->gw, &c.cw, true);
        }
        size_t before = n_sent();
        deliver_chain(&c, IKE_EXCH_CREATE_CHILD_SA, false, id);
        ck_assert_msg(n_sent() == before + 1, "%s: not answered", cases[k].what);
        ike_notify n;
        ck_assert_msg(fg_notify_at(open_any(fg_last(&T->gw), IKE_EXCH_CREATE_CHILD_SA, true, id), cases[k].want, &n) >= 0,
                      "%s: no %s", cases[k].what, ike_notify_name(cases[k].want));
        if (k == 3)
            ck_assert_uint_eq(buf_load_be16(n.data.p), KE_X25519);
        id++;
    }
    ck_assert_uint_eq(T->n_rekeyed, 0);
    ck_assert_uint_eq(T->n_down, 0);
    /* 6. Our rekey answered with a proposal we did not offer, 7. without the
     * KE of our PFS group: nothing installed; tried again 10 s later. */
    uint32_t cur = T->child.spi_in;
    uint32_t msg = 2;
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(ike_sa_rekey_child(T->sa, cur), 0);
        rekey_req r;
        if (k == 1)
            advance(10000); /* the retry */
        take_child_rekey(fg_last(&T->gw), msg, &r);
        fg_chain c;
        fg_chain_begin(&c);
        ike_sa_choice ch = fg_esp_choice(1, 0x12340003, KE_X25519);
        if (k == 0)
            ch.id[IKE_TT_ENCR] = ENCR_CHACHA20_POLY1305;
        else
            ch.present &= (uint8_t)~(1u << IKE_TT_KE);
        ike_build_sa_choice(&c.cw, &ch);
        memset(ni, 9, sizeof(ni));
        ike_build_nonce(&c.cw, ni, sizeof(ni));
        if (k == 0) {
            fg_ke(KE_X25519, NULL, pub, &pub_len, NULL, NULL);
            ike_build_ke(&c.cw, KE_X25519, pub, pub_len);
        }
        fg_build_ts_pair(&T->gw, &c.cw, false);
        deliver_chain(&c, IKE_EXCH_CREATE_CHILD_SA, true, msg);
        ck_assert_uint_eq(T->n_rekeyed, 0);
        msg++;
    }
    /* The retry after that goes through. */
    size_t before = n_sent();
    advance(10000);
    ck_assert_uint_eq(n_sent(), before + 1);
    rekey_req r;
    take_child_rekey(fg_last(&T->gw), msg, &r);
    uint8_t km[4 * CRYPTO_MAX_KEY_LEN];
    answer_child_rekey(&r, msg, 0x12340004, 0x66, km, sizeof(km));
    ck_assert_uint_eq(T->n_rekeyed, 1);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST


/* open_any() with other gateway keys (a redundant IKE SA of a collision). */
static const ike_chain *open_any_keys(const fg_dgram *d, fg_keys *k, uint8_t exchange, bool response, uint32_t id)
{
    fg_swap_keys(&T->gw, k);
    const ike_chain *c = open_any(d, exchange, response, id);
    fg_swap_keys(&T->gw, k);
    return c;
}

/*
 * Both sides rekey the IKE SA at once (§2.8.1, §2.18): our request A is out
 * when the gateway's B arrives; each answers the other. The exchange with
 * the lowest nonce made the redundant IKE SA: its initiator deletes it, the
 * other initiator deletes the old one. The gateway's nonces decide here
 * (ours are random): its Ni all 0x00 makes B redundant, its Nr in A all
 * 0x00 makes A redundant. twice: the gateway sends a second IKE SA rekey
 * (message 1) after B, refused (TEMPORARY_FAILURE): B is the one that counts.
 */
static void gw_ike_rekey_refused(uint32_t msg_id);

static void ike_collision(bool we_win, bool twice)
{
    establish();
    size_t n0 = n_sent();
    ck_assert_int_eq(ike_sa_rekey_ike(T->sa), 0);
    const ike_chain *c = open_any(sent(n0), IKE_EXCH_CREATE_CHILD_SA, false, 2);
    ike_diag d;
    ike_sa_view *v = malloc(sizeof(*v));
    ck_assert_int_eq(ike_sa_parse(ike_chain_find(c, IKE_PL_SA, NULL)->body, v, &d), 0);
    uint8_t a_spi_i[8], a_spi_r[8] = { 0xa9, 1, 2, 3, 4, 5, 6, 7 }, b_spi_i[8] = { 0xb9, 1, 2, 3, 4, 5, 6, 7 };
    memcpy(a_spi_i, v->prop[0].spi, 8);
    free(v);
    buf_reader nb;
    ike_ke ke_a;
    ck_assert_int_eq(ike_nonce_parse(ike_chain_find(c, IKE_PL_NONCE, NULL)->body, &nb, &d), 0);
    ck_assert_int_eq(ike_ke_parse(ike_chain_find(c, IKE_PL_KE, NULL)->body, &ke_a, &d), 0);
    uint8_t a_ni[IKE_NONCE_MAX], a_ke[CRYPTO_MAX_KE_LEN];
    size_t a_ni_len = nb.len;
    memcpy(a_ni, nb.p, nb.len);
    memcpy(a_ke, ke_a.data.p, ke_a.data.len);
    ke_a.data.p = a_ke;

    /* B: the gateway's request, answered by us. */
    uint8_t b_ni[32], pub[CRYPTO_MAX_KE_LEN];
    size_t pub_len = 0;
    memset(b_ni, we_win ? 0x00 : 0xff, sizeof(b_ni));
    crypto_ke *gke = NULL;
    ck_assert_int_eq(crypto_ke_new(KE_X25519, &gke), 0);
    ck_assert_int_eq(crypto_ke_public(gke, pub, sizeof(pub), &pub_len), 0);
    fg_chain rq;
    fg_chain_begin(&rq);
    ike_sa_choice offer = ike_choice(1, b_spi_i);
    ike_build_sa_choice(&rq.cw, &offer);
    ike_build_nonce(&rq.cw, b_ni, sizeof(b_ni));
    ike_build_ke(&rq.cw, KE_X25519, pub, pub_len);
    deliver_chain(&rq, IKE_EXCH_CREATE_CHILD_SA, false, 0);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    const ike_chain *ans = open_any(sent(n0 + 1), IKE_EXCH_CREATE_CHILD_SA, true, 0);
    ike_sa_choice ch;
    ike_ke kr;
    ck_assert_int_eq(ike_sa_parse_choice(ike_chain_find(ans, IKE_PL_SA, NULL)->body, &ch, &d), 0);
    ck_assert_int_eq(ike_nonce_parse(ike_chain_find(ans, IKE_PL_NONCE, NULL)->body, &nb, &d), 0);
    ck_assert_int_eq(ike_ke_parse(ike_chain_find(ans, IKE_PL_KE, NULL)->body, &kr, &d), 0);
    uint8_t b_spi_r[8], b_nr[IKE_NONCE_MAX], g_b[CRYPTO_MAX_KE_LEN];
    size_t b_nr_len = nb.len, g_b_len = 0;
    char err[128];
    memcpy(b_spi_r, ch.spi, 8);
    memcpy(b_nr, nb.p, nb.len);
    ck_assert_int_eq(crypto_ke_derive(gke, kr.data.p, kr.data.len, g_b, sizeof(g_b), &g_b_len, err, sizeof(err)), 0);
    crypto_ke_free(gke);
    ck_assert_uint_eq(T->n_ike_rekeyed, 0); /* not before our own exchange is over */
    uint32_t gw_id = 1; /* the gateway's next request on the old SA */
    if (twice) {
        size_t n = n_sent();
        gw_ike_rekey_refused(gw_id++);
        n0 += n_sent() - n;
    }

    /* A: the gateway answers ours (on the old SA). */
    uint8_t a_nr[32], g_a[CRYPTO_MAX_KE_LEN];
    size_t g_a_len = 0;
    memset(a_nr, we_win ? 0xff : 0x00, sizeof(a_nr));
    fg_ke(KE_X25519, &ke_a, pub, &pub_len, g_a, &g_a_len);
    fg_chain an;
    fg_chain_begin(&an);
    ike_sa_choice cha = ike_choice(1, a_spi_r);
    ike_build_sa_choice(&an.cw, &cha);
    ike_build_nonce(&an.cw, a_nr, sizeof(a_nr));
    ike_build_ke(&an.cw, KE_X25519, pub, pub_len);
    /* The gateway's keys for B and A, both from the old SA. */
    fg_keys kb, old;
    fg_rekey_ike_keys(&T->gw, true, b_spi_i, b_spi_r, g_b, g_b_len, b_ni, sizeof(b_ni), b_nr, b_nr_len, &kb);
    fg_swap_keys(&T->gw, &kb); /* gw: old; kb: B */
    fg_msg *m = malloc(sizeof(*m));
    fg_chain_send(&T->gw, &an, IKE_EXCH_CREATE_CHILD_SA, true, 2, m);
    deliver(m);
    fg_rekey_ike_keys(&T->gw, false, a_spi_i, a_spi_r, g_a, g_a_len, a_ni, a_ni_len, a_nr, sizeof(a_nr), &old);
    /* gw: A, kb: B, old: the old SA */
    ck_assert_uint_eq(T->n_ike_rekeyed, 1);
    ck_assert_uint_eq(n_sent(), n0 + 3);
    if (we_win) {
        /* We stay on A and delete the old SA; the gateway deletes B. */
        fg_swap_keys(&T->gw, &old);
        ck_assert(fg_has_ike_delete(open_any(sent(n0 + 2), IKE_EXCH_INFORMATIONAL, false, 3)));
        fg_swap_keys(&T->gw, &old);
        fg_swap_keys(&T->gw, &kb); /* gw: B */
        fg_chain del;
        fg_chain_begin(&del);
        ike_build_delete(&del.cw, IKE_PROTO_IKE, 0, NULL, 0);
        deliver_chain(&del, IKE_EXCH_INFORMATIONAL, false, 0);
        ck_assert_uint_eq(open_any(fg_last(&T->gw), IKE_EXCH_INFORMATIONAL, true, 0)->n, 0);
        fg_swap_keys(&T->gw, &kb); /* gw: A */
    } else {
        /* We move to B and delete A; the gateway deletes the old SA. */
        fg_keys ka;
        memset(&ka, 0, sizeof(ka));
        fg_swap_keys(&T->gw, &ka);     /* ka: A */
        ck_assert(fg_has_ike_delete(open_any_keys(sent(n0 + 2), &ka, IKE_EXCH_INFORMATIONAL, false, 0)));
        fg_swap_keys(&T->gw, &old);    /* gw: old */
        fg_chain del;
        fg_chain_begin(&del);
        ike_build_delete(&del.cw, IKE_PROTO_IKE, 0, NULL, 0);
        deliver_chain(&del, IKE_EXCH_INFORMATIONAL, false, gw_id);
        ck_assert_uint_eq(open_any(fg_last(&T->gw), IKE_EXCH_INFORMATIONAL, true, gw_id)->n, 0);
        fg_swap_keys(&T->gw, &old);    /* gw: nothing; old: old */
        fg_swap_keys(&T->gw, &kb);     /* gw: B */
        fg_keys_free(&kb);
        kb = ka;
    }
    free(m);
    ck_assert_uint_eq(T->n_down, 0);
    new_ike_sa_works(&old, 0);
    fg_keys_free(&old);
    fg_keys_free(&kb);
}

START_TEST(test_rekey_ike_collision_we_win)
{
    ike_collision(true, false);
}
END_TEST

START_TEST(test_rekey_ike_collision_we_lose)
{
    ike_collision(false, false);
}
END_TEST

/* The gateway rekeys the IKE SA a second time during the collision: the
 * second one is refused (TEMPORARY_FAILURE, as for a CHILD SA), so its
 * first new SA is not forgotten (never used, never deleted). It wins the
 * collision here: we move to that first one, and it carries requests. */
START_TEST(test_rekey_ike_double_collision)
{
    ike_collision(false, true);
}
END_TEST

/* ------------------------------------------- exchanges interleaved (task.h) */

/* Our CHILD SA rekey in flight (message 2) on a newly established SA. */
static void child_rekey_in_flight(rekey_req *r, size_t *n0)
{
    establish();
    *n0 = n_sent();
    ck_assert_int_eq(ike_sa_rekey_child(T->sa, T->child.spi_in), 0);
    ck_assert_uint_eq(n_sent(), *n0 + 1);
    take_child_rekey(sent(*n0), 2, r);
}

static void answer_empty(uint32_t msg_id)
{
    fg_msg *m = malloc(sizeof(*m));
    fg_notify_response(&T->gw, IKE_EXCH_INFORMATIONAL, msg_id, 0, m);
    deliver(m);
    free(m);
}

/* A liveness check that comes due while our rekey is unanswered waits
 * (window size 1, RFC 7296 §2.3), then yields to the old CHILD SA's Delete;
 * those answers show the gateway alive, so it goes a period later, with
 * the next message ID. */
START_TEST(test_queue_dpd_behind_rekey)
{
    enable_dpd();
    rekey_req r;
    size_t n0;
    child_rekey_in_flight(&r, &n0);
    for (int i = 0; i < 9; i++)
        advance(1000);
    advance(999);
    ck_assert_uint_eq(n_sent(), n0 + 1 + TRIES); /* the rekey's retransmissions only */
    for (size_t i = n0 + 1; i < n_sent(); i++)
        assert_same_bytes(sent(i), sent(n0));
    advance(1); /* the check is due now: still nothing new */
    size_t n1 = n_sent();
    ck_assert_uint_eq(n1, n0 + 1 + TRIES);
    uint8_t km[4 * CRYPTO_MAX_KEY_LEN];
    answer_child_rekey(&r, 2, 0x5a5a0001, 0x77, km, sizeof(km));
    ck_assert_uint_eq(T->n_rekeyed, 1);
    ck_assert_uint_eq(n_sent(), n1 + 1);
    ck_assert_uint_eq(esp_delete_spi(open_any(sent(n1), IKE_EXCH_INFORMATIONAL, false, 3)), r.old_spi);
    answer_empty(3);
    ck_assert_uint_eq(n_sent(), n1 + 1);
    advance(10000);
    ck_assert_uint_eq(n_sent(), n1 + 1);
    advance(1);
    ck_assert_uint_eq(n_sent(), n1 + 2);
    ck_assert_uint_eq(open_any(sent(n1 + 1), IKE_EXCH_INFORMATIONAL, false, 4)->n, 0);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* An IKE SA rekey asked for while the CHILD SA rekey is in flight waits for
 * it and for the old CHILD SA's Delete, each with its own message ID. */
START_TEST(test_queue_ike_rekey_behind_child_rekey)
{
    rekey_req r;
    size_t n0;
    child_rekey_in_flight(&r, &n0);
    ck_assert_int_eq(ike_sa_rekey_ike(T->sa), 0);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    uint8_t km[4 * CRYPTO_MAX_KEY_LEN];
    answer_child_rekey(&r, 2, 0x5a5a0001, 0x77, km, sizeof(km));
    ck_assert_uint_eq(n_sent(), n0 + 2);
    ck_assert_uint_eq(esp_delete_spi(open_any(sent(n0 + 1), IKE_EXCH_INFORMATIONAL, false, 3)), r.old_spi);
    answer_empty(3);
    ck_assert_uint_eq(n_sent(), n0 + 3);
    const ike_chain *c = open_any(sent(n0 + 2), IKE_EXCH_CREATE_CHILD_SA, false, 4);
    ck_assert_int_lt(fg_notify_at(c, IKE_N_REKEY_SA, NULL), 0);
    const ike_payload *sa_pl = ike_chain_find(c, IKE_PL_SA, NULL);
    ck_assert_ptr_nonnull(sa_pl);
    ike_sa_view *v = malloc(sizeof(*v));
    ike_diag d;
    ck_assert_int_eq(ike_sa_parse(sa_pl->body, v, &d), 0);
    ck_assert_uint_eq(v->prop[0].protocol, IKE_PROTO_IKE);
    free(v);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* Requests of the gateway while our CREATE_CHILD_SA is in flight are
 * answered at once: a liveness check (empty), an IKE SA rekey (refused with
 * TEMPORARY_FAILURE, §2.25.2: it would replace the SA our exchange runs
 * on); our rekey then completes. */
START_TEST(test_gateway_requests_during_our_rekey)
{
    rekey_req r;
    size_t n0;
    child_rekey_in_flight(&r, &n0);
    fg_chain c;
    fg_chain_begin(&c);
    deliver_chain(&c, IKE_EXCH_INFORMATIONAL, false, 0);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    ck_assert_uint_eq(open_any(sent(n0 + 1), IKE_EXCH_INFORMATIONAL, true, 0)->n, 0);
    uint8_t gw_spi[8] = { 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7 }, ni[32], pub[CRYPTO_MAX_KE_LEN];
    size_t pub_len = 0;
    crypto_ke *gke = NULL;
    ck_assert_int_eq(crypto_ke_new(KE_X25519, &gke), 0);
    ck_assert_int_eq(crypto_ke_public(gke, pub, sizeof(pub), &pub_len), 0);
    crypto_ke_free(gke);
    memset(ni, 0x21, sizeof(ni));
    fg_chain_begin(&c);
    ike_sa_choice offer = ike_choice(1, gw_spi);
    ike_build_sa_choice(&c.cw, &offer);
    ike_build_nonce(&c.cw, ni, sizeof(ni));
    ike_build_ke(&c.cw, KE_X25519, pub, pub_len);
    deliver_chain(&c, IKE_EXCH_CREATE_CHILD_SA, false, 1);
    ck_assert_uint_eq(n_sent(), n0 + 3);
    const ike_chain *ans = open_any(sent(n0 + 2), IKE_EXCH_CREATE_CHILD_SA, true, 1);
    ck_assert_int_ge(fg_notify_at(ans, IKE_N_TEMPORARY_FAILURE, NULL), 0);
    ck_assert_ptr_null(ike_chain_find(ans, IKE_PL_SA, NULL));
    ck_assert_uint_eq(T->n_ike_rekeyed, 0);
    uint8_t km[4 * CRYPTO_MAX_KEY_LEN];
    answer_child_rekey(&r, 2, 0x5a5a0001, 0x77, km, sizeof(km));
    ck_assert_uint_eq(T->n_rekeyed, 1);
    ck_assert_uint_eq(T->rekeyed[0].spi_in, r.new_spi);
    ck_assert_uint_eq(esp_delete_spi(open_any(fg_last(&T->gw), IKE_EXCH_INFORMATIONAL, false, 3)), r.old_spi);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* The gateway deletes the IKE SA while our rekey is in flight: answered,
 * the SA ends; the rekey's late answer installs nothing, and the queued
 * IKE SA rekey never goes. */
START_TEST(test_gateway_deletes_ike_during_our_rekey)
{
    rekey_req r;
    size_t n0;
    child_rekey_in_flight(&r, &n0);
    ck_assert_int_eq(ike_sa_rekey_ike(T->sa), 0);
    fg_chain c;
    fg_chain_begin(&c);
    ike_build_delete(&c.cw, IKE_PROTO_IKE, 0, NULL, 0);
    deliver_chain(&c, IKE_EXCH_INFORMATIONAL, false, 0);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    open_any(sent(n0 + 1), IKE_EXCH_INFORMATIONAL, true, 0);
    assert_down(M2MVPN_E_PROTOCOL);
    uint8_t km[4 * CRYPTO_MAX_KEY_LEN];
    answer_child_rekey(&r, 2, 0x5a5a0001, 0x77, km, sizeof(km));
    ck_assert_uint_eq(T->n_rekeyed, 0);
    advance(60000);
    ck_assert_uint_eq(n_sent(), n0 + 2);
}
END_TEST

/* The gateway rekeys the IKE SA while our liveness check is out: the check
 * is dropped (the rekey showed the gateway alive), and the next one goes a
 * period later on the new SA. */
START_TEST(test_dpd_abandoned_by_ike_rekey)
{
    enable_dpd();
    establish();
    size_t n0 = n_sent();
    advance(10000);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    open_sent(sent(n0), IKE_EXCH_INFORMATIONAL, false, 2);
    fg_keys old;
    gw_rekeys_ike(&old);
    fg_swap_keys(&T->gw, &old); /* it deletes the old SA there */
    fg_chain del;
    fg_chain_begin(&del);
    ike_build_delete(&del.cw, IKE_PROTO_IKE, 0, NULL, 0);
    deliver_chain(&del, IKE_EXCH_INFORMATIONAL, false, 1);
    fg_swap_keys(&T->gw, &old);
    size_t n1 = n_sent();
    advance(10000);
    ck_assert_uint_eq(n_sent(), n1);
    advance(1);
    ck_assert_uint_eq(n_sent(), n1 + 1);
    ck_assert_uint_eq(open_any(sent(n1), IKE_EXCH_INFORMATIONAL, false, 0)->n, 0);
    ck_assert_uint_eq(T->n_down, 0);
    fg_keys_free(&old);
}
END_TEST

/* The same, but the gateway never deletes the old SA: we do, after a
 * while, on it. The dropped check keeps its message ID (2), and the
 * Delete takes the next one (3): with 2, a gateway that got the check
 * answers the Delete from its cache (§2.1) and keeps the old SA, while
 * that empty answer passes for the confirmation. A gateway that never got
 * the check waits for ID 2 (window size 1, §2.3) and would drop 3: so the
 * check goes again first, unchanged, and the Delete once it is answered.
 * A late copy of the check's answer changes nothing: the Delete is
 * retransmitted until its own answer comes. */
START_TEST(test_dpd_abandoned_by_ike_rekey_then_our_delete)
{
    enable_dpd();
    establish();
    size_t n0 = n_sent();
    advance(10000);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    open_sent(sent(n0), IKE_EXCH_INFORMATIONAL, false, 2);
    fg_keys old;
    gw_rekeys_ike(&old);
    size_t n1 = n_sent();
    advance(10000);
    ck_assert_uint_eq(n_sent(), n1 + 1);
    assert_same_bytes(sent(n1), sent(n0)); /* the check again, on the old SA */
    fg_swap_keys(&T->gw, &old); /* gw: the old SA */
    answer_empty(2); /* its answer: the Delete goes at once */
    ck_assert_uint_eq(n_sent(), n1 + 2);
    ck_assert(fg_has_ike_delete(open_any(sent(n1 + 1), IKE_EXCH_INFORMATIONAL, false, 3)));
    answer_empty(2); /* a late copy */
    advance(2000);
    ck_assert_uint_eq(n_sent(), n1 + 4); /* the next liveness check (new SA) and ... */
    const fg_dgram *again = NULL;
    for (size_t i = n1 + 2; i < n_sent(); i++)
        if (fg_open(&T->gw, sent(i)) == 0)
            again = sent(i);
    ck_assert_ptr_nonnull(again); /* ... the Delete again, on the old SA */
    assert_same_bytes(again, sent(n1 + 1));
    answer_empty(3); /* the Delete's own answer: done */
    fg_swap_keys(&T->gw, &old); /* gw: the new SA */
    answer_empty(0); /* the liveness check on the new SA */
    size_t n2 = n_sent();
    advance(20000);
    ck_assert_uint_gt(n_sent(), n2);
    for (size_t i = n2; i < n_sent(); i++) { /* liveness checks on the new SA: no Delete any more */
        ck_assert_int_eq(fg_open(&T->gw, sent(i)), 0);
        ck_assert(!fg_has_ike_delete(&T->gw.rq_inner));
    }
    ck_assert_uint_eq(T->n_down, 0);
    fg_keys_free(&old);
}
END_TEST

/* The same when the dropped check is never answered on the old SA: it goes
 * again 3 times (at 0, 2 and 6 s), then the Delete goes all the same (a
 * gateway that got the check takes it), and its answer ends the old SA. */
START_TEST(test_dpd_abandoned_by_ike_rekey_never_answered)
{
    enable_dpd();
    establish();
    size_t n0 = n_sent();
    advance(10000);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    open_sent(sent(n0), IKE_EXCH_INFORMATIONAL, false, 2);
    T->set->items[0].ike.dpd_s = 0; /* no more checks: only the old SA sends */
    fg_keys old;
    gw_rekeys_ike(&old);
    size_t n1 = n_sent();
    advance(10000);
    advance(2000);
    advance(4000);
    ck_assert_uint_eq(n_sent(), n1 + 3);
    for (size_t i = n1; i < n1 + 3; i++)
        assert_same_bytes(sent(i), sent(n0));
    advance(8000 - 1);
    ck_assert_uint_eq(n_sent(), n1 + 3);
    advance(1);
    ck_assert_uint_eq(n_sent(), n1 + 4);
    fg_swap_keys(&T->gw, &old); /* gw: the old SA */
    ck_assert(fg_has_ike_delete(open_any(sent(n1 + 3), IKE_EXCH_INFORMATIONAL, false, 3)));
    answer_empty(3);
    fg_swap_keys(&T->gw, &old);
    assert_quiet_from_now();
    ck_assert_uint_eq(T->n_down, 0);
    fg_keys_free(&old);
}
END_TEST

/* The gateway's IKE SA rekey request (message msg_id on the current SA),
 * refused: TEMPORARY_FAILURE and no SA (§2.25.2), nothing switched. */
static void gw_ike_rekey_refused(uint32_t msg_id)
{
    size_t n0 = n_sent();
    unsigned rekeyed = T->n_ike_rekeyed;
    uint8_t gw_spi[8] = { 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7 }, ni[32], pub[CRYPTO_MAX_KE_LEN];
    size_t pub_len = 0;
    crypto_ke *gke = NULL;
    ck_assert_int_eq(crypto_ke_new(KE_X25519, &gke), 0);
    ck_assert_int_eq(crypto_ke_public(gke, pub, sizeof(pub), &pub_len), 0);
    crypto_ke_free(gke);
    memset(ni, 0x21, sizeof(ni));
    fg_chain c;
    fg_chain_begin(&c);
    ike_sa_choice offer = ike_choice(1, gw_spi);
    ike_build_sa_choice(&c.cw, &offer);
    ike_build_nonce(&c.cw, ni, sizeof(ni));
    ike_build_ke(&c.cw, KE_X25519, pub, pub_len);
    deliver_chain(&c, IKE_EXCH_CREATE_CHILD_SA, false, msg_id);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    const ike_chain *ans = open_any(sent(n0), IKE_EXCH_CREATE_CHILD_SA, true, msg_id);
    ck_assert_int_ge(fg_notify_at(ans, IKE_N_TEMPORARY_FAILURE, NULL), 0);
    ck_assert_ptr_null(ike_chain_find(ans, IKE_PL_SA, NULL));
    ck_assert_uint_eq(T->n_ike_rekeyed, rekeyed);
}

/* While our IKE SA rekey is in flight, the gateway's own crosses it (a
 * collision, §2.8.1), and then it deletes our only CHILD SA (§2.25.2: a
 * peer rekeying the IKE SA answers that as usual). That Delete is not the
 * IKE SA's: we do not move to the gateway's new IKE SA as if it settled the
 * collision, keeping an IKE SA without the CHILD SA it was for; the IKE SA
 * ends, as when the gateway deletes the CHILD SA at any other time. */
START_TEST(test_gateway_deletes_child_during_ike_rekey_collision)
{
    establish();
    size_t n0 = n_sent();
    ck_assert_int_eq(ike_sa_rekey_ike(T->sa), 0);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    open_any(sent(n0), IKE_EXCH_CREATE_CHILD_SA, false, 2);
    uint8_t gw_spi[8] = { 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7 }, ni[32], pub[CRYPTO_MAX_KE_LEN];
    size_t pub_len = 0;
    fg_ke(KE_X25519, NULL, pub, &pub_len, NULL, NULL);
    memset(ni, 0x21, sizeof(ni));
    fg_chain c;
    fg_chain_begin(&c);
    ike_sa_choice offer = ike_choice(1, gw_spi);
    ike_build_sa_choice(&c.cw, &offer);
    ike_build_nonce(&c.cw, ni, sizeof(ni));
    ike_build_ke(&c.cw, KE_X25519, pub, pub_len);
    deliver_chain(&c, IKE_EXCH_CREATE_CHILD_SA, false, 0);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    ck_assert_ptr_nonnull(ike_chain_find(open_any(sent(n0 + 1), IKE_EXCH_CREATE_CHILD_SA, true, 0), IKE_PL_SA, NULL));
    gw_deletes_esp(T->gw.child_spi_r, 1);
    ck_assert_uint_eq(n_sent(), n0 + 3);
    ck_assert_uint_eq(esp_delete_spi(open_any(sent(n0 + 2), IKE_EXCH_INFORMATIONAL, true, 1)), T->child.spi_in);
    ck_assert_uint_eq(T->n_ike_rekeyed, 0);
    assert_down(M2MVPN_E_PROTOCOL);
    assert_detail_has("deleted the CHILD SA");
}
END_TEST

/* The gateway rekeys the IKE SA while our address update (MOBIKE) is in
 * flight: refused (§2.25.2). Switching would strand the update, built under
 * the old SA's SPIs, keys and message ID: its answer would come on an SA we
 * no longer use, the window stay blocked and the SA fail. Refused, the
 * update's answer completes it and the liveness checks go on. */
START_TEST(test_ike_rekey_refused_during_update)
{
    enable_dpd();
    establish_mobike();
    struct sockaddr_storage now;
    socklen_t now_len;
    set_addr(&now, &now_len, "198.51.100.77", 4500);
    size_t n0 = n_sent();
    ck_assert_int_eq(ike_sa_update_addresses(T->sa, &now, now_len, "moved"), 0);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    uint8_t cookie[16];
    take_update(n0, 2, cookie);
    gw_ike_rekey_refused(0);
    answer_update(2, cookie, sizeof(cookie));
    ck_assert_uint_eq(T->n_updated, 1);
    ck_assert_int_eq(T->updated_err, 0);
    /* The next liveness check a period later, with the next message ID. */
    size_t n1 = n_sent();
    advance(10000);
    ck_assert_uint_eq(n_sent(), n1 + 1);
    open_sent(sent(n1), IKE_EXCH_INFORMATIONAL, false, 3);
    ck_assert_uint_eq(T->n_ike_rekeyed, 0);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* Our CHILD SA rekey, asked for while our address update is in flight,
 * waits; the gateway rekeys that CHILD SA meanwhile. Ours is then moot (it
 * was for an SA on its way out): no CREATE_CHILD_SA goes once the update
 * is answered. A rekey of the new SA still goes. */
START_TEST(test_queued_child_rekey_moot_after_gateway_rekey)
{
    use_pfs();
    establish_mobike();
    uint32_t old_in = T->child.spi_in;
    struct sockaddr_storage now;
    socklen_t now_len;
    set_addr(&now, &now_len, "198.51.100.77", 4500);
    size_t n0 = n_sent();
    ck_assert_int_eq(ike_sa_update_addresses(T->sa, &now, now_len, "moved"), 0);
    uint8_t cookie[16];
    take_update(n0, 2, cookie);
    ck_assert_int_eq(ike_sa_rekey_child(T->sa, old_in), 0);
    ck_assert_uint_eq(n_sent(), n0 + 1); /* waits behind the update */
    uint8_t pub[CRYPTO_MAX_KE_LEN], ni[32];
    size_t pub_len = 0;
    gw_child_rekey_request(0, T->gw.child_spi_r, 0x6b6b0002, 0x33, pub, &pub_len, ni);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    ck_assert_uint_eq(T->n_rekeyed, 1);
    ck_assert_uint_eq(T->rekeyed_old[0], old_in);
    uint32_t new_in = T->rekeyed[0].spi_in;
    answer_update(2, cookie, sizeof(cookie));
    ck_assert_uint_eq(T->n_updated, 1);
    ck_assert_int_eq(T->updated_err, 0);
    ck_assert_uint_eq(n_sent(), n0 + 2); /* no CREATE_CHILD_SA of ours */
    advance(5000);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    ck_assert_uint_eq(T->n_rekeyed, 1);
    ck_assert_int_eq(ike_sa_rekey_child(T->sa, new_in), 0);
    ck_assert_uint_eq(n_sent(), n0 + 3);
    rekey_req r;
    take_child_rekey(sent(n0 + 2), 3, &r);
    ck_assert_uint_eq(r.old_spi, new_in);
    ck_assert_uint_eq(T->n_down, 0);
}
END_TEST

/* Our IKE SA rekey, asked for while our liveness check is out, waits; the
 * gateway rekeys the IKE SA meanwhile. Ours is then moot (the new SA has
 * its own lifetime): none goes on the new SA. */
START_TEST(test_queued_ike_rekey_moot_after_gateway_rekey)
{
    enable_dpd();
    establish();
    size_t n0 = n_sent();
    advance(10000);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    ck_assert_int_eq(ike_sa_rekey_ike(T->sa), 0);
    ck_assert_uint_eq(n_sent(), n0 + 1); /* waits behind the check */
    fg_keys old;
    gw_rekeys_ike(&old);
    fg_swap_keys(&T->gw, &old); /* it deletes the old SA there: the new one may carry requests */
    fg_chain del;
    fg_chain_begin(&del);
    ike_build_delete(&del.cw, IKE_PROTO_IKE, 0, NULL, 0);
    deliver_chain(&del, IKE_EXCH_INFORMATIONAL, false, 1);
    fg_swap_keys(&T->gw, &old);
    ck_assert_uint_eq(n_sent(), n0 + 3); /* the two answers only */
    advance(5000);
    ck_assert_uint_eq(n_sent(), n0 + 3);
    ck_assert_uint_eq(T->n_ike_rekeyed, 1);
    ck_assert_uint_eq(T->n_down, 0);
    fg_keys_free(&old);
}
END_TEST

/* After the gateway's IKE SA rekey our requests wait at most 1 s for a
 * sign that it has the new SA. Without one (its Delete of the old SA lost,
 * say) the wait simply ends: no timer is left due at once over and over (a
 * busy loop), and a request then goes at once. */
START_TEST(test_quiet_wait_after_gateway_ike_rekey_ends)
{
    establish();
    fg_keys old;
    gw_rekeys_ike(&old);
    advance(1000);
    ck_assert_int_gt(core_loop_timeout_ms(&T->loop), 0);
    size_t n0 = n_sent();
    ck_assert_int_eq(ike_sa_rekey_child(T->sa, T->child.spi_in), 0);
    ck_assert_uint_eq(n_sent(), n0 + 1);
    rekey_req r;
    take_child_rekey(sent(n0), 0, &r);
    ck_assert_uint_eq(T->n_down, 0);
    fg_keys_free(&old);
}
END_TEST

/* IKE_SA_INIT is the SA's first task, started once: a second start while
 * it is under way or later sends nothing. */
START_TEST(test_start_once)
{
    start();
    ck_assert_int_eq(ike_sa_start(T->sa), M2MVPN_E_STATE);
    ck_assert_uint_eq(n_sent(), 1);
    answer_init();
    answer_auth(NULL);
    ck_assert_uint_eq(T->n_established, 1);
    size_t n = n_sent();
    ck_assert_int_eq(ike_sa_start(T->sa), M2MVPN_E_STATE);
    ck_assert_uint_eq(n_sent(), n);
}
END_TEST

/* Closing while a rekey is in flight and another queued: the Delete takes
 * the next message ID, the queued rekey never goes. */
START_TEST(test_close_with_tasks_queued)
{
    rekey_req r;
    size_t n0;
    child_rekey_in_flight(&r, &n0);
    ck_assert_int_eq(ike_sa_rekey_ike(T->sa), 0);
    ike_sa_close(T->sa);
    ck_assert_uint_eq(n_sent(), n0 + 2);
    ck_assert(fg_has_ike_delete(open_any(sent(n0 + 1), IKE_EXCH_INFORMATIONAL, false, 3)));
    answer_empty(3);
    assert_down(0);
    ck_assert_uint_eq(n_sent(), n0 + 2);
}
END_TEST

static Suite *ike_sa_suite(void)
{
    Suite *s = suite_create("ike_sa");
    struct {
        const char *name;
        const TTest *t;
    } cases[] = {
        { "happy", test_psk_happy_path },
        { "happy", test_reauth_request },
        { "retransmit", test_retransmit_init },
        { "retransmit", test_retransmit_auth },
        { "stray", test_stray_responses_ignored },
        { "gateway_requests", test_gateway_liveness_and_delete },
        { "gateway_requests", test_gateway_deletes_child },
        { "gateway_requests", test_gateway_create_child_refused },
        { "cookie", test_cookie },
        { "invalid_ke", test_invalid_ke_retry },
        { "invalid_ke", test_forged_invalid_ke_then_real_answer },
        { "invalid_ke", test_invalid_ke_twice },
        { "invalid_ke", test_invalid_ke_same_group },
        { "invalid_ke", test_invalid_ke_not_offered },
        { "no_proposal", test_no_proposal_chosen },
        { "no_proposal", test_forged_init_error_then_real_answer },
        { "no_proposal", test_init_answer_only_from_gateway_port_500 },
        { "auth", test_auth_failed_notify },
        { "auth", test_auth_peer_wrong_psk },
        { "auth", test_auth_peer_other_identity },
        { "ts", test_ts_unacceptable },
        { "critical", test_unsupported_critical_payload },
        { "tampered", test_tampered_response_dropped },
        { "fragments", test_fragmented_auth_response },
        { "fragments", test_forged_fragments_interleaved },
        { "dpd", test_dpd_answered_then_close },
        { "dpd", test_dpd_unanswered_times_out },
        { "dpd", test_dpd_not_postponed_by_forgery },
        { "dpd", test_close_during_dpd },
        { "dpd", test_response_of_another_exchange_ignored },
        { "mobike", test_mobike_announced_and_update },
        { "mobike", test_mobike_reauth_keeps_addresses },
        { "mobike", test_mobike_cookie2_must_match },
        { "mobike", test_mobike_not_announced_by_the_gateway },
        { "mobike", test_mobike_addresses_only_authenticated },
        { "mobike", test_mobike_nat_mapping_change },
        { "mobike", test_mobike_move_during_request },
        { "mobike", test_mobike_resent_update_natd },
        { "mobike", test_mobike_failover },
        { "mobike", test_mobike_failover_none_answers },
        { "mobike", test_mobike_failover_update_refused },
        { "mobike", test_mobike_failover_update_without_cookie2 },
        { "mobike", test_mobike_failover_answer_from_elsewhere },
        { "mobike", test_mobike_failover_roam_during_probe },
        { "mobike", test_mobike_failover_probe_ends_with_its_request },
        { "mobike", test_mobike_mapped_addresses_refused },
        { "rekey", test_rekey_child_ours },
        { "rekey", test_rekey_child_ours_pfs },
        { "rekey", test_rekey_child_by_gateway },
        { "rekey", test_fragmented_answer_resent_whole },
        { "rekey", test_fragmented_answer_resent_by_replaced_ike_sa },
        { "rekey", test_replaced_ike_sa_response_of_another_exchange },
        { "rekey", test_rekey_child_double_collision },
        { "rekey", test_rekey_child_by_gateway_without_pfs },
        { "rekey", test_rekey_child_collision_we_win },
        { "rekey", test_rekey_child_collision_we_lose },
        { "rekey", test_rekey_ike_ours },
        { "rekey", test_rekey_ike_by_gateway },
        { "rekey", test_rekey_forged_and_malformed },
        { "rekey", test_rekey_ike_collision_we_win },
        { "rekey", test_rekey_ike_collision_we_lose },
        { "rekey", test_rekey_ike_double_collision },
        { "interleaved", test_queue_dpd_behind_rekey },
        { "interleaved", test_queue_ike_rekey_behind_child_rekey },
        { "interleaved", test_gateway_requests_during_our_rekey },
        { "interleaved", test_gateway_deletes_ike_during_our_rekey },
        { "interleaved", test_close_with_tasks_queued },
        { "interleaved", test_start_once },
        { "interleaved", test_dpd_abandoned_by_ike_rekey },
        { "interleaved", test_dpd_abandoned_by_ike_rekey_then_our_delete },
        { "interleaved", test_dpd_abandoned_by_ike_rekey_never_answered },
        { "interleaved", test_ike_rekey_refused_during_update },
        { "interleaved", test_gateway_deletes_child_during_ike_rekey_collision },
        { "interleaved", test_queued_child_rekey_moot_after_gateway_rekey },
        { "interleaved", test_queued_ike_rekey_moot_after_gateway_rekey },
        { "interleaved", test_quiet_wait_after_gateway_ike_rekey_ends },
    };
    TCase *tc = NULL;
    const char *prev = NULL;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (!prev || strcmp(prev, cases[i].name) != 0) {
            tc = tcase_create(cases[i].name);
            tcase_add_checked_fixture(tc, setup, teardown);
            suite_add_tcase(s, tc);
            prev = cases[i].name;
        }
        tcase_add_test(tc, cases[i].t);
    }
    TCase *forged = tcase_create("forged_init");
    tcase_add_checked_fixture(forged, setup, teardown);
    int n_forgeries = (int)(sizeof(forgeries) / sizeof(forgeries[0]));
    tcase_add_loop_test(forged, test_forged_init_then_real_answer, 0, n_forgeries);
    tcase_add_loop_test(forged, test_forged_init_alone, 0, n_forgeries);
    tcase_add_test(forged, test_forged_init_without_hash_notify_ed25519);
    tcase_add_test(forged, test_forged_init_without_hash_notify_alone);
    suite_add_tcase(s, forged);
    TCase *ts = tcase_create("ts_answers");
    tcase_add_checked_fixture(ts, setup, teardown);
    tcase_add_loop_test(ts, test_ts_answers_refused, 0, 4);
    tcase_add_test(ts, test_dual_stack_request);
    tcase_add_test(ts, test_ipv6_only_request);
    tcase_add_loop_test(ts, test_dual_stack_reply, 0, 4);
    suite_add_tcase(s, ts);
    return s;
}

int main(void)
{
    Suite *s = ike_sa_suite();
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
