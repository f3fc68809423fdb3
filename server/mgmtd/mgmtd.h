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
    char *org;
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
} mgmtd;

/* TLS context (TLS 1.2+, client certificate requested, not required). */
SSL_CTX *mgmtd_tls_ctx(const mgmtd_config *c, X509 *device_ca, char *err, size_t errlen);
/* evhttp on the configured address; *port gets the bound port. */
int mgmtd_http_start(mgmtd *m, int *port, char *err, size_t errlen);

/* Every request goes through here (evhttp generic callback). */
void mgmtd_route(struct evhttp_request *req, void *arg);

/* The per-device profile from a group template: ${device_id} replaced in
   every string, auth set to {"method":"cert"}. malloc'd JSON text or NULL
   with err. */
char *mgmtd_profile_for(const char *template_json, const char *device_id, char *err, size_t errlen);

void mgmtd_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
