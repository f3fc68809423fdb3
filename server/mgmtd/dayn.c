/* SPDX-License-Identifier: Apache-2.0 */
/* Day 1..N routes (mgmt contract, day N): the device's poll, deployment
 * bundles, artifacts and feedback; the admin side of deployments and
 * software artifacts; the read-only fleet page. All state is in the store. */
#include <dirent.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mgmtd.h"

#define DETAILS_MAX 512

int mgmtd_overdue(const mgmtd *m, const store_device *d, long long now)
{
    return d->state == STORE_DEV_ENROLLED && now - d->last_contact > 3LL * m->cfg.poll_s;
}

/* s is exactly len lowercase hex digits (a SHA-256 digest: 64, an upload ID: 32). */
/* The software_version a device takes (lib/mgmt mgmt_software_version_ok):
   it names the device's file update-<version>.bin and is its installer's
   argument, so it is refused here already rather than by every device. */
static int sw_version_ok(const char *sv)
{
    size_t n = strlen(sv);
    if (n < 1 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = sv[i];
        int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (!alnum && (i == 0 || !strchr("._+~-", c)))
            return 0;
    }
    return 1;
}

static int is_lower_hex(const char *s, size_t len)
{
    if (!s || strlen(s) != len)
        return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return 1;
}

static int window_open(const store_deployment *d, long long now)
{
    if (d->window_start < 0)
        return 1;
    int min = (int)((now % 86400) / 60);
    if (d->window_start <= d->window_end)
        return min >= d->window_start && min < d->window_end;
    return min >= d->window_start || min < d->window_end;   /* across midnight */
}

/* "HH:MM-HH:MM" -> minutes; -1 if malformed */
static int parse_window(const char *s, int *start, int *end)
{
    int h1, m1, h2, m2, n = 0;
    if (sscanf(s, "%2d:%2d-%2d:%2d%n", &h1, &m1, &h2, &m2, &n) != 4 || s[n] || h1 < 0 || h1 > 23 || h2 < 0 ||
        h2 > 24 || m1 < 0 || m1 > 59 || m2 < 0 || m2 > 59 || (h2 == 24 && m2) || strlen(s) != 11)
        return -1;
    *start = h1 * 60 + m1;
    *end = h2 * 60 + m2;
    return *start == *end ? -1 : 0;
}

static int parse_ll(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = s && *s ? strtoll(s, &end, 10) : 0;
    if (!s || !*s || errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* ---------------------------------------------------------------- device */

void mgmtd_device_poll(mgmtd *m, struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        mgmtd_reply_error(req, 405, "use GET");
        return;
    }
    store_device d;
    if (mgmtd_device_auth(m, req, &d) < 0)
        return;
    struct evkeyvalq qs = {0};
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    if (query && evhttp_parse_query_str(query, &qs) < 0) {
        mgmtd_reply_error(req, 400, "poll: malformed query string");
        return;
    }
    const char *tunnel = evhttp_find_header(&qs, "tunnel"), *prof = evhttp_find_header(&qs, "profile");
    const char *sw = evhttp_find_header(&qs, "software"), *cna = evhttp_find_header(&qs, "cert_not_after");
    long long pv = -1, cn = -1;
    const char *bad = NULL;
    if (tunnel && strcmp(tunnel, "up") && strcmp(tunnel, "down") && strcmp(tunnel, "connecting"))
        bad = "tunnel: up, down or connecting";
    else if (prof && parse_ll(prof, 0, 1LL << 53, &pv) < 0)
        bad = "profile: a whole number >= 0";
    else if (cna && parse_ll(cna, 0, 1LL << 40, &cn) < 0)
        bad = "cert_not_after: unix seconds";
    else if (sw) {
        size_t n = strlen(sw);
        if (n == 0 || n > 63)
            bad = "software: 1 to 63 characters";
        for (size_t i = 0; !bad && i < n; i++)
            if ((unsigned char)sw[i] < 0x21 || (unsigned char)sw[i] > 0x7e)
                bad = "software: printable ASCII without spaces";
    }
    char err[512];
    long long now = (long long)time(NULL);
    int rc = bad ? 0 : store_device_report(m->st, d.id, now, tunnel, pv, sw, cn, err, sizeof(err));
    evhttp_clear_headers(&qs);
    if (bad) {
        mgmtd_reply_error(req, 400, "poll: %s", bad);
        return;
    }
    if (rc) {
        mgmtd_reply_store_error(req, rc, err);
        return;
    }
    store_deployment *list = NULL;
    size_t n = 0;
    if ((rc = store_device_open_deployments(m->st, d.id, &list, &n, err, sizeof(err)))) {
        mgmtd_reply_store_error(req, rc, err);
        return;
    }
    json_object *out = json_object_new_object(), *arr = json_object_new_array();
    json_object_object_add(out, "poll_s", json_object_new_int(m->cfg.poll_s));
    for (size_t i = 0; i < n; i++) {
        char href[80];
        snprintf(href, sizeof(href), "/api/v1/device/deployments/%lld", list[i].id);
        json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_int64(list[i].id));
        json_object_object_add(o, "type", json_object_new_string(store_dep_type_name(list[i].type)));
        json_object_object_add(o, "href", json_object_new_string(href));
        json_object_object_add(o, "maintenance_window",
                               json_object_new_string(window_open(&list[i], now) ? "available" : "unavailable"));
        json_object_array_add(arr, o);
    }
    free(list);
    json_object_object_add(out, "deployments", arr);
    /* the ETag is the answer's hash: unchanged answer, same tag */
    const char *text = json_object_to_json_string_ext(out, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    unsigned char h[32];
    unsigned int hl = 0;
    char etag[40] = "\"";
    EVP_Digest(text, strlen(text), h, &hl, EVP_sha256(), NULL);
    for (int i = 0; i < 16; i++)
        snprintf(etag + 1 + 2 * i, 3, "%02x", h[i]);
    strcat(etag, "\"");
    struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
    evhttp_add_header(oh, "ETag", etag);
    const char *inm = evhttp_find_header(evhttp_request_get_input_headers(req), "If-None-Match");
    if (inm && !strcmp(inm, etag)) {
        json_object_put(out);
        mgmtd_reply(req, 304, NULL, NULL, 0);
        return;
    }
    mgmtd_reply_json(req, 200, out);
}

/* Test knob, for the interop tests only (docs/mgmt.md): with the environment
 * variable M2MVPN_MGMTD_TEST_BUNDLES=DIR, a file DIR/<id>.der is sent as the
 * bundle of deployment <id> instead of the one the server signs, so a test
 * can hand a device a bundle signed with the real bundle key that the server
 * never makes (an older version, an expired one). It changes nothing else:
 * the device must still have that deployment, and its feedback is recorded
 * as always. 1: sent; 0: no such file (the normal bundle). */
static int test_bundle(struct evhttp_request *req, const store_device *dev, long long id)
{
    const char *dir = getenv("M2MVPN_MGMTD_TEST_BUNDLES");
    if (!dir || !*dir)
        return 0;
    char path[4096];
    snprintf(path, sizeof(path), "%s/%lld.der", dir, id);
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    unsigned char *buf = malloc(MGMTD_MAX_BODY);
    size_t n = buf ? fread(buf, 1, MGMTD_MAX_BODY, f) : 0;
    fclose(f);
    if (!buf || n == 0) {
        free(buf);
        mgmtd_reply_error(req, 500, "test bundle %s is empty or unreadable", path);
        return 1;
    }
    mgmtd_log("TEST KNOB M2MVPN_MGMTD_TEST_BUNDLES: deployment %lld: %s sent to %s instead of the signed bundle",
              id, path, dev->id);
    mgmtd_reply(req, 200, "application/pkcs7-mime", buf, n);
    free(buf);
    return 1;
}

static void deployment_bundle(mgmtd *m, struct evhttp_request *req, const store_device *dev, long long id)
{
    store_deployment d;
    char *payload = NULL, err[512];
    int rc = store_deployment_for_device(m->st, id, dev->id, &d, &payload, err, sizeof(err));
    if (rc) {
        mgmtd_reply_store_error(req, rc, err);
        return;
    }
    if (!strcmp(d.state, "halted")) {
        free(payload);
        mgmtd_reply_error(req, 409, "deployment %lld is halted", id);
        return;
    }
    if (test_bundle(req, dev, id)) {
        free(payload);
        return;
    }
    char *profile = NULL;
    if (d.type == STORE_DEP_PROFILE) {
        profile = mgmtd_profile_for(payload ? payload : "", dev->id, err, sizeof(err));
        if (!profile) {
            free(payload);
            mgmtd_reply_error(req, 500, "deployment %lld: %s", id, err);
            return;
        }
    }
    free(payload);
    long long now = (long long)time(NULL);
    char *manifest = pki_bundle_manifest(store_dep_type_name(d.type), dev->id, d.version, now + MGMTD_BUNDLE_VALID_S,
                                         (const unsigned char *)(profile ? profile : ""),
                                         profile ? strlen(profile) : 0);
    free(profile);
    json_object *man = manifest ? json_tokener_parse(manifest) : NULL;
    free(manifest);
    if (!man) {
        mgmtd_reply_error(req, 500, "cannot build the manifest of deployment %lld", id);
        return;
    }
    json_object_object_add(man, "deployment", json_object_new_int64(d.id));
    if (d.type == STORE_DEP_SOFTWARE) {
        char url[128];
        snprintf(url, sizeof(url), "/api/v1/device/artifacts/%s", d.artifact);
        json_object_object_add(man, "software_version", json_object_new_string(d.software_version));
        json_object_object_add(man, "url", json_object_new_string(url));
        json_object_object_add(man, "size", json_object_new_int64(d.size));
        json_object_object_add(man, "sha256", json_object_new_string(d.artifact));
    } else if (d.type == STORE_DEP_CERT) {
        json_object_object_add(man, "action", json_object_new_string("renew"));
    }
    const char *text = json_object_to_json_string_ext(man, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    unsigned char *der = NULL;
    size_t dlen = 0;
    rc = pki_bundle_sign(m->signer, text, strlen(text), &der, &dlen, err, sizeof(err));
    json_object_put(man);
    if (rc < 0) {
        mgmtd_reply_error(req, 500, "cannot sign the bundle of deployment %lld: %s", id, err);
        return;
    }
    mgmtd_reply(req, 200, "application/pkcs7-mime", der, dlen);
    OPENSSL_free(der);
    mgmtd_log("deployment %lld (%s v%lld) sent to %s", id, store_dep_type_name(d.type), d.version, dev->id);
}

static void deployment_feedback(mgmtd *m, struct evhttp_request *req, const store_device *dev, long long id)
{
    json_object *o = mgmtd_body_json(req);
    if (!o)
        return;
    const char *result = NULL, *details = NULL;
    json_object_object_foreach(o, k, v) {
        if (!strcmp(k, "result") && json_object_is_type(v, json_type_string))
            result = json_object_get_string(v);
        else if (!strcmp(k, "details") && json_object_is_type(v, json_type_string))
            details = json_object_get_string(v);
        else {
            mgmtd_reply_error(req, 400, "feedback: unknown key or wrong type: \"%s\"", k);
            json_object_put(o);
            return;
        }
    }
    const char *bad = NULL;
    if (!result || (strcmp(result, "success") && strcmp(result, "failure") && strcmp(result, "proceeding")))
        bad = "\"result\": success, failure or proceeding";
    else if (details && strlen(details) > DETAILS_MAX)
        bad = "\"details\": at most 512 bytes";
    for (const char *p = details; !bad && p && *p; p++)
        if ((unsigned char)*p < 0x20)
            bad = "\"details\": one line without control characters";
    if (bad) {
        mgmtd_reply_error(req, 400, "feedback: %s", bad);
        json_object_put(o);
        return;
    }
    char err[512];
    int rc = store_deployment_feedback(m->st, id, dev->id, result, details, (long long)time(NULL), err, sizeof(err));
    if (rc == 0)
        mgmtd_log("deployment %lld: %s reports %s%s%s", id, dev->id, result, details ? ": " : "",
                  details ? details : "");
    json_object_put(o);
    if (rc)
        mgmtd_reply_store_error(req, rc, err);
    else
        mgmtd_reply(req, 204, NULL, NULL, 0);
}

void mgmtd_device_deployment(mgmtd *m, struct evhttp_request *req, const char *rest)
{
    char num[24];
    const char *slash = strchr(rest, '/');
    size_t nl = slash ? (size_t)(slash - rest) : strlen(rest);
    long long id;
    snprintf(num, sizeof(num), "%.*s", (int)(nl < sizeof(num) ? nl : sizeof(num) - 1), rest);
    int feedback = slash && !strcmp(slash, "/feedback");
    if (nl >= sizeof(num) || parse_ll(num, 1, 1LL << 53, &id) < 0 || (slash && !feedback)) {
        mgmtd_reply_error(req, 404, "no such route: deployments/%s", rest);
        return;
    }
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (cmd != (feedback ? EVHTTP_REQ_POST : EVHTTP_REQ_GET)) {
        mgmtd_reply_error(req, 405, "use %s", feedback ? "POST" : "GET");
        return;
    }
    store_device d;
    if (mgmtd_device_auth(m, req, &d) < 0)
        return;
    if (feedback)
        deployment_feedback(m, req, &d, id);
    else
        deployment_bundle(m, req, &d, id);
}

void mgmtd_device_artifact(mgmtd *m, struct evhttp_request *req, const char *sha)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        mgmtd_reply_error(req, 405, "use GET");
        return;
    }
    store_device d;
    if (mgmtd_device_auth(m, req, &d) < 0)
        return;
    if (!is_lower_hex(sha, 64)) {
        mgmtd_reply_error(req, 404, "artifacts/SHA256: 64 lowercase hex digits expected");
        return;
    }
    char err[512], path[4096];
    long long size = 0;
    int rc = store_artifact_allowed(m->st, sha, d.id, err, sizeof(err));
    if (rc == STORE_REFUSED) {
        mgmtd_reply_error(req, 403, "%s", err);
        return;
    }
    if (rc == 0)
        rc = store_artifact_get(m->st, sha, &size, path, sizeof(path), err, sizeof(err));
    if (rc) {
        mgmtd_reply_store_error(req, rc, err);
        return;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size != size) {
        if (fd >= 0)
            close(fd);
        mgmtd_log("artifact %s: %s: missing or changed on disk", sha, path);
        mgmtd_reply_error(req, 500, "artifact %s is missing on the server", sha);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (!b || evbuffer_add_file(b, fd, 0, size) < 0) {   /* takes fd */
        if (b)
            evbuffer_free(b);
        else
            close(fd);
        mgmtd_reply_error(req, 500, "cannot send artifact %s", sha);
        return;
    }
    struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
    evhttp_add_header(oh, "Content-Type", "application/octet-stream");
    evhttp_add_header(oh, "Cache-Control", "no-store");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
    mgmtd_log("artifact %.16s... (%lld bytes) sent to %s", sha, size, d.id);
}

/* ---------------------------------------------------------------- admin */

static json_object *dep_json(const store_deployment *d)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_int64(d->id));
    json_object_object_add(o, "group", json_object_new_string(d->group));
    json_object_object_add(o, "type", json_object_new_string(store_dep_type_name(d->type)));
    json_object_object_add(o, "version", json_object_new_int64(d->version));
    if (d->type == STORE_DEP_SOFTWARE) {
        json_object_object_add(o, "software_version", json_object_new_string(d->software_version));
        json_object_object_add(o, "artifact", json_object_new_string(d->artifact));
        json_object_object_add(o, "size", json_object_new_int64(d->size));
    }
    json_object_object_add(o, "percent", json_object_new_int(d->percent));
    json_object_object_add(o, "max_failures", json_object_new_double(d->max_fail_permille / 1000.0));
    if (d->window_start >= 0) {
        char w[16];
        snprintf(w, sizeof(w), "%02d:%02d-%02d:%02d", d->window_start / 60, d->window_start % 60,
                 d->window_end / 60, d->window_end % 60);
        json_object_object_add(o, "window", json_object_new_string(w));
    } else {
        json_object_object_add(o, "window", NULL);
    }
    json_object_object_add(o, "state", json_object_new_string(d->state));
    json_object_object_add(o, "wave", json_object_new_int(d->wave));
    json_object_object_add(o, "created", json_object_new_int64(d->created));
    json_object_object_add(o, "devices", json_object_new_int(d->n_devices));
    json_object_object_add(o, "first_wave", json_object_new_int(d->n_first_wave));
    json_object_object_add(o, "pending", json_object_new_int(d->n_pending));
    json_object_object_add(o, "proceeding", json_object_new_int(d->n_proceeding));
    json_object_object_add(o, "success", json_object_new_int(d->n_success));
    json_object_object_add(o, "failure", json_object_new_int(d->n_failure));
    return o;
}

/* The rollout keys of a publish body: percent, max_failures, window (and the
   caller's own). Returns 0, or -1 after replying 400. */
static int rollout_keys(struct evhttp_request *req, json_object *o, store_deployment *d, const char *const *extra)
{
    d->percent = 100;
    d->max_fail_permille = 200;
    d->window_start = d->window_end = -1;
    json_object_object_foreach(o, k, v) {
        int ok = 1;
        if (!strcmp(k, "percent")) {
            int64_t p = json_object_get_int64(v);
            ok = json_object_is_type(v, json_type_int) && p >= 1 && p <= 100;
            d->percent = (int)p;
        } else if (!strcmp(k, "max_failures")) {
            double f = json_object_get_double(v);
            ok = (json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int)) && f >= 0 &&
                 f <= 1;
            d->max_fail_permille = (int)(f * 1000 + 0.5);
        } else if (!strcmp(k, "window")) {
            ok = json_object_is_type(v, json_type_string) &&
                 parse_window(json_object_get_string(v), &d->window_start, &d->window_end) == 0;
        } else {
            ok = 0;
            for (int i = 0; extra && extra[i]; i++)
                if (!strcmp(k, extra[i]))
                    ok = json_object_is_type(v, json_type_string);
        }
        if (!ok) {
            mgmtd_reply_error(req, 400, "request body: unknown key or bad value: \"%s\" (percent 1 to 100, "
                              "max_failures 0 to 1, window \"HH:MM-HH:MM\" UTC)", k);
            return -1;
        }
    }
    return 0;
}

static void create_and_reply(mgmtd *m, struct evhttp_request *req, store_deployment *d)
{
    char err[512];
    int rc = store_deployment_create(m->st, d, err, sizeof(err));
    if (rc) {
        mgmtd_reply_store_error(req, rc, err);
        return;
    }
    mgmtd_log("admin: deployment %lld: %s v%lld to group %s (%d devices, first wave %d at %d %%)", d->id,
              store_dep_type_name(d->type), d->version, d->group, d->n_devices, d->n_first_wave, d->percent);
    json_object *o = dep_json(d);
    json_object_object_add(o, "deployment", json_object_new_int64(d->id));
    mgmtd_reply_json(req, 200, o);
}

void mgmtd_admin_profile_publish(mgmtd *m, struct evhttp_request *req, const char *group)
{
    store_deployment d;
    memset(&d, 0, sizeof(d));
    json_object *o = NULL;
    if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) > 0 && !(o = mgmtd_body_json(req)))
        return;
    int rc = rollout_keys(req, o ? o : json_object_new_object(), &d, NULL);
    json_object_put(o);
    if (rc < 0)
        return;
    snprintf(d.group, sizeof(d.group), "%s", group);
    d.type = STORE_DEP_PROFILE;
    create_and_reply(m, req, &d);
}

void mgmtd_admin_deployment_create(mgmtd *m, struct evhttp_request *req)
{
    json_object *o = mgmtd_body_json(req), *v;
    if (!o)
        return;
    static const char *const extra[] = {"group", "type", "artifact", "software_version", NULL};
    store_deployment d;
    memset(&d, 0, sizeof(d));
    if (rollout_keys(req, o, &d, extra) < 0) {
        json_object_put(o);
        return;
    }
    const char *g = json_object_object_get_ex(o, "group", &v) ? json_object_get_string(v) : NULL;
    const char *t = json_object_object_get_ex(o, "type", &v) ? json_object_get_string(v) : NULL;
    const char *a = json_object_object_get_ex(o, "artifact", &v) ? json_object_get_string(v) : "";
    const char *sv = json_object_object_get_ex(o, "software_version", &v) ? json_object_get_string(v) : "";
    const char *bad = NULL;
    if (!g || !store_valid_name(g))
        bad = "\"group\": a group name";
    else if (!t || store_dep_type_parse(t, &d.type) < 0 || d.type == STORE_DEP_PROFILE)
        bad = "\"type\": software or cert (a profile: POST groups/G/publish)";
    else if (d.type == STORE_DEP_SOFTWARE && (!is_lower_hex(a, 64) || !sw_version_ok(sv)))
        bad = "software: \"artifact\" (64 hex, uploaded) and \"software_version\" (1 to 63 letters, digits and "
              ". _ + ~ -, the first a letter or digit)";
    if (bad) {
        mgmtd_reply_error(req, 400, "request body: %s", bad);
        json_object_put(o);
        return;
    }
    snprintf(d.group, sizeof(d.group), "%s", g);
    snprintf(d.artifact, sizeof(d.artifact), "%s", d.type == STORE_DEP_SOFTWARE ? a : "");
    snprintf(d.software_version, sizeof(d.software_version), "%s", d.type == STORE_DEP_SOFTWARE ? sv : "");
    json_object_put(o);
    create_and_reply(m, req, &d);
}

void mgmtd_admin_deployment_list(mgmtd *m, struct evhttp_request *req)
{
    store_deployment *list = NULL;
    size_t n = 0;
    char err[512];
    int rc = store_deployment_list(m->st, &list, &n, err, sizeof(err));
    if (rc) {
        mgmtd_reply_store_error(req, rc, err);
        return;
    }
    json_object *out = json_object_new_object(), *arr = json_object_new_array();
    for (size_t i = 0; i < n; i++)
        json_object_array_add(arr, dep_json(&list[i]));
    free(list);
    json_object_object_add(out, "deployments", arr);
    mgmtd_reply_json(req, 200, out);
}

/* ------------------------------------------------------- artifact upload
   Chunked, so no request body is ever larger than MGMTD_CHUNK_MAX: the
   partial file is STATE_DIR/artifacts/.upload-ID (ID: 32 random hex digits),
   every chunk appended at its offset and fsynced; finish checks size and
   sha256, then renames it to artifacts/<sha256>. Partial uploads untouched for
   MGMTD_UPLOAD_STALE_S are removed when the next upload starts. */

static int artifact_dir(mgmtd *m, char *dir, size_t cap)
{
    snprintf(dir, cap, "%s/artifacts", m->cfg.state_dir);
    if ((mkdir(m->cfg.state_dir, 0700) < 0 && errno != EEXIST) || (mkdir(dir, 0700) < 0 && errno != EEXIST)) {
        mgmtd_log("artifact folder %s: %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

static void remove_stale_uploads(const char *dir, long long now)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        struct stat st;
        if (strncmp(e->d_name, ".upload-", 8) || fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        if (now - (long long)st.st_mtime > MGMTD_UPLOAD_STALE_S && unlinkat(dirfd(d), e->d_name, 0) == 0)
            mgmtd_log("artifact upload %s: unfinished for more than %d s, removed", e->d_name + 8,
                      MGMTD_UPLOAD_STALE_S);
    }
    closedir(d);
}

void mgmtd_admin_artifact_start(mgmtd *m, struct evhttp_request *req)
{
    if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) > 0) {
        mgmtd_reply_error(req, 400, "artifacts: start an upload with an empty body, then PUT artifacts/ID?offset=N "
                                    "chunks of at most %d bytes, then POST artifacts/ID/finish", MGMTD_CHUNK_MAX);
        return;
    }
    char dir[4096], path[4200], id[33];
    unsigned char rnd[16];
    if (artifact_dir(m, dir, sizeof(dir)) < 0 || RAND_bytes(rnd, sizeof(rnd)) != 1) {
        mgmtd_reply_error(req, 500, "cannot start an upload (see the server's log)");
        return;
    }
    remove_stale_uploads(dir, (long long)time(NULL));
    for (int i = 0; i < 16; i++)
        snprintf(id + 2 * i, 3, "%02x", rnd[i]);
    snprintf(path, sizeof(path), "%s/.upload-%s", dir, id);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        mgmtd_log("artifact upload %s: %s", path, strerror(errno));
        mgmtd_reply_error(req, 500, "cannot start an upload (see the server's log)");
        return;
    }
    close(fd);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "upload", json_object_new_string(id));
    json_object_object_add(o, "chunk_max", json_object_new_int(MGMTD_CHUNK_MAX));
    json_object_object_add(o, "size_max", json_object_new_int64(m->cfg.artifact_max_bytes));
    mgmtd_reply_json(req, 201, o);
}

/* The partial file of upload id: path filled, 0; -1 after replying 404/500. */
static int upload_path(mgmtd *m, struct evhttp_request *req, const char *id, char *path, size_t cap,
                       struct stat *st)
{
    char dir[4096];
    if (!is_lower_hex(id, 32)) {
        mgmtd_reply_error(req, 404, "artifacts/ID: 32 lowercase hex digits expected");
        return -1;
    }
    snprintf(dir, sizeof(dir), "%s/artifacts", m->cfg.state_dir);
    snprintf(path, cap, "%s/.upload-%s", dir, id);
    if (lstat(path, st) < 0 || !S_ISREG(st->st_mode)) {
        mgmtd_reply_error(req, 404, "no upload %s (finished, refused or removed after %d s unused)", id,
                          MGMTD_UPLOAD_STALE_S);
        return -1;
    }
    return 0;
}

static int write_all(int fd, const char *p, size_t n, off_t off)
{
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w, n -= (size_t)w, off += w;
    }
    return 0;
}

void mgmtd_admin_artifact_chunk(mgmtd *m, struct evhttp_request *req, const char *id)
{
    char path[4200];
    struct stat st;
    if (upload_path(m, req, id, path, sizeof(path), &st) < 0)
        return;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    struct evkeyvalq qs = {0};
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    const char *os = NULL;
    if (query && evhttp_parse_query_str(query, &qs) == 0)
        os = evhttp_find_header(&qs, "offset");
    char *end = NULL;
    long long off = os && *os >= '0' && *os <= '9' ? strtoll(os, &end, 10) : -1;
    int bad_off = off < 0 || !end || *end;
    evhttp_clear_headers(&qs);
    if (bad_off) {
        mgmtd_reply_error(req, 400, "artifacts/ID: query \"offset=N\" (bytes already sent) expected");
        return;
    }
    if (len == 0 || len > MGMTD_CHUNK_MAX) {
        mgmtd_reply_error(req, len ? 413 : 400, "artifact chunk: 1 to %d bytes", MGMTD_CHUNK_MAX);
        return;
    }
    if (off != (long long)st.st_size) {
        mgmtd_reply_error(req, 409, "artifact chunk: offset %lld, but the upload has %lld bytes", off,
                          (long long)st.st_size);
        return;
    }
    if (off + (long long)len > m->cfg.artifact_max_bytes) {
        unlink(path);
        mgmtd_reply_error(req, 413, "artifact larger than %lld bytes (config \"artifact_max_bytes\"); upload %s "
                                    "removed", m->cfg.artifact_max_bytes, id);
        return;
    }
    int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    int ok = fd >= 0;
    while (ok && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        ok = write_all(fd, v.iov_base, v.iov_len, (off_t)off) == 0;
        off += (long long)v.iov_len;
        evbuffer_drain(in, v.iov_len);
    }
    ok = ok && fsync(fd) == 0;
    if (fd >= 0 && close(fd) < 0)
        ok = 0;
    if (!ok) {
        mgmtd_log("artifact upload %s: %s", path, strerror(errno));
        mgmtd_reply_error(req, 500, "cannot store the chunk (see the server's log)");
        return;
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "size", json_object_new_int64(off));
    mgmtd_reply_json(req, 200, o);
}

/* {"sha256": "<64 hex>", "size": N}: the upload must match both, else it is removed. */
void mgmtd_admin_artifact_finish(mgmtd *m, struct evhttp_request *req, const char *id)
{
    char path[4200], dir[4096], final[4200];
    struct stat st;
    if (upload_path(m, req, id, path, sizeof(path), &st) < 0)
        return;
    json_object *o = mgmtd_body_json(req), *v;
    if (!o)
        return;
    const char *want = json_object_object_get_ex(o, "sha256", &v) ? json_object_get_string(v) : NULL;
    long long size = json_object_object_get_ex(o, "size", &v) && json_object_is_type(v, json_type_int)
                         ? (long long)json_object_get_int64(v) : -1;
    if (!is_lower_hex(want, 64) || size < 1) {
        json_object_put(o);
        mgmtd_reply_error(req, 400, "finish: {\"sha256\": \"<64 lowercase hex>\", \"size\": <bytes>} expected");
        return;
    }
    unsigned char h[32];
    unsigned int hl = 0;
    char hex[65];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = fd >= 0 && md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
    long long got = 0;
    static char buf[65536];
    for (ssize_t r; ok && (r = read(fd, buf, sizeof(buf))) != 0;) {
        if (r < 0 && errno == EINTR)
            continue;
        ok = r > 0 && EVP_DigestUpdate(md, buf, (size_t)r) == 1;
        got += r > 0 ? r : 0;
    }
    ok = ok && EVP_DigestFinal_ex(md, h, &hl) == 1;
    EVP_MD_CTX_free(md);
    if (fd >= 0)
        close(fd);
    if (!ok) {
        json_object_put(o);
        mgmtd_log("artifact upload %s: %s", path, strerror(errno));
        mgmtd_reply_error(req, 500, "cannot read the upload (see the server's log)");
        return;
    }
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", h[i]);
    if (got != size || strcmp(hex, want)) {
        unlink(path);
        mgmtd_log("admin: artifact upload %s refused: %lld bytes, sha256 %s; expected %lld bytes, sha256 %s", id,
                  got, hex, size, want);
        mgmtd_reply_error(req, 400, "upload %s refused and removed: it has %lld bytes with sha256 %s, expected %lld "
                                    "bytes with sha256 %s", id, got, hex, size, want);
        json_object_put(o);
        return;
    }
    json_object_put(o);
    snprintf(dir, sizeof(dir), "%s/artifacts", m->cfg.state_dir);
    snprintf(final, sizeof(final), "%s/%s", dir, hex);
    if (rename(path, final) < 0) {
        mgmtd_log("artifact upload %s: rename to %s: %s", path, final, strerror(errno));
        unlink(path);
        mgmtd_reply_error(req, 500, "cannot store the artifact (see the server's log)");
        return;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    char err[512];
    int rc = store_artifact_put(m->st, hex, got, final, err, sizeof(err));
    if (rc) {
        mgmtd_reply_store_error(req, rc, err);
        return;
    }
    mgmtd_log("admin: artifact %s (%lld bytes) stored", hex, got);
    o = json_object_new_object();
    json_object_object_add(o, "sha256", json_object_new_string(hex));
    json_object_object_add(o, "size", json_object_new_int64(got));
    mgmtd_reply_json(req, 200, o);
}

/* ---------------------------------------------------------------- fleet page */

/* HTTP Basic (any user, the admin token as password) or the bearer header. */
static int fleet_auth(mgmtd *m, struct evhttp_request *req)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (h && !strncasecmp(h, "Basic ", 6)) {
        const char *b64 = h + 6;
        size_t n = strlen(b64);
        unsigned char dec[768], dg[32];
        unsigned int dl = 0;
        int ok = 0;
        if (n > 0 && n < 1000 && n % 4 == 0) {
            int k = EVP_DecodeBlock(dec, (const unsigned char *)b64, (int)n);
            if (k > 0) {
                k -= (n >= 1 && b64[n - 1] == '=') + (n >= 2 && b64[n - 2] == '=');
                dec[k] = 0;
                char *colon = memchr(dec, ':', (size_t)k);
                if (colon && EVP_Digest(colon + 1, (size_t)k - (size_t)(colon + 1 - (char *)dec), dg, &dl,
                                        EVP_sha256(), NULL) == 1)
                    ok = CRYPTO_memcmp(dg, m->cfg.admin_token_sha256, 32) == 0;
            }
            OPENSSL_cleanse(dec, sizeof(dec));
        }
        if (ok)
            return 1;
    } else if (h && !strncmp(h, "Bearer ", 7)) {
        return mgmtd_admin_ok(m, req);
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                      "Basic realm=\"m2mvpn fleet\", charset=\"UTF-8\"");
    mgmtd_reply_error(req, 401, "the fleet page needs the admin token (HTTP Basic password or Bearer)");
    return 0;
}

static void html_esc(struct evbuffer *b, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '<': evbuffer_add(b, "&lt;", 4); break;
        case '>': evbuffer_add(b, "&gt;", 4); break;
        case '&': evbuffer_add(b, "&amp;", 5); break;
        case '"': evbuffer_add(b, "&quot;", 6); break;
        case '\'': evbuffer_add(b, "&#39;", 5); break;
        default: evbuffer_add(b, s, 1); break;
        }
    }
}

static void utc(char *out, size_t cap, long long t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (t <= 0 || !gmtime_r(&tt, &tm))
        snprintf(out, cap, "never");
    else
        strftime(out, cap, "%Y-%m-%d %H:%M:%SZ", &tm);
}

static int sort_dir;   /* qsort has no argument: set just before the call (one thread) */
static int by_contact(const void *a, const void *b)
{
    const store_device *x = a, *y = b;
    int c = (x->last_contact > y->last_contact) - (x->last_contact < y->last_contact);
    return c ? c * sort_dir : strcmp(x->id, y->id);
}

void mgmtd_fleet(mgmtd *m, struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        mgmtd_reply_error(req, 405, "use GET");
        return;
    }
    if (!fleet_auth(m, req))
        return;
    struct evkeyvalq qs = {0};
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    if (query)
        evhttp_parse_query_str(query, &qs);
    const char *sort = evhttp_find_header(&qs, "sort");
    int dir = sort && !strcmp(sort, "last_contact") ? 1 : sort && !strcmp(sort, "-last_contact") ? -1 : 0;
    evhttp_clear_headers(&qs);
    store_device *list = NULL;
    size_t n = 0;
    char err[512];
    int rc = store_device_list(m->st, &list, &n, err, sizeof(err));
    if (rc) {
        mgmtd_reply_store_error(req, rc, err);
        return;
    }
    if (dir) {
        sort_dir = dir;
        qsort(list, n, sizeof(*list), by_contact);
    }
    long long now = (long long)time(NULL);
    size_t overdue = 0;
    for (size_t i = 0; i < n; i++)
        overdue += (size_t)mgmtd_overdue(m, &list[i], now);
    struct evbuffer *b = evbuffer_new();
    char t[64];
    utc(t, sizeof(t), now);
    evbuffer_add_printf(b,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>m2mvpn fleet</title>\n"
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "th,td{border:1px solid #bbb;padding:.3em .6em;text-align:left}th{background:#eee}"
        "tr.overdue td{background:#fdd}tr.overdue td.contact{font-weight:bold;color:#a00}</style></head>\n"
        "<body><h1>m2mvpn fleet</h1>\n<p id=\"summary\">%zu devices, %zu overdue (no poll for more than %d s), "
        "at %s</p>\n<table id=\"devices\"><thead><tr><th><a href=\"/fleet\">Device</a></th><th>Group</th>"
        "<th>State</th><th>Tunnel</th><th>Profile</th><th>Software</th><th>Certificate until</th>"
        "<th>Last contact <a id=\"sort-asc\" href=\"/fleet?sort=last_contact\">&#9650;</a> "
        "<a id=\"sort-desc\" href=\"/fleet?sort=-last_contact\">&#9660;</a></th></tr></thead><tbody>\n",
        n, overdue, 3 * m->cfg.poll_s, t);
    for (size_t i = 0; i < n; i++) {
        const store_device *d = &list[i];
        int od = mgmtd_overdue(m, d, now);
        evbuffer_add_printf(b, "<tr class=\"device%s\" data-id=\"", od ? " overdue" : "");
        html_esc(b, d->id);
        evbuffer_add_printf(b, "\" data-last-contact=\"%lld\"><td>", d->last_contact);
        html_esc(b, d->id);
        evbuffer_add(b, "</td><td>", 9);
        html_esc(b, d->group);
        evbuffer_add(b, "</td><td>", 9);
        html_esc(b, store_device_state_name(d->state));
        evbuffer_add(b, "</td><td>", 9);
        html_esc(b, d->tunnel[0] ? d->tunnel : "-");
        evbuffer_add_printf(b, "</td><td>%lld</td><td>", d->profile_version);
        html_esc(b, d->software_version[0] ? d->software_version : "-");
        utc(t, sizeof(t), d->cert_not_after ? d->cert_not_after : d->not_after);
        evbuffer_add_printf(b, "</td><td>%s</td><td class=\"contact\">", t);
        utc(t, sizeof(t), d->last_contact);
        evbuffer_add_printf(b, "%s%s</td></tr>\n", t, od ? " (overdue)" : "");
    }
    evbuffer_add_printf(b, "</tbody></table></body></html>\n");
    free(list);
    struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
    evhttp_add_header(oh, "Content-Type", "text/html; charset=utf-8");
    evhttp_add_header(oh, "Cache-Control", "no-store");
    evhttp_add_header(oh, "Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'");
    evhttp_add_header(oh, "X-Content-Type-Options", "nosniff");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}
