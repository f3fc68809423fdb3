/* SPDX-License-Identifier: Apache-2.0 */
/* The poll answer (mgmt contract day N) and the poll's query. The answer
 * comes from the network: every field is checked before it is used, an href
 * must be the deployment route of its own id (the device never follows
 * another path the answer names). */
#include "mgmt.h"

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#define DEP_PREFIX "/api/v1/device/deployments/"

static const char *const dep_types[] = {
    [MGMT_DEP_PROFILE] = "profile",
    [MGMT_DEP_SOFTWARE] = "software",
    [MGMT_DEP_CERT] = "cert",
};

const char *mgmt_dep_type_name(mgmt_dep_type t)
{
    return (size_t)t < sizeof(dep_types) / sizeof(dep_types[0]) ? dep_types[t] : "unknown";
}

int mgmt_poll_parse(const char *text, size_t len, mgmt_poll_answer *out, char *err, size_t err_len)
{
    memset(out, 0, sizeof(*out));
    if (!text || len == 0 || len > MGMT_BUNDLE_MAX) {
        snprintf(err, err_len, "poll answer: empty or larger than %u bytes", MGMT_BUNDLE_MAX);
        return M2MVPN_E_PROTOCOL;
    }
    json_tokener *tok = json_tokener_new();
    if (!tok)
        return M2MVPN_E_NOMEM;
    json_object *o = json_tokener_parse_ex(tok, text, (int)len);
    bool whole = json_tokener_get_error(tok) == json_tokener_success;
    /* nothing after the object but white space */
    for (size_t i = o ? json_tokener_get_parse_end(tok) : len; i < len && whole; i++)
        if (text[i] != ' ' && text[i] != '\n' && text[i] != '\r' && text[i] != '\t')
            whole = false;
    json_tokener_free(tok);
    int r = M2MVPN_E_PROTOCOL;
    json_object *v, *deps;
    if (!o || !whole || !json_object_is_type(o, json_type_object)) {
        snprintf(err, err_len, "poll answer: not a JSON object");
        goto out;
    }
    if (!json_object_object_get_ex(o, "poll_s", &v) || !json_object_is_type(v, json_type_int)) {
        snprintf(err, err_len, "poll answer: \"poll_s\" missing or not an integer");
        goto out;
    }
    int64_t p = json_object_get_int64(v);
    if (p < 1 || p > 7 * 86400) {
        snprintf(err, err_len, "poll answer: \"poll_s\" %lld out of range (1..604800)", (long long)p);
        goto out;
    }
    out->poll_s = (uint32_t)p;
    if (!json_object_object_get_ex(o, "deployments", &deps) || !json_object_is_type(deps, json_type_array)) {
        snprintf(err, err_len, "poll answer: \"deployments\" missing or not an array");
        goto out;
    }
    size_t n = json_object_array_length(deps);
    for (size_t i = 0; i < n; i++) {
        if (out->n == MGMT_POLL_MAX_DEPS)
            break; /* the rest comes at a later poll, once these are done */
        json_object *d = json_object_array_get_idx(deps, i), *id, *type, *href, *win;
        if (!d || !json_object_is_type(d, json_type_object) || !json_object_object_get_ex(d, "id", &id) ||
            !json_object_is_type(id, json_type_int) || !json_object_object_get_ex(d, "type", &type) ||
            !json_object_is_type(type, json_type_string) || !json_object_object_get_ex(d, "href", &href) ||
            !json_object_is_type(href, json_type_string)) {
            snprintf(err, err_len, "poll answer: deployments[%zu] lacks an integer \"id\" or a string \"type\" "
                     "or \"href\"", i);
            goto out;
        }
        mgmt_deployment *dep = &out->deps[out->n];
        dep->id = json_object_get_int64(id);
        if (dep->id < 1 || dep->id > (1LL << 53)) {
            snprintf(err, err_len, "poll answer: deployments[%zu].id out of range", i);
            goto out;
        }
        char want[80];
        snprintf(want, sizeof(want), DEP_PREFIX "%lld", (long long)dep->id);
        if (strcmp(json_object_get_string(href), want) != 0) {
            snprintf(err, err_len, "poll answer: deployments[%zu].href is not %s", i, want);
            goto out;
        }
        snprintf(dep->href, sizeof(dep->href), "%s", want);
        const char *t = json_object_get_string(type);
        bool known = false;
        for (size_t k = 0; k < sizeof(dep_types) / sizeof(dep_types[0]); k++)
            if (!strcmp(t, dep_types[k])) {
                dep->type = (mgmt_dep_type)k;
                known = true;
            }
        if (!known) {
            /* A newer server's kind of deployment: not ours to act on. */
            continue;
        }
        dep->window_open = true;
        if (json_object_object_get_ex(d, "maintenance_window", &win)) {
            const char *w = json_object_get_string(win);
            if (!json_object_is_type(win, json_type_string) ||
                (strcmp(w, "available") != 0 && strcmp(w, "unavailable") != 0)) {
                snprintf(err, err_len, "poll answer: deployments[%zu].maintenance_window is neither "
                         "\"available\" nor \"unavailable\"", i);
                goto out;
            }
            dep->window_open = !strcmp(w, "available");
        }
        out->n++;
    }
    r = 0;
out:
    json_object_put(o);
    if (r < 0)
        memset(out, 0, sizeof(*out));
    return r;
}

int mgmt_poll_query(char *out, size_t cap, const char *tunnel, int64_t profile_version, const char *software,
                    int64_t cert_not_after)
{
    char sw[64] = "";
    size_t k = 0;
    /* software: a version string; only the characters a version has. */
    for (const char *s = software ? software : ""; *s && k + 1 < sizeof(sw); s++) {
        char c = *s;
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' || c == '-' ||
            c == '_' || c == '+')
            sw[k++] = c == '+' ? '_' : c;
    }
    sw[k] = 0;
    /* the server wants 1..63 characters when the key is there at all */
    int n = snprintf(out, cap, "/api/v1/device/poll?tunnel=%s&profile=%lld%s%s&cert_not_after=%lld",
                     tunnel ? tunnel : "down", (long long)profile_version, sw[0] ? "&software=" : "", sw,
                     (long long)cert_not_after);
    return n > 0 && (size_t)n < cap ? 0 : M2MVPN_E_INVAL;
}
