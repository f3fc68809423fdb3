/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Control calls. Each validates its arguments in the caller's thread, copies
 * them into a command and queues it for the engine; the engine runs commands
 * in order on its own thread (api_cmd_drain).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/secmem.h"
#include "handle.h"

#define API_MAX_SECRET 256

void api_cmd_free(api_cmd *cmd)
{
    if (!cmd)
        return;
    free(cmd->name);
    secure_free(cmd->secret, cmd->secret_len);
    free(cmd);
}

void api_cmd_push(m2mvpn *h, api_cmd *cmd)
{
    cmd->next = NULL;
    pthread_mutex_lock(&h->lock);
    if (h->cmd_tail)
        h->cmd_tail->next = cmd;
    else
        h->cmd_head = cmd;
    h->cmd_tail = cmd;
    h->cmds_queued++;
    pthread_mutex_unlock(&h->lock);
    core_loop_wake(&h->loop);
}

static int queue_simple(m2mvpn *h, api_cmd_type type, const char *name)
{
    api_cmd *c = calloc(1, sizeof(*c));
    if (!c || (name && !(c->name = strdup(name)))) {
        free(c);
        return api_fail(h, M2MVPN_E_NOMEM, "out of memory queueing a command");
    }
    c->type = type;
    api_cmd_push(h, c);
    return 0;
}

/* Hand the active profile to the supervisor (it takes its own reference).
 * Returns false if there is none. */
static bool use_active_profile(m2mvpn *h)
{
    pthread_mutex_lock(&h->lock);
    profile_set *set = NULL;
    const profile *p = h->active[0] ? profile_registry_find(&h->profiles, h->active, &set) : NULL;
    if (p)
        profile_set_ref(set); /* survives a concurrent reload until conn has its own */
    pthread_mutex_unlock(&h->lock);
    if (!p)
        return false;
    if (p->mgmt.on) {
        /* A bootstrap: management enrols and delivers the profile to use. */
        char err[API_ERR_LEN];
        pthread_mutex_lock(&h->lock);
        char *dir = h->state_dir ? strdup(h->state_dir) : NULL;
        pthread_mutex_unlock(&h->lock);
        mgmt *m = api_mgmt_get(h);
        int r = M2MVPN_E_NOMEM;
        if (m)
            r = mgmt_run(m, set, p, dir, err, sizeof(err));
        else
            snprintf(err, sizeof(err), "profile '%s': cannot set up management (out of memory or file "
                     "descriptors)", p->name);
        free(dir);
        profile_set_free(set);
        if (r < 0) {
            LOG_ERR(&h->log, "api", "%s", err);
            pthread_mutex_lock(&h->lock);
            snprintf(h->last_error, sizeof(h->last_error), "%s", err);
            pthread_mutex_unlock(&h->lock);
            api_emit(h, M2MVPN_EVENT_AUTH_FAILED, r, err);
        }
        return false;
    }
    conn_set_profile(h->conn, set, p);
    profile_set_free(set);
    return true;
}

static void run_cmd(m2mvpn *h, api_cmd *c)
{
    switch (c->type) {
    case API_CMD_SWITCH: {
        pthread_mutex_lock(&h->lock);
        bool still = profile_registry_find(&h->profiles, c->name, NULL) != NULL; /* unloaded meanwhile? */
        if (still) {
            snprintf(h->active, sizeof(h->active), "%s", c->name);
            snprintf(h->status.profile, sizeof(h->status.profile), "%s", c->name);
        }
        pthread_mutex_unlock(&h->lock);
        if (!still) {
            LOG_WARN(&h->log, "api", "switch to '%s' dropped: the profile was unloaded meanwhile", c->name);
            break;
        }
        LOG_INFO(&h->log, "api", "active profile is now '%s'", c->name);
        use_active_profile(h);
        break;
    }
    case API_CMD_UNLOAD:
        /* The registry no longer has it; if the supervisor uses it, its
         * network goes (kill switch included), then the new active one. */
        if (conn_profile_name(h->conn) && strcmp(conn_profile_name(h->conn), c->name) == 0)
            conn_remove_profile(h->conn);
        use_active_profile(h);
        break;
    case API_CMD_PROFILES:
        /* New or replaced profiles: always-on ones start by themselves. */
        use_active_profile(h);
        break;
    case API_CMD_CONNECT:
        if (use_active_profile(h))
            conn_connect(h->conn);
        break;
    case API_CMD_DISCONNECT:
        conn_disconnect(h->conn);
        break;
    case API_CMD_PIN:
        conn_enter_pin(h->conn, c->secret, c->secret_len);
        break;
    case API_CMD_CREDENTIALS:
        conn_set_credentials(h->conn, c->name, c->secret, c->secret_len);
        break;
    }
}

void api_cmd_drain(m2mvpn *h)
{
    for (;;) {
        pthread_mutex_lock(&h->lock);
        api_cmd *c = h->cmd_head;
        if (c) {
            h->cmd_head = c->next;
            if (!h->cmd_head)
                h->cmd_tail = NULL;
        }
        pthread_mutex_unlock(&h->lock);
        if (!c)
            return;
        run_cmd(h, c);
        api_cmd_free(c);
        pthread_mutex_lock(&h->lock);
        h->cmds_done++;
        pthread_mutex_unlock(&h->lock);
    }
}

/* ---------------------------------------------------------------- profiles */

/* Install a parsed set (lib/profile/registry.h says what replaces what). */
static int install_set(m2mvpn *h, profile_set *set)
{
    pthread_mutex_lock(&h->lock);
    const char *first = set->items[0].name;
    char name[64];
    snprintf(name, sizeof(name), "%s", first);
    if (profile_registry_add(&h->profiles, set) < 0) {
        pthread_mutex_unlock(&h->lock);
        return api_fail(h, M2MVPN_E_NOMEM, "out of memory installing profiles");
    }
    if (!h->active[0] || !profile_registry_find(&h->profiles, h->active, NULL)) {
        snprintf(h->active, sizeof(h->active), "%s", name);
        snprintf(h->status.profile, sizeof(h->status.profile), "%s", name);
    }
    pthread_mutex_unlock(&h->lock);
    return queue_simple(h, API_CMD_PROFILES, NULL);
}

void api_install_managed(m2mvpn *h, profile_set *set)
{
    pthread_mutex_lock(&h->lock);
    char name[64];
    snprintf(name, sizeof(name), "%s", set->items[0].name);
    if (profile_registry_add(&h->profiles, set) < 0) {
        pthread_mutex_unlock(&h->lock);
        LOG_ERR(&h->log, "api", "out of memory installing the managed profile");
        profile_set_free(set);
        return;
    }
    snprintf(h->active, sizeof(h->active), "%s", name);
    snprintf(h->status.profile, sizeof(h->status.profile), "%s", name);
    pthread_mutex_unlock(&h->lock);
    LOG_INFO(&h->log, "api", "active profile is now '%s' (from management)", name);
    use_active_profile(h);
}

int m2mvpn_set_state_dir(m2mvpn *h, const char *dir)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    if (!dir || !*dir)
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_set_state_dir: dir is NULL or empty");
    struct stat sb;
    if (stat(dir, &sb) < 0 || !S_ISDIR(sb.st_mode))
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_set_state_dir: %s is not a folder", dir);
    if (access(dir, W_OK | X_OK) < 0)
        return api_fail(h, M2MVPN_E_IO, "m2mvpn_set_state_dir: %s is not writable", dir);
    char *copy = realpath(dir, NULL);
    if (!copy)
        return api_fail(h, M2MVPN_E_NOMEM, "m2mvpn_set_state_dir: out of memory");
    pthread_mutex_lock(&h->lock);
    free(h->state_dir);
    h->state_dir = copy;
    pthread_mutex_unlock(&h->lock);
    return 0;
}

int m2mvpn_update_result(m2mvpn *h, const char *version, int ok, const char *details)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    if (!version || !*version)
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_update_result: version is NULL or empty");
    mgmt *m = atomic_load(&h->mgmt);
    int r = m ? mgmt_update_result(m, version, ok != 0, details) : M2MVPN_E_STATE; /* none: nothing handed over */
    if (r == M2MVPN_E_STATE)
        return api_fail(h, r, "m2mvpn_update_result: no update %s was handed over (UPDATE_AVAILABLE) or its "
                        "result was given already", version);
    return r < 0 ? api_fail(h, r, "m2mvpn_update_result: %s", m2mvpn_strerror(r)) : 0;
}

int m2mvpn_decommission(m2mvpn *h)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    char err[API_ERR_LEN];
    mgmt *m = atomic_load(&h->mgmt);
    int r = M2MVPN_E_STATE;
    if (m)
        r = mgmt_decommission(m, err, sizeof(err));
    else
        snprintf(err, sizeof(err), "not an enrolled managed device (management state off)");
    return r < 0 ? api_fail(h, r, "m2mvpn_decommission: %s", err) : 0;
}

int m2mvpn_profile_load_file(m2mvpn *h, const char *path)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    if (!path || !*path)
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_profile_load_file: path is NULL or empty");
    char err[API_ERR_LEN];
    profile_set *set = NULL;
    int r = profile_set_load_file(path, &set, err, sizeof(err));
    if (r < 0)
        return api_fail(h, r, "%s", err);
    return install_set(h, set);
}

int m2mvpn_profile_load_json(m2mvpn *h, const char *json, size_t len)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    if (!json || len == 0)
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_profile_load_json: json is NULL or empty");
    char err[API_ERR_LEN];
    profile_set *set = NULL;
    int r = profile_set_parse(json, len, NULL, &set, err, sizeof(err));
    if (r < 0)
        return api_fail(h, r, "%s", err);
    return install_set(h, set);
}

int m2mvpn_profile_switch(m2mvpn *h, const char *name)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    if (!name || !*name)
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_profile_switch: name is NULL or empty");
    pthread_mutex_lock(&h->lock);
    bool known = profile_registry_find(&h->profiles, name, NULL) != NULL;
    pthread_mutex_unlock(&h->lock);
    if (!known)
        return api_fail(h, M2MVPN_E_NOPROFILE, "m2mvpn_profile_switch: no profile named '%s' is loaded", name);
    return queue_simple(h, API_CMD_SWITCH, name);
}

int m2mvpn_profile_unload(m2mvpn *h, const char *name)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    if (!name || !*name)
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_profile_unload: name is NULL or empty");
    pthread_mutex_lock(&h->lock);
    bool known = profile_registry_remove(&h->profiles, name);
    if (known && strcmp(h->active, name) == 0) {
        const profile *next = profile_registry_newest(&h->profiles);
        snprintf(h->active, sizeof(h->active), "%s", next ? next->name : "");
        snprintf(h->status.profile, sizeof(h->status.profile), "%s", h->active);
    }
    pthread_mutex_unlock(&h->lock);
    if (!known)
        return api_fail(h, M2MVPN_E_NOPROFILE, "m2mvpn_profile_unload: no profile named '%s' is loaded", name);
    return queue_simple(h, API_CMD_UNLOAD, name);
}

/* ------------------------------------------------------------- tunnel */

int m2mvpn_connect(m2mvpn *h)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    pthread_mutex_lock(&h->lock);
    bool have = h->active[0] != '\0';
    pthread_mutex_unlock(&h->lock);
    if (!have)
        return api_fail(h, M2MVPN_E_NOPROFILE, "m2mvpn_connect: no profile loaded");
    return queue_simple(h, API_CMD_CONNECT, NULL);
}

int m2mvpn_disconnect(m2mvpn *h)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    return queue_simple(h, API_CMD_DISCONNECT, NULL);
}

int m2mvpn_set_credentials(m2mvpn *h, const char *user, const char *password)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    if (!password)
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_set_credentials: password is NULL");
    if (strlen(password) > API_MAX_SECRET)
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_set_credentials: password longer than %d bytes", API_MAX_SECRET);
    if (user && (!*user || strlen(user) > 255))
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_set_credentials: user must be 1..255 bytes or NULL");
    size_t len = strlen(password);
    if (len == 0)
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_set_credentials: password is empty");
    api_cmd *c = calloc(1, sizeof(*c));
    if (!c || (user && !(c->name = strdup(user))) || !(c->secret = secure_memdup(password, len))) {
        if (c)
            free(c->name);
        free(c);
        return api_fail(h, M2MVPN_E_NOMEM, "out of memory queueing the credentials");
    }
    c->type = API_CMD_CREDENTIALS;
    c->secret_len = len;
    api_cmd_push(h, c);
    return 0;
}

int m2mvpn_enter_pin(m2mvpn *h, const char *pin, size_t len)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    if (!pin || len == 0 || len > API_MAX_SECRET)
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_enter_pin: PIN must be 1..%d bytes", API_MAX_SECRET);
    if (memchr(pin, '\0', len))
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_enter_pin: PIN contains a NUL byte");
    api_cmd *c = calloc(1, sizeof(*c));
    if (!c || !(c->secret = secure_memdup(pin, len))) {
        free(c);
        return api_fail(h, M2MVPN_E_NOMEM, "out of memory queueing the PIN");
    }
    c->type = API_CMD_PIN;
    c->secret_len = len;
    api_cmd_push(h, c);
    return 0;
}
