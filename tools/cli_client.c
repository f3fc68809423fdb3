/* SPDX-License-Identifier: Apache-2.0 */
/* Client commands: talk to the running service over its control socket. */
#include <inttypes.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "control.h"
#include "ctl_client.h"
#include "secret_input.h"

#define CLI_CALL_TIMEOUT_MS 10000
/* Secrets the library accepts are at most 256 bytes. */
#define CLI_MAX_SECRET 256

int cli_call(const cli_opts *o, const char *what, int cmd, const char *const *args, size_t argc,
             json_object **status)
{
    char line[CTL_MAX_LINE + 2];
    int len = ctl_request_format((ctl_cmd)cmd, args, argc, line, sizeof(line));
    if (len < 0) {
        cli_error("%s: argument too long or empty", what);
        return CLI_EXIT_USAGE;
    }
    char *resp = NULL, err[1024];
    int r = ctl_client_call(o->control, line, (size_t)len, CLI_CALL_TIMEOUT_MS, &resp, err, sizeof(err));
    explicit_bzero(line, sizeof(line));
    if (r < 0) {
        cli_error("%s", err);
        return CLI_EXIT_UNREACHABLE;
    }
    json_object *answer = json_tokener_parse(resp);
    free(resp);
    json_object *ok = NULL;
    if (!answer || !json_object_is_type(answer, json_type_object) ||
        !json_object_object_get_ex(answer, "ok", &ok) || !json_object_is_type(ok, json_type_boolean)) {
        json_object_put(answer);
        cli_error("the service at %s sent a malformed answer", o->control);
        return CLI_EXIT_UNREACHABLE;
    }
    if (!json_object_get_boolean(ok)) {
        json_object *msg = NULL;
        json_object_object_get_ex(answer, "message", &msg);
        const char *text = msg ? json_object_get_string(msg) : NULL;
        cli_error("%s refused: %s", what, text && *text ? text : "no reason given");
        json_object_put(answer);
        return CLI_EXIT_FAILED;
    }
    if (status) {
        json_object *st = NULL;
        if (!json_object_object_get_ex(answer, "status", &st) || !json_object_is_type(st, json_type_object)) {
            json_object_put(answer);
            cli_error("the service at %s sent no status", o->control);
            return CLI_EXIT_UNREACHABLE;
        }
        *status = json_object_get(st);
    }
    json_object_put(answer);
    return CLI_EXIT_OK;
}

int cli_cmd_connect(int argc, char **argv)
{
    cli_opts o;
    if (cli_parse(argc, argv, CLI_OPT_CONTROL, 0, 1, &o) < 0)
        return CLI_EXIT_USAGE;
    const char *args[1] = { o.n_pos ? o.pos[0] : NULL };
    return cli_call(&o, "connect", CTL_CMD_CONNECT, args, (size_t)o.n_pos, NULL);
}

/* disconnect --remove: take the device out of the VPN on purpose, i.e. also
 * unload the active profile, which removes its kill switch (m2mvpn_profile_unload). */
int cli_cmd_disconnect(int argc, char **argv)
{
    cli_opts o;
    if (cli_parse(argc, argv, CLI_OPT_CONTROL | CLI_OPT_REMOVE, 0, 0, &o) < 0)
        return CLI_EXIT_USAGE;
    int r = cli_call(&o, "disconnect", CTL_CMD_DISCONNECT, NULL, 0, NULL);
    if (r != CLI_EXIT_OK || !o.remove)
        return r;
    json_object *st = NULL;
    if ((r = cli_call(&o, "disconnect --remove", CTL_CMD_STATUS, NULL, 0, &st)) != CLI_EXIT_OK)
        return r;
    json_object *name = NULL;
    char profile[128] = "";
    if (json_object_object_get_ex(st, "profile", &name) && json_object_is_type(name, json_type_string))
        snprintf(profile, sizeof(profile), "%s", json_object_get_string(name));
    json_object_put(st);
    if (!profile[0]) {
        cli_error("disconnect --remove: no profile is active");
        return CLI_EXIT_FAILED;
    }
    const char *args[1] = { profile };
    return cli_call(&o, "disconnect --remove", CTL_CMD_UNLOAD, args, 1, NULL);
}

int cli_cmd_switch(int argc, char **argv)
{
    cli_opts o;
    if (cli_parse(argc, argv, CLI_OPT_CONTROL, 1, 1, &o) < 0)
        return CLI_EXIT_USAGE;
    const char *args[1] = { o.pos[0] };
    return cli_call(&o, "switch", CTL_CMD_SWITCH, args, 1, NULL);
}

int cli_cmd_unload(int argc, char **argv)
{
    cli_opts o;
    if (cli_parse(argc, argv, CLI_OPT_CONTROL, 1, 1, &o) < 0)
        return CLI_EXIT_USAGE;
    const char *args[1] = { o.pos[0] };
    return cli_call(&o, "unload", CTL_CMD_UNLOAD, args, 1, NULL);
}

/* decommission: the request is queued by the service; the outcome (the
 * server's answer, at most about two minutes) is read from the status'
 * service.decommission until it is no longer "pending". */
#define CLI_DECOM_WAIT_MS 150000

int cli_cmd_decommission(int argc, char **argv)
{
    cli_opts o;
    if (cli_parse(argc, argv, CLI_OPT_CONTROL, 0, 0, &o) < 0)
        return CLI_EXIT_USAGE;
    int r = cli_call(&o, "decommission", CTL_CMD_DECOMMISSION, NULL, 0, NULL);
    if (r != CLI_EXIT_OK)
        return r;
    for (int waited = 0; waited < CLI_DECOM_WAIT_MS; waited += 250) {
        json_object *st = NULL, *svc = NULL, *d = NULL, *res = NULL, *det = NULL;
        if ((r = cli_call(&o, "decommission", CTL_CMD_STATUS, NULL, 0, &st)) != CLI_EXIT_OK)
            return r;
        const char *result = "pending", *detail = "";
        if (json_object_object_get_ex(st, "service", &svc) && json_object_object_get_ex(svc, "decommission", &d) &&
            json_object_object_get_ex(d, "result", &res) && json_object_object_get_ex(d, "detail", &det)) {
            result = json_object_get_string(res);
            detail = json_object_get_string(det);
        }
        if (strcmp(result, "pending") != 0) {
            bool ok = !strcmp(result, "done");
            if (ok)
                printf("%s\n", detail);
            else if (strstr(detail, "call m2mvpn_decommission again"))
                cli_error("decommission unfinished (the certificate is no longer used): %s", detail);
            else
                cli_error("decommission failed, nothing changed: %s", detail);
            json_object_put(st);
            return ok ? CLI_EXIT_OK : CLI_EXIT_FAILED;
        }
        json_object_put(st);
        struct timespec ts = { 0, 250 * 1000000L };
        nanosleep(&ts, NULL);
    }
    cli_error("decommission: no answer from the management server yet; see 'm2mvpn status'");
    return CLI_EXIT_FAILED;
}

int cli_cmd_login(int argc, char **argv)
{
    cli_opts o;
    if (cli_parse(argc, argv, CLI_OPT_CONTROL | CLI_OPT_USER, 0, 0, &o) < 0)
        return CLI_EXIT_USAGE;
    if (!o.user || !*o.user) {
        cli_error("login: --user U is required");
        return CLI_EXIT_USAGE;
    }
    char password[CLI_MAX_SECRET + 1], err[256];
    if (secret_read("password", password, sizeof(password), err, sizeof(err)) < 0) {
        cli_error("login: %s", err);
        return CLI_EXIT_FAILED;
    }
    const char *args[2] = { o.user, password };
    int r = cli_call(&o, "login", CTL_CMD_LOGIN, args, 2, NULL);
    explicit_bzero(password, sizeof(password));
    return r;
}

int cli_cmd_pin(int argc, char **argv)
{
    cli_opts o;
    if (cli_parse(argc, argv, CLI_OPT_CONTROL, 0, 0, &o) < 0)
        return CLI_EXIT_USAGE;
    char pin[CLI_MAX_SECRET + 1], err[256];
    if (secret_read("PIN", pin, sizeof(pin), err, sizeof(err)) < 0) {
        cli_error("pin: %s", err);
        return CLI_EXIT_FAILED;
    }
    const char *args[1] = { pin };
    int r = cli_call(&o, "pin", CTL_CMD_PIN, args, 1, NULL);
    explicit_bzero(pin, sizeof(pin));
    return r;
}

/* ---------------------------------------------------------------- status */

static const char *get_str(json_object *o, const char *key)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) || !v || !json_object_is_type(v, json_type_string))
        return NULL;
    const char *s = json_object_get_string(v);
    return s && *s ? s : NULL;
}

static int64_t get_int(json_object *o, const char *key)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) || !v || !json_object_is_type(v, json_type_int))
        return 0;
    return json_object_get_int64(v);
}

/* "3d 04:05:06" / "04:05:06" */
static void format_duration(int64_t s, char *out, size_t cap)
{
    if (s < 0)
        s = 0;
    int64_t d = s / 86400;
    if (d)
        snprintf(out, cap, "%" PRId64 "d %02d:%02d:%02d", d, (int)(s % 86400 / 3600), (int)(s % 3600 / 60),
                 (int)(s % 60));
    else
        snprintf(out, cap, "%02d:%02d:%02d", (int)(s / 3600), (int)(s % 3600 / 60), (int)(s % 60));
}

static json_object *get_obj(json_object *o, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) && v && json_object_is_type(v, json_type_object) ? v : NULL;
}

/* The service's own lines (uptime, reloads), from its "service" member. */
static void print_service(json_object *st)
{
    json_object *svc = get_obj(st, "service");
    if (!svc)
        return;
    char up[32];
    format_duration(get_int(svc, "uptime_s"), up, sizeof(up));
    printf("service:     pid %" PRId64 ", up %s\n", get_int(svc, "pid"), up);
    json_object *rl = get_obj(svc, "reload");
    json_object *last = rl ? get_obj(rl, "last") : NULL;
    if (!last)
        return;
    json_object *ok = NULL;
    bool taken = json_object_object_get_ex(last, "ok", &ok) && json_object_get_boolean(ok);
    const char *why = get_str(last, "error");
    time_t t = (time_t)get_int(last, "at");
    struct tm tm;
    char when[64];
    gmtime_r(&t, &tm);
    strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
    if (taken)
        printf("reload:      taken at %s\n", when);
    else
        printf("reload:      REJECTED at %s, old profiles kept: %s\n", when, why ? why : "no reason given");
}

static void print_summary(json_object *st)
{
    const char *dash = "-";
    const char *s;
    printf("state:       %s\n", (s = get_str(st, "state")) ? s : "unknown");
    printf("profile:     %s\n", (s = get_str(st, "profile")) ? s : dash);
    printf("gateway:     %s\n", (s = get_str(st, "gateway")) ? s : dash);
    printf("virtual ip:  %s\n", (s = get_str(st, "virtual_ip")) ? s : dash);
    int64_t since = get_int(st, "connected_since");
    if (since > 0) {
        time_t t = (time_t)since;
        struct tm tm;
        char when[64];
        gmtime_r(&t, &tm);
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
        char up[32];
        format_duration((int64_t)time(NULL) - since, up, sizeof(up));
        printf("connected:   since %s (up %s)\n", when, up);
    } else {
        printf("connected:   %s\n", dash);
    }
    json_object *c = NULL;
    if (json_object_object_get_ex(st, "counters", &c) && c && json_object_is_type(c, json_type_object))
        printf("traffic:     in %" PRId64 " bytes / %" PRId64 " packets, out %" PRId64 " bytes / %" PRId64
               " packets, %" PRId64 " dropped\n",
               get_int(c, "bytes_in"), get_int(c, "packets_in"), get_int(c, "bytes_out"), get_int(c, "packets_out"),
               get_int(c, "packets_dropped"));
    /* Reconnects, rekeys and roams since the engine started ("transitions"). */
    json_object *tr = NULL, *n = NULL;
    if (json_object_object_get_ex(st, "transitions", &tr) && tr && json_object_is_type(tr, json_type_object)) {
        printf("changes:     %" PRId64 " reconnects, %" PRId64 " rekeys, %" PRId64 " roams\n",
               get_int(tr, "reconnects"), get_int(tr, "rekeys"), get_int(tr, "roams"));
        if (json_object_object_get_ex(tr, "last_reason", &n) && json_object_is_type(n, json_type_string) &&
            json_object_get_string(n)[0])
            printf("last change: %s\n", json_object_get_string(n));
    }
    json_object *alg = NULL;
    if (json_object_object_get_ex(st, "algorithms", &alg) && alg && json_object_is_type(alg, json_type_object)) {
        const char *ike = get_str(alg, "ike"), *esp = get_str(alg, "esp");
        if (ike || esp)
            printf("algorithms:  IKE %s, ESP %s\n", ike ? ike : dash, esp ? esp : dash);
        else
            printf("algorithms:  %s\n", dash);
    } else {
        printf("algorithms:  %s\n", dash);
    }
    json_object *cr = NULL;
    if (json_object_object_get_ex(st, "credential", &cr) && cr && json_object_is_type(cr, json_type_object)) {
        const char *holder = get_str(cr, "holder"), *subject = get_str(cr, "subject");
        printf("credential:  %s%s%s\n", holder ? holder : dash, subject && subject[0] ? ", " : "",
               subject ? subject : "");
        int64_t until = get_int(cr, "not_after");
        if (until > 0) {
            char when[64];
            time_t t = (time_t)until;
            struct tm tm;
            strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", gmtime_r(&t, &tm));
            printf("certificate: valid until %s\n", when);
        }
    }
    json_object *mg = NULL;
    if (json_object_object_get_ex(st, "management", &mg) && mg && json_object_is_type(mg, json_type_object)) {
        const char *state = get_str(mg, "state"), *id = get_str(mg, "device_id"), *why = get_str(mg, "last_error");
        printf("management:  %s%s%s, profile version %lld%s%s\n", state ? state : dash, id ? " as " : "",
               id ? id : "", (long long)get_int(mg, "profile_version"), why && why[0] ? "; " : "",
               why ? why : "");
    }
    json_object *le = NULL;
    if (json_object_object_get_ex(st, "last_error", &le) && le && json_object_is_type(le, json_type_object) &&
        get_int(le, "code") != 0) {
        const char *name = get_str(le, "name"), *detail = get_str(le, "detail");
        printf("last error:  %s%s%s\n", name ? name : "error", detail ? ": " : "", detail ? detail : "");
    } else {
        printf("last error:  %s\n", dash);
    }
    json_object *warn = NULL;
    if (json_object_object_get_ex(st, "warnings", &warn) && warn && json_object_is_type(warn, json_type_array))
        for (size_t i = 0; i < json_object_array_length(warn); i++) {
            json_object *w = json_object_array_get_idx(warn, i);
            if (w && json_object_is_type(w, json_type_string))
                printf("warning:     %s\n", json_object_get_string(w));
        }
    print_service(st);
    printf("version:     %s\n", (s = get_str(st, "version")) ? s : dash);
}

int cli_cmd_status(int argc, char **argv)
{
    cli_opts o;
    if (cli_parse(argc, argv, CLI_OPT_CONTROL | CLI_OPT_JSON, 0, 0, &o) < 0)
        return CLI_EXIT_USAGE;
    json_object *st = NULL;
    int r = cli_call(&o, "status", CTL_CMD_STATUS, NULL, 0, &st);
    if (r != CLI_EXIT_OK)
        return r;
    if (o.json)
        printf("%s\n", json_object_to_json_string_ext(st, JSON_C_TO_STRING_PLAIN));
    else
        print_summary(st);
    json_object_put(st);
    return fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILED;
}
