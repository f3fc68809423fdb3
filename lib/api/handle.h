/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The handle behind the public API (internal; tests reach it through the
 * internal static library). Locking: `lock` guards the command queue, the
 * profile registry, the status snapshot and last_error; everything else is
 * touched only by the engine thread (or the thread calling m2mvpn_process).
 */
#ifndef M2MVPN_API_HANDLE_H
#define M2MVPN_API_HANDLE_H

#include <m2mvpn/m2mvpn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdbool.h>

#include "../conn/conn.h"
#include "../core/log.h"
#include "../core/loop.h"
#include "../mgmt/mgmt.h"
#include "../profile/profile.h"
#include "../profile/registry.h"

#define M2MVPN_MAGIC 0x4d324d56u /* "M2MV" */
#define API_ERR_LEN 512

typedef enum api_cmd_type {
    API_CMD_PROFILES,     /* new profile set installed: re-evaluate always-on */
    API_CMD_SWITCH,
    API_CMD_UNLOAD,       /* name: the profile removed from the registry */
    API_CMD_CONNECT,
    API_CMD_DISCONNECT,
    API_CMD_PIN,
    API_CMD_CREDENTIALS,  /* name: user (may be NULL); secret: password */
} api_cmd_type;

typedef struct api_cmd {
    struct api_cmd *next;
    api_cmd_type type;
    char *name;           /* SWITCH: profile; CREDENTIALS: user (may be NULL) */
    char *secret;         /* CREDENTIALS: password; PIN: pin — wiped on free */
    size_t secret_len;
} api_cmd;

typedef enum api_drive { API_DRIVE_NONE, API_DRIVE_THREAD, API_DRIVE_EXTERNAL } api_drive;

struct m2mvpn {
    uint32_t magic;
    pthread_mutex_t lock;

    m2mvpn_callbacks cbs;
    void *userdata;
    core_log log;
    core_loop loop;
    conn *conn;                   /* engine thread only */
    /* Made by the engine thread when a management bootstrap first runs
     * (NULL until then: a profile without management pays nothing for it);
     * read from any thread, freed only by m2mvpn_free. */
    _Atomic(mgmt *) mgmt;

    /* engine drive: drive, thread, thread_joinable under drive_lock */
    pthread_mutex_t drive_lock;
    api_drive drive;
    pthread_t thread;
    bool thread_joinable;
    atomic_bool stop_requested;   /* engine thread: leave the loop */
    /* The thread inside the engine's dispatch (callbacks may fire), 0 when
     * none: see api_in_engine(). Atomic because the engine sets and clears
     * it around every iteration while other threads' calls read it. */
    atomic_uintptr_t dispatcher;

    /* under lock */
    api_cmd *cmd_head, *cmd_tail;
    uint64_t cmds_queued, cmds_done;
    profile_registry profiles;    /* the loaded profiles (lib/profile/registry.h) */
    char active[64];              /* active profile name, "" = none */
    m2mvpn_status status;
    conn_kill_switch kill_switch; /* status JSON "kill_switch" (refreshed with status) */
    char last_error[API_ERR_LEN];
    char *state_dir;              /* m2mvpn_set_state_dir, NULL: none */
};

/* Validate a handle pointer (magic). */
static inline bool api_handle_ok(const m2mvpn *h) { return h && h->magic == M2MVPN_MAGIC; }

/* Record a failure of a call: sets last_error to "<what>" and returns err. */
int api_fail(m2mvpn *h, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* True when the current thread is inside the engine's dispatch (a callback). */
bool api_in_engine(m2mvpn *h);

/* Queue a command (takes ownership of cmd) and wake the engine. */
void api_cmd_push(m2mvpn *h, api_cmd *cmd);
void api_cmd_free(api_cmd *cmd);
/* Engine side: run all queued commands. */
void api_cmd_drain(m2mvpn *h);

/* The one place that changes the tunnel state: logs "A -> B", updates the
 * status snapshot and emits STATE_CHANGED. */
void api_set_state(m2mvpn *h, m2mvpn_state st, int err, const char *detail);
void api_emit(m2mvpn *h, m2mvpn_event_type type, int err, const char *detail);
/* Engine thread: a profile set management delivered; installed and made
 * the active profile (takes the set). */
void api_install_managed(m2mvpn *h, profile_set *set);
/* Engine thread: the management state, made on first use (NULL: out of
 * memory or no eventfd). */
mgmt *api_mgmt_get(m2mvpn *h);



#endif
