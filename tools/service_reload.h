/* SPDX-License-Identifier: Apache-2.0 */
/*
 * SIGHUP: read the profile file again. The library parses and validates the
 * whole file before it changes anything, so an invalid new file is rejected
 * with its error (log and `status`), the profiles loaded before stay, and
 * the tunnel is not touched. A valid file replaces the profiles of the same
 * names; the active one is released and started over with its new settings
 * (m2mvpn_profile_load_file). Profiles no longer in the file stay loaded
 * until `m2mvpn unload NAME`.
 */
#ifndef M2MVPN_TOOLS_SERVICE_RELOAD_H
#define M2MVPN_TOOLS_SERVICE_RELOAD_H

#include <m2mvpn/m2mvpn.h>
#include <stdbool.h>
#include <time.h>

struct json_object;

typedef struct svc_reload_state {
    unsigned taken;    /* reloads that loaded the file */
    unsigned rejected; /* reloads refused: the old profiles kept */
    time_t last_at;    /* wall clock of the last reload, 0: never */
    bool last_ok;
    char last_error[512]; /* why the last reload was refused ("" if it was not) */
} svc_reload_state;

/** Reload `profile_file` into h and record the outcome in *st (and the log). */
void svc_reload(m2mvpn *h, const char *profile_file, svc_reload_state *st);

/** {"taken":N,"rejected":N,"last":null | {"at":T,"ok":B,"error":S|null}} */
struct json_object *svc_reload_json(const svc_reload_state *st);

#endif
