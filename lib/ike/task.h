/* SPDX-License-Identifier: Apache-2.0 */
/* Private to lib/ike: each exchange we start is a task (RFC 7296 §1.2-1.5).
 * sa.c keeps them: one request of ours in flight (window size 1, §2.3), the
 * active task; the others queued, started in a fixed order as soon as the
 * window is free, so that a rekey, an address update, a liveness check and
 * Deletes from either side interleave without losing one another. */
#ifndef M2MVPN_IKE_TASK_H
#define M2MVPN_IKE_TASK_H

#include <stdbool.h>
#include <stdint.h>

typedef struct ike_sa ike_sa;
typedef struct ike_chain ike_chain;
typedef struct ike_message ike_message;

typedef enum ike_task {
    IKE_TASK_NONE,
    IKE_TASK_INIT,                 /* IKE_SA_INIT (init.c) */
    IKE_TASK_AUTH,                 /* IKE_AUTH, EAP rounds included (auth.c, auth_eap.c) */
    IKE_TASK_DPD,                  /* INFORMATIONAL, empty: liveness (info.c) */
    IKE_TASK_DELETE,               /* INFORMATIONAL{D(IKE)} (info.c) */
    IKE_TASK_REKEY_CHILD,          /* CREATE_CHILD_SA rekeying the CHILD SA (rekey_child.c) */
    IKE_TASK_REKEY_IKE,            /* CREATE_CHILD_SA rekeying the IKE SA (rekey_ike.c) */
    IKE_TASK_DELETE_CHILD,         /* INFORMATIONAL deleting a replaced CHILD SA (rekey.c) */
    IKE_TASK_MOBIKE,               /* INFORMATIONAL with UPDATE_SA_ADDRESSES (mobike.c) */
    IKE_TASK_COUNT
} ike_task;

typedef enum ike_task_status {
    IKE_TASK_NEED_MORE,            /* a request is out: its answer goes to process */
    IKE_TASK_DONE,                 /* finished (or nothing to send after all) */
    IKE_TASK_FAILED,               /* gave up; the task dealt with it (a retry planned, the SA failed) */
} ike_task_status;

typedef struct ike_task_ops {
    ike_task kind;
    /* May it start now? NULL: whenever the window is free. False leaves it
     * queued (the task arms a timer that runs the queue again). */
    bool (*ready)(ike_sa *sa);
    /* Build and send the request (ike_sa_send_protected with kind). */
    ike_task_status (*build)(ike_sa *sa);
    /* Its answer (msg: header and raw bytes; inner: the payloads, decrypted
     * and authenticated but for IKE_SA_INIT's); NEED_MORE when it sent the
     * next request (IKE_AUTH's EAP rounds, IKE_SA_INIT's COOKIE retry). */
    ike_task_status (*process)(ike_sa *sa, const ike_message *msg, const ike_chain *inner);
} ike_task_ops;

const char *ike_task_name(ike_task t);
const char *ike_task_status_name(ike_task_status s);

/* sa.c: the queue. Queue a task (once: queuing it again changes nothing;
 * it starts at the next ike_task_run, so a caller finishes what it is doing
 * first); is it queued? */
void ike_task_queue(ike_sa *sa, ike_task t);
bool ike_task_queued(const ike_sa *sa, ike_task t);
/* Take a queued task out again: what it was queued for is moot. */
void ike_task_unqueue(ike_sa *sa, ike_task t);
/* The window is free: start the first queued task that is ready, in the
 * order IKE_SA_INIT, IKE_AUTH (while the SA is set up), then on the
 * established SA: MOBIKE (the other requests need the new path), replaced
 * CHILD SAs' Deletes, CHILD rekey, IKE rekey, DPD. */
void ike_task_run(ike_sa *sa);

/* The tasks, each in the file of its exchange. */
extern const ike_task_ops ike_task_init, ike_task_auth, ike_task_dpd, ike_task_delete,
    ike_task_rekey_child, ike_task_rekey_ike, ike_task_delete_child, ike_task_mobike;

#endif
