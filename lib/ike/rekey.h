/* SPDX-License-Identifier: Apache-2.0 */
/* Private to lib/ike's rekeying (rekey.c: timers, replaced SAs, the
 * gateway's requests; rekey_child.c and rekey_ike.c: the CHILD SA and the
 * IKE SA rekey exchanges): what these files share. */
#ifndef M2MVPN_IKE_REKEY_H
#define M2MVPN_IKE_REKEY_H

#include "sa_internal.h"

#define REKEY_RETRY_MS 10000u       /* a refused or failed rekey is tried again */
/* After the gateway rekeyed the IKE SA, our answer may still be on its way
 * when we would send our first request on the new SA: that request would be
 * dropped as one for an unknown SA and only its retransmission seconds later
 * arrive. So we wait for a sign that the gateway has the new SA (its Delete
 * of the old one, or any message on the new one), at most this long. */
#define NEW_IKE_QUIET_MS 1000u

static inline uint64_t ike_rekey_now(const ike_sa *sa)
{
    return sa->loop->clock_ms();
}

/* Lexicographic, a shorter prefix first (§2.8.1 compares nonces). */
int ike_rekey_nonce_cmp(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len);
void ike_rekey_min_nonce(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len, uint8_t *out,
                         size_t *out_len);
/* Arm rekey_timer for the next of the lifetime, retries, graces, zombies. */
void ike_rekey_rearm(ike_sa *sa);
/* Our requests on an IKE SA the gateway just created wait (quiet_until_ms). */
bool ike_rekey_ready(ike_sa *sa);
/* A replaced CHILD SA: deleted by us (queued) or awaited from the gateway. */
void ike_rekey_retire(ike_sa *sa, uint32_t spi_in, uint32_t spi_out, bool we_delete, bool installed);
int ike_rekey_new_child_spi(ike_sa *sa, uint32_t *ret);
bool ike_rekey_offers_ke(const proposal *props, size_t n, uint16_t group);
/* The gateway's proposals against ours (as responder). */
bool ike_rekey_choose(const ike_sa_view *v, const proposal *props, size_t n, bool ike, ike_sa_choice *out);
/* Public value and shared secret for the gateway's KE payload. */
int ike_rekey_ke_answer(uint16_t group, const ike_ke *peer, crypto_ke **ke, uint8_t *pub, size_t pub_cap,
                        size_t *pub_len, uint8_t *g_ir, size_t g_cap, size_t *g_len, char *err, size_t err_len);
void ike_rekey_put_ts(ike_chain_writer *cw, const ike_ts *tsi, size_t n_tsi, const ike_ts *tsr, size_t n_tsr);
void ike_rekey_child_alg_name(ike_sa *sa, const ike_child_result *res);
/* An error notify in the answer: true and its text in err. */
bool ike_rekey_error_notify(const ike_chain *c, char *err, size_t err_len);

/* Replaced IKE SAs (zombies) and the new one. */
void ike_rekey_new_ike_free(ike_new_ike *n);
void ike_rekey_zombie_free(ike_zombie *z);
ike_zombie *ike_rekey_make_zombie(ike_sa *sa, bool we_delete);
ike_zombie *ike_rekey_zombie_from_new(ike_sa *sa, ike_new_ike *n);
void ike_rekey_zombie_send_delete(ike_sa *sa, ike_zombie *z);
/* rekey_ike.c: the SA moves to n; the old one becomes a zombie (deleted by
 * us when we_delete_old), or is dropped when the gateway deleted it. */
int ike_rekey_switch_ike(ike_sa *sa, ike_new_ike *n, bool we_delete_old, bool old_gone);

/* The answer to a CREATE_CHILD_SA request of the gateway. */
typedef struct ike_rekey_answer {
    uint8_t buf[4096];
    buf_writer w;
    ike_chain_writer cw;
} ike_rekey_answer;

static inline void ike_rekey_answer_notify(ike_rekey_answer *a, uint16_t type, const void *data, size_t len)
{
    ike_build_notify(&a->cw, IKE_PROTO_NONE, type, NULL, 0, data, len);
}

/* rekey_child.c: the gateway rekeys our CHILD SA (§1.3.3). */
void ike_rekey_child_request(ike_sa *sa, const ike_chain *c, ike_rekey_answer *a);
/* rekey_ike.c: the gateway rekeys the IKE SA (§1.3.2): true when the answer
 * is ready and *n holds the new SA. */
bool ike_rekey_ike_request(ike_sa *sa, const ike_chain *c, ike_rekey_answer *a, ike_new_ike *n);

#endif
