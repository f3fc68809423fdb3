/* SPDX-License-Identifier: Apache-2.0 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "handle.h"

/* The table lives in lib/core, where every module reaches it. */
const char *m2mvpn_strerror(int err)
{
    return core_strerror(err);
}

const char *m2mvpn_error_name(int err)
{
    return core_error_name(err);
}

int api_fail(m2mvpn *h, int err, const char *fmt, ...)
{
    char msg[API_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&h->lock);
    memcpy(h->last_error, msg, sizeof(msg));
    pthread_mutex_unlock(&h->lock);
    LOG_DBG(&h->log, "api", "call failed: %s (%s)", msg, m2mvpn_strerror(err));
    return err;
}

const char *m2mvpn_last_error(m2mvpn *h)
{
    /* The one piece of state outside the handle, on purpose: each calling
     * thread gets its own copy, so a call on another thread cannot rewrite
     * the text while this one reads it. */
    static _Thread_local char copy[API_ERR_LEN];
    if (!api_handle_ok(h))
        return "not a valid m2mvpn handle";
    pthread_mutex_lock(&h->lock);
    memcpy(copy, h->last_error, sizeof(copy));
    pthread_mutex_unlock(&h->lock);
    return copy;
}
