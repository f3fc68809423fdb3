/* SPDX-License-Identifier: Apache-2.0 */
/* The HTTPS API routes (mgmt contract): CMP, the device's profile, admin. */
#include <ctype.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mgmtd.h"

#define reply mgmtd_reply
#define reply_json mgmtd_reply_json
#define reply_error mgmtd_reply_error
#define reply_store_error mgmtd_reply_store_error
#define body_json mgmtd_body_json
#define serial_hex mgmtd_serial_hex
#define admin_ok mgmtd_admin_ok
#define device_cert mgmtd_device_cert

#define TOKEN_MAX_COUNT 1000
#define TOKEN_DEFAULT_EXPIRES_S (7 * 86400)
#define TOKEN_MAX_EXPIRES_S (366 * 86400)

static const char *reason(int code)
{
    switch (code) {
    case 200: return "OK";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    default: return "Internal Server Error";
    }
}

void mgmtd_reply(struct evhttp_request *req, int code, const char *type, const void *body, size_t len)
{
    struct evbuffer *b = evbuffer_new();
    if (b && body)
        evbuffer_add(b, body, len);
    if (type)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
    evhttp_send_reply(req, code, reason(code), b);
    if (b)
        evbuffer_free(b);
}

void mgmtd_reply_json(struct evhttp_request *req, int code, json_object *o)
{
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    reply(req, code, "application/json", s, strlen(s));
    json_object_put(o);
}

void mgmtd_reply_error(struct evhttp_request *req, int code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    const char *uri = evhttp_request_get_uri(req);
    mgmtd_log("%s -> %d %s", uri ? uri : "?", code, msg);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "error", json_object_new_string(msg));
    reply_json(req, code, o);
}

/* Maps a store result to HTTP: the store's own sentence, or a generic one for a database error. */
void mgmtd_reply_store_error(struct evhttp_request *req, int rc, const char *err)
{
    if (rc == STORE_NOTFOUND)
        reply_error(req, 404, "%s", err);
    else if (rc == STORE_REFUSED)
        reply_error(req, 409, "%s", err);
    else {
        mgmtd_log("database error: %s", err);
        reply_error(req, 500, "database error (see the server's log)");
    }
}

/* The body as a NUL-terminated string; NULL after replying 413 if too large. */
static char *body_of(struct evhttp_request *req, size_t *len)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    if (n > MGMTD_MAX_BODY) {
        reply_error(req, 413, "request body larger than %d bytes", MGMTD_MAX_BODY);
        return NULL;
    }
    char *b = malloc(n + 1);
    if (!b) {
        reply_error(req, 500, "out of memory");
        return NULL;
    }
    evbuffer_copyout(in, b, n);
    b[n] = 0;
    *len = n;
    return b;
}

json_object *mgmtd_body_json(struct evhttp_request *req)
{
    size_t n;
    char *b = body_of(req, &n);
    if (!b)
        return NULL;
    enum json_tokener_error e = json_tokener_success;
    json_object *o = NULL;
    if (strlen(b) != n)
        e = json_tokener_error_parse_unexpected;
    else
        o = json_tokener_parse_verbose(b, &e);
    free(b);
    if (!o || !json_object_is_type(o, json_type_object)) {
        reply_error(req, 400, "request body: expected a JSON object (%s)",
                    o ? "got another JSON type" : json_tokener_error_desc(e));
        json_object_put(o);
        return NULL;
    }
    return o;
}

/* ---------------------------------------------------------------- CMP */

typedef struct {
    mgmtd *m;
} cmp_ctx;

static int hook_token_secret(void *ctx, const char *token_id, char *secret, size_t cap, char *why, size_t wcap)
{
    mgmtd *m = ((cmp_ctx *)ctx)->m;
    char err[256];
    int rc = store_token_usable(m->st, token_id, (long long)time(NULL), err, sizeof(err));
    if (rc) {
        snprintf(why, wcap, "%s", rc < 0 ? "server error" : err);
        mgmtd_log("cmp: token %.16s refused: %s", token_id, err);
        return -1;
    }
    char s[44];
    if (cap < sizeof(s) || pki_token_secret(m->token_key, sizeof(m->token_key), token_id, s) < 0) {
        snprintf(why, wcap, "server error");
        return -1;
    }
    memcpy(secret, s, sizeof(s));
    OPENSSL_cleanse(s, sizeof(s));
    return 0;
}

static int hook_enrol(void *ctx, const char *token_id, const unsigned char *spki, size_t spki_len,
                      pki_enrol_verdict *verdict, char *device_id, size_t idcap, int *check_after_s,
                      char *why, size_t wcap)
{
    mgmtd *m = ((cmp_ctx *)ctx)->m;
    char id[STORE_ID_MAX], err[256];
    store_device_state st;
    int rc;
    if (!spki) {
        /* a pollReq: the device the token is bound to, its state now */
        store_token t;
        store_device d;
        rc = store_token_get(m->st, token_id, &t, err, sizeof(err));
        if (rc == 0 && !t.device[0]) {
            snprintf(err, sizeof(err), "no enrolment in progress with this token");
            rc = STORE_REFUSED;
        }
        if (rc == 0)
            rc = store_device_get(m->st, t.device, &d, err, sizeof(err));
        if (rc == 0) {
            snprintf(id, sizeof(id), "%s", d.id);
            st = d.state;
        }
    } else {
        unsigned char h[32];
        unsigned int hl = 0;
        if (EVP_Digest(spki, spki_len, h, &hl, EVP_sha256(), NULL) != 1 || idcap < 21) {
            snprintf(why, wcap, "server error");
            return -1;
        }
        snprintf(id, sizeof(id), "dev-%02x%02x%02x%02x%02x%02x%02x%02x", h[0], h[1], h[2], h[3], h[4], h[5],
                 h[6], h[7]);
        rc = store_enrol(m->st, token_id, id, (long long)time(NULL), &st, err, sizeof(err));
    }
    if (rc < 0) {
        mgmtd_log("cmp: database error: %s", err);
        snprintf(why, wcap, "server error");
        return -1;
    }
    if (rc) {
        mgmtd_log("cmp: token %.16s refused: %s", token_id, err);
        *verdict = PKI_ENROL_REJECT;
        snprintf(why, wcap, "%s", err);
        return 0;
    }
    mgmtd_log("cmp: token %.16s device %s is %s", token_id, id, store_device_state_name(st));
    switch (st) {
    case STORE_DEV_PENDING:
        *verdict = PKI_ENROL_PENDING;
        *check_after_s = MGMTD_PENDING_RETRY_S;
        break;
    case STORE_DEV_APPROVED:
    case STORE_DEV_ENROLLED:
        *verdict = PKI_ENROL_ISSUE;
        snprintf(device_id, idcap, "%s", id);
        break;
    case STORE_DEV_REJECTED:
        *verdict = PKI_ENROL_REJECT;
        snprintf(why, wcap, "enrolment rejected by the operator");
        break;
    default:
        *verdict = PKI_ENROL_REJECT;
        snprintf(why, wcap, "device revoked by the operator");
        break;
    }
    return 0;
}

char *mgmtd_serial_hex(X509 *cert)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    char *h = bn ? BN_bn2hex(bn) : NULL, *out = NULL;
    BN_free(bn);
    if (h) {
        out = strdup(h);
        for (char *p = out; out && *p; p++)
            *p = (char)tolower((unsigned char)*p);
        OPENSSL_free(h);
    }
    return out;
}

/* The serial (lower-case hex, caller frees) and the notAfter (Unix time) of a freshly issued
   certificate, as the store records them; NULL if either cannot be read. */
static char *cert_serial_not_after(X509 *cert, long long *not_after)
{
    struct tm tm;
    char *ser = serial_hex(cert);
    if (!ser || ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) != 1) {
        free(ser);
        return NULL;
    }
    *not_after = (long long)timegm(&tm);
    return ser;
}

static int hook_issued(void *ctx, const char *token_id, const char *device_id, X509 *cert)
{
    mgmtd *m = ((cmp_ctx *)ctx)->m;
    char err[256];
    long long not_after;
    char *ser = cert_serial_not_after(cert, &not_after);
    if (!ser)
        return -1;
    int rc = store_issued(m->st, token_id, device_id, ser, not_after, (long long)time(NULL), err, sizeof(err));
    if (rc)
        mgmtd_log("cmp: recording the certificate of %s: %s", device_id, err);
    else
        mgmtd_log("cmp: device %s enrolled, serial %s", device_id, ser);
    free(ser);
    return rc ? -1 : 0;
}

/* ---- day 1..N: KUR and RR (server/pki checked the signing certificate against the device CA) ---- */

static int hook_cert_ok(void *ctx, const char *device_id, const char *serial_hex, char *why, size_t wcap)
{
    mgmtd *m = ((cmp_ctx *)ctx)->m;
    char err[256];
    int rc = store_cert_ok(m->st, device_id, serial_hex, (long long)time(NULL), err, sizeof(err));
    if (rc) {
        /* only a revocation is answered certRevoked: a device retrying its
           decommissioning takes that for "revoked" and removes its key */
        char rerr[256];
        int revoked = rc > 0 ? store_cert_revoked(m->st, device_id, serial_hex, rerr, sizeof(rerr)) : -1;
        int failed = rc < 0 || revoked < 0;
        mgmtd_log("cmp: certificate %s of %s refused: %s", serial_hex, device_id, failed ? "database error" : err);
        snprintf(why, wcap, "%s", failed ? "server error" : err);
        return failed ? -2 : revoked ? -1 : -3;
    }
    return 0;
}

static int hook_renewed(void *ctx, const char *device_id, const char *old_serial, X509 *cert)
{
    mgmtd *m = ((cmp_ctx *)ctx)->m;
    char err[256];
    long long not_after;
    char *ser = cert_serial_not_after(cert, &not_after);
    if (!ser)
        return -1;
    int rc = store_renewed(m->st, device_id, old_serial, ser, not_after, (long long)time(NULL), err, sizeof(err));
    if (rc)
        mgmtd_log("cmp: recording the renewed certificate of %s: %s", device_id, err);
    else
        mgmtd_log("cmp: device %s renewed its certificate %s -> %s", device_id, old_serial, ser);
    free(ser);
    return rc ? -1 : 0;
}

static int hook_revoke(void *ctx, const char *device_id, const char *serial_hex, int crl_reason, char *why,
                       size_t wcap)
{
    mgmtd *m = ((cmp_ctx *)ctx)->m;
    char err[256];
    int rc = store_cert_revoke(m->st, device_id, serial_hex, crl_reason, (long long)time(NULL), err, sizeof(err));
    if (rc) {
        mgmtd_log("cmp: revocation of %s by %s refused: %s", serial_hex, device_id, rc < 0 ? "database error" : err);
        snprintf(why, wcap, "%s", rc < 0 ? "server error" : err);
        return -1;
    }
    mgmtd_log("cmp: device %s revoked its certificate %s", device_id, serial_hex);
    const unsigned char *der;
    size_t len;
    if (mgmtd_crl(m, 1, &der, &len, err, sizeof(err)) < 0)
        mgmtd_log("CRL: %s", err);
    return 0;
}

static void route_cmp(mgmtd *m, struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        reply_error(req, 405, "CMP messages are POSTed");
        return;
    }
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    if (!ct || strncasecmp(ct, "application/pkixcmp", 19)) {
        reply_error(req, 415, "expected Content-Type application/pkixcmp");
        return;
    }
    size_t n;
    char *b = body_of(req, &n);
    if (!b)
        return;
    static const pki_cmp_hooks hooks = {hook_token_secret, hook_enrol, hook_issued,
                                        hook_cert_ok, hook_renewed, hook_revoke};
    cmp_ctx c = {m};
    unsigned char *resp = NULL;
    size_t rlen = 0;
    pki_cmp_options opts = {.cert_days = m->cfg.cert_days, .cert_lifetime_s = m->cfg.cert_lifetime_s, .org = m->cfg.org, .crl_url = m->cfg.crl_url};
    int rc = pki_cmp_handle_opts(m->ca, &hooks, &c, &opts, (unsigned char *)b, n, &resp, &rlen);
    free(b);
    if (rc < 0 || !resp) {
        OPENSSL_free(resp);
        reply_error(req, 400, "request body: not a CMP PKIMessage (DER) this server can answer");
        return;
    }
    reply(req, 200, "application/pkixcmp", resp, rlen);
    OPENSSL_free(resp);
}

/* ------------------------------------------------------ device profile */

/* The client certificate, verified against the device CA; NULL after replying. */
X509 *mgmtd_device_cert(mgmtd *m, struct evhttp_request *req)
{
    struct evhttp_connection *con = evhttp_request_get_connection(req);
    struct bufferevent *bev = con ? evhttp_connection_get_bufferevent(con) : NULL;
    SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
    X509 *cert = ssl ? SSL_get1_peer_certificate(ssl) : NULL;
    if (!cert) {
        reply_error(req, 401, "a device certificate is required (mutual TLS)");
        return NULL;
    }
    X509_STORE_CTX *x = X509_STORE_CTX_new();
    int ok = x && X509_STORE_CTX_init(x, m->device_trust, cert, SSL_get_peer_cert_chain(ssl)) == 1 &&
             X509_STORE_CTX_set_purpose(x, X509_PURPOSE_SSL_CLIENT) == 1 && X509_verify_cert(x) == 1;
    if (!ok) {
        reply_error(req, 403, "the client certificate is not a device certificate of this server (%s)",
                    x ? X509_verify_cert_error_string(X509_STORE_CTX_get_error(x)) : "out of memory");
        X509_STORE_CTX_free(x);
        X509_free(cert);
        return NULL;
    }
    X509_STORE_CTX_free(x);
    return cert;
}

/* The device a request comes from: its client certificate chains to the device CA, names an
   enrolled device and is any certificate of it not revoked nor expired (after a renewal, the old
   one too, until it expires). The one check of every device route (profile, day N). */
int mgmtd_device_auth(mgmtd *m, struct evhttp_request *req, store_device *d)
{
    X509 *cert = device_cert(m, req);
    if (!cert)
        return -1;
    char cn[STORE_ID_MAX] = "", err[512];
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
    char *ser = serial_hex(cert);
    X509_free(cert);
    int rc = store_device_get(m->st, cn, d, err, sizeof(err));
    if (rc) {
        free(ser);
        if (rc == STORE_NOTFOUND)
            reply_error(req, 403, "unknown device %s", cn);
        else
            reply_store_error(req, rc, err);
        return -1;
    }
    rc = d->state != STORE_DEV_ENROLLED || !ser ? STORE_REFUSED
                                                : store_cert_ok(m->st, d->id, ser, (long long)time(NULL), err, sizeof(err));
    free(ser);
    if (rc < 0) {
        reply_store_error(req, rc, err);
        return -1;
    }
    if (rc) {
        reply_error(req, 403, "device %s: certificate %s (device %s)", cn,
                    d->state == STORE_DEV_REVOKED ? "revoked" : "no longer valid", store_device_state_name(d->state));
        return -1;
    }
    return 0;
}

static void route_profile(mgmtd *m, struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        reply_error(req, 405, "use GET");
        return;
    }
    store_device d;
    if (mgmtd_device_auth(m, req, &d) < 0)
        return;
    char err[512];
    int rc;
    char *tpl = NULL;
    long long version = 0, now = (long long)time(NULL);
    rc = store_device_profile(m->st, d.group, d.id, &tpl, &version, err, sizeof(err));
    if (rc) {
        store_device_contact(m->st, d.id, now, 0, err, sizeof(err));
        reply_store_error(req, rc, err);
        return;
    }
    char etag[40];
    snprintf(etag, sizeof(etag), "\"v%lld\"", version);
    const char *inm = evhttp_find_header(evhttp_request_get_input_headers(req), "If-None-Match");
    struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
    if (inm && !strcmp(inm, etag)) {
        free(tpl);
        store_device_contact(m->st, d.id, now, 0, err, sizeof(err));
        evhttp_add_header(oh, "ETag", etag);
        reply(req, 304, NULL, NULL, 0);
        return;
    }
    char *profile = mgmtd_profile_for(tpl, d.id, err, sizeof(err));
    free(tpl);
    if (!profile) {
        reply_error(req, 500, "group %s: %s", d.group, err);
        return;
    }
    char *manifest = pki_bundle_manifest("profile", d.id, version, now + MGMTD_BUNDLE_VALID_S,
                                         (unsigned char *)profile, strlen(profile));
    free(profile);
    unsigned char *der = NULL;
    size_t dlen = 0;
    if (!manifest || pki_bundle_sign(m->signer, manifest, strlen(manifest), &der, &dlen, err, sizeof(err)) < 0) {
        free(manifest);
        reply_error(req, 500, "cannot sign the profile bundle: %s", manifest ? err : "out of memory");
        return;
    }
    free(manifest);
    store_device_contact(m->st, d.id, now, version, err, sizeof(err));
    evhttp_add_header(oh, "ETag", etag);
    reply(req, 200, "application/pkcs7-mime", der, dlen);
    OPENSSL_free(der);
    mgmtd_log("profile v%lld of group %s sent to %s", version, d.group, d.id);
}

/* ---------------------------------------------------------------- admin */

int mgmtd_admin_ok(mgmtd *m, struct evhttp_request *req)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    unsigned char dg[32];
    unsigned int dl = 0;
    if (!h || strncmp(h, "Bearer ", 7) || !h[7]) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
        reply_error(req, 401, "admin routes need \"Authorization: Bearer <admin token>\"");
        return 0;
    }
    if (EVP_Digest(h + 7, strlen(h + 7), dg, &dl, EVP_sha256(), NULL) != 1 ||
        CRYPTO_memcmp(dg, m->cfg.admin_token_sha256, 32) != 0) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
        reply_error(req, 401, "bad admin token");
        return 0;
    }
    return 1;
}

static void admin_tokens(mgmtd *m, struct evhttp_request *req)
{
    json_object *o = body_json(req);
    if (!o)
        return;
    const char *group = NULL;
    int64_t count = 1, expires_s = TOKEN_DEFAULT_EXPIRES_S;
    int auto_approve = 0;
    json_object_object_foreach(o, k, v) {
        if (!strcmp(k, "group") && json_object_is_type(v, json_type_string))
            group = json_object_get_string(v);
        else if (!strcmp(k, "count") && json_object_is_type(v, json_type_int))
            count = json_object_get_int64(v);
        else if (!strcmp(k, "expires_s") && json_object_is_type(v, json_type_int))
            expires_s = json_object_get_int64(v);
        else if (!strcmp(k, "auto_approve") && json_object_is_type(v, json_type_boolean))
            auto_approve = json_object_get_boolean(v);
        else {
            reply_error(req, 400, "request body: unknown key or wrong type: \"%s\"", k);
            json_object_put(o);
            return;
        }
    }
    if (!group || count < 1 || count > TOKEN_MAX_COUNT || expires_s < 1 || expires_s > TOKEN_MAX_EXPIRES_S) {
        reply_error(req, 400, "request body: \"group\" is required, \"count\" 1 to %d, \"expires_s\" 1 to %d",
                    TOKEN_MAX_COUNT, TOKEN_MAX_EXPIRES_S);
        json_object_put(o);
        return;
    }
    char (*ids)[17] = calloc((size_t)count, sizeof(*ids));
    const char **idp = calloc((size_t)count, sizeof(*idp));
    long long expires = (long long)time(NULL) + expires_s;
    char err[512];
    int rc = ids && idp ? 0 : -1;
    for (int64_t i = 0; rc == 0 && i < count; i++) {
        rc = pki_token_id_new(ids[i]);
        idp[i] = ids[i];
    }
    if (rc == 0)
        rc = store_token_create(m->st, idp, (size_t)count, group, expires, auto_approve, err, sizeof(err));
    else
        snprintf(err, sizeof(err), "no randomness for token ids");
    if (rc) {
        reply_store_error(req, rc, err);
    } else {
        json_object *out = json_object_new_object(), *arr = json_object_new_array();
        for (int64_t i = 0; i < count; i++) {
            char secret[44], tok[64];
            pki_token_secret(m->token_key, sizeof(m->token_key), ids[i], secret);
            snprintf(tok, sizeof(tok), "%s.%s", ids[i], secret);
            json_object *t = json_object_new_object();
            json_object_object_add(t, "id", json_object_new_string(ids[i]));
            json_object_object_add(t, "token", json_object_new_string(tok));
            json_object_object_add(t, "expires", json_object_new_int64(expires));
            json_object_array_add(arr, t);
            OPENSSL_cleanse(secret, sizeof(secret));
            OPENSSL_cleanse(tok, sizeof(tok));
        }
        json_object_object_add(out, "tokens", arr);
        mgmtd_log("admin: %lld token(s) for group %s, expiring %lld%s", (long long)count, group, expires,
                  auto_approve ? ", auto-approve" : "");
        reply_json(req, 200, out);
    }
    free(ids);
    free(idp);
    json_object_put(o);
}

static void admin_devices(mgmtd *m, struct evhttp_request *req)
{
    store_device *list = NULL;
    size_t n = 0;
    char err[512];
    int rc = store_device_list(m->st, &list, &n, err, sizeof(err));
    if (rc) {
        reply_store_error(req, rc, err);
        return;
    }
    json_object *out = json_object_new_object(), *arr = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        json_object *d = json_object_new_object();
        json_object_object_add(d, "id", json_object_new_string(list[i].id));
        json_object_object_add(d, "group", json_object_new_string(list[i].group));
        json_object_object_add(d, "state", json_object_new_string(store_device_state_name(list[i].state)));
        json_object_object_add(d, "cn", json_object_new_string(list[i].cn));
        json_object_object_add(d, "serial", list[i].serial[0] ? json_object_new_string(list[i].serial) : NULL);
        json_object_object_add(d, "not_after", json_object_new_int64(list[i].not_after));
        json_object_object_add(d, "last_contact", json_object_new_int64(list[i].last_contact));
        json_object_object_add(d, "profile_version", json_object_new_int64(list[i].profile_version));
        json_object_object_add(d, "tunnel", list[i].tunnel[0] ? json_object_new_string(list[i].tunnel) : NULL);
        json_object_object_add(d, "software_version",
                               list[i].software_version[0] ? json_object_new_string(list[i].software_version) : NULL);
        json_object_object_add(d, "cert_not_after", json_object_new_int64(list[i].cert_not_after));
        json_object_object_add(d, "overdue", json_object_new_boolean(mgmtd_overdue(m, &list[i], (long long)time(NULL))));
        json_object_array_add(arr, d);
    }
    free(list);
    json_object_object_add(out, "devices", arr);
    reply_json(req, 200, out);
}

static void admin_device_act(mgmtd *m, struct evhttp_request *req, const char *id, const char *verb)
{
    store_action act;
    if (!strcmp(verb, "approve"))
        act = STORE_ACT_APPROVE;
    else if (!strcmp(verb, "reject"))
        act = STORE_ACT_REJECT;
    else if (!strcmp(verb, "revoke"))
        act = STORE_ACT_REVOKE;
    else {
        reply_error(req, 404, "no route: devices/ID/%s (approve, reject or revoke)", verb);
        return;
    }
    char err[512];
    int rc = store_device_act(m->st, id, act, err, sizeof(err));
    store_device d;
    if (rc == 0)
        rc = store_device_get(m->st, id, &d, err, sizeof(err));
    if (rc) {
        reply_store_error(req, rc, err);
        return;
    }
    mgmtd_log("admin: device %s %s -> %s", id, verb, store_device_state_name(d.state));
    if (act == STORE_ACT_REVOKE) {
        const unsigned char *der;
        size_t len;
        if (mgmtd_crl(m, 1, &der, &len, err, sizeof(err)) < 0)
            mgmtd_log("CRL: %s", err);
    }
    json_object *out = json_object_new_object();
    json_object_object_add(out, "id", json_object_new_string(id));
    json_object_object_add(out, "state", json_object_new_string(store_device_state_name(d.state)));
    reply_json(req, 200, out);
}

static void admin_group_put(mgmtd *m, struct evhttp_request *req, const char *g)
{
    json_object *o = body_json(req);
    if (!o)
        return;
    json_object *v;
    if (!json_object_object_get_ex(o, "version", &v) || json_object_get_int(v) != 1) {
        reply_error(req, 400, "template: a profile object with \"version\": 1 expected");
        json_object_put(o);
        return;
    }
    char err[512];
    int rc = store_group_put(m->st, g, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                                         JSON_C_TO_STRING_NOSLASHESCAPE),
                             err, sizeof(err));
    json_object_put(o);
    if (rc == STORE_REFUSED) {
        reply_error(req, 400, "%s", err);
        return;
    }
    if (rc) {
        reply_store_error(req, rc, err);
        return;
    }
    mgmtd_log("admin: group %s template stored", g);
    json_object *out = json_object_new_object();
    json_object_object_add(out, "group", json_object_new_string(g));
    reply_json(req, 200, out);
}

static void admin_groups(mgmtd *m, struct evhttp_request *req)
{
    store_group *list = NULL;
    size_t n = 0;
    char err[512];
    int rc = store_group_list(m->st, &list, &n, err, sizeof(err));
    if (rc) {
        reply_store_error(req, rc, err);
        return;
    }
    json_object *out = json_object_new_object(), *arr = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        json_object *g = json_object_new_object();
        json_object_object_add(g, "name", json_object_new_string(list[i].name));
        json_object_object_add(g, "version", json_object_new_int64(list[i].version));
        json_object_array_add(arr, g);
    }
    free(list);
    json_object_object_add(out, "groups", arr);
    reply_json(req, 200, out);
}

static void admin_ca(mgmtd *m, struct evhttp_request *req)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *p = NULL;
    long n = 0;
    if (b && PEM_write_bio_X509(b, pki_signer_cert(m->ca)) == 1)
        n = BIO_get_mem_data(b, &p);
    if (n > 0)
        reply(req, 200, "text/plain", p, (size_t)n);
    else
        reply_error(req, 500, "cannot write the CA certificate");
    BIO_free(b);
}

/* Splits "a/b/c" (after the admin prefix) into at most 4 segments. */
static int split(char *path, char *seg[4])
{
    int n = 0;
    for (char *s = strtok(path, "/"); s; s = strtok(NULL, "/")) {
        if (n == 4)
            return -1;
        seg[n++] = s;
    }
    return n;
}

static void route_admin(mgmtd *m, struct evhttp_request *req, const char *rest)
{
    if (!admin_ok(m, req))
        return;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    char path[256], *seg[4] = {0};
    snprintf(path, sizeof(path), "%s", rest);
    int n = split(path, seg);
    if (n == 1 && !strcmp(seg[0], "tokens") && cmd == EVHTTP_REQ_POST)
        admin_tokens(m, req);
    else if (n == 1 && !strcmp(seg[0], "devices") && cmd == EVHTTP_REQ_GET)
        admin_devices(m, req);
    else if (n == 3 && !strcmp(seg[0], "devices") && cmd == EVHTTP_REQ_POST)
        admin_device_act(m, req, seg[1], seg[2]);
    else if (n == 1 && !strcmp(seg[0], "groups") && cmd == EVHTTP_REQ_GET)
        admin_groups(m, req);
    else if (n == 2 && !strcmp(seg[0], "groups") && cmd == EVHTTP_REQ_PUT)
        admin_group_put(m, req, seg[1]);
    else if (n == 3 && !strcmp(seg[0], "groups") && !strcmp(seg[2], "publish") && cmd == EVHTTP_REQ_POST)
        mgmtd_admin_profile_publish(m, req, seg[1]);
    else if (n == 1 && !strcmp(seg[0], "artifacts") && cmd == EVHTTP_REQ_POST)
        mgmtd_admin_artifact_start(m, req);
    else if (n == 2 && !strcmp(seg[0], "artifacts") && cmd == EVHTTP_REQ_PUT)
        mgmtd_admin_artifact_chunk(m, req, seg[1]);
    else if (n == 3 && !strcmp(seg[0], "artifacts") && !strcmp(seg[2], "finish") && cmd == EVHTTP_REQ_POST)
        mgmtd_admin_artifact_finish(m, req, seg[1]);
    else if (n == 1 && !strcmp(seg[0], "deployments") && cmd == EVHTTP_REQ_POST)
        mgmtd_admin_deployment_create(m, req);
    else if (n == 1 && !strcmp(seg[0], "deployments") && cmd == EVHTTP_REQ_GET)
        mgmtd_admin_deployment_list(m, req);
    else if (n == 1 && !strcmp(seg[0], "ca") && cmd == EVHTTP_REQ_GET)
        admin_ca(m, req);
    else
        reply_error(req, 404, "no such admin route: %s", rest);
}

/* ------------------------------------------------------------------ CRL */

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int mgmtd_crl(mgmtd *m, int force, const unsigned char **der, size_t *len, char *err, size_t errlen)
{
    long long now = (long long)time(NULL);
    store_revoked *list = NULL;
    size_t n = 0;
    int rc = store_revoked_list(m->st, now, &list, &n, err, errlen);
    if (rc) {
        if (rc > 0)
            snprintf(err, errlen, "cannot list the revoked certificates");
        return -1;
    }
    /* what the CRL lists: a change (here or by another instance on the same database) rebuilds it */
    unsigned char dg[32];
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
    for (size_t i = 0; ok && i < n; i++) {
        char line[160];
        int l = snprintf(line, sizeof(line), "%s %lld %d\n", list[i].serial, list[i].revoked_at, list[i].reason);
        ok = EVP_DigestUpdate(md, line, (size_t)l) == 1;
    }
    ok = ok && EVP_DigestFinal_ex(md, dg, NULL) == 1;
    EVP_MD_CTX_free(md);
    if (!ok) {
        free(list);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (!force && m->crl_der && !memcmp(dg, m->crl_digest, sizeof(dg))
        && now < m->crl_built + (m->crl_next - m->crl_built) / 2) {
        free(list);
        *der = m->crl_der;
        *len = m->crl_len;
        return 0;
    }
    pki_crl_entry *e = calloc(n ? n : 1, sizeof(*e));
    unsigned char (*ser)[20] = calloc(n ? n : 1, sizeof(*ser));
    rc = e && ser ? 0 : -1;
    if (rc)
        snprintf(err, errlen, "out of memory");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const char *h = list[i].serial;
        size_t hl = strlen(h), bl = (hl + 1) / 2, k = 0;
        if (hl == 0 || bl > sizeof(ser[i])) {
            snprintf(err, errlen, "revoked certificate of %s: bad serial \"%s\" in the store", list[i].device, h);
            rc = -1;
            break;
        }
        for (size_t j = 0; j < bl; j++) {
            int hi = (hl % 2 && j == 0) ? 0 : hexval(h[k++]);
            int lo = hexval(h[k++]);
            if (hi < 0 || lo < 0) {
                snprintf(err, errlen, "revoked certificate of %s: bad serial \"%s\" in the store", list[i].device, h);
                rc = -1;
                break;
            }
            ser[i][j] = (unsigned char)(hi << 4 | lo);
        }
        e[i] = (pki_crl_entry){ser[i], bl, (time_t)list[i].revoked_at, list[i].reason};
    }
    unsigned char *out = NULL;
    size_t olen = 0;
    long long next = now + m->cfg.crl_next_update_s;
    if (rc == 0)
        rc = pki_crl_build(m->ca, e, n, (time_t)next, &out, &olen, err, errlen);
    free(e);
    free(ser);
    free(list);
    if (rc)
        return -1;
    OPENSSL_free(m->crl_der);
    m->crl_der = out;
    m->crl_len = olen;
    m->crl_built = now;
    m->crl_next = next;
    memcpy(m->crl_digest, dg, sizeof(dg));
    mgmtd_log("CRL rebuilt: %zu revoked certificate(s), next update in %d s", n, m->cfg.crl_next_update_s);
    *der = out;
    *len = olen;
    return 0;
}

static void route_crl(mgmtd *m, struct evhttp_request *req)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        reply_error(req, 405, "use GET");
        return;
    }
    const unsigned char *der;
    size_t len;
    char err[512];
    if (mgmtd_crl(m, 0, &der, &len, err, sizeof(err)) < 0) {
        mgmtd_log("CRL: %s", err);
        reply_error(req, 500, "cannot build the CRL (see the server's log)");
        return;
    }
    reply(req, 200, "application/pkix-crl", der, len);
}

void mgmtd_route_crl_only(struct evhttp_request *req, void *arg)
{
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *path = u ? evhttp_uri_get_path(u) : NULL;
    if (path && !strcmp(path, "/crl"))
        route_crl(arg, req);
    else
        reply_error(req, 404, "this listener serves only /crl");
}

void mgmtd_route(struct evhttp_request *req, void *arg)
{
    mgmtd *m = arg;
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *path = u ? evhttp_uri_get_path(u) : NULL;
    if (!path) {
        reply_error(req, 400, "bad request URI");
        return;
    }
    if (!strcmp(path, "/healthz")) {
        reply(req, 200, "application/json", "{\"ok\": true}", 12);
    } else if (!strcmp(path, "/.well-known/cmp") || !strncmp(path, "/.well-known/cmp/", 17)) {
        route_cmp(m, req);
    } else if (!strcmp(path, "/crl")) {
        route_crl(m, req);
    } else if (!strcmp(path, "/api/v1/device/profile")) {
        route_profile(m, req);
    } else if (!strcmp(path, "/api/v1/device/poll")) {
        mgmtd_device_poll(m, req);
    } else if (!strncmp(path, "/api/v1/device/deployments/", 27)) {
        mgmtd_device_deployment(m, req, path + 27);
    } else if (!strncmp(path, "/api/v1/device/artifacts/", 25)) {
        mgmtd_device_artifact(m, req, path + 25);
    } else if (!strcmp(path, "/fleet")) {
        mgmtd_fleet(m, req);
    } else if (!strncmp(path, "/api/v1/admin/", 14)) {
        route_admin(m, req, path + 14);
    } else {
        reply_error(req, 404, "no such route: %s", path);
    }
}
