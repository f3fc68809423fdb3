/* SPDX-License-Identifier: Apache-2.0 */
/* The IKE SA: state, message IDs, sending with retransmission, input dispatch. */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/secmem.h"
#include "sa_internal.h"

static const char *const state_names[] = {
    [IKE_SA_IDLE] = "IDLE",
    [IKE_SA_INIT_SENT] = "INIT_SENT",
    [IKE_SA_AUTH_SENT] = "AUTH_SENT",
    [IKE_SA_ESTABLISHED] = "ESTABLISHED",
    [IKE_SA_DELETING] = "DELETING",
    [IKE_SA_DOWN] = "DOWN",
};

const char *ike_sa_state_name(ike_sa_state st)
{
    return (unsigned)st < sizeof(state_names) / sizeof(state_names[0]) ? state_names[st] : "?";
}

void ike_sa_set_state(ike_sa *sa, ike_sa_state st)
{
    if (sa->state == st)
        return;
    LOG_INFO(sa->log, "ike", "IKE SA %s -> %s", ike_sa_state_name(sa->state), ike_sa_state_name(st));
    sa->state = st;
}

void ike_sa_format_addr(const struct sockaddr_storage *ss, char *out, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
    }
    snprintf(out, len, ss->ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
}

static void retransmit(void *arg);

int ike_sa_new(core_loop *loop, core_log *log, const ike_config *cfg, const ike_hooks *hooks,
               ike_sa **ret, char *err, size_t err_len)
{
    if (!loop || !cfg || !cfg->prof || !hooks || !hooks->send || !ret) {
        snprintf(err, err_len, "ike_sa_new: missing argument");
        return M2MVPN_E_INVAL;
    }
    ike_sa *sa = calloc(1, sizeof(*sa));
    if (!sa) {
        snprintf(err, err_len, "out of memory");
        return M2MVPN_E_NOMEM;
    }
    sa->loop = loop;
    sa->log = log;
    sa->cfg = *cfg;
    sa->hooks = *hooks;
    sa->state = IKE_SA_IDLE;
    sa->initiator = true;
    ike_sa_format_addr(&cfg->remote, sa->gw_text, sizeof(sa->gw_text));
    core_timer_init(&sa->retransmit_timer, retransmit, sa);
    core_timer_init(&sa->dpd_timer, ike_info_dpd, sa);
    ike_frag_reasm_init(&sa->reasm);
    ike_rekey_init(sa);
    int r = crypto_random(sa->spi_i, sizeof(sa->spi_i));
    if (r == 0)
        r = crypto_random(sa->nonce_i, sizeof(sa->nonce_i));
    uint32_t spi = 0;
    while (r == 0 && spi < 256) /* SPIs below 256 are reserved (RFC 4303 §2.1) */
        r = crypto_random(&spi, sizeof(spi));
    if (r < 0) {
        snprintf(err, err_len, "random number generator failed");
        free(sa);
        return r;
    }
    sa->child_spi_in = spi;
    *ret = sa;
    return 0;
}

void ike_sa_free(ike_sa *sa)
{
    if (!sa)
        return;
    core_timer_cancel(sa->loop, &sa->retransmit_timer);
    core_timer_cancel(sa->loop, &sa->dpd_timer);
    ike_rekey_free(sa);
    crypto_ke_free(sa->ke);
    crypto_ke_free(sa->prev_ke);
    free(sa->prev_init_req);
    crypto_ike_keys_free(sa->keys);
    crypto_cipher_free(sa->seal_ctx);
    crypto_cipher_free(sa->open_ctx);
    free(sa->req.buf);
    free(sa->init_req);
    free(sa->init_resp);
    ike_resp_cache_free(&sa->last_resp);
    ike_frag_reasm_reset(&sa->reasm);
    ike_eap_end(sa);
    secure_wipe(sa, sizeof(*sa));
    free(sa);
}

const char *ike_fault_name(ike_fault f)
{
    return f == IKE_FAULT_LOCAL ? "local" : "peer";
}

static void fail(ike_sa *sa, int err, ike_fault fault, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

static void fail(ike_sa *sa, int err, ike_fault fault, const char *fmt, va_list ap)
{
    if (sa->state == IKE_SA_DOWN)
        return;
    char detail[512];
    vsnprintf(detail, sizeof(detail), fmt, ap);
    if (err)
        LOG_ERR(sa->log, "ike", "%s (%s cause)", detail, ike_fault_name(fault));
    else
        LOG_INFO(sa->log, "ike", "%s", detail);
    core_timer_cancel(sa->loop, &sa->retransmit_timer);
    core_timer_cancel(sa->loop, &sa->dpd_timer);
    core_timer_cancel(sa->loop, &sa->rekey_timer);
    ike_sa_set_state(sa, IKE_SA_DOWN);
    ike_rekey_drop_all(sa); /* replaced CHILD SAs first: on_down covers the current one */
    if (sa->hooks.on_down)
        sa->hooks.on_down(sa->hooks.arg, err, fault, detail);
}

void ike_sa_fail(ike_sa *sa, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fail(sa, err, IKE_FAULT_PEER, fmt, ap);
    va_end(ap);
}

void ike_sa_fail_local(ike_sa *sa, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fail(sa, err, IKE_FAULT_LOCAL, fmt, ap);
    va_end(ap);
}

void ike_sa_init_error(ike_sa *sa, int err, const char *fmt, ...)
{
    if (sa->init_error)
        return; /* the first one counts; the timer is running */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sa->init_error_text, sizeof(sa->init_error_text), fmt, ap);
    va_end(ap);
    sa->init_error = err;
    LOG_WARN(sa->log, "ike", "%s (waiting %d ms for a valid answer)", sa->init_error_text,
             IKE_INIT_ERROR_GRACE_MS);
    core_timer_arm(sa->loop, &sa->retransmit_timer, IKE_INIT_ERROR_GRACE_MS);
}

void ike_sa_header(const ike_sa *sa, ike_header *hdr, uint8_t exchange, bool response,
                   uint32_t message_id)
{
    memset(hdr, 0, sizeof(*hdr));
    for (int i = 0; i < 8; i++) {
        hdr->spi_i = (hdr->spi_i << 8) | sa->spi_i[i];
        hdr->spi_r = (hdr->spi_r << 8) | sa->spi_r[i];
    }
    hdr->major = IKE_VERSION_MAJOR;
    hdr->minor = IKE_VERSION_MINOR;
    hdr->exchange = exchange;
    hdr->flags = (sa->initiator ? IKE_FLAG_INITIATOR : 0) | (response ? IKE_FLAG_RESPONSE : 0);
    hdr->message_id = message_id;
}

/* ------------------------------------------------------------- sending */

int ike_sa_send_dgram(ike_sa *sa, const uint8_t *msg, size_t len, bool natt)
{
    const ike_mobike *m = &sa->mobike;
    /* Only requests of ours probe: a response goes where the gateway is. */
    bool probe = m->fo_probing && !(len > 19 && (msg[19] & IKE_FLAG_RESPONSE));
    if (natt && sa->hooks.send_to && (probe || m->fo_moved)) {
        struct sockaddr_storage to = m->fo_to;
        socklen_t to_len = m->fo_to_len;
        if (!probe) {
            to = sa->cfg.remote;
            to_len = sa->cfg.remote_len;
            if (to.ss_family == AF_INET)
                ((struct sockaddr_in *)&to)->sin_port = htons(4500);
            else
                ((struct sockaddr_in6 *)&to)->sin6_port = htons(4500);
        }
        return sa->hooks.send_to(sa->hooks.arg, msg, len, (const struct sockaddr *)&to, to_len);
    }
    return sa->hooks.send(sa->hooks.arg, msg, len, natt);
}

void ike_sa_peer(const ike_sa *sa, struct sockaddr_storage *out, socklen_t *out_len)
{
    *out = sa->cfg.remote;
    *out_len = sa->cfg.remote_len;
}

static void send_datagrams(ike_sa *sa, const ike_request *rq)
{
    for (size_t i = 0; i < rq->n_dgram; i++) {
        int r = ike_sa_send_dgram(sa, rq->buf + rq->dgram[i].off, rq->dgram[i].len, rq->natt);
        if (r < 0)
            LOG_WARN(sa->log, "ike", "sending to %s failed: %s", sa->gw_text, core_strerror(r));
    }
}

static uint64_t retransmit_delay_ms(const ike_sa *sa, unsigned tries)
{
    double s = sa->cfg.prof->ike.retransmit_timeout_s;
    for (unsigned i = 0; i < tries && s < IKE_RETRANSMIT_MAX_S; i++)
        s *= sa->cfg.prof->ike.retransmit_base;
    if (s > IKE_RETRANSMIT_MAX_S)
        s = IKE_RETRANSMIT_MAX_S; /* profile ranges allow absurd products */
    return (uint64_t)(s * 1000.0);
}

int ike_sa_send_request(ike_sa *sa, ike_task task, uint8_t *buf, const ike_span *dgram,
                        size_t n_dgram)
{
    free(sa->req.buf);
    sa->req.task = task;
    sa->req.buf = buf;
    memcpy(sa->req.dgram, dgram, n_dgram * sizeof(*dgram));
    sa->req.n_dgram = n_dgram;
    sa->req.natt = sa->natt;
    sa->req.tries = 0;
    sa->req.failover = false;
    send_datagrams(sa, &sa->req);
    core_timer_arm(sa->loop, &sa->retransmit_timer, retransmit_delay_ms(sa, 0));
    return 0;
}

void ike_sa_request_done(ike_sa *sa)
{
    core_timer_cancel(sa->loop, &sa->retransmit_timer);
    free(sa->req.buf);
    sa->req.buf = NULL;
    sa->req.n_dgram = 0;
    if (sa->req.task == IKE_TASK_MOBIKE)
        sa->mobike.fo_update = false; /* the failover's update (if it was) ended */
    sa->req.task = IKE_TASK_NONE;
    sa->mobike.fo_probing = false; /* nothing goes to an address being probed once its request ended */
}

static void retransmit(void *arg)
{
    ike_sa *sa = arg;
    if (sa->req.task == IKE_TASK_NONE)
        return;
    /* A Delete is confirmed or given up quickly: disconnect must not hang. */
    unsigned max = sa->req.task == IKE_TASK_DELETE ? 1 : sa->cfg.prof->ike.retransmit_tries;
    if (sa->mobike.fo_probing && max > IKE_FAILOVER_TRIES)
        max = IKE_FAILOVER_TRIES;
    if (sa->init_error) {
        /* An unauthenticated error answer to IKE_SA_INIT, and no valid
         * answer during the grace period: now it counts. */
        int err = sa->init_error;
        ike_sa_request_done(sa);
        ike_sa_fail(sa, err, "%s", sa->init_error_text);
        return;
    }
    if (sa->req.tries >= max) {
        if (sa->req.task == IKE_TASK_DELETE) {
            ike_sa_request_done(sa);
            ike_sa_fail(sa, 0, "IKE SA deleted (the gateway did not confirm)");
            return;
        }
        bool tried_others = sa->mobike.fo_probing;
        if (ike_mobike_failover(sa)) {
            sa->req.tries = 0;
            send_datagrams(sa, &sa->req);
            core_timer_arm(sa->loop, &sa->retransmit_timer, retransmit_delay_ms(sa, 0));
            return;
        }
        ike_sa_request_done(sa);
        ike_sa_fail(sa, M2MVPN_E_TIMEOUT, "no answer from %s after %u retransmits%s",
                    tried_others ? sa->mobike.fo_from : sa->gw_text, sa->cfg.prof->ike.retransmit_tries,
                    tried_others ? ", nor from the gateway's other addresses (MOBIKE)" : "");
        return;
    }
    sa->req.tries++;
    LOG_INFO(sa->log, "ike", "retransmit %u of request %u to %s", sa->req.tries,
             sa->req.message_id, sa->mobike.fo_probing ? "the gateway's other address" : sa->gw_text);
    send_datagrams(sa, &sa->req);
    core_timer_arm(sa->loop, &sa->retransmit_timer, retransmit_delay_ms(sa, sa->req.tries));
}

/* ------------------------------------------------------------- tasks */

static const char *const task_names[] = {
    [IKE_TASK_NONE] = "none",
    [IKE_TASK_INIT] = "IKE_SA_INIT",
    [IKE_TASK_AUTH] = "IKE_AUTH",
    [IKE_TASK_DPD] = "liveness check",
    [IKE_TASK_DELETE] = "IKE SA delete",
    [IKE_TASK_REKEY_CHILD] = "CHILD SA rekey",
    [IKE_TASK_REKEY_IKE] = "IKE SA rekey",
    [IKE_TASK_DELETE_CHILD] = "CHILD SA delete",
    [IKE_TASK_MOBIKE] = "address update",
};

const char *ike_task_name(ike_task t)
{
    return (unsigned)t < sizeof(task_names) / sizeof(task_names[0]) && task_names[t] ? task_names[t] : "?";
}

const char *ike_task_status_name(ike_task_status s)
{
    static const char *const names[] = { "need more", "done", "failed" };
    return (unsigned)s < 3 ? names[s] : "?";
}

static const ike_task_ops *const task_ops[IKE_TASK_COUNT] = {
    [IKE_TASK_INIT] = &ike_task_init,
    [IKE_TASK_AUTH] = &ike_task_auth,
    [IKE_TASK_DPD] = &ike_task_dpd,
    [IKE_TASK_DELETE] = &ike_task_delete,
    [IKE_TASK_REKEY_CHILD] = &ike_task_rekey_child,
    [IKE_TASK_REKEY_IKE] = &ike_task_rekey_ike,
    [IKE_TASK_DELETE_CHILD] = &ike_task_delete_child,
    [IKE_TASK_MOBIKE] = &ike_task_mobike,
};

/* The order queued tasks start in: an address update first (the others
 * need the new path), the replaced CHILD SAs' Deletes before new rekeys,
 * the liveness check last (any answer before it makes it moot). */
static const ike_task run_order[] = {
    IKE_TASK_INIT, IKE_TASK_AUTH,
    IKE_TASK_MOBIKE, IKE_TASK_DELETE_CHILD, IKE_TASK_REKEY_CHILD, IKE_TASK_REKEY_IKE, IKE_TASK_DPD,
};

void ike_task_queue(ike_sa *sa, ike_task t)
{
    sa->tasks_queued |= 1u << t;
}

bool ike_task_queued(const ike_sa *sa, ike_task t)
{
    return (sa->tasks_queued & (1u << t)) != 0;
}

void ike_task_unqueue(ike_sa *sa, ike_task t)
{
    sa->tasks_queued &= ~(1u << t);
}

/* IKE_SA_INIT and IKE_AUTH set the SA up; the others need it established. */
static bool may_start(const ike_sa *sa, ike_task t)
{
    if (t == IKE_TASK_INIT || t == IKE_TASK_AUTH)
        return sa->state == IKE_SA_IDLE || sa->state == IKE_SA_INIT_SENT;
    return sa->state == IKE_SA_ESTABLISHED;
}

void ike_task_run(ike_sa *sa)
{
    uint32_t tried = 0; /* each task once per run: one that fails may queue itself again */
    while (sa->req.task == IKE_TASK_NONE) {
        const ike_task_ops *ops = NULL;
        for (size_t i = 0; i < sizeof(run_order) / sizeof(run_order[0]) && !ops; i++) {
            ike_task t = run_order[i];
            if (ike_task_queued(sa, t) && !(tried & (1u << t)) && may_start(sa, t) &&
                (!task_ops[t]->ready || task_ops[t]->ready(sa)))
                ops = task_ops[t];
        }
        if (!ops)
            return;
        tried |= 1u << ops->kind;
        sa->tasks_queued &= ~(1u << ops->kind);
        ike_task_status st = ops->build(sa);
        LOG_DBG(sa->log, "ike", "task %s started: %s", ike_task_name(ops->kind), ike_task_status_name(st));
    }
}

int ike_sa_send_protected(ike_sa *sa, uint8_t exchange, bool response, uint32_t message_id,
                          const uint8_t *inner, size_t inner_len, uint8_t first_type, ike_task task)
{
    size_t cap = inner_len + 4096 + IKE_MAX_OUT_FRAGS * 128;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return M2MVPN_E_NOMEM;
    ike_header hdr;
    ike_sa_header(sa, &hdr, exchange, response, message_id);
    ike_span spans[IKE_MAX_OUT_FRAGS];
    size_t n = 0;
    int r;
    /* Fragment only when the peer can reassemble and the message would not
     * fit a datagram that crosses any IPv4 path unfragmented. */
    size_t max_len = IKE_FRAG_MTU - 28 - (sa->natt ? 4 : 0);
    size_t whole = IKE_HEADER_LEN + 4 + sa->sk_out.iv_len + inner_len + sa->sk_out.block_len +
                   sa->sk_out.icv_len;
    if (sa->peer_frag && sa->cfg.prof->ike.fragmentation && whole > max_len) {
        r = ike_frag_build(&hdr, inner, inner_len, first_type, &sa->sk_out, max_len, buf, cap,
                           spans, IKE_MAX_OUT_FRAGS, &n);
    } else {
        buf_writer w;
        buf_writer_init(&w, buf, cap);
        r = ike_sk_wrap(&hdr, inner, inner_len, first_type, &sa->sk_out, &w);
        spans[0].off = 0;
        spans[0].len = buf_writer_len(&w);
        n = 1;
    }
    if (r < 0) {
        free(buf);
        return r;
    }
    /* Kept for retransmission (the request, or the answer to a repeated
     * request): only the bytes sent, not the room the build needed. */
    uint8_t *fit = realloc(buf, spans[n - 1].off + spans[n - 1].len);
    if (fit)
        buf = fit;
    LOG_DBG(sa->log, "ike", "sending %s %s %u to %s (%zu bytes in %zu datagram%s)",
            ike_exchange_name(exchange), response ? "response" : "request", message_id,
            sa->gw_text, spans[n - 1].off + spans[n - 1].len, n, n == 1 ? "" : "s");
    if (response) {
        /* Kept whole, fragments and all: a CREATE_CHILD_SA answer (KE, many
         * selectors) may be fragmented, and the gateway that lost one
         * fragment retransmits its request for all of them. */
        ike_resp_cache_set(&sa->last_resp, buf, spans, n);
        ike_sa_resend_response(sa, &sa->last_resp);
        return 0;
    }
    sa->req.message_id = message_id;
    sa->req.exchange = exchange;
    return ike_sa_send_request(sa, task, buf, spans, n);
}

void ike_resp_cache_free(ike_resp_cache *c)
{
    free(c->buf);
    memset(c, 0, sizeof(*c));
}

void ike_resp_cache_set(ike_resp_cache *c, uint8_t *buf, const ike_span *dgram, size_t n)
{
    ike_resp_cache_free(c);
    if (n == 0 || n > IKE_MAX_OUT_FRAGS) {
        free(buf);
        return;
    }
    /* Only the bytes sent are kept (buf was sized for the worst case). */
    uint8_t *fit = realloc(buf, dgram[n - 1].off + dgram[n - 1].len);
    c->buf = fit ? fit : buf;
    memcpy(c->dgram, dgram, n * sizeof(dgram[0]));
    c->n_dgram = n;
}

void ike_sa_resend_response(ike_sa *sa, const ike_resp_cache *c)
{
    for (size_t i = 0; i < c->n_dgram; i++) {
        int r = ike_sa_send_dgram(sa, c->buf + c->dgram[i].off, c->dgram[i].len, sa->natt);
        if (r < 0)
            LOG_WARN(sa->log, "ike", "sending to %s failed: %s", sa->gw_text, core_strerror(r));
    }
}

/* ------------------------------------------------------------ keys */

static int sk_seal(void *ctx, const ike_sk_seal_io *io)
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

static int sk_open(void *ctx, const ike_sk_open_io *io)
{
    crypto_cipher *c = ctx;
    uint8_t icv[CRYPTO_MAX_ICV_LEN];
    const crypto_cipher_sizes *sz = crypto_cipher_get_sizes(c);
    memcpy(icv, io->icv, sz->icv_len);
    crypto_msg m = {
        .aad = io->aad, .aad_len = io->aad_len, .iv = io->iv,
        .in = io->ct, .out = io->out, .data_len = io->ct_len, .icv = icv,
    };
    return crypto_cipher_decrypt(c, &m);
}

uint64_t ike_sa_spi_be64(const uint8_t spi[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | spi[i];
    return v;
}

void ike_sa_sk_adapter(ike_sk_cipher *a, crypto_cipher *c, bool seal)
{
    const crypto_cipher_sizes *sz = crypto_cipher_get_sizes(c);
    a->iv_len = sz->iv_len;
    a->icv_len = sz->icv_len;
    a->block_len = sz->block_len;
    a->seal = seal ? sk_seal : NULL;
    a->open = seal ? NULL : sk_open;
    a->ctx = c;
}

int ike_sa_install_keys(ike_sa *sa, const uint8_t *g_ir, size_t g_ir_len, char *err, size_t err_len)
{
    crypto_key skeyseed;
    int r = crypto_ike_skeyseed(sa->suite.prf_id, sa->nonce_i, sizeof(sa->nonce_i), sa->nonce_r,
                                sa->nonce_r_len, g_ir, g_ir_len, &skeyseed);
    if (r == 0)
        r = crypto_ike_keys_derive(&sa->suite, &skeyseed, sa->nonce_i, sizeof(sa->nonce_i),
                                   sa->nonce_r, sa->nonce_r_len, sa->spi_i, sa->spi_r, &sa->keys);
    secure_wipe(&skeyseed, sizeof(skeyseed));
    if (r == 0)
        r = ike_sa_make_ciphers(&sa->suite, sa->keys, sa->initiator, &sa->seal_ctx, &sa->open_ctx);
    if (r < 0) {
        snprintf(err, err_len, "deriving IKE SA keys for %s failed (%s)", sa->ike_alg, core_strerror(r));
        return r;
    }
    ike_sa_sk_adapter(&sa->sk_out, sa->seal_ctx, true);
    ike_sa_sk_adapter(&sa->sk_in, sa->open_ctx, false);
    return 0;
}

int ike_sa_make_ciphers(const crypto_suite *suite, const crypto_ike_keys *k, bool initiator,
                        crypto_cipher **seal, crypto_cipher **open)
{
    /* SK_ei/SK_ai protect what the original initiator sends (RFC 7296 §2.14). */
    const crypto_key *se = initiator ? &k->sk_ei : &k->sk_er, *sa_ = initiator ? &k->sk_ai : &k->sk_ar;
    const crypto_key *oe = initiator ? &k->sk_er : &k->sk_ei, *oa = initiator ? &k->sk_ar : &k->sk_ai;
    *seal = *open = NULL;
    int r = crypto_cipher_new(suite->encr_id, suite->encr_key_bits, suite->integ_id, CRYPTO_DIR_ENCRYPT,
                              se->b, se->len, sa_->len ? sa_->b : NULL, sa_->len, seal);
    if (r == 0)
        r = crypto_cipher_new(suite->encr_id, suite->encr_key_bits, suite->integ_id, CRYPTO_DIR_DECRYPT,
                              oe->b, oe->len, oa->len ? oa->b : NULL, oa->len, open);
    if (r < 0) {
        crypto_cipher_free(*seal);
        *seal = NULL;
    }
    return r;
}

/* ------------------------------------------------------------- input */

int ike_sa_start(ike_sa *sa)
{
    if (sa->state != IKE_SA_IDLE)
        return M2MVPN_E_STATE;
    ike_task_queue(sa, IKE_TASK_INIT);
    ike_task_run(sa); /* a failure arrives through on_down */
    return 0;
}

/* Decrypt a protected message (SK, or SKF into the reassembly buffer).
 * Returns 1 with *inner filled, 0 when more fragments are needed, <0 to drop. */
static int open_protected(ike_sa *sa, const ike_message *msg, uint8_t *plain, size_t cap,
                          ike_chain *inner, ike_diag *diag)
{
    if (!sa->open_ctx)
        return M2MVPN_E_PROTOCOL;
    if (msg->chain.n == 0)
        return M2MVPN_E_PROTOCOL;
    const ike_payload *last = &msg->chain.pl[msg->chain.n - 1];
    ike_diag local, *dp = diag ? diag : &local;
    ike_diag_clear(dp);
    int r;
    if (last->type == IKE_PL_SK) {
        r = ike_sk_open(msg, &sa->sk_in, plain, cap, inner, dp);
        if (r == 0)
            return 1;
    } else if (last->type == IKE_PL_SKF) {
        /* One message at a time, identified by ID, direction and exchange;
         * the fragment is authenticated before it may replace another
         * message's fragments (a forged one changes nothing). */
        r = ike_frag_add(&sa->reasm, msg, &sa->sk_in, inner, dp);
        if (r >= 0)
            return r;
    } else {
        r = M2MVPN_E_PROTOCOL;
        snprintf(dp->text, sizeof(dp->text), "unprotected %s message", ike_exchange_name(msg->hdr.exchange));
    }
    LOG_WARN(sa->log, "ike", "dropping message %u from %s: %s", msg->hdr.message_id, sa->gw_text,
             dp->text[0] ? dp->text : core_strerror(r));
    return r;
}

/* Only a message that passed its integrity check shows the gateway alive
 * (RFC 7296 §2.4): SPIs travel in the clear, so anyone could send the rest. */
static void heard_from_gateway(ike_sa *sa)
{
    sa->last_heard_ms = sa->loop->clock_ms();
    ike_rekey_heard(sa);
}

static void handle_response(ike_sa *sa, const ike_message *msg, uint8_t *plain, size_t cap,
                            const struct sockaddr *from, socklen_t from_len)
{
    if (sa->req.task == IKE_TASK_NONE || msg->hdr.message_id != sa->req.message_id) {
        LOG_DBG(sa->log, "ike", "ignoring unexpected response %u", msg->hdr.message_id);
        return;
    }
    if (msg->hdr.exchange != sa->req.exchange) {
        /* A response belongs to its request's exchange (RFC 7296 §3.1:
         * the header names it): of another, authentic or not, it answers
         * nothing of ours, and the request stays in flight. */
        LOG_DBG(sa->log, "ike", "ignoring response %u of exchange type %u: our request is of type %u",
                msg->hdr.message_id, msg->hdr.exchange, sa->req.exchange);
        return;
    }
    /* While failing over, only the address the request went to answers it
     * (an answer held back and replayed from elsewhere does not count). */
    bool probed = sa->mobike.fo_probing;
    if (probed && !ike_mobike_from_probed(sa, from, from_len)) {
        LOG_DBG(sa->log, "ike", "ignoring response %u: not from the address it went to (MOBIKE failover)",
                msg->hdr.message_id);
        return;
    }
    if (msg->hdr.exchange == IKE_EXCH_IKE_SA_INIT) {
        /* Unprotected: the task itself decides what of it counts. */
        if (sa->req.task == IKE_TASK_INIT && ike_task_init.process(sa, msg, &msg->chain) == IKE_TASK_DONE)
            ike_task_run(sa);
        return;
    }
    ike_chain inner;
    int r = open_protected(sa, msg, plain, cap, &inner, NULL);
    if (r <= 0)
        return;
    heard_from_gateway(sa);
    ike_task task = sa->req.task;
    bool fo_update = task == IKE_TASK_MOBIKE && sa->mobike.fo_update;
    ike_sa_request_done(sa);
    sa->next_msg_id++;
    if (probed && !fo_update)
        ike_mobike_failover_answered(sa); /* authenticated, from the address it went to: the update goes there */
    const ike_task_ops *ops = task_ops[task];
    if (ops && ops->process) {
        ike_task_status st = ops->process(sa, msg, &inner);
        LOG_DBG(sa->log, "ike", "task %s: %s", ike_task_name(task), ike_task_status_name(st));
    }
    ike_frag_reasm_reset(&sa->reasm); /* the inner chain pointed into it */
    ike_task_run(sa);
}

static void handle_request(ike_sa *sa, const ike_message *msg, uint8_t *plain, size_t cap)
{
    if (sa->state != IKE_SA_ESTABLISHED && sa->state != IKE_SA_DELETING)
        return;
    uint32_t id = msg->hdr.message_id;
    if (id + 1 == sa->peer_msg_id && sa->last_resp.n_dgram) {
        /* The gateway did not get our response (or a fragment of it):
         * send it again, unchanged and whole (RFC 7383 §2.6), once per
         * retransmitted request: for its fragment 1 only (§2.6.1), not
         * once per fragment. */
        const ike_payload *last = msg->chain.n ? &msg->chain.pl[msg->chain.n - 1] : NULL;
        uint16_t frag = 1;
        if (last && last->type == IKE_PL_SKF && last->body.len >= 2)
            frag = (uint16_t)(last->body.p[0] << 8 | last->body.p[1]);
        if (frag == 1)
            ike_sa_resend_response(sa, &sa->last_resp);
        return;
    }
    if (id != sa->peer_msg_id) {
        LOG_DBG(sa->log, "ike", "ignoring request %u (expected %u)", id, sa->peer_msg_id);
        return;
    }
    ike_chain inner;
    ike_diag d;
    ike_diag_clear(&d);
    int r = open_protected(sa, msg, plain, cap, &inner, &d);
    if (r < 0 && d.notify == IKE_N_UNSUPPORTED_CRITICAL_PAYLOAD) {
        /* Authentic, but with a critical payload we do not know: say so
         * (RFC 7296 §2.5), as the answer to this request. */
        heard_from_gateway(sa);
        uint8_t body[32];
        buf_writer w;
        buf_writer_init(&w, body, sizeof(body));
        ike_chain_writer cw;
        ike_chain_writer_init(&cw, &w, SIZE_MAX);
        ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_UNSUPPORTED_CRITICAL_PAYLOAD, NULL, 0, &d.payload_type, 1);
        ike_chain_writer_finish(&cw);
        sa->peer_msg_id++;
        ike_sa_send_protected(sa, msg->hdr.exchange, true, id, body, buf_writer_len(&w), cw.first_type,
                              IKE_TASK_NONE);
        ike_frag_reasm_reset(&sa->reasm);
        return;
    }
    if (r <= 0)
        return;
    heard_from_gateway(sa);
    sa->peer_msg_id++;
    if (msg->hdr.exchange == IKE_EXCH_CREATE_CHILD_SA)
        ike_rekey_process_request(sa, &msg->hdr, &inner);
    else
        ike_info_process_request(sa, &msg->hdr, &inner);
    ike_frag_reasm_reset(&sa->reasm);
    ike_task_run(sa);
}

void ike_sa_input(ike_sa *sa, const uint8_t *data, size_t len, bool natt)
{
    ike_sa_input_from(sa, data, len, natt, NULL, 0);
}

void ike_sa_input_from(ike_sa *sa, const uint8_t *data, size_t len, bool natt, const struct sockaddr *from,
                       socklen_t from_len)
{
    if (sa->state == IKE_SA_DOWN || sa->state == IKE_SA_IDLE)
        return;
    ike_message msg;
    ike_diag d;
    ike_diag_clear(&d);
    if (ike_message_parse(buf_reader_make(data, len), &msg, &d) < 0) {
        LOG_WARN(sa->log, "ike", "dropping malformed message from %s: %s", sa->gw_text, d.text);
        return;
    }
    if (msg.hdr.exchange == IKE_EXCH_IKE_SA_INIT && (natt || (from && !ike_sa_from_remote(sa, from, from_len)))) {
        /* Nothing in it is authenticated, and its error notifies (COOKIE,
         * INVALID_KE_PAYLOAD, a refusal starting the grace) act at once:
         * only the gateway's port we sent IKE_SA_INIT to answers it, to
         * our port-500 socket (the port-4500 one takes any sender). */
        LOG_DBG(sa->log, "ike", "ignoring IKE_SA_INIT message %s", natt ? "on port 4500" : "from another sender");
        return;
    }
    uint8_t spi_i[8];
    for (int i = 0; i < 8; i++)
        spi_i[i] = (uint8_t)(msg.hdr.spi_i >> (56 - 8 * i));
    uint64_t our_spi_r = ike_sa_spi_be64(sa->spi_r);
    bool init = msg.hdr.exchange == IKE_EXCH_IKE_SA_INIT;
    /* The Initiator flag names the original initiator (RFC 7296 §3.1): the
     * gateway's messages carry it when the gateway rekeyed the IKE SA. */
    bool from_initiator = (msg.hdr.flags & IKE_FLAG_INITIATOR) != 0;
    bool ours = memcmp(spi_i, sa->spi_i, 8) == 0 && from_initiator != sa->initiator &&
                (init || msg.hdr.spi_r == our_spi_r);
    uint8_t *plain = malloc(len);
    if (!plain)
        return;
    if (!ours) {
        if (init || !ike_rekey_zombie_input(sa, &msg, plain, len))
            LOG_DBG(sa->log, "ike", "ignoring message for another IKE SA");
    } else if (msg.hdr.flags & IKE_FLAG_RESPONSE)
        handle_response(sa, &msg, plain, len, from, from_len);
    else
        handle_request(sa, &msg, plain, len);
    secure_free(plain, len);
}

void ike_sa_close(ike_sa *sa)
{
    if (sa->state == IKE_SA_ESTABLISHED) {
        ike_sa_set_state(sa, IKE_SA_DELETING);
        core_timer_cancel(sa->loop, &sa->dpd_timer);
        sa->tasks_queued = 0; /* nothing else starts on an SA being deleted */
        if (sa->req.task != IKE_TASK_NONE) {
            /* Abandon it (a liveness check); the Delete must not reuse its
             * message ID, or the gateway takes it for a retransmission. */
            ike_sa_request_done(sa);
            sa->next_msg_id++;
        }
        if (ike_task_delete.build(sa) == IKE_TASK_NEED_MORE)
            return; /* on_down when the gateway confirms or the retransmits end */
    }
    ike_sa_fail(sa, 0, "IKE SA closed");
}

void ike_sa_set_hooks(ike_sa *sa, const ike_hooks *hooks)
{
    sa->hooks = *hooks;
}

bool ike_sa_owns(const ike_sa *sa, const uint8_t *msg, size_t len)
{
    return sa && len >= 28 && memcmp(msg, sa->spi_i, 8) == 0;
}

uint32_t ike_sa_child_spi_in(const ike_sa *sa)
{
    return sa->child_spi_in;
}

void ike_sa_describe(const ike_sa *sa, char *ike_alg, size_t ike_len, char *esp_alg, size_t esp_len)
{
    snprintf(ike_alg, ike_len, "%s", sa->ike_alg);
    snprintf(esp_alg, esp_len, "%s", sa->esp_alg);
}
