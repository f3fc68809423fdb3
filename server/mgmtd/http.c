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
#include <event2/listener.h>
#include <event2/util.h>
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

/* Open connections of the HTTPS listener: counted when evhttp asks for a connection's bufferevent,
   uncounted when its SSL is freed (the bufferevent closes and frees it). At cfg.max_connections the
   listener stops accepting; the kernel backlog holds new ones until a connection ends. */
static int conn_index = -1;
static mgmtd *https_m;   /* the server whose HTTPS listener is counted */

static void conn_gone(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    mgmtd *m = ptr;
    if (!m)
        return;
    if (m->nconn-- >= m->cfg.max_connections && m->listener && m->nconn < m->cfg.max_connections)
        evconnlistener_enable(m->listener);
}

static struct bufferevent *new_tls_bev(struct event_base *base, void *arg)
{
    mgmtd *m = arg;
    SSL *ssl = SSL_new(m->tls);
    if (!ssl)
        return NULL;
    if (conn_index >= 0 && SSL_set_ex_data(ssl, conn_index, m) == 1) {
        if (++m->nconn >= m->cfg.max_connections && m->listener) {
            evconnlistener_disable(m->listener);
            mgmtd_log("%d connections open (config \"max_connections\"): new connections wait", m->nconn);
        }
    }
    struct bufferevent *bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                             BEV_OPT_CLOSE_ON_FREE);
    if (bev)
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

static void resume_accepting(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    if (https_m && arg == https_m->listener && https_m->nconn >= https_m->cfg.max_connections)
        return;   /* stays paused until a connection ends */
    evconnlistener_enable(arg);
}

/* accept() failed for good (out of descriptors, a connection flood): without this, libevent
   retries at once, spinning and warning in a loop. Pause new connections for a second. */
static void accept_failed(struct evconnlistener *l, void *arg)
{
    (void)arg;
    int e = EVUTIL_SOCKET_ERROR();
    struct timeval pause = {1, 0};
    evconnlistener_disable(l);
    if (event_base_once(evconnlistener_get_base(l), -1, EV_TIMEOUT, resume_accepting, l, &pause) < 0)
        evconnlistener_enable(l);
    mgmtd_log("cannot accept a connection: %s; new connections wait 1 s", evutil_socket_error_to_string(e));
}

int mgmtd_http_start(mgmtd *m, int *port, char *err, size_t errlen)
{
    m->http = evhttp_new(m->base);
    if (!m->http) {
        snprintf(err, errlen, "cannot create the HTTP server");
        return -1;
    }
    if (conn_index < 0)
        conn_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, conn_gone);
    if (conn_index < 0) {
        snprintf(err, errlen, "TLS: cannot register the connection counter");
        return -1;
    }
    evhttp_set_bevcb(m->http, new_tls_bev, m);
    /* evhttp reads a whole body before any route or authentication check: the
       limit is the largest body a route takes, one chunk of an artifact upload
       (every other route refuses more than MGMTD_MAX_BODY itself) */
    evhttp_set_max_body_size(m->http, MGMTD_CHUNK_MAX > MGMTD_MAX_BODY ? MGMTD_CHUNK_MAX : MGMTD_MAX_BODY);
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
    m->listener = evhttp_bound_socket_get_listener(bs);
    https_m = m;
    evconnlistener_set_error_cb(m->listener, accept_failed);
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
    evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(bs), accept_failed);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    *port = m->cfg.crl_listen_port;
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl) == 0)
        *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    return 0;
}
