/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Logging: modules format a line, the handle's hook receives it finished.
 * The hook and level can be changed from any thread (m2mvpn_set_log), so they
 * are read under a lock; the hook itself is called without the lock held.
 * Never pass a secret to these functions.
 */
#ifndef M2MVPN_CORE_LOG_H
#define M2MVPN_CORE_LOG_H

#include <m2mvpn/m2mvpn.h>
#include <pthread.h>

typedef struct core_log {
    pthread_mutex_t lock;
    m2mvpn_log_cb cb;
    int level;
    void *userdata;
    m2mvpn *handle; /* passed to the hook */
} core_log;

void core_log_init(core_log *lg, m2mvpn *handle);
void core_log_destroy(core_log *lg);
void core_log_set(core_log *lg, m2mvpn_log_cb cb, int level, void *userdata);
/* True if a message of this level would reach the hook (skip costly formatting). */
int core_log_enabled(core_log *lg, int level);
void core_log_msg(core_log *lg, int level, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define LOG_ERR(lg, sub, ...) core_log_msg((lg), M2MVPN_LOG_ERROR, (sub), __VA_ARGS__)
#define LOG_WARN(lg, sub, ...) core_log_msg((lg), M2MVPN_LOG_WARNING, (sub), __VA_ARGS__)
#define LOG_INFO(lg, sub, ...) core_log_msg((lg), M2MVPN_LOG_INFO, (sub), __VA_ARGS__)
#define LOG_DBG(lg, sub, ...) core_log_msg((lg), M2MVPN_LOG_DEBUG, (sub), __VA_ARGS__)

#endif
