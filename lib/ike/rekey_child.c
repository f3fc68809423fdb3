/* SPDX-License-Identifier: Apache-2.0 */
/* CREATE_CHILD_SA rekeying the CHILD SA (RFC 7296 §1.3.3, §2.8), both ways:
 * our task (with PFS when the profile's first ESP proposal names a key
 * exchange) and our answer to the gateway's; the collision of §2.8.1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/secmem.h"
#include "rekey.h"

/* ------------------------------------------------ CHILD SA, initiator */

/* Our rekey of the CHILD SA spi_in, queued: for that SA only (the gateway
 * may rekey it before the window is free). */
static void queue_child_rekey(ike_sa *sa, uint32_t spi_in)
{
    sa->rk.queued_spi_in = spi_in;
    ike_task_queue(sa, IKE_TASK_REKEY_CHILD);
}

int ike_sa_rekey_child(ike_sa *sa, uint32_t spi_in)
{
    if (!sa || sa->state != IKE_SA_ESTABLISHED || !sa->hooks.on_child_rekeyed)
        return M2MVPN_E_STATE;
    if (sa->req.task == IKE_TASK_REKEY_CHILD && sa->rk.old_spi_in == spi_in)
        return 0; /* under way */
    if (spi_in != sa->child_spi_in)
        return M2MVPN_E_STATE;
    if (!ike_task_queued(sa, IKE_TASK_REKEY_CHILD) || sa->rk.queued_spi_in != spi_in) {
        LOG_INFO(sa->log, "ike", "rekeying CHILD SA %08x/%08x", sa->child_spi_in, sa->child_spi_out);
        queue_child_rekey(sa, spi_in);
        sa->child_retry_at_ms = 0;
    }
    ike_task_run(sa);
    return 0;
}

static ike_task_status rekey_child_build(ike_sa *sa)
{
    const profile *p = sa->cfg.prof;
    if (sa->rk.queued_spi_in != sa->child_spi_in) {
        /* The gateway rekeyed it while ours waited: its new SA needs none. */
        LOG_INFO(sa->log, "ike", "CHILD SA %08x was rekeyed by the gateway meanwhile: our rekey of it is moot",
                 sa->rk.queued_spi_in);
        sa->rk.ke_retried = false;
        sa->child_retry_at_ms = 0;
        return IKE_TASK_DONE;
    }
    crypto_ke_free(sa->rk.ke);
    sa->rk.ke = NULL;
    sa->rk.collided = false;
    sa->rk.old_spi_in = sa->child_spi_in;
    sa->rk.old_spi_out = sa->child_spi_out;
    if (!sa->rk.ke_retried)
        sa->rk.group = p->esp.proposals[0].n_ke ? p->esp.proposals[0].ke[0] : 0;
    uint8_t pub[CRYPTO_MAX_KE_LEN];
    size_t pub_len = 0;
    int r = ike_rekey_new_child_spi(sa, &sa->rk.new_spi_in);
    if (r == 0)
        r = crypto_random(sa->rk.nonce, sizeof(sa->rk.nonce));
    if (r == 0 && sa->rk.group) {
        r = crypto_ke_new(sa->rk.group, &sa->rk.ke);
        if (r == 0)
            r = crypto_ke_public(sa->rk.ke, pub, sizeof(pub), &pub_len);
    }
    uint8_t inner[4096];
    buf_writer w;
    buf_writer_init(&w, inner, sizeof(inner));
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    uint8_t old[4], spi[4];
    buf_store_be32(old, sa->rk.old_spi_in);
    buf_store_be32(spi, sa->rk.new_spi_in);
    ike_build_notify(&cw, IKE_PROTO_ESP, IKE_N_REKEY_SA, old, 4, NULL, 0);
    ike_build_sa(&cw, p->esp.proposals, p->esp.n_proposals, IKE_PROTO_ESP, spi, 4);
    ike_build_nonce(&cw, sa->rk.nonce, sizeof(sa->rk.nonce));
    if (sa->rk.group)
        ike_build_ke(&cw, sa->rk.group, pub, pub_len);
    ike_rekey_put_ts(&cw, sa->child_tsi, sa->n_child_tsi, sa->child_tsr, sa->n_child_tsr);
    ike_chain_writer_finish(&cw);
    if (r == 0 && !ike_chain_writer_ok(&cw))
        r = M2MVPN_E_INVAL;
    if (r == 0)
        r = ike_sa_send_protected(sa, IKE_EXCH_CREATE_CHILD_SA, false, sa->next_msg_id, inner,
                                  buf_writer_len(&w), cw.first_type, IKE_TASK_REKEY_CHILD);
    if (r < 0) {
        LOG_WARN(sa->log, "ike", "cannot rekey CHILD SA %08x (%s): trying again in %u s", sa->rk.old_spi_in,
                 m2mvpn_strerror(r), REKEY_RETRY_MS / 1000);
        queue_child_rekey(sa, sa->rk.old_spi_in);
        sa->child_retry_at_ms = ike_rekey_now(sa) + REKEY_RETRY_MS;
        ike_rekey_rearm(sa);
        return IKE_TASK_FAILED;
    }
    LOG_INFO(sa->log, "ike", "CREATE_CHILD_SA to %s: rekey CHILD SA %08x -> %08x%s%s", sa->gw_text,
             sa->rk.old_spi_in, sa->rk.new_spi_in, sa->rk.group ? ", PFS " : "",
             sa->rk.group ? proposal_ke_name(sa->rk.group) : "");
    return IKE_TASK_NEED_MORE;
}

/* The gateway's SA from a collision becomes the current one. */
static void adopt_peer_child(ike_sa *sa)
{
    ike_rekey_retire(sa, sa->child_spi_in, sa->child_spi_out, false, true);
    sa->child_spi_in = sa->rk.peer_spi_in;
    sa->child_spi_out = sa->rk.peer_spi_out;
    sa->rk.collided = false;
}

/* An error notify (type below 16384) in an answer: true, named in err. */
bool ike_rekey_error_notify(const ike_chain *c, char *err, size_t err_len)
{
    ike_diag d;
    ike_notify n;
    for (size_t i = 0; i < c->n; i++) {
        if (c->pl[i].type == IKE_PL_NOTIFY && ike_notify_parse(c->pl[i].body, &n, &d) == 0 && n.type < 16384) {
            const char *name = ike_notify_name(n.type);
            snprintf(err, err_len, "gateway answered %s", name ? name : "an error");
            return true;
        }
    }
    return false;
}

static void child_rekey_failed(ike_sa *sa, const char *why)
{
    if (sa->rk.collided) {
        /* Ours failed, the gateway's went through: nothing to retry. */
        LOG_INFO(sa->log, "ike", "our CHILD SA rekey failed (%s), the gateway's own rekey stands", why);
        adopt_peer_child(sa);
        return;
    }
    LOG_WARN(sa->log, "ike", "rekeying CHILD SA %08x failed: %s; trying again in %u s", sa->rk.old_spi_in, why,
             REKEY_RETRY_MS / 1000);
    if (sa->rk.old_spi_in == sa->child_spi_in) {
        queue_child_rekey(sa, sa->rk.old_spi_in);
        sa->child_retry_at_ms = ike_rekey_now(sa) + REKEY_RETRY_MS;
        ike_rekey_rearm(sa);
    }
}

static ike_task_status rekey_child_process(ike_sa *sa, const ike_message *msg, const ike_chain *c)
{
    (void)msg;
    if (sa->state != IKE_SA_ESTABLISHED)
        return IKE_TASK_DONE;
    const profile *p = sa->cfg.prof;
    if (sa->rk.moot) {
        /* The gateway settled a collision before our answer came (it
         * deleted the SA we were rekeying): whatever this created is redundant. */
        sa->rk.moot = false;
        crypto_ke_free(sa->rk.ke);
        sa->rk.ke = NULL;
        const ike_payload *sa_pl = ike_chain_find(c, IKE_PL_SA, NULL);
        ike_sa_choice ch;
        ike_diag d;
        if (sa_pl && ike_sa_parse_choice(sa_pl->body, &ch, &d) == 0 && ch.protocol == IKE_PROTO_ESP &&
            ch.spi_len == 4) {
            LOG_INFO(sa->log, "ike", "deleting redundant CHILD SA %08x/%08x of a collision", sa->rk.new_spi_in,
                     buf_load_be32(ch.spi));
            ike_rekey_retire(sa, sa->rk.new_spi_in, buf_load_be32(ch.spi), true, false);
        }
        sa->rk.new_spi_in = 0;
        return IKE_TASK_DONE;
    }
    ike_diag d;
    ike_diag_clear(&d);
    ike_notify n;
    char err[512];
    crypto_ke *ke = sa->rk.ke;
    sa->rk.ke = NULL;
    if (ike_chain_find_notify(c, IKE_N_INVALID_KE_PAYLOAD, &n, &d) == 0 && !sa->rk.collided) {
        uint16_t group = n.data.len == 2 ? buf_load_be16(n.data.p) : 0;
        crypto_ke_free(ke);
        if (!sa->rk.ke_retried && group && ike_rekey_offers_ke(p->esp.proposals, p->esp.n_proposals, group)) {
            LOG_INFO(sa->log, "ike", "gateway wants %s for the CHILD SA rekey: retrying", proposal_ke_name(group));
            sa->rk.ke_retried = true;
            sa->rk.group = group;
            queue_child_rekey(sa, sa->rk.old_spi_in);
            sa->child_retry_at_ms = 0;
            return IKE_TASK_DONE;
        }
        sa->rk.ke_retried = false;
        child_rekey_failed(sa, "INVALID_KE_PAYLOAD for a group we do not offer");
        return IKE_TASK_FAILED;
    }
    sa->rk.ke_retried = false;
    if (ike_rekey_error_notify(c, err, sizeof(err))) {
        crypto_ke_free(ke);
        child_rekey_failed(sa, err);
        return IKE_TASK_FAILED;
    }
    const ike_payload *nr_pl = ike_chain_find(c, IKE_PL_NONCE, NULL);
    const ike_payload *ke_pl = ike_chain_find(c, IKE_PL_KE, NULL);
    const ike_payload *sa_pl = ike_chain_find(c, IKE_PL_SA, NULL);
    buf_reader nr;
    ike_sa_choice ch;
    uint8_t g_ir[CRYPTO_MAX_KE_LEN];
    size_t g_len = 0;
    int r = 0;
    if (!nr_pl || !sa_pl || ike_nonce_parse(nr_pl->body, &nr, &d) < 0 || ike_sa_parse_choice(sa_pl->body, &ch, &d) < 0) {
        snprintf(err, sizeof(err), "answer without a valid SA and nonce %s", d.text);
        r = M2MVPN_E_PROTOCOL;
    } else if (ke) {
        ike_ke kr;
        if (!ke_pl || ike_ke_parse(ke_pl->body, &kr, &d) < 0 || kr.group != sa->rk.group ||
            !ike_sa_choice_has(&ch, IKE_TT_KE) || ch.id[IKE_TT_KE] != sa->rk.group) {
            snprintf(err, sizeof(err), "answer without our key exchange %s (PFS)", proposal_ke_name(sa->rk.group));
            r = M2MVPN_E_PROTOCOL;
        } else {
            char e2[192];
            r = crypto_ke_derive(ke, kr.data.p, kr.data.len, g_ir, sizeof(g_ir), &g_len, e2, sizeof(e2));
            if (r < 0)
                snprintf(err, sizeof(err), "invalid key exchange value: %s", e2);
        }
    }
    crypto_ke_free(ke);
    ike_child_result res;
    crypto_child_keys *keys = NULL;
    if (r == 0)
        r = ike_child_from_answer(sa, c, sa->rk.nonce, sizeof(sa->rk.nonce), nr.p, nr.len, g_len ? g_ir : NULL,
                                  g_len, false, sa->rk.new_spi_in, &res, &keys, err, sizeof(err));
    secure_wipe(g_ir, sizeof(g_ir));
    if (r < 0) {
        child_rekey_failed(sa, err);
        return IKE_TASK_FAILED;
    }
    uint8_t keymat[4 * CRYPTO_MAX_KEY_LEN];
    res.keymat_len = ike_child_keymat(keys, true, keymat, sizeof(keymat));
    res.keymat = keymat;
    res.natt = sa->natt;
    crypto_child_keys_free(keys);

    bool ours_redundant = false;
    if (sa->rk.collided) {
        uint8_t mine[IKE_NONCE_MAX];
        size_t mine_len;
        ike_rekey_min_nonce(sa->rk.nonce, sizeof(sa->rk.nonce), nr.p, nr.len, mine, &mine_len);
        ours_redundant = ike_rekey_nonce_cmp(mine, mine_len, sa->rk.peer_min_nonce, sa->rk.peer_min_nonce_len) < 0;
        LOG_INFO(sa->log, "ike", "CHILD SA rekey collision (RFC 7296 §2.8.1): %s exchange had the lowest nonce",
                 ours_redundant ? "our" : "the gateway's");
    }
    if (ours_redundant) {
        /* Ours is the redundant one: delete it (never installed); the
         * gateway's stands and the gateway deletes the old one. */
        ike_rekey_retire(sa, res.spi_in, res.spi_out, true, false);
        adopt_peer_child(sa);
    } else {
        uint32_t old_in = sa->child_spi_in, old_out = sa->child_spi_out;
        if (sa->rk.collided) {
            /* The gateway's new SA is redundant: it deletes it. */
            ike_rekey_retire(sa, sa->rk.peer_spi_in, sa->rk.peer_spi_out, false, true);
            sa->rk.collided = false;
        }
        sa->hooks.on_child_rekeyed(sa->hooks.arg, old_in, &res, true);
        ike_rekey_retire(sa, old_in, old_out, true, true);
        sa->child_spi_in = res.spi_in;
        sa->child_spi_out = res.spi_out;
        ike_rekey_child_alg_name(sa, &res);
        LOG_INFO(sa->log, "ike", "CHILD SA rekeyed: %08x/%08x -> %08x/%08x (%s)", old_in, old_out, res.spi_in,
                 res.spi_out, sa->esp_alg);
    }
    secure_wipe(keymat, sizeof(keymat));
    sa->rk.new_spi_in = 0;
    return IKE_TASK_DONE;
}


/* The gateway rekeys our CHILD SA (§1.3.3). */
void ike_rekey_child_request(ike_sa *sa, const ike_chain *c, ike_rekey_answer *a)
{
    const profile *p = sa->cfg.prof;
    ike_diag d;
    ike_diag_clear(&d);
    if (sa->req.task == IKE_TASK_REKEY_IKE || sa->req.task == IKE_TASK_DELETE_CHILD) {
        /* §2.25: one thing at a time; the gateway tries again later. */
        ike_rekey_answer_notify(a, IKE_N_TEMPORARY_FAILURE, NULL, 0);
        return;
    }
    if (sa->req.task == IKE_TASK_REKEY_CHILD && sa->rk.collided && sa->rk.old_spi_in == sa->child_spi_in) {
        /* The gateway already rekeyed this SA while ours is in flight: one
         * redundant SA of its own is all the collision settles (§2.8.1); a
         * further one would stay installed inbound and never be retired. */
        LOG_INFO(sa->log, "ike", "gateway rekeys CHILD SA %08x again during a collision: TEMPORARY_FAILURE",
                 sa->child_spi_in);
        ike_rekey_answer_notify(a, IKE_N_TEMPORARY_FAILURE, NULL, 0);
        return;
    }
    const ike_payload *sa_pl = ike_chain_find(c, IKE_PL_SA, NULL);
    const ike_payload *ni_pl = ike_chain_find(c, IKE_PL_NONCE, NULL);
    const ike_payload *ke_pl = ike_chain_find(c, IKE_PL_KE, NULL);
    const ike_payload *tsi_pl = ike_chain_find(c, IKE_PL_TSI, NULL);
    const ike_payload *tsr_pl = ike_chain_find(c, IKE_PL_TSR, NULL);
    ike_sa_view *v = malloc(sizeof(*v));
    ike_ts_list *tsi = malloc(sizeof(*tsi)), *tsr = malloc(sizeof(*tsr));
    buf_reader ni;
    ike_sa_choice ch;
    if (!v || !tsi || !tsr) {
        ike_rekey_answer_notify(a, IKE_N_TEMPORARY_FAILURE, NULL, 0);
        goto out;
    }
    if (!sa_pl || !ni_pl || !tsi_pl || !tsr_pl || ike_sa_parse(sa_pl->body, v, &d) < 0 ||
        ike_nonce_parse(ni_pl->body, &ni, &d) < 0 || ike_ts_parse(tsi_pl->body, tsi, &d) < 0 ||
        ike_ts_parse(tsr_pl->body, tsr, &d) < 0) {
        LOG_WARN(sa->log, "ike", "gateway's CHILD SA rekey is malformed %s: refused", d.text);
        ike_rekey_answer_notify(a, IKE_N_INVALID_SYNTAX, NULL, 0);
        goto out;
    }
    if (!ike_rekey_choose(v, p->esp.proposals, p->esp.n_proposals, false, &ch) || buf_load_be32(ch.spi) < 256) {
        LOG_WARN(sa->log, "ike", "gateway's CHILD SA rekey offers no ESP proposal of ours: NO_PROPOSAL_CHOSEN");
        ike_rekey_answer_notify(a, IKE_N_NO_PROPOSAL_CHOSEN, NULL, 0);
        goto out;
    }
    uint16_t group = ike_sa_choice_has(&ch, IKE_TT_KE) ? ch.id[IKE_TT_KE] : 0;
    ike_ke ki;
    if (group && (!ke_pl || ike_ke_parse(ke_pl->body, &ki, &d) < 0 || ki.group != group)) {
        uint8_t g[2];
        buf_store_be16(g, group);
        ike_rekey_answer_notify(a, IKE_N_INVALID_KE_PAYLOAD, g, 2);
        goto out;
    }
    uint32_t spi_in = 0;
    uint8_t nr[IKE_NONCE_LEN], pub[CRYPTO_MAX_KE_LEN], g_ir[CRYPTO_MAX_KE_LEN];
    size_t pub_len = 0, g_len = 0;
    crypto_ke *ke = NULL;
    char err[192] = "";
    int r = ike_rekey_new_child_spi(sa, &spi_in);
    if (r == 0)
        r = crypto_random(nr, sizeof(nr));
    if (r == 0 && group)
        r = ike_rekey_ke_answer(group, &ki, &ke, pub, sizeof(pub), &pub_len, g_ir, sizeof(g_ir), &g_len, err,
                                sizeof(err));
    crypto_ke_free(ke);
    ike_child_result res;
    memset(&res, 0, sizeof(res));
    crypto_child_keys *keys = NULL;
    res.spi_in = spi_in;
    res.spi_out = buf_load_be32(ch.spi);
    res.encr_id = ch.id[IKE_TT_ENCR];
    res.encr_key_bits = ch.encr_key_bits ? ch.encr_key_bits : 256;
    res.integ_id = ike_sa_choice_has(&ch, IKE_TT_INTEG) ? ch.id[IKE_TT_INTEG] : 0;
    res.esn = ike_sa_choice_has(&ch, IKE_TT_ESN) && ch.id[IKE_TT_ESN] == ESN_YES;
    res.natt = sa->natt;
    crypto_suite cs = { res.encr_id, res.encr_key_bits, res.integ_id, sa->suite.prf_id };
    if (r == 0)
        r = crypto_child_keys_derive(&cs, &sa->keys->sk_d, g_len ? g_ir : NULL, g_len, ni.p, ni.len, nr,
                                     sizeof(nr), &keys);
    secure_wipe(g_ir, sizeof(g_ir));
    if (r < 0) {
        LOG_WARN(sa->log, "ike", "cannot answer the gateway's CHILD SA rekey (%s %s)", m2mvpn_strerror(r), err);
        ike_rekey_answer_notify(a, r == M2MVPN_E_CRYPTO && err[0] ? IKE_N_INVALID_SYNTAX : IKE_N_TEMPORARY_FAILURE,
                                NULL, 0);
        goto out;
    }
    uint8_t keymat[4 * CRYPTO_MAX_KEY_LEN];
    res.keymat_len = ike_child_keymat(keys, false, keymat, sizeof(keymat));
    res.keymat = keymat;
    crypto_child_keys_free(keys);

    /* The new inbound SA is in place before the gateway can use it. */
    uint32_t old_in = sa->child_spi_in, old_out = sa->child_spi_out;
    sa->hooks.on_child_rekeyed(sa->hooks.arg, old_in, &res, false);
    secure_wipe(keymat, sizeof(keymat));
    if (sa->req.task == IKE_TASK_REKEY_CHILD && sa->rk.old_spi_in == old_in) {
        /* Both sides rekey it (§2.8.1): settled when our answer is in. */
        sa->rk.collided = true;
        sa->rk.peer_spi_in = res.spi_in;
        sa->rk.peer_spi_out = res.spi_out;
        ike_rekey_min_nonce(ni.p, ni.len, nr, sizeof(nr), sa->rk.peer_min_nonce, &sa->rk.peer_min_nonce_len);
        LOG_INFO(sa->log, "ike", "gateway rekeys CHILD SA %08x too (collision): its SA %08x/%08x", old_in,
                 res.spi_in, res.spi_out);
    } else {
        ike_rekey_retire(sa, old_in, old_out, false, true);
        sa->child_spi_in = res.spi_in;
        sa->child_spi_out = res.spi_out;
        ike_rekey_child_alg_name(sa, &res);
        LOG_INFO(sa->log, "ike", "gateway rekeyed CHILD SA %08x/%08x -> %08x/%08x (%s%s%s)", old_in, old_out,
                 res.spi_in, res.spi_out, sa->esp_alg, group ? ", PFS " : "", group ? proposal_ke_name(group) : "");
    }
    ch.spi_len = 4;
    buf_store_be32(ch.spi, spi_in);
    ike_build_sa_choice(&a->cw, &ch);
    ike_build_nonce(&a->cw, nr, sizeof(nr));
    if (group)
        ike_build_ke(&a->cw, group, pub, pub_len);
    /* The selectors the CHILD SA has (§2.8: a rekey keeps them; the
     * datapath's filters stay as negotiated): TSi the gateway's side. */
    if (sa->n_child_tsi && sa->n_child_tsr) {
        ike_build_ts(&a->cw, IKE_PL_TSI, sa->child_tsr, sa->n_child_tsr);
        ike_build_ts(&a->cw, IKE_PL_TSR, sa->child_tsi, sa->n_child_tsi);
    } else {
        ike_build_ts(&a->cw, IKE_PL_TSI, tsi->ts, tsi->n);
        ike_build_ts(&a->cw, IKE_PL_TSR, tsr->ts, tsr->n);
    }
out:
    free(v);
    free(tsi);
    free(tsr);
}

static bool rekey_child_ready(ike_sa *sa)
{
    return ike_rekey_ready(sa) && ike_rekey_now(sa) >= sa->child_retry_at_ms;
}

const ike_task_ops ike_task_rekey_child = {
    .kind = IKE_TASK_REKEY_CHILD,
    .ready = rekey_child_ready,
    .build = rekey_child_build,
    .process = rekey_child_process,
};
