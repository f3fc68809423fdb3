/* SPDX-License-Identifier: Apache-2.0 */
/* INFORMATIONAL exchanges (RFC 7296 §1.4): liveness checks both ways, Delete,
 * and answers to requests the gateway starts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sa_internal.h"

static int send_request(ike_sa *sa, ike_task task, const uint8_t *inner, size_t len, uint8_t first)
{
    return ike_sa_send_protected(sa, IKE_EXCH_INFORMATIONAL, false, sa->next_msg_id, inner, len, first, task);
}

static uint64_t dpd_period_ms(const ike_sa *sa)
{
    return (uint64_t)sa->cfg.prof->ike.dpd_s * 1000;
}

/* dpd_timer: the task checks whether the gateway has been quiet a period. */
void ike_info_dpd(void *arg)
{
    ike_sa *sa = arg;
    ike_task_queue(sa, IKE_TASK_DPD);
    ike_task_run(sa);
}

/* ------------------------------------------- liveness check (initiator) */

static ike_task_status dpd_build(ike_sa *sa)
{
    uint64_t period = dpd_period_ms(sa);
    uint64_t quiet = sa->loop->clock_ms() - sa->last_heard_ms;
    if (period == 0)
        return IKE_TASK_DONE;
    if (quiet < period) {
        /* Heard from meanwhile (also while it waited behind another request). */
        core_timer_arm(sa->loop, &sa->dpd_timer, period - quiet + 1);
        return IKE_TASK_DONE;
    }
    LOG_DBG(sa->log, "ike", "liveness check of %s", sa->gw_text);
    uint8_t inner[128];
    buf_writer w;
    buf_writer_init(&w, inner, sizeof(inner));
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    ike_mobike_build_dpd(sa, &cw); /* NAT detection under MOBIKE, else empty */
    ike_chain_writer_finish(&cw);
    if (send_request(sa, IKE_TASK_DPD, inner, buf_writer_len(&w), cw.first_type) < 0) {
        core_timer_arm(sa->loop, &sa->dpd_timer, period);
        return IKE_TASK_FAILED;
    }
    return IKE_TASK_NEED_MORE;
}

static ike_task_status dpd_process(ike_sa *sa, const ike_message *msg, const ike_chain *inner)
{
    (void)msg;
    if (sa->state != IKE_SA_ESTABLISHED)
        return IKE_TASK_DONE;
    if (sa->cfg.prof->ike.dpd_s)
        core_timer_arm(sa->loop, &sa->dpd_timer, dpd_period_ms(sa));
    ike_mobike_process_dpd(sa, inner); /* a NAT mapping change queues an address update */
    return IKE_TASK_DONE;
}

const ike_task_ops ike_task_dpd = {
    .kind = IKE_TASK_DPD,
    .build = dpd_build,
    .process = dpd_process,
};

/* ---------------------------------------------- IKE SA Delete (initiator) */

/* INFORMATIONAL{[N(AUTHENTICATION_FAILED),] D(IKE)} */
static int send_ike_delete(ike_sa *sa, bool auth_failed, ike_task task)
{
    uint8_t inner[64];
    buf_writer w;
    buf_writer_init(&w, inner, sizeof(inner));
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    if (auth_failed)
        ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_AUTHENTICATION_FAILED, NULL, 0, NULL, 0);
    ike_build_delete(&cw, IKE_PROTO_IKE, 0, NULL, 0);
    ike_chain_writer_finish(&cw);
    return send_request(sa, task, inner, buf_writer_len(&w), cw.first_type);
}

static ike_task_status delete_build(ike_sa *sa)
{
    LOG_INFO(sa->log, "ike", "deleting IKE SA with %s", sa->gw_text);
    return send_ike_delete(sa, false, IKE_TASK_DELETE) < 0 ? IKE_TASK_FAILED : IKE_TASK_NEED_MORE;
}

static ike_task_status delete_process(ike_sa *sa, const ike_message *msg, const ike_chain *inner)
{
    (void)msg;
    (void)inner;
    ike_sa_fail(sa, 0, "IKE SA with %s deleted", sa->gw_text);
    return IKE_TASK_DONE;
}

/* Not queued: ike_sa_close abandons whatever is under way and starts it. */
const ike_task_ops ike_task_delete = {
    .kind = IKE_TASK_DELETE,
    .build = delete_build,
    .process = delete_process,
};

void ike_info_send_final(ike_sa *sa, bool auth_failed)
{
    /* Sent like a response: once, nothing waits for the answer. */
    send_ike_delete(sa, auth_failed, IKE_TASK_NONE);
    ike_sa_request_done(sa);
}

/* ------------------------------------------------------------- responder */

void ike_info_process_request(ike_sa *sa, const ike_header *hdr, const ike_chain *c)
{
    uint8_t inner[256];
    buf_writer w;
    buf_writer_init(&w, inner, sizeof(inner));
    ike_chain_writer cw;
    ike_chain_writer_init(&cw, &w, SIZE_MAX);
    bool ike_deleted = false;      /* Delete(IKE): the IKE SA */
    bool child_gone = false;       /* Delete(ESP) of our only CHILD SA */
    ike_diag d;

    if (hdr->exchange == IKE_EXCH_INFORMATIONAL) {
        ike_mobike_process_request(sa, c); /* the gateway's address list */
        for (const ike_payload *pl = ike_chain_find(c, IKE_PL_DELETE, NULL); pl;
             pl = ike_chain_find(c, IKE_PL_DELETE, pl)) {
            ike_delete del;
            if (ike_delete_parse(pl->body, &del, &d) < 0)
                continue;
            if (del.protocol == IKE_PROTO_IKE) {
                ike_deleted = true;
            } else if (del.protocol == IKE_PROTO_ESP && del.spi_len == 4) {
                uint8_t ours[4 * IKE_MAX_RETIRING];
                uint16_t n_ours = 0;
                for (uint16_t i = 0; i < del.n_spi; i++) {
                    uint32_t spi = buf_load_be32(del.spis.p + 4 * i), mine;
                    if (n_ours < IKE_MAX_RETIRING && ike_rekey_peer_deleted(sa, spi, &mine) == 1) {
                        /* A CHILD SA replaced by a rekey: our half goes too. */
                        buf_store_be32(ours + 4 * n_ours++, mine);
                    } else if (spi == sa->child_spi_out) {
                        /* Our only CHILD SA: answer with our half, then the
                         * IKE SA has nothing to carry and goes too. */
                        uint8_t spi[4];
                        buf_store_be32(spi, sa->child_spi_in);
                        ike_build_delete(&cw, IKE_PROTO_ESP, 4, spi, 1);
                        child_gone = true;
                    }
                }
                if (n_ours)
                    ike_build_delete(&cw, IKE_PROTO_ESP, 4, ours, n_ours);
            }
        }
    } else {
        /* An exchange we do not serve as a responder (CREATE_CHILD_SA is
         * lib/ike/rekey.c's). */
        ike_build_notify(&cw, IKE_PROTO_NONE, IKE_N_NO_ADDITIONAL_SAS, NULL, 0, NULL, 0);
        LOG_WARN(sa->log, "ike", "gateway %s started %s: answered NO_ADDITIONAL_SAS", sa->gw_text,
                 ike_exchange_name(hdr->exchange));
    }
    ike_chain_writer_finish(&cw);
    ike_sa_send_protected(sa, hdr->exchange, true, hdr->message_id, inner, buf_writer_len(&w),
                          cw.first_type, IKE_TASK_NONE);
    /* Only a Delete of the IKE SA itself can settle an IKE SA rekey
     * collision (the gateway's new SA stands); one of our CHILD SA during
     * it (§2.25.2: answered as usual) ends the IKE SA as at any time. */
    if (child_gone)
        ike_sa_fail(sa, M2MVPN_E_PROTOCOL, "the gateway %s deleted the CHILD SA", sa->gw_text);
    else if (ike_deleted && ike_rekey_peer_deleted_ike(sa) != 1)
        ike_sa_fail(sa, M2MVPN_E_PROTOCOL, "the gateway %s deleted the IKE SA", sa->gw_text);
}
