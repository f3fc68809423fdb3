/* SPDX-License-Identifier: Apache-2.0 */
/* Tunnel state, events and status. */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handle.h"

static const char *const state_names[] = {
    [M2MVPN_STATE_IDLE] = "idle",
    [M2MVPN_STATE_CONNECTING] = "connecting",
    [M2MVPN_STATE_CONNECTED] = "connected",
    [M2MVPN_STATE_RECONNECTING] = "reconnecting",
    [M2MVPN_STATE_DISCONNECTING] = "disconnecting",
};

const char *m2mvpn_state_name(int st)
{
    if (st >= 0 && (size_t)st < sizeof(state_names) / sizeof(state_names[0]))
        return state_names[st];
    return "unknown";
}

static const char *const event_names[] = {
    [M2MVPN_EVENT_STATE_CHANGED] = "STATE_CHANGED",
    [M2MVPN_EVENT_PIN_REQUIRED] = "PIN_REQUIRED",
    [M2MVPN_EVENT_CREDENTIALS_REQUIRED] = "CREDENTIALS_REQUIRED",
    [M2MVPN_EVENT_ROAMED] = "ROAMED",
    [M2MVPN_EVENT_REKEYED] = "REKEYED",
    [M2MVPN_EVENT_AUTH_FAILED] = "AUTH_FAILED",
    [M2MVPN_EVENT_CONFIG_UPDATED] = "CONFIG_UPDATED",
    [M2MVPN_EVENT_UPDATE_AVAILABLE] = "UPDATE_AVAILABLE",
    [M2MVPN_EVENT_CERT_RENEWED] = "CERT_RENEWED",
    [M2MVPN_EVENT_ENROLLED] = "ENROLLED",
    [M2MVPN_EVENT_DECOMMISSIONED] = "DECOMMISSIONED",
};

const char *m2mvpn_event_name(int type)
{
    if (type >= 0 && (size_t)type < sizeof(event_names) / sizeof(event_names[0]) && event_names[type])
        return event_names[type];
    return "UNKNOWN";
}

static void emit(m2mvpn *h, m2mvpn_event_type type, int err, const char *detail,
                 m2mvpn_state st, m2mvpn_state old)
{
    if (!h->cbs.on_event)
        return;
    char profile[64];
    pthread_mutex_lock(&h->lock);
    memcpy(profile, h->status.profile, sizeof(profile));
    pthread_mutex_unlock(&h->lock);
    m2mvpn_event ev = {
        .struct_size = sizeof(ev),
        .type = type,
        .error = err,
        .detail = detail ? detail : "",
        .state = st,
        .old_state = old,
        .profile = profile,
    };
    h->cbs.on_event(h, &ev, h->userdata);
}

void api_emit(m2mvpn *h, m2mvpn_event_type type, int err, const char *detail)
{
    pthread_mutex_lock(&h->lock);
    m2mvpn_state st = h->status.state;
    pthread_mutex_unlock(&h->lock);
    emit(h, type, err, detail, st, st);
}

void api_set_state(m2mvpn *h, m2mvpn_state st, int err, const char *detail)
{
    pthread_mutex_lock(&h->lock);
    m2mvpn_state old = h->status.state;
    h->status.state = st;
    if (err) {
        h->status.last_error = err;
        snprintf(h->status.last_error_text, sizeof(h->status.last_error_text), "%s",
                 detail ? detail : m2mvpn_strerror(err));
    }
    pthread_mutex_unlock(&h->lock);
    if (old == st)
        return;
    LOG_INFO(&h->log, "api", "state %s -> %s%s%s", m2mvpn_state_name(old), m2mvpn_state_name(st),
             detail && *detail ? ": " : "", detail ? detail : "");
    emit(h, M2MVPN_EVENT_STATE_CHANGED, err, detail, st, old);
}

/* Warnings about the active profile, computed when asked (the profile may
 * change without a state change). Caller holds h->lock. */
#define MAX_WARNINGS 4
static size_t active_warnings_locked(m2mvpn *h, const char **out)
{
    const profile *p = h->active[0] ? profile_registry_find(&h->profiles, h->active, NULL) : NULL;
    size_t n = profile_warnings(p, out, MAX_WARNINGS);
    return n < MAX_WARNINGS ? n : MAX_WARNINGS;
}

static void join_warnings(char *buf, size_t cap, const char *const *w, size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && used < cap; i++) {
        int k = snprintf(buf + used, cap - used, "%s%s", i ? "; " : "", w[i]);
        if (k < 0)
            break;
        used += (size_t)k;
    }
}

int m2mvpn_get_status(m2mvpn *h, m2mvpn_status *ret)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    if (!ret || ret->struct_size < offsetof(m2mvpn_status, last_error))
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_get_status: ret is NULL or struct_size too small");
    size_t n = ret->struct_size < sizeof(*ret) ? ret->struct_size : sizeof(*ret);
    const char *w[MAX_WARNINGS];
    pthread_mutex_lock(&h->lock);
    m2mvpn_status snap = h->status;
    size_t nw = active_warnings_locked(h, w);
    join_warnings(snap.warnings, sizeof(snap.warnings), w, nw); /* constant texts: safe after unlock */
    pthread_mutex_unlock(&h->lock);
    snap.struct_size = n;
    memcpy(ret, &snap, n);
    return 0;
}

int m2mvpn_status_json(m2mvpn *h, char **ret)
{
    if (!api_handle_ok(h))
        return M2MVPN_E_BADHANDLE;
    if (!ret)
        return api_fail(h, M2MVPN_E_INVAL, "m2mvpn_status_json: ret is NULL");
    const char *w[MAX_WARNINGS];
    pthread_mutex_lock(&h->lock);
    m2mvpn_status s = h->status;
    conn_kill_switch ks = h->kill_switch;
    size_t nw = active_warnings_locked(h, w);
    pthread_mutex_unlock(&h->lock);

    json_object *o = json_object_new_object();
    json_object *last = json_object_new_object();
    json_object *counters = json_object_new_object();
    if (!o || !last || !counters) {
        json_object_put(o);
        json_object_put(last);
        json_object_put(counters);
        return api_fail(h, M2MVPN_E_NOMEM, "m2mvpn_status_json: out of memory");
    }
    json_object_object_add(o, "state", json_object_new_string(m2mvpn_state_name(s.state)));
    json_object_object_add(o, "profile", s.profile[0] ? json_object_new_string(s.profile) : NULL);
    json_object_object_add(o, "gateway", s.gateway[0] ? json_object_new_string(s.gateway) : NULL);
    json_object_object_add(o, "virtual_ip", s.virtual_ip[0] ? json_object_new_string(s.virtual_ip) : NULL);
    json_object_object_add(last, "code", json_object_new_int(s.last_error));
    json_object_object_add(last, "name", json_object_new_string(m2mvpn_error_name(s.last_error)));
    json_object_object_add(last, "message", json_object_new_string(s.last_error ? m2mvpn_strerror(s.last_error) : ""));
    json_object_object_add(last, "detail", json_object_new_string(s.last_error_text));
    json_object_object_add(o, "last_error", last);
    json_object_object_add(counters, "bytes_in", json_object_new_uint64(s.bytes_in));
    json_object_object_add(counters, "bytes_out", json_object_new_uint64(s.bytes_out));
    json_object_object_add(counters, "packets_in", json_object_new_uint64(s.packets_in));
    json_object_object_add(counters, "packets_out", json_object_new_uint64(s.packets_out));
    json_object_object_add(counters, "packets_dropped", json_object_new_uint64(s.packets_dropped));
    json_object *dropped = json_object_new_object();
    if (dropped) {
        json_object_object_add(dropped, "replay", json_object_new_uint64(s.dropped_replay));
        json_object_object_add(dropped, "integrity", json_object_new_uint64(s.dropped_integrity));
        json_object_object_add(dropped, "no_sa", json_object_new_uint64(s.dropped_no_sa));
        json_object_object_add(counters, "dropped", dropped);
    }
    json_object_object_add(o, "counters", counters);
    json_object_object_add(o, "connected_since", json_object_new_int64(s.connected_since));
    json_object *dns = json_object_new_array();
    for (size_t i = 0; dns && i < sizeof(s.dns) / sizeof(s.dns[0]); i++)
        if (s.dns[i][0])
            json_object_array_add(dns, json_object_new_string(s.dns[i]));
    json_object_object_add(o, "dns", dns);
    json_object *child = json_object_new_object();
    if (child && s.spi_in) {
        char spi[16];
        snprintf(spi, sizeof(spi), "%08x", s.spi_in);
        json_object_object_add(child, "spi_in", json_object_new_string(spi));
        snprintf(spi, sizeof(spi), "%08x", s.spi_out);
        json_object_object_add(child, "spi_out", json_object_new_string(spi));
        json_object_object_add(o, "child_sa", child);
    } else {
        json_object_put(child);
        json_object_object_add(o, "child_sa", NULL);
    }
    json_object *alg = json_object_new_object();
    if (alg) {
        json_object_object_add(alg, "ike", json_object_new_string(s.ike_algorithms));
        json_object_object_add(alg, "esp", json_object_new_string(s.esp_algorithms));
        json_object_object_add(o, "algorithms", alg);
    }
    json_object *cred = s.credential_source[0] ? json_object_new_object() : NULL;
    if (cred) {
        json_object_object_add(cred, "source", json_object_new_string(s.credential_source));
        json_object_object_add(cred, "holder", json_object_new_string(s.credential));
        json_object_object_add(cred, "subject", json_object_new_string(s.cert_subject));
        json_object_object_add(cred, "not_after", json_object_new_int64(s.cert_not_after));
    }
    json_object_object_add(o, "credential", cred);
    /* Management (a bootstrap profile ran): null otherwise. */
    mgmt_status ms;
    mgmt_get_status(atomic_load(&h->mgmt), &ms); /* NULL: no bootstrap ran, off */
    json_object *mg = ms.on ? json_object_new_object() : NULL;
    if (mg) {
        json_object_object_add(mg, "state", json_object_new_string(mgmt_phase_name(ms.phase)));
        json_object_object_add(mg, "device_id", ms.device_id[0] ? json_object_new_string(ms.device_id) : NULL);
        json_object_object_add(mg, "last_contact", json_object_new_int64(ms.last_contact));
        json_object_object_add(mg, "profile_version", json_object_new_int64(ms.profile_version));
        json_object_object_add(mg, "software_version", json_object_new_string(m2mvpn_version()));
        json_object_object_add(mg, "cert_not_after", json_object_new_int64(ms.cert_not_after));
        json_object_object_add(mg, "last_error", json_object_new_string(ms.last_error));
        json_object_object_add(mg, "cert_refused", json_object_new_boolean(ms.cert_refused));
    }
    json_object_object_add(o, "management", mg);
    /* The kill switch's layers in place (null: the profile has none). */
    json_object *kill = ks.on ? json_object_new_object() : NULL;
    if (kill) {
        json_object_object_add(kill, "routing", json_object_new_boolean(ks.routing));
        json_object_object_add(kill, "nftables", json_object_new_boolean(ks.nftables));
        json_object_object_add(kill, "routing_only_allowed",
                               json_object_new_boolean(ks.routing_only_allowed));
        json_object_object_add(kill, "nftables_missing",
                               ks.nftables ? NULL : json_object_new_string(ks.nft_why));
    }
    json_object_object_add(o, "kill_switch", kill);
    json_object_object_add(o, "version", json_object_new_string(m2mvpn_version()));
    json_object *tr = json_object_new_object();
    if (tr) {
        json_object_object_add(tr, "reconnects", json_object_new_uint64(s.reconnects));
        json_object_object_add(tr, "rekeys", json_object_new_uint64(s.rekeys));
        json_object_object_add(tr, "roams", json_object_new_uint64(s.roams));
        json_object_object_add(tr, "last_change", json_object_new_int64(s.last_change));
        json_object_object_add(tr, "last_reason", json_object_new_string(s.last_reason));
        json_object_object_add(o, "transitions", tr);
    }
    json_object *warnings = json_object_new_array();
    for (size_t i = 0; warnings && i < nw; i++)
        json_object_array_add(warnings, json_object_new_string(w[i]));
    json_object_object_add(o, "warnings", warnings);

    const char *txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    char *copy = txt ? strdup(txt) : NULL;
    json_object_put(o);
    if (!copy)
        return api_fail(h, M2MVPN_E_NOMEM, "m2mvpn_status_json: out of memory");
    *ret = copy;
    return 0;
}

void m2mvpn_string_free(char *s)
{
    free(s);
}

const char *m2mvpn_version(void)
{
    return M2MVPN_VERSION_STRING;
}
