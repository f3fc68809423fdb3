/* SPDX-License-Identifier: Apache-2.0 */
/* The HTTPS front: libevent's evhttp over bufferevent_openssl. TLS 1.2 and
 * up; a client certificate is requested but not required at the handshake
 * (the CMP and admin routes have none); the device routes verify it against
 * the device CA themselves (routes.c). */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "mgmtd.h"

/* Any certificate passes the handshake: it proves possession of its key
   (CertificateVerify is always checked); whose it is, the route decides. */
static int accept_any(int ok, X509_STORE_CTX *x)
{
    (void)ok, (void)x;
    return 1;
}

SSL_CTX *mgmtd_tls_ctx(const mgmtd_config *c, X509 *device_ca, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, errlen, "TLS: cannot create a context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, c->tls_cert) != 1) {
        snprintf(err, errlen, "config key \"tls_cert\": cannot load %s: %s", c->tls_cert,
                 ERR_reason_error_string(ERR_peek_last_error()));
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, c->tls_key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "config key \"tls_key\": cannot load %s or it does not match tls_cert: %s",
                 c->tls_key, ERR_reason_error_string(ERR_peek_last_error()));
        goto fail;
    }
    STACK_OF(X509_NAME) *names = sk_X509_NAME_new_null();
    if (names) {
        X509_NAME *n = X509_NAME_dup(X509_get_subject_name(device_ca));
        if (n)
            sk_X509_NAME_push(names, n);
        SSL_CTX_set_client_CA_list(ctx, names);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, accept_any);
    static const unsigned char sid[] = "m2mvpn-mgmtd";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
    ERR_clear_error();
    return ctx;
fail:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

static struct bufferevent *new_tls_bev(struct event_base *base, void *arg)
{
    SSL *ssl = SSL_new((SSL_CTX *)arg);
    if (!ssl)
        return NULL;
    struct bufferevent *bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                             BEV_OPT_CLOSE_ON_FREE);
    if (bev)
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

int mgmtd_http_start(mgmtd *m, int *port, char *err, size_t errlen)
{
    m->http = evhttp_new(m->base);
    if (!m->http) {
        snprintf(err, errlen, "cannot create the HTTP server");
        return -1;
    }
    evhttp_set_bevcb(m->http, new_tls_bev, m->tls);
    /* the largest body is a software artifact (config "artifact_max_bytes"); every
       other route refuses more than MGMTD_MAX_BODY itself */
    evhttp_set_max_body_size(m->http, (ev_ssize_t)(m->cfg.artifact_max_bytes > 4 * MGMTD_MAX_BODY
                                                       ? m->cfg.artifact_max_bytes : 4 * MGMTD_MAX_BODY));
    evhttp_set_max_headers_size(m->http, MGMTD_MAX_HEADERS);
    evhttp_set_timeout(m->http, MGMTD_TIMEOUT_S);
    evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT);
    evhttp_set_default_content_type(m->http, "application/json");
    evhttp_set_gencb(m->http, mgmtd_route, m);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(m->http, m->cfg.listen_host,
                                                                    (ev_uint16_t)m->cfg.listen_port);
    if (!bs) {
        snprintf(err, errlen, "config key \"listen\": cannot listen on %s port %d: %s", m->cfg.listen_host,
                 m->cfg.listen_port, strerror(errno));
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    *port = m->cfg.listen_port;
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl) == 0)
        *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    return 0;
}

/* The CRL listener: plain HTTP (a gateway's CRL fetcher speaks HTTP; the CRL is signed), GET /crl only. */
int mgmtd_crl_http_start(mgmtd *m, int *port, char *err, size_t errlen)
{
    m->crl_http = evhttp_new(m->base);
    if (!m->crl_http) {
        snprintf(err, errlen, "cannot create the CRL HTTP server");
        return -1;
    }
    evhttp_set_max_body_size(m->crl_http, 1024);
    evhttp_set_max_headers_size(m->crl_http, MGMTD_MAX_HEADERS);
    evhttp_set_timeout(m->crl_http, MGMTD_TIMEOUT_S);
    evhttp_set_allowed_methods(m->crl_http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_gencb(m->crl_http, mgmtd_route_crl_only, m);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(m->crl_http, m->cfg.crl_listen_host,
                                                                    (ev_uint16_t)m->cfg.crl_listen_port);
    if (!bs) {
        snprintf(err, errlen, "config key \"crl_listen\": cannot listen on %s port %d: %s", m->cfg.crl_listen_host,
                 m->cfg.crl_listen_port, strerror(errno));
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    *port = m->cfg.crl_listen_port;
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl) == 0)
        *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    return 0;
}
