/* SPDX-License-Identifier: Apache-2.0 */
/* Reloading the profile file on SIGHUP: see service_reload.h. */
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "service_log.h"
#include "service_reload.h"

void svc_reload(m2mvpn *h, const char *profile_file, svc_reload_state *st)
{
    char line[1024];
    snprintf(line, sizeof(line), "SIGHUP: reloading profile file %s", profile_file);
    svc_log_write(M2MVPN_LOG_INFO, "service", line);
    st->last_at = time(NULL);
    int r = m2mvpn_profile_load_file(h, profile_file);
    if (r < 0) {
        st->rejected++;
        st->last_ok = false;
        snprintf(st->last_error, sizeof(st->last_error), "%s", m2mvpn_last_error(h));
        snprintf(line, sizeof(line), "reload of %s rejected, the loaded profiles and the tunnel are kept: %s",
                 profile_file, st->last_error);
        svc_log_write(M2MVPN_LOG_ERROR, "service", line);
        return;
    }
    st->taken++;
    st->last_ok = true;
    st->last_error[0] = '\0';
    snprintf(line, sizeof(line), "reloaded %s: its profiles replace the loaded ones of the same names", profile_file);
    svc_log_write(M2MVPN_LOG_INFO, "service", line);
}

json_object *svc_reload_json(const svc_reload_state *st)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "taken", json_object_new_int64(st->taken));
    json_object_object_add(o, "rejected", json_object_new_int64(st->rejected));
    json_object *last = NULL;
    if (st->last_at) {
        last = json_object_new_object();
        if (last) {
            json_object_object_add(last, "at", json_object_new_int64((int64_t)st->last_at));
            json_object_object_add(last, "ok", json_object_new_boolean(st->last_ok));
            json_object_object_add(last, "error", st->last_ok ? NULL : json_object_new_string(st->last_error));
        }
    }
    json_object_object_add(o, "last", last);
    return o;
}
