/* SPDX-License-Identifier: Apache-2.0 */
/* m2mvpn-mgmtd internals: configuration, the HTTPS front, the routes. */
#ifndef M2MVPN_MGMTD_H
#define M2MVPN_MGMTD_H

#include <stddef.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "pki_srv.h"
#include "store.h"

#define MGMTD_MAX_BODY (64 * 1024)         /* any API body (CMP message, template, JSON) */
#define MGMTD_MAX_HEADERS (16 * 1024)
#define MGMTD_TIMEOUT_S 30                  /* read/write of one request */
#define MGMTD_BUNDLE_VALID_S (30LL * 86400) /* not_after of a profile bundle */
#define MGMTD_PENDING_RETRY_S 60            /* checkAfter in a "waiting" CMP answer */
#define MGMTD_ARTIFACT_MAX_DEFAULT (64LL * 1024 * 1024)
#define MGMTD_CHUNK_MAX (1024 * 1024)       /* one chunk of an artifact upload: the largest body read */
#define MGMTD_UPLOAD_STALE_S 3600           /* an unfinished upload untouched this long is removed */
#define MGMTD_MAX_CONNECTIONS_DEFAULT 512   /* per listener; beyond it accepting pauses */

struct evhttp_request;
struct evhttp;
struct event_base;

typedef struct mgmtd_config {
    char *listen_host;
    int listen_port;
    char *tls_cert, *tls_key, *device_ca_cert, *device_ca_key, *bundle_signer_cert, *bundle_signer_key;
    char *token_key, *database;
    unsigned char admin_token_sha256[32];
    int cert_days;
    int64_t cert_lifetime_s;      /* > 0: overrides cert_days (seconds, 60 and up) */
    char *org;
    /* day 1..N: revocation */
    char *crl_listen_host;        /* plain HTTP listener for GET /crl, NULL: none */
    int crl_listen_port;
    char *crl_url;                /* CRL distribution point in issued certificates, NULL: none */
    int crl_next_update_s;        /* nextUpdate = now + this (default 3600) */
    /* day 1..N: polling and software updates */
    int poll_s;                    /* suggested to polling devices; overdue after 3 x */
    long long artifact_max_bytes;  /* an uploaded software file */
    char *state_dir;               /* artifacts/ below it; default the config's folder */
    int max_connections;           /* open connections per listener (default 512) */
} mgmtd_config;

/* Reads and checks the JSON config; relative paths resolve against its folder.
   On error err names the key. */
int mgmtd_config_load(mgmtd_config *c, const char *path, char *err, size_t errlen);
void mgmtd_config_free(mgmtd_config *c);

typedef struct mgmtd {
    mgmtd_config cfg;
    store *st;
    pki_signer *ca, *signer;
    unsigned char token_key[32];
    X509_STORE *device_trust;     /* the device CA only */
    SSL_CTX *tls;
    struct event_base *base;
    struct evhttp *http;
    struct evconnlistener *listener; /* of http: paused at cfg.max_connections open connections */
    int nconn;
    /* day 1..N: the CRL, cached (rebuilt when the revoked set changes, and before nextUpdate) */
    struct evhttp *crl_http;
    unsigned char *crl_der;
    size_t crl_len;
    long long crl_built, crl_next;
    unsigned char crl_digest[32];  /* SHA-256 of the revoked set it lists */
} mgmtd;

/* TLS context (TLS 1.2+, client certificate requested, not required). */
SSL_CTX *mgmtd_tls_ctx(const mgmtd_config *c, X509 *device_ca, char *err, size_t errlen);
/* evhttp on the configured address; *port gets the bound port. */
int mgmtd_http_start(mgmtd *m, int *port, char *err, size_t errlen);

/* The plain HTTP listener (config crl_listen) that serves only GET /crl. */
int mgmtd_crl_http_start(mgmtd *m, int *port, char *err, size_t errlen);
/* The current CRL (DER, borrowed from m): rebuilt if the revoked certificates changed, if
   force, or when half of its validity has passed. 0 or -1 with err. */
int mgmtd_crl(mgmtd *m, int force, const unsigned char **der, size_t *len, char *err, size_t errlen);
void mgmtd_route_crl_only(struct evhttp_request *req, void *arg);

/* Every request goes through here (evhttp generic callback). */
void mgmtd_route(struct evhttp_request *req, void *arg);

/* The per-device profile from a group template: ${device_id} replaced in
   every string, auth set to {"method":"cert"}. malloc'd JSON text or NULL
   with err. */
char *mgmtd_profile_for(const char *template_json, const char *device_id, char *err, size_t errlen);

/* ---- shared by routes.c and dayn.c ---- */
#include <json-c/json.h>
void mgmtd_reply(struct evhttp_request *req, int code, const char *type, const void *body, size_t len);
void mgmtd_reply_json(struct evhttp_request *req, int code, json_object *o);   /* takes o */
void mgmtd_reply_error(struct evhttp_request *req, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void mgmtd_reply_store_error(struct evhttp_request *req, int rc, const char *err);
json_object *mgmtd_body_json(struct evhttp_request *req);  /* NULL after replying 400/413 */
char *mgmtd_serial_hex(X509 *cert);
int mgmtd_admin_ok(mgmtd *m, struct evhttp_request *req);  /* 0 after replying 401 */
X509 *mgmtd_device_cert(mgmtd *m, struct evhttp_request *req); /* NULL after replying 401/403 */
/* Every device route: the client certificate is any good (not revoked, not expired) certificate of
   an enrolled device (store_cert_ok); d filled. -1 after replying 403 (or 500). */
int mgmtd_device_auth(mgmtd *m, struct evhttp_request *req, store_device *d);

/* day 1..N routes (dayn.c) */
void mgmtd_device_poll(mgmtd *m, struct evhttp_request *req);
void mgmtd_device_deployment(mgmtd *m, struct evhttp_request *req, const char *rest);
void mgmtd_device_artifact(mgmtd *m, struct evhttp_request *req, const char *rest);
void mgmtd_admin_profile_publish(mgmtd *m, struct evhttp_request *req, const char *group);
/* chunked artifact upload: POST artifacts (start), PUT artifacts/ID?offset=N, POST artifacts/ID/finish */
void mgmtd_admin_artifact_start(mgmtd *m, struct evhttp_request *req);
void mgmtd_admin_artifact_chunk(mgmtd *m, struct evhttp_request *req, const char *id);
void mgmtd_admin_artifact_finish(mgmtd *m, struct evhttp_request *req, const char *id);
void mgmtd_admin_deployment_create(mgmtd *m, struct evhttp_request *req);
void mgmtd_admin_deployment_list(mgmtd *m, struct evhttp_request *req);
void mgmtd_fleet(mgmtd *m, struct evhttp_request *req);
/* overdue: an enrolled device without a poll for more than 3 x poll_s */
int mgmtd_overdue(const mgmtd *m, const store_device *d, long long now);

void mgmtd_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
