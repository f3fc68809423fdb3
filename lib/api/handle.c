/* SPDX-License-Identifier: Apache-2.0 */
/* Handle lifecycle and the two ways to drive the engine. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handle.h"

static void on_wake(void *arg)
{
    api_cmd_drain(arg);
}

#define COPY_STR(dst, src) snprintf((dst), sizeof(dst), "%s", (src))

/* The supervisor's status into the public snapshot (lock held). Without a
 * datapath the counters are unknown: the last ones stay. */
static void status_from_conn(m2mvpn_status *st, const conn_status *cs)
{
    COPY_STR(st->gateway, cs->gateway);
    COPY_STR(st->virtual_ip, cs->virtual_ip);
    st->connected_since = cs->connected_since;
    COPY_STR(st->ike_algorithms, cs->ike_algorithms);
    COPY_STR(st->esp_algorithms, cs->esp_algorithms);
    for (size_t i = 0; i < sizeof(st->dns) / sizeof(st->dns[0]); i++)
        COPY_STR(st->dns[i], cs->dns[i]);
    st->spi_in = cs->spi_in;
    st->spi_out = cs->spi_out;
    if (cs->counters) {
        st->bytes_in = cs->bytes_in;
        st->bytes_out = cs->bytes_out;
        st->packets_in = cs->packets_in;
        st->packets_out = cs->packets_out;
        st->packets_dropped = cs->packets_dropped;
        st->dropped_replay = cs->dropped_replay;
        st->dropped_integrity = cs->dropped_integrity;
        st->dropped_no_sa = cs->dropped_no_sa;
    }
    COPY_STR(st->credential_source, cs->credential_source);
    COPY_STR(st->credential, cs->credential);
    COPY_STR(st->cert_subject, cs->cert_subject);
    st->cert_not_after = cs->cert_not_after;
    st->reconnects = cs->reconnects;
    st->rekeys = cs->rekeys;
    st->roams = cs->roams;
    st->last_change = cs->last_change;
    COPY_STR(st->last_reason, cs->last_reason);
}

/* The supervisor reports on the engine thread: refresh the status snapshot,
 * then let api_set_state log and emit the change. */
static void conn_state(void *arg, m2mvpn_state st, int err, const char *detail)
{
    m2mvpn *h = arg;
    conn_status cs;
    conn_get_status(h->conn, &cs); /* engine thread: no lock needed for conn */
    pthread_mutex_lock(&h->lock);
    status_from_conn(&h->status, &cs);
    conn_kill_switch_status(h->conn, &h->kill_switch);
    if (err)
        snprintf(h->last_error, sizeof(h->last_error), "%s", detail ? detail : m2mvpn_strerror(err));
    pthread_mutex_unlock(&h->lock);
    if (err || st == M2MVPN_STATE_CONNECTED)
        mgmt_note_tunnel(atomic_load(&h->mgmt), err, detail);
    api_set_state(h, st, err, detail);
}

static void conn_event(void *arg, m2mvpn_event_type type, int err, const char *detail)
{
    api_emit(arg, type, err, detail);
}

static void mgmt_event(void *arg, m2mvpn_event_type type, int err, const char *detail)
{
    m2mvpn *h = arg;
    if (err) {
        pthread_mutex_lock(&h->lock);
        snprintf(h->last_error, sizeof(h->last_error), "%s", detail ? detail : m2mvpn_strerror(err));
        pthread_mutex_unlock(&h->lock);
    }
    api_emit(h, type, err, detail);
}

static void mgmt_profile(void *arg, profile_set *set)
{
    api_install_managed(arg, set);
}

static const char *mgmt_tunnel(void *arg, const profile_set *set, bool *up_with)
{
    m2mvpn *h = arg;
    conn_phase p = conn_get_phase(h->conn);
    *up_with = set && conn_up_with_set(h->conn, set);
    if (p == CONN_UP || p == CONN_REAUTHENTICATING)
        return "up";
    if (p == CONN_NEGOTIATING || p == CONN_RESTARTING || p == CONN_BACKOFF)
        return "connecting";
    return "down";
}

/* A renewed device certificate: used from the next IKE SA, made now
 * (make-before-break), so no tunnel keeps an old one until ike.reauth_s. */
static void mgmt_cert_renewed(void *arg)
{
    m2mvpn *h = arg;
    int r = conn_reauth_now(h->conn);
    if (r < 0)
        LOG_INFO(&h->log, "mgmt", "renewed certificate: no tunnel up to reauthenticate (%s); the next IKE SA "
                 "uses it", m2mvpn_strerror(r));
}

/* Decommissioned (the certificate is revoked): the tunnel stops for good. */
static void mgmt_decommissioned(void *arg)
{
    m2mvpn *h = arg;
    conn_disconnect(h->conn);
}

mgmt *api_mgmt_get(m2mvpn *h)
{
    mgmt *m = atomic_load(&h->mgmt);
    if (m)
        return m;
    mgmt_hooks mhooks = { h, mgmt_event, mgmt_profile, mgmt_tunnel, mgmt_cert_renewed, mgmt_decommissioned };
    if (mgmt_new(&h->loop, &h->log, &mhooks, &m) < 0)
        return NULL;
    atomic_store(&h->mgmt, m);
    return m;
}

int m2mvpn_new(const m2mvpn_callbacks *cbs, void *userdata, m2mvpn **ret)
{
    if (!ret)
        return M2MVPN_E_INVAL;
    if (cbs && cbs->struct_size < offsetof(m2mvpn_callbacks, on_event) + sizeof(cbs->on_event))
        return M2MVPN_E_INVAL;
    m2mvpn *h = calloc(1, sizeof(*h));
    if (!h)
        return M2MVPN_E_NOMEM;
    if (cbs) {
        /* Copy what both sides know; members appended later stay zero. */
        size_t n = cbs->struct_size < sizeof(h->cbs) ? cbs->struct_size : sizeof(h->cbs);
        memcpy(&h->cbs, cbs, n);
    }
    h->cbs.struct_size = sizeof(h->cbs);
    h->userdata = userdata;
    if (pthread_mutex_init(&h->lock, NULL) != 0) {
        free(h);
        return M2MVPN_E_SYSTEM;
    }
    if (pthread_mutex_init(&h->drive_lock, NULL) != 0) {
        pthread_mutex_destroy(&h->lock);
        free(h);
        return M2MVPN_E_SYSTEM;
    }
    core_log_init(&h->log, h);
    conn_hooks hooks = { h, conn_state, conn_event };
    if (core_loop_init(&h->loop, on_wake, h) < 0) {
        core_log_destroy(&h->log);
        pthread_mutex_destroy(&h->drive_lock);
        pthread_mutex_destroy(&h->lock);
        free(h);
        return M2MVPN_E_SYSTEM;
    }
    if (conn_new(&h->loop, &h->log, &hooks, &h->conn) < 0) {
        conn_free(h->conn);
        core_loop_destroy(&h->loop);
        core_log_destroy(&h->log);
        pthread_mutex_destroy(&h->drive_lock);
        pthread_mutex_destroy(&h->lock);
        free(h);
        return M2MVPN_E_NOMEM;
    }
    h->status.struct_size = sizeof(h->status);
    h->status.state = M2MVPN_STATE_IDLE;
    h->magic = M2MVPN_MAGIC;
    *ret = h;
    return 0;
}

/* A token naming the calling thread: the address of a thread-local object,
 * distinct for every live thread. Unlike a pthread_t it fits an atomic, so
 * api_in_engine() can compare it while the engine rewrites h->dispatcher
 * (a pthread_t read there raced with the engine's write on each iteration). */
static uintptr_t this_thread(void)
{
    static _Thread_local char token;
    return (uintptr_t)&token;
}

bool api_in_engine(m2mvpn *h)
{
    return atomic_load(&h->dispatcher) == this_thread();
}

/* One engine iteration with the dispatch marker set around it. */
static int engine_run_once(m2mvpn *h, int timeout_ms)
{
    atomic_store(&h->dispatcher, this_thread());
    int r = core_loop_run_once(&h->loop, timeout_ms);
    atomic_store(&h->dispatcher, (uintptr_t)0);
    return r;
}

static void *engine_thread(void *arg)
{
    m2mvpn *h = arg;
    LOG_DBG(&h->log, "api", "engine thread started");
    while (!h->stop_requested) {
        if (engine_run_once(h, -1) < 0) {
            LOG_ERR(&h->log, "api", "engine loop failed: the engine thread ends");
            h->stop_requested = true; /* a later m2mvpn_start() can start it again */
            break;
        }
    }
    LOG_DBG(&h->log, "api", "engine thread leaving");
    return NULL;
}

/* drive_lock held. */
static void join_engine(m2mvpn *h)
{
    if (h->thread_joinable) {
        pthread_join(h->thread, NULL);
        h->thread_joinable = false;
    }
}

int m2mvpn_start(m2mvpn *h)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    if (api_in_engine(h))
        return api_fail(h, M2MVPN_E_CALLBACK, "m2mvpn_start: the engine is already running this callback");
    pthread_mutex_lock(&h->drive_lock);
    int r = 0;
    if (h->drive == API_DRIVE_EXTERNAL)
        r = api_fail(h, M2MVPN_E_BUSY, "m2mvpn_start: engine is driven by m2mvpn_process()");
    else if (h->drive == API_DRIVE_THREAD && !h->stop_requested)
        r = api_fail(h, M2MVPN_E_BUSY, "m2mvpn_start: engine thread already running");
    if (r == 0) {
        join_engine(h); /* a thread stopped from a callback, or ended by an error */
        h->stop_requested = false;
        h->drive = API_DRIVE_THREAD;
        int e = pthread_create(&h->thread, NULL, engine_thread, h);
        if (e != 0) {
            h->drive = API_DRIVE_NONE;
            r = api_fail(h, M2MVPN_E_SYSTEM, "m2mvpn_start: cannot create thread: %s", strerror(e));
        } else {
            h->thread_joinable = true;
        }
    }
    pthread_mutex_unlock(&h->drive_lock);
    return r;
}

int m2mvpn_stop(m2mvpn *h)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    if (api_in_engine(h)) {
        /* From a callback: the loop ends after it; joined by the next
         * m2mvpn_start() or m2mvpn_free(). No lock: another thread may hold
         * it while it waits for this very thread. */
        if (h->drive != API_DRIVE_THREAD || atomic_exchange(&h->stop_requested, true))
            return api_fail(h, M2MVPN_E_STATE, "m2mvpn_stop: the engine thread is not running");
        return 0;
    }
    pthread_mutex_lock(&h->drive_lock);
    int r = 0;
    if (h->drive != API_DRIVE_THREAD || h->stop_requested) {
        r = api_fail(h, M2MVPN_E_STATE, "m2mvpn_stop: the engine thread is not running");
    } else {
        h->stop_requested = true;
        core_loop_wake(&h->loop);
        join_engine(h);
        h->drive = API_DRIVE_NONE;
    }
    pthread_mutex_unlock(&h->drive_lock);
    return r;
}

/* Claim the external drive; on success returns 0 with drive_lock HELD. */
static int external_drive(m2mvpn *h, const char *call)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    if (api_in_engine(h))
        return api_fail(h, M2MVPN_E_CALLBACK, "%s: called from a callback", call);
    pthread_mutex_lock(&h->drive_lock);
    if (h->drive == API_DRIVE_THREAD && !h->stop_requested) {
        pthread_mutex_unlock(&h->drive_lock);
        return api_fail(h, M2MVPN_E_BUSY, "%s: engine runs on its own thread (m2mvpn_start)", call);
    }
    join_engine(h);
    h->drive = API_DRIVE_EXTERNAL;
    return 0;
}

int m2mvpn_get_fd(m2mvpn *h)
{
    int e = external_drive(h, "m2mvpn_get_fd");
    if (e < 0)
        return e;
    pthread_mutex_unlock(&h->drive_lock);
    return h->loop.epfd;
}

int m2mvpn_get_timeout_ms(m2mvpn *h)
{
    int e = external_drive(h, "m2mvpn_get_timeout_ms");
    if (e < 0)
        return e;
    /* Queued commands are work to do right away. */
    pthread_mutex_lock(&h->lock);
    bool pending = h->cmd_head != NULL;
    pthread_mutex_unlock(&h->lock);
    int t = pending ? 0 : core_loop_timeout_ms(&h->loop);
    pthread_mutex_unlock(&h->drive_lock);
    return t;
}

int m2mvpn_process(m2mvpn *h)
{
    if (api_handle_ok(h) && api_in_engine(h))
        return api_fail(h, M2MVPN_E_CALLBACK, "m2mvpn_process: called from a callback");
    int e = external_drive(h, "m2mvpn_process");
    if (e < 0)
        return e;
    int r = engine_run_once(h, 0); /* drive_lock held: one process() at a time */
    pthread_mutex_unlock(&h->drive_lock);
    return r < 0 ? api_fail(h, M2MVPN_E_SYSTEM, "m2mvpn_process: %s", strerror(-r)) : 0;
}

void m2mvpn_free(m2mvpn *h)
{
    if (!api_handle_ok(h))
        return;
    if (api_in_engine(h)) {
        LOG_ERR(&h->log, "api", "m2mvpn_free called from a callback: refused, handle left intact");
        api_fail(h, M2MVPN_E_CALLBACK, "m2mvpn_free: not allowed from a callback");
        return;
    }
    if (h->drive == API_DRIVE_THREAD && !h->stop_requested) {
        h->stop_requested = true;
        core_loop_wake(&h->loop);
    }
    join_engine(h);
    api_cmd *c = h->cmd_head;
    while (c) {
        api_cmd *next = c->next;
        api_cmd_free(c);
        c = next;
    }
    mgmt_free(atomic_load(&h->mgmt)); /* first: its hooks reach the registry and conn */
    conn_free(h->conn); /* engine stopped: safe on this thread */
    free(h->state_dir);
    profile_registry_clear(&h->profiles);
    core_loop_destroy(&h->loop);
    core_log_destroy(&h->log);
    pthread_mutex_destroy(&h->drive_lock);
    pthread_mutex_destroy(&h->lock);
    h->magic = 0;
    free(h);
}

int m2mvpn_set_log(m2mvpn *h, m2mvpn_log_cb cb, int level, void *userdata)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    if (level < M2MVPN_LOG_ERROR || level > M2MVPN_LOG_DEBUG)
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_set_log: level %d is not 0..3", level);
    core_log_set(&h->log, cb, level, userdata);
    return 0;
}
