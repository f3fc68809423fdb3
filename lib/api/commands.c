/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Control calls. Each validates its arguments in the caller's thread, copies
 * them into a command and queues it for the engine; the engine runs commands
 * in order on its own thread (api_cmd_drain).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    const profile *p = h->active[0] ? api_profile_find_locked(h, h->active, &set) : NULL;
    if (p)
        profile_set_ref(set); /* survives a concurrent reload until conn has its own */
    pthread_mutex_unlock(&h->lock);
    if (!p)
        return false;
    conn_set_profile(h->conn, set, p);
    profile_set_free(set);
    return true;
}

static void run_cmd(m2mvpn *h, api_cmd *c)
{
    switch (c->type) {
    case API_CMD_SWITCH: {
        pthread_mutex_lock(&h->lock);
        bool still = api_profile_find_locked(h, c->name, NULL) != NULL; /* unloaded meanwhile? */
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

static bool unloaded_locked(const m2mvpn *h, const char *name)
{
    for (size_t i = 0; i < h->n_unloaded; i++)
        if (strcmp(h->unloaded[i], name) == 0)
            return true;
    return false;
}

void api_hide_profile_locked(m2mvpn *h, const char *name)
{
    if (unloaded_locked(h, name))
        return;
    char(*grown)[64] = realloc(h->unloaded, (h->n_unloaded + 1) * sizeof(*grown));
    if (!grown)
        return; /* still visible; the tunnel is removed all the same */
    h->unloaded = grown;
    snprintf(h->unloaded[h->n_unloaded++], 64, "%s", name);
}

const profile *api_profile_find_locked(m2mvpn *h, const char *name, profile_set **set)
{
    if (unloaded_locked(h, name))
        return NULL;
    for (size_t i = h->n_sets; i-- > 0;) {
        const profile *p = profile_set_find(h->sets[i], name);
        if (p) {
            if (set)
                *set = h->sets[i];
            return p;
        }
    }
    return NULL;
}

/* Install a parsed set: profiles of the same name in older sets are dropped
 * (a set whose profiles are all replaced is freed). */
static int install_set(m2mvpn *h, profile_set *set)
{
    pthread_mutex_lock(&h->lock);
    profile_set **grown = realloc(h->sets, (h->n_sets + 1) * sizeof(*grown));
    if (!grown) {
        pthread_mutex_unlock(&h->lock);
        profile_set_free(set);
        return api_fail(h, M2MVPN_E_NOMEM, "out of memory installing profiles");
    }
    h->sets = grown;
    size_t kept = 0;
    for (size_t i = 0; i < h->n_sets; i++) {
        profile_set *old = h->sets[i];
        bool still_used = false;
        for (size_t j = 0; j < old->n && !still_used; j++)
            still_used = profile_set_find(set, old->items[j].name) == NULL;
        if (still_used)
            h->sets[kept++] = old;
        else
            profile_set_free(old);
    }
    h->sets[kept++] = set;
    h->n_sets = kept;
    for (size_t i = 0; i < set->n; i++) /* loaded again: visible again */
        for (size_t k = 0; k < h->n_unloaded; k++)
            if (strcmp(h->unloaded[k], set->items[i].name) == 0)
                memmove(h->unloaded[k], h->unloaded[--h->n_unloaded], 64);
    if (!h->active[0] || !api_profile_find_locked(h, h->active, NULL)) {
        snprintf(h->active, sizeof(h->active), "%s", set->items[0].name);
        snprintf(h->status.profile, sizeof(h->status.profile), "%s", set->items[0].name);
    }
    pthread_mutex_unlock(&h->lock);
    return queue_simple(h, API_CMD_PROFILES, NULL);
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
    bool known = api_profile_find_locked(h, name, NULL) != NULL;
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
    profile_set *set = NULL;
    bool known = api_profile_find_locked(h, name, &set) != NULL;
    if (known) {
        /* Drop the whole set if this was its only profile still in use;
         * otherwise hide the name (a set is immutable: rebuild the list). */
        size_t live = 0;
        for (size_t i = 0; i < set->n; i++) {
            profile_set *owner = NULL;
            if (api_profile_find_locked(h, set->items[i].name, &owner) && owner == set &&
                strcmp(set->items[i].name, name) != 0)
                live++;
        }
        if (live == 0) {
            size_t k = 0;
            for (size_t i = 0; i < h->n_sets; i++)
                if (h->sets[i] != set)
                    h->sets[k++] = h->sets[i];
            h->n_sets = k;
            profile_set_free(set); /* the supervisor may hold its own reference */
        } else {
            api_hide_profile_locked(h, name);
        }
        if (strcmp(h->active, name) == 0) {
            const profile *next = NULL;
            for (size_t i = h->n_sets; i-- > 0 && !next;)
                for (size_t j = 0; j < h->sets[i]->n && !next; j++)
                    if (api_profile_find_locked(h, h->sets[i]->items[j].name, NULL))
                        next = &h->sets[i]->items[j];
            snprintf(h->active, sizeof(h->active), "%s", next ? next->name : "");
            snprintf(h->status.profile, sizeof(h->status.profile), "%s", h->active);
        }
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
