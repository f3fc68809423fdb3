/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Rekeying (RFC 7296 §1.3, §2.8, §2.18): CREATE_CHILD_SA both ways, for the
 * CHILD SA (with PFS when the profile's first ESP proposal names a key
 * exchange) and for the IKE SA; the Delete of what a rekey replaced; the
 * collisions of §2.8.1 (both sides rekey the same SA: the exchange with the
 * lowest nonce made the redundant SA, deleted by its initiator).
 *
 * Make-before-break for the datapath (lib/conn installs what
 * on_child_rekeyed reports): as initiator the new SA is installed for both
 * directions once the answer is in (the gateway installed its inbound half
 * before it answered), the old one is deleted and kept inbound for a short
 * grace after its Delete; as responder the new SA is installed inbound only
 * before we answer, and sends once the gateway deleted the old one (it
 * starts sending on the new SA itself before it does, §2.8).
 *
 * A replaced IKE SA lives on as a "zombie" with its keys, only to finish the
 * Delete exchange on it. One timer (rekey_timer) serves the IKE SA lifetime,
 * retries, graces and zombies.
 *
 * Here: the timer, replaced CHILD SAs and their Delete task, zombies, what
 * both exchanges share, and the gateway's CREATE_CHILD_SA requests handed to
 * rekey_child.c (CHILD SA rekey) and rekey_ike.c (IKE SA rekey).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/secmem.h"
#include "rekey.h"

#define CHILD_GRACE_MS 1000u        /* old inbound SA kept after its Delete (packets in flight) */
#define PEER_DELETE_WAIT_MS 10000u  /* the gateway's Delete of an SA it replaced, then ours */
#define ZOMBIE_RETRY_MS 2000u  /* then 4, 8, 16 s: a peer that settles a collision */
#define ZOMBIE_TRIES 5         /* later than us may not know the SA yet (strongSwan) */
#define ZOMBIE_WAIT_MS 10000u
#define ZOMBIE_HELD_TRIES 3    /* an abandoned request of ours before the Delete */

static uint32_t random_below(uint32_t n)
{
    uint32_t v = 0;
    if (n == 0 || crypto_random(&v, sizeof(v)) < 0)
        return 0;
    return v % n;
}

/* Lexicographic, a shorter prefix first (§2.8.1 compares nonces). */
int ike_rekey_nonce_cmp(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len)
{
    int c = memcmp(a, b, a_len < b_len ? a_len : b_len);
    if (c)
        return c;
    return a_len < b_len ? -1 : a_len > b_len;
}

void ike_rekey_min_nonce(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len, uint8_t *out,
                         size_t *out_len)
{
    bool first = ike_rekey_nonce_cmp(a, a_len, b, b_len) <= 0;
    *out_len = first ? a_len : b_len;
    memcpy(out, first ? a : b, *out_len);
}

/* ------------------------------------------------------------ timer */

static void on_timer(void *arg);

void ike_rekey_rearm(ike_sa *sa)
{
    uint64_t next = UINT64_MAX;
    if (sa->ike_rekey_at_ms)
        next = sa->ike_rekey_at_ms;
    if (ike_task_queued(sa, IKE_TASK_REKEY_CHILD) && sa->child_retry_at_ms && sa->child_retry_at_ms < next)
        next = sa->child_retry_at_ms;
    if (sa->quiet_until_ms && sa->quiet_until_ms < next)
        next = sa->quiet_until_ms;
    for (size_t i = 0; i < sa->n_retiring; i++)
        if (sa->retiring[i].deadline_ms && sa->retiring[i].deadline_ms < next)
            next = sa->retiring[i].deadline_ms;
    for (int i = 0; i < IKE_MAX_ZOMBIES; i++)
        if (sa->zombie[i].active && sa->zombie[i].deadline_ms < next)
            next = sa->zombie[i].deadline_ms;
    if (next == UINT64_MAX) {
        core_timer_cancel(sa->loop, &sa->rekey_timer);
        return;
    }
    uint64_t now = ike_rekey_now(sa);
    core_timer_arm(sa->loop, &sa->rekey_timer, next > now ? next - now : 0);
}

void ike_rekey_init(ike_sa *sa)
{
    core_timer_init(&sa->rekey_timer, on_timer, sa);
}

void ike_rekey_new_ike_free(ike_new_ike *n)
{
    crypto_ike_keys_free(n->keys);
    secure_wipe(n, sizeof(*n));
}

void ike_rekey_zombie_free(ike_zombie *z)
{
    crypto_cipher_free(z->seal_ctx);
    crypto_cipher_free(z->open_ctx);
    free(z->req);
    ike_resp_cache_free(&z->last_resp);
    ike_resp_cache_free(&z->held);
    secure_wipe(z, sizeof(*z));
}

void ike_rekey_free(ike_sa *sa)
{
    core_timer_cancel(sa->loop, &sa->rekey_timer);
    crypto_ke_free(sa->rk.ke);
    sa->rk.ke = NULL;
    crypto_ke_free(sa->rki.ke);
    sa->rki.ke = NULL;
    ike_rekey_new_ike_free(&sa->rki.peer);
    for (int i = 0; i < IKE_MAX_ZOMBIES; i++)
        ike_rekey_zombie_free(&sa->zombie[i]);
}

void ike_rekey_plan_ike(ike_sa *sa)
{
    uint64_t life = (uint64_t)sa->cfg.prof->ike.lifetime_s * 1000;
    sa->ike_rekey_at_ms = 0;
    if (life) {
        /* At 80..90 % of the lifetime: both sides rarely pick the same moment. */
        uint64_t soft = life - life / 10 - random_below((uint32_t)(life / 10 < UINT32_MAX ? life / 10 : UINT32_MAX));
        sa->ike_rekey_at_ms = ike_rekey_now(sa) + soft;
    }
    ike_rekey_rearm(sa);
}

/* --------------------------------------------------- retiring CHILD SAs */

void ike_rekey_retire(ike_sa *sa, uint32_t spi_in, uint32_t spi_out, bool we_delete, bool installed)
{
    if (sa->n_retiring == IKE_MAX_RETIRING) {
        /* Full (a gateway that never deletes): the oldest goes now. */
        if (sa->hooks.on_child_deleted && sa->retiring[0].installed)
            sa->hooks.on_child_deleted(sa->hooks.arg, sa->retiring[0].spi_in);
        memmove(&sa->retiring[0], &sa->retiring[1], (IKE_MAX_RETIRING - 1) * sizeof(sa->retiring[0]));
        sa->n_retiring--;
    }
    ike_retiring *r = &sa->retiring[sa->n_retiring++];
    memset(r, 0, sizeof(*r));
    r->spi_in = spi_in;
    r->spi_out = spi_out;
    r->we_delete = we_delete;
    r->installed = installed;
    r->deadline_ms = we_delete ? 0 : ike_rekey_now(sa) + PEER_DELETE_WAIT_MS;
    if (we_delete)
        ike_task_queue(sa, IKE_TASK_DELETE_CHILD);
}

static void forget_retiring(ike_sa *sa, size_t i)
{
    if (sa->hooks.on_child_deleted && sa->retiring[i].installed)
        sa->hooks.on_child_deleted(sa->hooks.arg, sa->retiring[i].spi_in);
    memmove(&sa->retiring[i], &sa->retiring[i + 1], (sa->n_retiring - i - 1) * sizeof(sa->retiring[0]));
    sa->n_retiring--;
}

void ike_rekey_drop_all(ike_sa *sa)
{
    while (sa->n_retiring)
        forget_retiring(sa, 0);
    if (sa->rk.collided && sa->hooks.on_child_deleted) {
        /* Both reported: the gateway's SA of a collision, and the one it replaces. */
        sa->hooks.on_child_deleted(sa->hooks.arg, sa->rk.peer_spi_in);
        sa->hooks.on_child_deleted(sa->hooks.arg, sa->child_spi_in);
    }
    sa->rk.collided = false;
}

int ike_rekey_peer_deleted(ike_sa *sa, uint32_t spi, uint32_t *our_spi)
{
    if (sa->rk.collided && spi == sa->child_spi_out && sa->req.task == IKE_TASK_REKEY_CHILD &&
        sa->rk.old_spi_in == sa->child_spi_in) {
        /* Both sides rekeyed it and the gateway, the winner (§2.8.1), deletes
         * it before our own answer came: its SA stands, ours (if the answer
         * still comes) is redundant. */
        *our_spi = sa->child_spi_in;
        LOG_INFO(sa->log, "ike", "gateway deleted CHILD SA %08x/%08x it rekeyed in a collision: its SA "
                 "%08x/%08x stands", sa->child_spi_in, sa->child_spi_out, sa->rk.peer_spi_in, sa->rk.peer_spi_out);
        if (sa->hooks.on_child_deleted)
            sa->hooks.on_child_deleted(sa->hooks.arg, sa->child_spi_in);
        sa->child_spi_in = sa->rk.peer_spi_in;
        sa->child_spi_out = sa->rk.peer_spi_out;
        sa->rk.collided = false;
        sa->rk.moot = true;
        return 1;
    }
    for (size_t i = 0; i < sa->n_retiring; i++) {
        ike_retiring *r = &sa->retiring[i];
        if (r->spi_out != spi)
            continue;
        *our_spi = r->spi_in;
        LOG_INFO(sa->log, "ike", "gateway deleted replaced CHILD SA %08x/%08x", r->spi_in, r->spi_out);
        /* The gateway sends on the new SA already: the old one goes now
         * (and the new one sends, if it did not yet). */
        forget_retiring(sa, i);
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------- zombies */

static void zombie_send(ike_sa *sa, ike_zombie *z, const uint8_t *msg, size_t len)
{
    int r = ike_sa_send_dgram(sa, msg, len, sa->natt);
    if (r < 0)
        LOG_WARN(sa->log, "ike", "sending to %s failed: %s", sa->gw_text, m2mvpn_strerror(r));
    (void)z;
}

/* Header + SK{inner} on a zombie's keys; the message in *out (malloc'd). */
static int zombie_wrap(ike_zombie *z, uint8_t exchange, bool response, uint32_t id, const uint8_t *inner,
                       size_t inner_len, uint8_t first, uint8_t **out, size_t *out_len)
{
    ike_header h;
    memset(&h, 0, sizeof(h));
    h.spi_i = ike_sa_spi_be64(z->spi_i);
    h.spi_r = ike_sa_spi_be64(z->spi_r);
    h.major = IKE_VERSION_MAJOR;
    h.minor = IKE_VERSION_MINOR;
    h.exchange = exchange;
    h.flags = (z->initiator ? IKE_FLAG_INITIATOR : 0) | (response ? IKE_FLAG_RESPONSE : 0);
    h.message_id = id;
    size_t cap = inner_len + 512;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return M2MVPN_E_NOMEM;
    buf_writer w;
    buf_writer_init(&w, buf, cap);
    int r = ike_sk_wrap(&h, inner, inner_len, first, &z->sk_out, &w);
    if (r < 0) {
        free(buf);
        return r;
    }
    *out = buf;
    *out_len = buf_writer_len(&w);
    return 0;
}

void ike_rekey_zombie_send_delete(ike_sa *sa, ike_zombie *z)
{
    if (z->held.n_dgram) {
        /* The request the switch abandoned first: its message ID is the
         * one the gateway's window waits for (§2.3) if it never got it. */
        z->we_delete = true;
        z->tries = 0;
        z->deadline_ms = ike_rekey_now(sa) + ZOMBIE_RETRY_MS;
        LOG_INFO(sa->log, "ike", "replaced IKE SA: request %u sent again before its Delete", z->held_id);
        ike_sa_resend_response(sa, &z->held); /* the same datagram list */
        return;
    }
    uint8_t inner[16];
    buf_writer w;
    buf_writer_init(&w, inner, sizeof(inner));
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_build_delete(&cw, IKE_PROTO_IKE, 0, NULL, 0);
    ike_chain_writer_finish(&cw);
    free(z->req);
    z->req = NULL;
    z->we_delete = true;
    z->req_id = z->next_msg_id;
    z->req_exchange = IKE_EXCH_INFORMATIONAL;
    if (zombie_wrap(z, z->req_exchange, false, z->req_id, inner, buf_writer_len(&w), cw.first_type,
                    &z->req, &z->req_len) < 0) {
        z->deadline_ms = ike_rekey_now(sa); /* give up on it */
        return;
    }
    z->next_msg_id++;
    z->tries = 0;
    z->deadline_ms = ike_rekey_now(sa) + ZOMBIE_RETRY_MS;
    LOG_INFO(sa->log, "ike", "deleting replaced IKE SA %016llx_%016llx",
             (unsigned long long)ike_sa_spi_be64(z->spi_i), (unsigned long long)ike_sa_spi_be64(z->spi_r));
    zombie_send(sa, z, z->req, z->req_len);
}

static void zombie_tick(ike_sa *sa, ike_zombie *z, uint64_t now)
{
    if (!z->active || now < z->deadline_ms)
        return;
    if (!z->we_delete) {
        /* The gateway did not delete it: we do. */
        ike_rekey_zombie_send_delete(sa, z);
        return;
    }
    if (z->held.n_dgram) {
        if (++z->tries < ZOMBIE_HELD_TRIES) {
            ike_sa_resend_response(sa, &z->held);
            z->deadline_ms = now + ((uint64_t)ZOMBIE_RETRY_MS << z->tries);
            return;
        }
        /* Unanswered to the end: the Delete goes all the same. */
        ike_resp_cache_free(&z->held);
        ike_rekey_zombie_send_delete(sa, z);
        return;
    }
    if (z->req && ++z->tries < ZOMBIE_TRIES) {
        zombie_send(sa, z, z->req, z->req_len);
        z->deadline_ms = now + ((uint64_t)ZOMBIE_RETRY_MS << z->tries);
        return;
    }
    LOG_INFO(sa->log, "ike", "replaced IKE SA dropped (no answer to its Delete)");
    ike_rekey_zombie_free(z);
}

/* Move the current IKE SA keys into a zombie. */
ike_zombie *ike_rekey_make_zombie(ike_sa *sa, bool we_delete)
{
    ike_zombie *z = NULL;
    for (int i = 0; i < IKE_MAX_ZOMBIES && !z; i++)
        if (!sa->zombie[i].active)
            z = &sa->zombie[i];
    if (!z) {
        z = &sa->zombie[0]; /* the older one goes without its Delete */
        ike_rekey_zombie_free(z);
    }
    memset(z, 0, sizeof(*z));
    z->active = true;
    z->initiator = sa->initiator;
    memcpy(z->spi_i, sa->spi_i, 8);
    memcpy(z->spi_r, sa->spi_r, 8);
    z->seal_ctx = sa->seal_ctx;
    z->open_ctx = sa->open_ctx;
    sa->seal_ctx = sa->open_ctx = NULL;
    ike_sa_sk_adapter(&z->sk_out, z->seal_ctx, true);
    ike_sa_sk_adapter(&z->sk_in, z->open_ctx, false);
    z->next_msg_id = sa->next_msg_id;
    z->peer_msg_id = sa->peer_msg_id;
    z->last_resp = sa->last_resp; /* moved, every datagram of it */
    memset(&sa->last_resp, 0, sizeof(sa->last_resp));
    z->we_delete = we_delete;
    z->deadline_ms = ike_rekey_now(sa) + ZOMBIE_WAIT_MS;
    return z;
}

/* A zombie from a new IKE SA that will not be used (collision loser). */
ike_zombie *ike_rekey_zombie_from_new(ike_sa *sa, ike_new_ike *n)
{
    ike_zombie *z = NULL;
    for (int i = 0; i < IKE_MAX_ZOMBIES && !z; i++)
        if (!sa->zombie[i].active)
            z = &sa->zombie[i];
    if (!z) {
        z = &sa->zombie[1];
        ike_rekey_zombie_free(z);
    }
    memset(z, 0, sizeof(*z));
    if (ike_sa_make_ciphers(&n->suite, n->keys, n->initiator, &z->seal_ctx, &z->open_ctx) < 0)
        return NULL;
    z->active = true;
    z->initiator = n->initiator;
    memcpy(z->spi_i, n->spi_i, 8);
    memcpy(z->spi_r, n->spi_r, 8);
    ike_sa_sk_adapter(&z->sk_out, z->seal_ctx, true);
    ike_sa_sk_adapter(&z->sk_in, z->open_ctx, false);
    z->deadline_ms = ike_rekey_now(sa) + ZOMBIE_WAIT_MS;
    return z;
}

int ike_rekey_peer_deleted_ike(ike_sa *sa)
{
    if (!sa->rki.collided || sa->req.task != IKE_TASK_REKEY_IKE)
        return 0;
    /* Both sides rekeyed the IKE SA and the gateway, the winner (§2.8.1),
     * deletes the old one before our own answer came: we move to its new
     * SA. Ours, which the gateway created, we cannot delete without its
     * answer; the gateway drops it by itself. */
    LOG_INFO(sa->log, "ike", "gateway deleted the IKE SA it rekeyed in a collision: its new IKE SA stands");
    ike_sa_request_done(sa);
    crypto_ke_free(sa->rki.ke);
    sa->rki.ke = NULL;
    sa->rki.collided = false;
    int r = ike_rekey_switch_ike(sa, &sa->rki.peer, false, true);
    ike_rekey_new_ike_free(&sa->rki.peer);
    return r == 0 ? 1 : r;
}

int ike_rekey_zombie_input(ike_sa *sa, const ike_message *msg, uint8_t *plain, size_t cap)
{
    ike_zombie *z = NULL;
    bool from_initiator = (msg->hdr.flags & IKE_FLAG_INITIATOR) != 0;
    for (int i = 0; i < IKE_MAX_ZOMBIES && !z; i++) {
        ike_zombie *c = &sa->zombie[i];
        if (c->active && ike_sa_spi_be64(c->spi_i) == msg->hdr.spi_i &&
            ike_sa_spi_be64(c->spi_r) == msg->hdr.spi_r && from_initiator != c->initiator)
            z = c;
    }
    if (!z)
        return 0;
    ike_chain inner;
    ike_diag d;
    ike_diag_clear(&d);
    if (msg->chain.n == 0 || msg->chain.pl[msg->chain.n - 1].type != IKE_PL_SK ||
        ike_sk_open(msg, &z->sk_in, plain, cap, &inner, &d) < 0) {
        LOG_DBG(sa->log, "ike", "dropping message %u for a replaced IKE SA: %s", msg->hdr.message_id,
                d.text[0] ? d.text : "not protected");
        return 1;
    }
    uint32_t id = msg->hdr.message_id;
    if (msg->hdr.flags & IKE_FLAG_RESPONSE) {
        if (z->held.n_dgram && id == z->held_id && msg->hdr.exchange == z->held_exchange) {
            /* The abandoned request is answered: the Delete's ID is next. */
            ike_resp_cache_free(&z->held);
            if (z->we_delete) {
                ike_rekey_zombie_send_delete(sa, z);
                ike_rekey_rearm(sa);
            }
        } else if (z->req && id == z->req_id && msg->hdr.exchange != z->req_exchange) {
            /* Authentic, but of another exchange (§3.1): it answers
             * nothing of ours; the Delete stays in flight. */
            LOG_DBG(sa->log, "ike", "ignoring response %u of exchange type %u for a replaced IKE SA", id,
                    msg->hdr.exchange);
        } else if (z->req && id == z->req_id) {
            LOG_INFO(sa->log, "ike", "replaced IKE SA deleted");
            ike_rekey_zombie_free(z);
            ike_rekey_rearm(sa);
        }
        return 1;
    }
    if (id + 1 == z->peer_msg_id && z->last_resp.n_dgram) {
        ike_sa_resend_response(sa, &z->last_resp);
        return 1;
    }
    if (id != z->peer_msg_id)
        return 1;
    z->peer_msg_id++;
    uint8_t body[32];
    buf_writer w;
    buf_writer_init(&w, body, sizeof(body));
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    bool gone = false;
    if (msg->hdr.exchange == IKE_EXCH_INFORMATIONAL) {
        for (const ike_payload *pl = ike_chain_find(&inner, IKE_PL_DELETE, NULL); pl;
             pl = ike_chain_find(&inner, IKE_PL_DELETE, pl)) {
            ike_delete del;
            if (ike_delete_parse(pl->body, &del, &d) == 0 && del.protocol == IKE_PROTO_IKE)
                gone = true;
        }
    } else {
        /* Nothing new on an SA that was replaced (§2.25). */
        ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_TEMPORARY_FAILURE, NULL, 0, NULL, 0);
    }
    ike_chain_writer_finish(&cw);
    uint8_t *resp;
    size_t resp_len;
    if (zombie_wrap(z, msg->hdr.exchange, true, id, body, buf_writer_len(&w), cw.first_type, &resp,
                    &resp_len) == 0) {
        ike_resp_cache_set(&z->last_resp, resp, &(ike_span){ 0, resp_len }, 1);
        ike_sa_resend_response(sa, &z->last_resp);
    }
    if (gone) {
        LOG_INFO(sa->log, "ike", "gateway deleted the replaced IKE SA");
        sa->quiet_until_ms = 0; /* it has the new one */
        ike_rekey_zombie_free(z);
        ike_rekey_rearm(sa);
        ike_task_run(sa);
    }
    return 1;
}

/* ------------------------------------------------------ building blocks */

int ike_rekey_new_child_spi(ike_sa *sa, uint32_t *ret)
{
    for (int tries = 0; tries < 16; tries++) {
        uint32_t spi = 0;
        int r = crypto_random(&spi, sizeof(spi));
        if (r < 0)
            return r;
        bool used = spi < 256 || spi == sa->child_spi_in || spi == sa->rk.new_spi_in;
        for (size_t i = 0; i < sa->n_retiring; i++)
            used |= spi == sa->retiring[i].spi_in;
        if (!used) {
            *ret = spi;
            return 0;
        }
    }
    return M2MVPN_E_CRYPTO;
}

static bool list_has(const uint16_t *list, size_t n, uint16_t v)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] == v)
            return true;
    return false;
}

bool ike_rekey_offers_ke(const proposal *props, size_t n, uint16_t group)
{
    for (size_t i = 0; i < n; i++)
        if (list_has(props[i].ke, props[i].n_ke, group))
            return true;
    return false;
}

/* The first of the gateway's proposals (in its order) that one of ours
 * covers, as a choice carrying the gateway's proposal number and SPI. */
bool ike_rekey_choose(const ike_sa_view *v, const proposal *props, size_t n, bool ike, ike_sa_choice *out)
{
    uint8_t proto = ike ? IKE_PROTO_IKE : IKE_PROTO_ESP;
    uint8_t spi_len = ike ? 8 : 4;
    for (size_t g = 0; g < v->n_prop; g++) {
        const ike_proposal_view *gp = &v->prop[g];
        if (gp->protocol != proto || gp->spi_len != spi_len)
            continue;
        for (size_t k = 0; k < n && k < 255; k++) {
            ike_sa_choice c;
            memset(&c, 0, sizeof(c));
            c.number = (uint8_t)(k + 1);
            c.protocol = proto;
            c.spi_len = spi_len;
            memcpy(c.spi, gp->spi, spi_len);
            bool unknown = false;
            for (unsigned tt = IKE_TT_ENCR; tt <= IKE_TT_MAX; tt++) {
                for (size_t t = gp->first_transform; t < gp->first_transform + gp->n_transforms; t++) {
                    const ike_transform *tr = &v->tr[t];
                    if (tr->type != tt || ike_sa_choice_has(&c, tt))
                        continue;
                    if (tr->unknown_attr) {
                        unknown = true;
                        continue;
                    }
                    ike_sa_choice probe = c;
                    probe.present |= (uint8_t)(1u << tt);
                    probe.id[tt] = tr->id;
                    if (tt == IKE_TT_ENCR)
                        probe.encr_key_bits = tr->key_bits;
                    /* Take it if our proposal k has it (checked one type at a time). */
                    const proposal *p = &props[k];
                    bool ok = false;
                    switch (tt) {
                    case IKE_TT_ENCR:
                        for (size_t j = 0; j < p->n_encr; j++)
                            ok |= p->encr[j].id == tr->id &&
                                  (tr->key_bits == p->encr[j].key_bits ||
                                   (tr->key_bits == 0 && !ike_encr_has_key_length(tr->id)));
                        break;
                    case IKE_TT_PRF:
                        ok = ike && list_has(p->prf, p->n_prf, tr->id);
                        break;
                    case IKE_TT_INTEG:
                        ok = list_has(p->integ, p->n_integ, tr->id);
                        break;
                    case IKE_TT_KE:
                        ok = list_has(p->ke, p->n_ke, tr->id);
                        break;
                    case IKE_TT_ESN:
                        ok = !ike && (p->n_esn ? list_has(p->esn, p->n_esn, tr->id) : tr->id == ESN_NO);
                        break;
                    default:
                        break;
                    }
                    if (ok)
                        c = probe;
                }
            }
            (void)unknown;
            /* A key exchange the gateway requires (no NONE offered) must be chosen. */
            bool needs_ke = false, none_ok = false;
            for (size_t t = gp->first_transform; t < gp->first_transform + gp->n_transforms; t++)
                if (v->tr[t].type == IKE_TT_KE) {
                    needs_ke |= v->tr[t].id != 0;
                    none_ok |= v->tr[t].id == 0;
                }
            if (needs_ke && !none_ok && !ike_sa_choice_has(&c, IKE_TT_KE))
                continue;
            /* A CHILD SA rekey keeps the PFS our proposal asks for. */
            if (ike_choice_offered(&c, props, n, ike) && (ike || ike_choice_keeps_pfs(&c, props, n))) {
                c.number = gp->number;
                *out = c;
                return true;
            }
        }
    }
    return false;
}

/* Public value and shared secret for the gateway's KE payload. */
int ike_rekey_ke_answer(uint16_t group, const ike_ke *peer, crypto_ke **ke, uint8_t *pub, size_t pub_cap,
                        size_t *pub_len, uint8_t *g_ir, size_t g_cap, size_t *g_len, char *err, size_t err_len)
{
    int r = crypto_ke_new(group, ke);
    if (r == 0)
        r = crypto_ke_public(*ke, pub, pub_cap, pub_len);
    if (r == 0)
        r = crypto_ke_derive(*ke, peer->data.p, peer->data.len, g_ir, g_cap, g_len, err, err_len);
    return r;
}

void ike_rekey_put_ts(ike_chain_writer *cw, const ike_ts *tsi, size_t n_tsi, const ike_ts *tsr, size_t n_tsr)
{
    ike_ts any;
    if (n_tsi == 0 || n_tsr == 0)
        ike_ts_from_prefix((const uint8_t[4]){ 0 }, 4, 0, 0, 0, 65535, &any);
    ike_build_ts(cw, IKE_PL_TSI, n_tsi ? tsi : &any, n_tsi ? n_tsi : 1);
    ike_build_ts(cw, IKE_PL_TSR, n_tsr ? tsr : &any, n_tsr ? n_tsr : 1);
}

void ike_rekey_child_alg_name(ike_sa *sa, const ike_child_result *res)
{
    snprintf(sa->esp_alg, sizeof(sa->esp_alg), "%s%s%s%s", proposal_encr_name(res->encr_id, res->encr_key_bits),
             res->integ_id ? "-" : "", res->integ_id ? proposal_integ_name(res->integ_id) : "",
             res->esn ? "-esn" : "");
}

/* ------------------------------------------------------- Deletes we send */

static ike_retiring *next_child_delete(ike_sa *sa)
{
    for (size_t i = 0; i < sa->n_retiring; i++) {
        ike_retiring *r = &sa->retiring[i];
        if (r->we_delete && !r->delete_sent && !r->done)
            return r;
    }
    return NULL;
}

static ike_task_status delete_child_build(ike_sa *sa)
{
    ike_retiring *r = next_child_delete(sa);
    if (!r)
        return IKE_TASK_DONE;
    uint8_t inner[32], spi[4];
    buf_writer w;
    buf_writer_init(&w, inner, sizeof(inner));
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    buf_store_be32(spi, r->spi_in);
    ike_build_delete(&cw, IKE_PROTO_ESP, 4, spi, 1);
    ike_chain_writer_finish(&cw);
    r->delete_sent = true;
    if (next_child_delete(sa))
        ike_task_queue(sa, IKE_TASK_DELETE_CHILD); /* one per exchange: the next after this one */
    LOG_INFO(sa->log, "ike", "deleting replaced CHILD SA %08x/%08x", r->spi_in, r->spi_out);
    if (ike_sa_send_protected(sa, IKE_EXCH_INFORMATIONAL, false, sa->next_msg_id, inner, buf_writer_len(&w),
                              cw.first_type, IKE_TASK_DELETE_CHILD) < 0) {
        r->done = true;
        r->deadline_ms = ike_rekey_now(sa) + CHILD_GRACE_MS;
        ike_rekey_rearm(sa);
        return IKE_TASK_FAILED;
    }
    return IKE_TASK_NEED_MORE;
}

static ike_task_status delete_child_process(ike_sa *sa, const ike_message *msg, const ike_chain *c)
{
    (void)msg;
    (void)c;
    if (sa->state != IKE_SA_ESTABLISHED)
        return IKE_TASK_DONE;
    for (size_t i = 0; i < sa->n_retiring; i++) {
        ike_retiring *r = &sa->retiring[i];
        if (r->we_delete && r->delete_sent && !r->done) {
            /* Its packets already in flight may still arrive: a short grace. */
            r->done = true;
            r->deadline_ms = ike_rekey_now(sa) + CHILD_GRACE_MS;
            break;
        }
    }
    ike_rekey_rearm(sa);
    return IKE_TASK_DONE;
}

/* Our requests on an IKE SA the gateway just created wait until it shows
 * it has it (quiet_until_ms). */
bool ike_rekey_ready(ike_sa *sa)
{
    if (!sa->quiet_until_ms)
        return true;
    if (ike_rekey_now(sa) < sa->quiet_until_ms) {
        ike_rekey_rearm(sa);
        return false;
    }
    sa->quiet_until_ms = 0;
    return true;
}

const ike_task_ops ike_task_delete_child = {
    .kind = IKE_TASK_DELETE_CHILD,
    .ready = ike_rekey_ready,
    .build = delete_child_build,
    .process = delete_child_process,
};

void ike_rekey_heard(ike_sa *sa)
{
    sa->quiet_until_ms = 0;
}

static void on_timer(void *arg)
{
    ike_sa *sa = arg;
    uint64_t now = ike_rekey_now(sa);
    for (int i = 0; i < IKE_MAX_ZOMBIES; i++)
        zombie_tick(sa, &sa->zombie[i], now);
    /* The wait on a new IKE SA of the gateway's is over (ike_rekey_ready):
     * left set, it would keep this timer due at once, over and over. */
    if (sa->quiet_until_ms && now >= sa->quiet_until_ms)
        sa->quiet_until_ms = 0;
    if (sa->state != IKE_SA_ESTABLISHED) {
        ike_rekey_rearm(sa);
        return;
    }
    if (sa->ike_rekey_at_ms && now >= sa->ike_rekey_at_ms) {
        sa->ike_rekey_at_ms = 0;
        LOG_INFO(sa->log, "ike", "IKE SA soft lifetime reached: rekeying");
        ike_task_queue(sa, IKE_TASK_REKEY_IKE);
    }
    for (size_t i = 0; i < sa->n_retiring;) {
        ike_retiring *r = &sa->retiring[i];
        if (r->deadline_ms && now >= r->deadline_ms) {
            if (r->done) {
                forget_retiring(sa, i);
                continue;
            }
            if (!r->we_delete) {
                LOG_INFO(sa->log, "ike", "the gateway did not delete replaced CHILD SA %08x: we do", r->spi_in);
                r->we_delete = true;
                r->deadline_ms = 0;
                ike_task_queue(sa, IKE_TASK_DELETE_CHILD);
            }
        }
        i++;
    }
    ike_rekey_rearm(sa);
    ike_task_run(sa);
}

/* ------------------------------------------------------- as responder */

void ike_rekey_process_request(ike_sa *sa, const ike_header *hdr, const ike_chain *c)
{
    ike_rekey_answer *a = calloc(1, sizeof(*a));
    if (!a)
        return; /* the gateway retransmits */
    buf_writer_init(&a->w, a->buf, sizeof(a->buf));
    ike_chain_writer_init(&a->cw, &a->w, SIZE_MAX);
    ike_diag d;
    ike_diag_clear(&d);
    ike_notify rekey;
    bool have_rekey = ike_chain_find_notify(c, IKE_N_REKEY_SA, &rekey, &d) == 0;
    const ike_payload *sa_pl = ike_chain_find(c, IKE_PL_SA, NULL);
    ike_new_ike n;
    memset(&n, 0, sizeof(n));
    bool new_ike = false;
    if (sa->state != IKE_SA_ESTABLISHED || !sa->hooks.on_child_rekeyed) {
        ike_rekey_answer_notify(a, sa->state == IKE_SA_ESTABLISHED ? IKE_N_NO_ADDITIONAL_SAS : IKE_N_TEMPORARY_FAILURE,
                                NULL, 0);
    } else if (have_rekey && rekey.protocol == IKE_PROTO_ESP && rekey.spi.len == 4) {
        uint32_t spi = buf_load_be32(rekey.spi.p);
        bool retiring = false;
        for (size_t i = 0; i < sa->n_retiring; i++)
            retiring |= sa->retiring[i].spi_out == spi;
        if (spi == sa->child_spi_out) {
            ike_rekey_child_request(sa, c, a);
        } else if (retiring) {
            ike_rekey_answer_notify(a, IKE_N_TEMPORARY_FAILURE, NULL, 0); /* §2.25.1: on its way out */
        } else {
            uint8_t s4[4];
            buf_store_be32(s4, spi);
            ike_build_notify(&a->cw, IKE_PROTO_ESP, IKE_N_CHILD_SA_NOT_FOUND, s4, 4, NULL, 0);
        }
    } else if (!have_rekey && sa_pl && sa_pl->body.len >= 9 && sa_pl->body.p[5] == IKE_PROTO_IKE) {
        /* SA payload: proposal header at 0, Protocol ID at byte 5 (§3.3.1). */
        new_ike = ike_rekey_ike_request(sa, c, a, &n);
    } else {
        /* A CHILD SA besides ours: one is all we carry. */
        ike_rekey_answer_notify(a, IKE_N_NO_ADDITIONAL_SAS, NULL, 0);
        LOG_WARN(sa->log, "ike", "gateway %s asked for another CHILD SA: answered NO_ADDITIONAL_SAS", sa->gw_text);
    }
    ike_chain_writer_finish(&a->cw);
    if (ike_chain_writer_ok(&a->cw))
        ike_sa_send_protected(sa, hdr->exchange, true, hdr->message_id, a->buf, buf_writer_len(&a->w),
                              a->cw.first_type, IKE_TASK_NONE);
    secure_free(a, sizeof(*a));
    if (!new_ike)
        return;
    if (sa->req.task == IKE_TASK_REKEY_IKE) {
        /* Both sides rekey the IKE SA (§2.8.1): settled when our answer is in. */
        LOG_INFO(sa->log, "ike", "gateway rekeys the IKE SA too (collision)");
        ike_rekey_new_ike_free(&sa->rki.peer);
        sa->rki.peer = n;
        sa->rki.collided = true;
        return;
    }
    if (ike_rekey_switch_ike(sa, &n, false, false) < 0)
        ike_sa_fail(sa, M2MVPN_E_CRYPTO, "cannot switch to the IKE SA the gateway rekeyed");
    ike_rekey_new_ike_free(&n);
}
