/* SPDX-License-Identifier: Apache-2.0 */
/* The real conn_ops (datapath, sockets, credentials, IKE SA); see conn.h. */
#ifndef M2MVPN_CONN_SYS_H
#define M2MVPN_CONN_SYS_H

#include "conn.h"

/* Fill *ops with the system's; ops->arg is the backend. Errors: NOMEM. */
int conn_sys_new(core_loop *loop, core_log *log, conn_ops *ops);
/* Where the backend reports (IKE results, datapath requests). */
void conn_sys_bind(void *arg, conn *c);
/* After net_release/sa_release/cred_release. NULL is fine. */
void conn_sys_free(void *arg);

#endif
