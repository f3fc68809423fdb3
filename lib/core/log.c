/* SPDX-License-Identifier: Apache-2.0 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>

void core_log_init(core_log *lg, m2mvpn *handle)
{
    pthread_mutex_init(&lg->lock, NULL);
    lg->cb = NULL;
    lg->level = M2MVPN_LOG_WARNING;
    lg->userdata = NULL;
    lg->handle = handle;
}

void core_log_destroy(core_log *lg)
{
    pthread_mutex_destroy(&lg->lock);
}

void core_log_set(core_log *lg, m2mvpn_log_cb cb, int level, void *userdata)
{
    pthread_mutex_lock(&lg->lock);
    lg->cb = cb;
    lg->level = level;
    lg->userdata = userdata;
    pthread_mutex_unlock(&lg->lock);
}

int core_log_enabled(core_log *lg, int level)
{
    pthread_mutex_lock(&lg->lock);
    int on = lg->cb && level <= lg->level;
    pthread_mutex_unlock(&lg->lock);
    return on;
}

void core_log_msg(core_log *lg, int level, const char *subsys, const char *fmt, ...)
{
    if (!lg)
        return;
    pthread_mutex_lock(&lg->lock);
    m2mvpn_log_cb cb = lg->cb;
    void *ud = lg->userdata;
    int enabled = cb && level <= lg->level;
    pthread_mutex_unlock(&lg->lock);
    if (!enabled)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    cb(lg->handle, level, subsys, line, ud);
}
