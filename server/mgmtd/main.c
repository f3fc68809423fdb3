/* SPDX-License-Identifier: Apache-2.0 */
/* m2mvpn-mgmtd --config FILE: the reference management server. */
#include <errno.h>
#include <event2/event.h>
#include <event2/http.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mgmtd.h"

void mgmtd_log(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "m2mvpn-mgmtd: %s\n", msg);
}

static int load_token_key(const char *path, unsigned char key[32], char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "config key \"token_key\": %s: %s", path, strerror(errno));
        return -1;
    }
    unsigned char buf[33];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    if (n != 32) {
        snprintf(err, errlen, "config key \"token_key\": %s must hold exactly 32 random bytes (it has %s)", path,
                 n > 32 ? "more" : "fewer");
        OPENSSL_cleanse(buf, sizeof(buf));
        return -1;
    }
    memcpy(key, buf, 32);
    OPENSSL_cleanse(buf, sizeof(buf));
    return 0;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    mgmtd_log("signal %d: stopping", (int)sig);
    event_base_loopbreak(arg);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: m2mvpn-mgmtd --config FILE\n"
               "  the management server of m2mvpn devices (HTTPS API, CA, CMP); see docs/mgmt.md\n");
}

int main(int argc, char **argv)
{
    const char *config = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            config = argv[++i];
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "m2mvpn-mgmtd: unknown argument \"%s\"\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!config) {
        usage(stderr);
        return 2;
    }
    static mgmtd m;
    char err[512];
    int rc = 1, port = 0;
    if (mgmtd_config_load(&m.cfg, config, err, sizeof(err)) < 0) {
        mgmtd_log("%s", err);
        return 1;
    }
    if (pki_signer_open(&m.ca, m.cfg.device_ca_cert, m.cfg.device_ca_key, err, sizeof(err)) < 0) {
        mgmtd_log("device CA (config keys \"device_ca_cert\", \"device_ca_key\"): %s", err);
        goto out;
    }
    if (pki_signer_open(&m.signer, m.cfg.bundle_signer_cert, m.cfg.bundle_signer_key, err, sizeof(err)) < 0) {
        mgmtd_log("bundle signer (config keys \"bundle_signer_cert\", \"bundle_signer_key\"): %s", err);
        goto out;
    }
    if (load_token_key(m.cfg.token_key, m.token_key, err, sizeof(err)) < 0) {
        mgmtd_log("%s", err);
        goto out;
    }
    m.device_trust = X509_STORE_new();
    if (!m.device_trust || X509_STORE_add_cert(m.device_trust, pki_signer_cert(m.ca)) != 1) {
        mgmtd_log("cannot build the device trust store");
        goto out;
    }
    if (!(m.tls = mgmtd_tls_ctx(&m.cfg, pki_signer_cert(m.ca), err, sizeof(err)))) {
        mgmtd_log("%s", err);
        goto out;
    }
    if (store_open(&m.st, m.cfg.database, err, sizeof(err)) < 0) {
        mgmtd_log("config key \"database\": %s", err);
        goto out;
    }
    signal(SIGPIPE, SIG_IGN);
    m.base = event_base_new();
    if (!m.base) {
        mgmtd_log("cannot create the event loop");
        goto out;
    }
    struct event *sigterm = evsignal_new(m.base, SIGTERM, on_signal, m.base);
    struct event *sigint = evsignal_new(m.base, SIGINT, on_signal, m.base);
    if (!sigterm || !sigint || event_add(sigterm, NULL) < 0 || event_add(sigint, NULL) < 0) {
        mgmtd_log("cannot watch signals");
        goto out;
    }
    if (mgmtd_http_start(&m, &port, err, sizeof(err)) < 0) {
        mgmtd_log("%s", err);
        event_free(sigterm);
        event_free(sigint);
        goto out;
    }
    int crl_port = 0;
    if (m.cfg.crl_listen_host && mgmtd_crl_http_start(&m, &crl_port, err, sizeof(err)) < 0) {
        mgmtd_log("%s", err);
        event_free(sigterm);
        event_free(sigint);
        goto out;
    }
    if (m.cfg.crl_listen_host)
        mgmtd_log("CRL on %s port %d (http, GET /crl)", m.cfg.crl_listen_host, crl_port);
    int sv = 0;
    store_schema_version(m.st, &sv, err, sizeof(err));
    mgmtd_log("listening on %s port %d (https), store %s schema %d", m.cfg.listen_host, port,
              store_engine(m.st), sv);
    event_base_dispatch(m.base);
    rc = 0;
    event_free(sigterm);
    event_free(sigint);
out:
    if (m.http)
        evhttp_free(m.http);
    if (m.crl_http)
        evhttp_free(m.crl_http);
    OPENSSL_free(m.crl_der);
    if (m.base)
        event_base_free(m.base);
    SSL_CTX_free(m.tls);
    X509_STORE_free(m.device_trust);
    store_close(m.st);
    pki_signer_free(m.signer);
    pki_signer_free(m.ca);
    OPENSSL_cleanse(m.token_key, sizeof(m.token_key));
    mgmtd_config_free(&m.cfg);
    return rc;
}
