/* SPDX-License-Identifier: Apache-2.0 */
/* CREATE_CHILD_SA rekeying the IKE SA (RFC 7296 §1.3.2, §2.18), both ways:
 * our task and our answer to the gateway's; the collision of §2.8.1; the
 * move to the new SA (the old one a zombie until its Delete is done). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/secmem.h"
#include "rekey.h"

/* ------------------------------------------------------- IKE SA, initiator */

int ike_sa_rekey_ike(ike_sa *sa)
{
    if (!sa || sa->state != IKE_SA_ESTABLISHED)
        return M2MVPN_E_STATE;
    ike_task_queue(sa, IKE_TASK_REKEY_IKE);
    ike_task_run(sa);
    return 0;
}

static ike_task_status rekey_ike_build(ike_sa *sa)
{
    const profile *p = sa->cfg.prof;
    crypto_ke_free(sa->rki.ke);
    sa->rki.ke = NULL;
    ike_rekey_new_ike_free(&sa->rki.peer);
    sa->rki.collided = false;
    uint8_t pub[CRYPTO_MAX_KE_LEN];
    size_t pub_len = 0;
    int r = crypto_random(sa->rki.spi, 8);
    if (r == 0)
        r = crypto_random(sa->rki.nonce, sizeof(sa->rki.nonce));
    if (r == 0)
        r = crypto_ke_new(sa->ke_group, &sa->rki.ke);
    if (r == 0)
        r = crypto_ke_public(sa->rki.ke, pub, sizeof(pub), &pub_len);
    uint8_t inner[4096];
    buf_writer w;
    buf_writer_init(&w, inner, sizeof(inner));
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_build_sa(&cw, p->ike.proposals, p->ike.n_proposals, IKE_PROTO_IKE, sa->rki.spi, 8);
    ike_build_nonce(&cw, sa->rki.nonce, sizeof(sa->rki.nonce));
    ike_build_ke(&cw, sa->ke_group, pub, pub_len);
    ike_chain_writer_finish(&cw);
    if (r == 0 && !ike_chain_writer_ok(&cw))
        r = M2MVPN_E_INVAL;
    if (r == 0)
        r = ike_sa_send_protected(sa, IKE_EXCH_CREATE_CHILD_SA, false, sa->next_msg_id, inner,
                                  buf_writer_len(&w), cw.first_type, IKE_TASK_REKEY_IKE);
    if (r < 0) {
        LOG_WARN(sa->log, "ike", "cannot rekey the IKE SA (%s): trying again in %u s", m2mvpn_strerror(r),
                 REKEY_RETRY_MS / 1000);
        sa->ike_rekey_at_ms = ike_rekey_now(sa) + REKEY_RETRY_MS;
        ike_rekey_rearm(sa);
        return IKE_TASK_FAILED;
    }
    LOG_INFO(sa->log, "ike", "CREATE_CHILD_SA to %s: rekey IKE SA (%s)", sa->gw_text, proposal_ke_name(sa->ke_group));
    return IKE_TASK_NEED_MORE;
}

/* New IKE SA keys: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) (§2.18). */
static int derive_new_ike(ike_sa *sa, ike_new_ike *n, const ike_sa_choice *ch, const uint8_t *g_ir, size_t g_len,
                          const uint8_t *ni, size_t ni_len, const uint8_t *nr, size_t nr_len)
{
    n->suite.encr_id = ch->id[IKE_TT_ENCR];
    n->suite.encr_key_bits = ch->encr_key_bits ? ch->encr_key_bits : 256;
    n->suite.integ_id = ike_sa_choice_has(ch, IKE_TT_INTEG) ? ch->id[IKE_TT_INTEG] : 0;
    n->suite.prf_id = ch->id[IKE_TT_PRF];
    n->ke_group = ch->id[IKE_TT_KE];
    crypto_key skeyseed;
    int r = crypto_ike_skeyseed_rekey(sa->suite.prf_id, &sa->keys->sk_d, g_ir, g_len, ni, ni_len, nr, nr_len,
                                      &skeyseed);
    if (r == 0)
        r = crypto_ike_keys_derive(&n->suite, &skeyseed, ni, ni_len, nr, nr_len, n->spi_i, n->spi_r, &n->keys);
    secure_wipe(&skeyseed, sizeof(skeyseed));
    ike_rekey_min_nonce(ni, ni_len, nr, nr_len, n->min_nonce, &n->min_nonce_len);
    return r;
}

/* The new IKE SA takes over; the current one becomes a zombie. The CHILD
 * SAs stay as they are: they now belong to the new IKE SA (§2.8). */
int ike_rekey_switch_ike(ike_sa *sa, ike_new_ike *n, bool we_delete_old, bool old_gone)
{
    crypto_cipher *seal, *open;
    int r = ike_sa_make_ciphers(&n->suite, n->keys, n->initiator, &seal, &open);
    if (r < 0)
        return r;
    ike_resp_cache held = { 0 };
    uint32_t held_id = 0;
    uint8_t held_exchange = 0;
    if (sa->req.task == IKE_TASK_DPD) {
        /* A liveness check on the old SA: the new one is proof enough; the
         * task, queued again, plans the next one. Its message ID stays
         * used: the old SA's Delete must not reuse it, or a gateway that got
         * the check takes the Delete for its retransmission and answers
         * from its cache, which would pass for the Delete's confirmation.
         * Nor may the Delete skip it (a gateway that never got the check
         * waits for that ID): the zombie sends the check again first. */
        held_id = sa->req.message_id;
        held_exchange = sa->req.exchange;
        ike_resp_cache_set(&held, sa->req.buf, sa->req.dgram, sa->req.n_dgram);
        sa->req.buf = NULL;
        sa->req.n_dgram = 0;
        ike_sa_request_done(sa);
        sa->next_msg_id++;
        ike_task_queue(sa, IKE_TASK_DPD);
    }
    /* Our IKE SA rekey, if one waits, is moot: the new SA has its own
     * lifetime (planned below). */
    ike_task_unqueue(sa, IKE_TASK_REKEY_IKE);
    sa->rki.ke_retried = false;
    ike_zombie *z = ike_rekey_make_zombie(sa, we_delete_old);
    z->held = held;
    z->held_id = held_id;
    z->held_exchange = held_exchange;
    if (old_gone) {
        /* The gateway deleted it already (and we answered): nothing left to do on it. */
        ike_rekey_zombie_free(z);
        z = NULL;
        we_delete_old = false;
    }
    sa->initiator = n->initiator;
    memcpy(sa->spi_i, n->spi_i, 8);
    memcpy(sa->spi_r, n->spi_r, 8);
    sa->suite = n->suite;
    sa->ke_group = n->ke_group;
    crypto_ike_keys_free(sa->keys);
    sa->keys = n->keys;
    n->keys = NULL;
    sa->seal_ctx = seal;
    sa->open_ctx = open;
    ike_sa_sk_adapter(&sa->sk_out, seal, true);
    ike_sa_sk_adapter(&sa->sk_in, open, false);
    sa->next_msg_id = 0;
    sa->peer_msg_id = 0;
    ike_frag_reasm_reset(&sa->reasm);
    snprintf(sa->ike_alg, sizeof(sa->ike_alg), "%s%s%s-%s-%s",
             proposal_encr_name(sa->suite.encr_id, sa->suite.encr_key_bits),
             sa->suite.integ_id ? "-" : "", sa->suite.integ_id ? proposal_integ_name(sa->suite.integ_id) : "",
             proposal_prf_name(sa->suite.prf_id), proposal_ke_name(sa->ke_group));
    LOG_INFO(sa->log, "ike", "IKE SA rekeyed: now %016llx_%016llx (%s, %s initiated)",
             (unsigned long long)ike_sa_spi_be64(sa->spi_i), (unsigned long long)ike_sa_spi_be64(sa->spi_r),
             sa->ike_alg, sa->initiator ? "we" : "the gateway");
    if (we_delete_old)
        ike_rekey_zombie_send_delete(sa, z);
    sa->quiet_until_ms = sa->initiator ? 0 : ike_rekey_now(sa) + NEW_IKE_QUIET_MS;
    ike_rekey_plan_ike(sa);
    if (sa->hooks.on_ike_rekeyed)
        sa->hooks.on_ike_rekeyed(sa->hooks.arg);
    return 0;
}

static void ike_rekey_failed(ike_sa *sa, const char *why)
{
    if (sa->rki.collided) {
        LOG_INFO(sa->log, "ike", "our IKE SA rekey failed (%s), the gateway's own rekey stands", why);
        sa->rki.collided = false;
        if (ike_rekey_switch_ike(sa, &sa->rki.peer, false, false) < 0)
            ike_sa_fail(sa, M2MVPN_E_CRYPTO, "cannot switch to the rekeyed IKE SA");
        ike_rekey_new_ike_free(&sa->rki.peer);
        return;
    }
    LOG_WARN(sa->log, "ike", "rekeying the IKE SA failed: %s; trying again in %u s", why, REKEY_RETRY_MS / 1000);
    sa->ike_rekey_at_ms = ike_rekey_now(sa) + REKEY_RETRY_MS;
    ike_rekey_rearm(sa);
}

static ike_task_status rekey_ike_process(ike_sa *sa, const ike_message *msg, const ike_chain *c)
{
    (void)msg;
    if (sa->state != IKE_SA_ESTABLISHED)
        return IKE_TASK_DONE;
    const profile *p = sa->cfg.prof;
    ike_diag d;
    ike_diag_clear(&d);
    ike_notify n;
    char err[256];
    crypto_ke *ke = sa->rki.ke;
    sa->rki.ke = NULL;
    if (ike_chain_find_notify(c, IKE_N_INVALID_KE_PAYLOAD, &n, &d) == 0 && !sa->rki.collided) {
        uint16_t group = n.data.len == 2 ? buf_load_be16(n.data.p) : 0;
        crypto_ke_free(ke);
        if (!sa->rki.ke_retried && group && ike_rekey_offers_ke(p->ike.proposals, p->ike.n_proposals, group)) {
            sa->rki.ke_retried = true;
            sa->ke_group = group;
            ike_task_queue(sa, IKE_TASK_REKEY_IKE);
            return IKE_TASK_DONE;
        }
        ike_rekey_failed(sa, "INVALID_KE_PAYLOAD for a group we do not offer");
        return IKE_TASK_FAILED;
    }
    sa->rki.ke_retried = false;
    if (ike_rekey_error_notify(c, err, sizeof(err))) {
        crypto_ke_free(ke);
        ike_rekey_failed(sa, err);
        return IKE_TASK_FAILED;
    }
    const ike_payload *sa_pl = ike_chain_find(c, IKE_PL_SA, NULL);
    const ike_payload *nr_pl = ike_chain_find(c, IKE_PL_NONCE, NULL);
    const ike_payload *ke_pl = ike_chain_find(c, IKE_PL_KE, NULL);
    ike_sa_choice ch;
    ike_ke kr;
    buf_reader nr;
    uint8_t g_ir[CRYPTO_MAX_KE_LEN];
    size_t g_len = 0;
    int r = M2MVPN_E_PROTOCOL;
    if (!sa_pl || !nr_pl || !ke_pl || !ke || ike_sa_parse_choice(sa_pl->body, &ch, &d) < 0 ||
        ike_nonce_parse(nr_pl->body, &nr, &d) < 0 || ike_ke_parse(ke_pl->body, &kr, &d) < 0) {
        snprintf(err, sizeof(err), "answer without valid SA, nonce and KE %s", d.text);
    } else if (ch.protocol != IKE_PROTO_IKE || ch.spi_len != 8 || ike_sa_spi_be64(ch.spi) == 0 ||
               !ike_choice_offered(&ch, p->ike.proposals, p->ike.n_proposals, true) ||
               ch.id[IKE_TT_KE] != sa->ke_group || kr.group != sa->ke_group) {
        snprintf(err, sizeof(err), "the gateway chose an IKE proposal or key exchange we did not offer");
    } else {
        char e2[192];
        r = crypto_ke_derive(ke, kr.data.p, kr.data.len, g_ir, sizeof(g_ir), &g_len, e2, sizeof(e2));
        if (r < 0)
            snprintf(err, sizeof(err), "invalid key exchange value: %s", e2);
    }
    crypto_ke_free(ke);
    ike_new_ike ours;
    memset(&ours, 0, sizeof(ours));
    ours.initiator = true;
    memcpy(ours.spi_i, sa->rki.spi, 8);
    if (r == 0) {
        memcpy(ours.spi_r, ch.spi, 8);
        r = derive_new_ike(sa, &ours, &ch, g_ir, g_len, sa->rki.nonce, sizeof(sa->rki.nonce), nr.p, nr.len);
        if (r < 0)
            snprintf(err, sizeof(err), "deriving the new IKE SA keys failed");
    }
    secure_wipe(g_ir, sizeof(g_ir));
    if (r < 0) {
        ike_rekey_new_ike_free(&ours);
        ike_rekey_failed(sa, err);
        return IKE_TASK_FAILED;
    }
    if (sa->rki.collided) {
        bool ours_redundant = ike_rekey_nonce_cmp(ours.min_nonce, ours.min_nonce_len, sa->rki.peer.min_nonce,
                                                  sa->rki.peer.min_nonce_len) < 0;
        LOG_INFO(sa->log, "ike", "IKE SA rekey collision (RFC 7296 §2.8.1): %s exchange had the lowest nonce",
                 ours_redundant ? "our" : "the gateway's");
        sa->rki.collided = false;
        if (ours_redundant) {
            /* Delete ours; move to the gateway's, which deletes the old one. */
            ike_zombie *z = ike_rekey_zombie_from_new(sa, &ours);
            r = ike_rekey_switch_ike(sa, &sa->rki.peer, false, false);
            if (z && r == 0)
                ike_rekey_zombie_send_delete(sa, z);
        } else {
            /* The gateway deletes its redundant one; we delete the old one. */
            ike_zombie *z = ike_rekey_zombie_from_new(sa, &sa->rki.peer);
            (void)z;
            r = ike_rekey_switch_ike(sa, &ours, true, false);
        }
        ike_rekey_new_ike_free(&sa->rki.peer);
    } else {
        r = ike_rekey_switch_ike(sa, &ours, true, false);
    }
    ike_rekey_new_ike_free(&ours);
    if (r < 0) {
        ike_sa_fail(sa, M2MVPN_E_CRYPTO, "cannot switch to the rekeyed IKE SA");
        return IKE_TASK_FAILED;
    }
    return IKE_TASK_DONE;
}


/* The gateway rekeys the IKE SA (§1.3.2). Returns true when the answer is
 * ready and *n holds the new SA. */
bool ike_rekey_ike_request(ike_sa *sa, const ike_chain *c, ike_rekey_answer *a, ike_new_ike *n)
{
    const profile *p = sa->cfg.prof;
    ike_diag d;
    ike_diag_clear(&d);
    /* §2.25.2: not while a request of ours other than a liveness check
     * (dropped on the switch) or our own IKE SA rekey (a collision, §2.8.1)
     * is in flight: it was built under the current SPIs, keys and message
     * IDs, and its answer would come on an SA we no longer use. */
    if (sa->req.task != IKE_TASK_NONE && sa->req.task != IKE_TASK_DPD && sa->req.task != IKE_TASK_REKEY_IKE) {
        LOG_INFO(sa->log, "ike", "gateway rekeys the IKE SA while our %s is in flight: TEMPORARY_FAILURE",
                 ike_task_name(sa->req.task));
        ike_rekey_answer_notify(a, IKE_N_TEMPORARY_FAILURE, NULL, 0);
        return false;
    }
    if (sa->req.task == IKE_TASK_REKEY_IKE && sa->rki.collided) {
        /* The gateway already rekeyed the IKE SA while ours is in flight:
         * one SA of its own is all the collision settles (§2.8.1); a
         * further one would replace the first, which then is never used
         * nor deleted. */
        LOG_INFO(sa->log, "ike", "gateway rekeys the IKE SA again during a collision: TEMPORARY_FAILURE");
        ike_rekey_answer_notify(a, IKE_N_TEMPORARY_FAILURE, NULL, 0);
        return false;
    }
    const ike_payload *sa_pl = ike_chain_find(c, IKE_PL_SA, NULL);
    const ike_payload *ni_pl = ike_chain_find(c, IKE_PL_NONCE, NULL);
    const ike_payload *ke_pl = ike_chain_find(c, IKE_PL_KE, NULL);
    ike_sa_view *v = malloc(sizeof(*v));
    buf_reader ni;
    ike_ke ki;
    ike_sa_choice ch;
    bool ok = false;
    if (!v) {
        ike_rekey_answer_notify(a, IKE_N_TEMPORARY_FAILURE, NULL, 0);
        return false;
    }
    if (!sa_pl || !ni_pl || !ke_pl || ike_sa_parse(sa_pl->body, v, &d) < 0 || ike_nonce_parse(ni_pl->body, &ni, &d) < 0 ||
        ike_ke_parse(ke_pl->body, &ki, &d) < 0) {
        LOG_WARN(sa->log, "ike", "gateway's IKE SA rekey is malformed %s: refused", d.text);
        ike_rekey_answer_notify(a, IKE_N_INVALID_SYNTAX, NULL, 0);
        goto out;
    }
    if (!ike_rekey_choose(v, p->ike.proposals, p->ike.n_proposals, true, &ch) || ike_sa_spi_be64(ch.spi) == 0) {
        LOG_WARN(sa->log, "ike", "gateway's IKE SA rekey offers no IKE proposal of ours: NO_PROPOSAL_CHOSEN");
        ike_rekey_answer_notify(a, IKE_N_NO_PROPOSAL_CHOSEN, NULL, 0);
        goto out;
    }
    uint16_t group = ch.id[IKE_TT_KE];
    if (ki.group != group) {
        uint8_t g[2];
        buf_store_be16(g, group);
        ike_rekey_answer_notify(a, IKE_N_INVALID_KE_PAYLOAD, g, 2);
        goto out;
    }
    uint8_t nr[IKE_NONCE_LEN], pub[CRYPTO_MAX_KE_LEN], g_ir[CRYPTO_MAX_KE_LEN];
    size_t pub_len = 0, g_len = 0;
    crypto_ke *ke = NULL;
    char err[192] = "";
    memset(n, 0, sizeof(*n));
    n->initiator = false;
    memcpy(n->spi_i, ch.spi, 8);
    int r = crypto_random(n->spi_r, 8);
    if (r == 0)
        r = crypto_random(nr, sizeof(nr));
    if (r == 0)
        r = ike_rekey_ke_answer(group, &ki, &ke, pub, sizeof(pub), &pub_len, g_ir, sizeof(g_ir), &g_len, err,
                                sizeof(err));
    crypto_ke_free(ke);
    if (r == 0)
        r = derive_new_ike(sa, n, &ch, g_ir, g_len, ni.p, ni.len, nr, sizeof(nr));
    secure_wipe(g_ir, sizeof(g_ir));
    if (r < 0) {
        LOG_WARN(sa->log, "ike", "cannot answer the gateway's IKE SA rekey (%s %s)", m2mvpn_strerror(r), err);
        ike_rekey_new_ike_free(n);
        ike_rekey_answer_notify(a, err[0] ? IKE_N_INVALID_SYNTAX : IKE_N_TEMPORARY_FAILURE, NULL, 0);
        goto out;
    }
    memcpy(ch.spi, n->spi_r, 8);
    ike_build_sa_choice(&a->cw, &ch);
    ike_build_nonce(&a->cw, nr, sizeof(nr));
    ike_build_ke(&a->cw, group, pub, pub_len);
    ok = true;
out:
    free(v);
    return ok;
}

const ike_task_ops ike_task_rekey_ike = {
    .kind = IKE_TASK_REKEY_IKE,
    .ready = ike_rekey_ready,
    .build = rekey_ike_build,
    .process = rekey_ike_process,
};
