/* SPDX-License-Identifier: Apache-2.0 */
/* HTTPS to the management server through libcurl (OpenSSL backend): the
 * server's certificate verified against the bootstrap's server_ca alone
 * (no system store), the device's certificate and key installed into the
 * SSL_CTX for mutual TLS.
 *
 * libcurl is loaded (dlopen) when a request is made, like libnftables in
 * lib/esp: a device without management neither needs it installed nor
 * links it, and a static image of the library needs no libcurl archive.
 * The three libssl calls come from what libcurl loaded, so the library
 * itself links libcrypto only (libssl's relocated tables are private memory
 * of every process, management or not). */
#include "mgmt.h"

#include "core/secmem.h"

#include <curl/curl.h>
#include <dlfcn.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CURL_LIBRARY "libcurl.so.4"

/* The calls we use, from the loaded library. */
typedef struct curl_api {
    void *lib;
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *c, CURLoption opt, ...);
    CURLcode (*easy_perform)(CURL *c);
    CURLcode (*easy_getinfo)(CURL *c, CURLINFO info, ...);
    void (*easy_cleanup)(CURL *c);
    const char *(*easy_strerror)(CURLcode code);
    struct curl_slist *(*slist_append)(struct curl_slist *l, const char *s);
    void (*slist_free_all)(struct curl_slist *l);
    curl_version_info_data *(*version_info)(CURLversion v);
    /* libssl's, found through libcurl (its dependency) */
    int (*ctx_use_certificate)(SSL_CTX *ctx, X509 *x);
    int (*ctx_use_key)(SSL_CTX *ctx, EVP_PKEY *k);
    int (*ctx_check_key)(const SSL_CTX *ctx);
} curl_api;

/* CURLOPT_SSL_CTX_DATA: the device's credential and the calls to install it. */
typedef struct tls_install {
    const mgmt_tls *t;
    const curl_api *a;
} tls_install;

static int api_open(curl_api *a, char *err, size_t err_len)
{
    memset(a, 0, sizeof(*a));
    /* Never unmapped: libcurl and OpenSSL keep state across requests. */
    a->lib = dlopen(CURL_LIBRARY, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!a->lib) {
        const char *why = dlerror();
        snprintf(err, err_len, "management needs %s (package libcurl4): %s", CURL_LIBRARY, why ? why : "?");
        return M2MVPN_E_NOTSUPP;
    }
    /* POSIX: a function pointer from dlsym's void * (through memcpy, which
     * ISO C allows). */
#define CURL_SYM(field, name)                                      \
    do {                                                           \
        void *p = dlsym(a->lib, name);                             \
        memcpy(&a->field, &p, sizeof(p));                          \
    } while (0)
    CURL_SYM(easy_init, "curl_easy_init");
    CURL_SYM(easy_setopt, "curl_easy_setopt");
    CURL_SYM(easy_perform, "curl_easy_perform");
    CURL_SYM(easy_getinfo, "curl_easy_getinfo");
    CURL_SYM(easy_cleanup, "curl_easy_cleanup");
    CURL_SYM(easy_strerror, "curl_easy_strerror");
    CURL_SYM(slist_append, "curl_slist_append");
    CURL_SYM(slist_free_all, "curl_slist_free_all");
    CURL_SYM(version_info, "curl_version_info");
    CURL_SYM(ctx_use_certificate, "SSL_CTX_use_certificate");
    CURL_SYM(ctx_use_key, "SSL_CTX_use_PrivateKey");
    CURL_SYM(ctx_check_key, "SSL_CTX_check_private_key");
#undef CURL_SYM
    curl_version_info_data *v = a->version_info ? a->version_info(CURLVERSION_NOW) : NULL;
    if (!a->easy_init || !a->easy_setopt || !a->easy_perform || !a->easy_getinfo || !a->easy_cleanup ||
        !a->easy_strerror || !a->slist_append || !a->slist_free_all || !v || !a->ctx_use_certificate ||
        !a->ctx_use_key || !a->ctx_check_key) {
        snprintf(err, err_len, "%s lacks the calls we use", CURL_LIBRARY);
    } else if (!v->ssl_version || strncmp(v->ssl_version, "OpenSSL", 7) != 0) {
        /* The key goes into an OpenSSL SSL_CTX: no other TLS backend. */
        snprintf(err, err_len, "%s is built with %s, management needs its OpenSSL build (libcurl4)", CURL_LIBRARY,
                 v->ssl_version ? v->ssl_version : "no TLS");
    } else {
        return 0;
    }
    dlclose(a->lib);
    a->lib = NULL;
    return M2MVPN_E_NOTSUPP;
}

typedef struct http_buf {
    uint8_t *data;
    size_t len;
    char *etag;
    size_t etag_cap;
    /* a download: a 200 answer goes to dl, any other to data (bounded) */
    mgmt_dl *dl;
    const curl_api *a;
    CURL *c;
    long status;              /* 0 until the first body bytes */
    bool refused;             /* dl refused the bytes (why) */
} http_buf;

#define ERROR_BODY_MAX 512    /* of a download's non-200 answer: for the message */

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    http_buf *b = arg;
    size_t add = size * n;
    if (b->dl) {
        if (!b->status)
            b->a->easy_getinfo(b->c, CURLINFO_RESPONSE_CODE, &b->status);
        if (b->status == 200) {
            if (mgmt_dl_write(b->dl, p, add) < 0) {
                b->refused = true;
                return 0; /* stops the transfer */
            }
            return add;
        }
        if (b->len + add > ERROR_BODY_MAX)
            add = ERROR_BODY_MAX - b->len;
        if (!add)
            return size * n; /* the rest of an error answer is dropped */
    } else if (b->len + add > MGMT_BUNDLE_MAX) {
        return 0;
    }
    /* Not realloc: the old block (a profile with a key PIN) is wiped
     * before it goes back to the heap. */
    uint8_t *nd = malloc(b->len + add + 1);
    if (!nd)
        return 0;
    if (b->len)
        memcpy(nd, b->data, b->len);
    memcpy(nd + b->len, p, add);
    secure_free(b->data, b->data ? b->len + 1 : 0);
    b->data = nd;
    b->len += add;
    b->data[b->len] = 0;
    return b->dl ? size * n : add;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    http_buf *b = arg;
    size_t len = size * n;
    if (b->etag && len > 5 && strncasecmp(p, "ETag:", 5) == 0) {
        const char *v = p + 5;
        size_t vl = len - 5;
        while (vl && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        if (vl < b->etag_cap) {
            memcpy(b->etag, v, vl);
            b->etag[vl] = 0;
        }
    }
    return len;
}

/* Non-zero aborts the transfer: the engine is being freed. */
static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt, (void)dn, (void)ut, (void)un;
    const mgmt_tls *t = arg;
    return t->cancel && atomic_load(t->cancel);
}

static CURLcode on_ssl_ctx(CURL *curl, void *sslctx, void *arg)
{
    (void)curl;
    const tls_install *in = arg;
    SSL_CTX *ctx = sslctx;
    if (in->a->ctx_use_certificate(ctx, in->t->cert) != 1 || in->a->ctx_use_key(ctx, in->t->key) != 1 ||
        in->a->ctx_check_key(ctx) != 1)
        return CURLE_SSL_CERTPROBLEM;
    return CURLE_OK;
}

static int request(const mgmt_tls *t, const char *path, const char *ctype, const uint8_t *body, size_t body_len,
                   const char *etag_in, long *ret_status, uint8_t **ret, size_t *ret_len, char *etag_out,
                   size_t etag_cap, mgmt_dl *dl, char *err, size_t err_len)
{
    char url[2300];
    snprintf(url, sizeof(url), "%s%s", t->url, path);
    if (t->unsent)
        *t->unsent = true; /* until curl has tried */
    curl_api a;
    int ar = api_open(&a, err, err_len);
    if (ar < 0)
        return ar;
    CURL *c = a.easy_init();
    if (!c) {
        dlclose(a.lib);
        return M2MVPN_E_NOMEM;
    }
    http_buf b = { .etag = etag_out, .etag_cap = etag_cap, .dl = dl, .a = &a, .c = c };
    tls_install install = { t, &a };
    if (etag_out && etag_cap)
        etag_out[0] = 0;
    struct curl_slist *hdr = NULL;
    char line[256];
    if (ctype) {
        snprintf(line, sizeof(line), "Content-Type: %s", ctype);
        hdr = a.slist_append(hdr, line);
        hdr = a.slist_append(hdr, "Expect:");
    }
    if (etag_in && *etag_in) {
        snprintf(line, sizeof(line), "If-None-Match: %s", etag_in);
        hdr = a.slist_append(hdr, line);
    }
    a.easy_setopt(c, CURLOPT_URL, url);
    a.easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    a.easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    a.easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 15L);
    if (dl) {
        /* A large file over a slow link: no total limit short of a day,
         * but a transfer stalled below 256 bytes/s for 2 minutes ends;
         * a Content-Length above the signed size is refused before any
         * byte (and a body without one, by dl at its first extra byte). */
        a.easy_setopt(c, CURLOPT_TIMEOUT, 86400L);
        a.easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 256L);
        a.easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 120L);
        a.easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)dl->size);
    } else {
        a.easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    }
    /* The pinned CA only: no system store, no CA path. */
    a.easy_setopt(c, CURLOPT_CAINFO, t->server_ca);
    a.easy_setopt(c, CURLOPT_CAPATH, NULL);
    a.easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    a.easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    a.easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (t->cert && t->key) {
        a.easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx);
        a.easy_setopt(c, CURLOPT_SSL_CTX_DATA, (void *)&install);
    }
    if (hdr)
        a.easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    if (t->cancel) {
        a.easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        a.easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        a.easy_setopt(c, CURLOPT_XFERINFODATA, (void *)t);
    }
    if (body) {
        a.easy_setopt(c, CURLOPT_POST, 1L);
        a.easy_setopt(c, CURLOPT_POSTFIELDS, (const char *)body);
        a.easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    a.easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    a.easy_setopt(c, CURLOPT_WRITEDATA, &b);
    a.easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    a.easy_setopt(c, CURLOPT_HEADERDATA, &b);
    CURLcode cr = a.easy_perform(c);
    int r = 0;
    if (t->unsent)
        *t->unsent = cr == CURLE_COULDNT_RESOLVE_HOST || cr == CURLE_COULDNT_RESOLVE_PROXY ||
                     cr == CURLE_COULDNT_CONNECT || cr == CURLE_SSL_CONNECT_ERROR ||
                     cr == CURLE_SSL_CERTPROBLEM || cr == CURLE_PEER_FAILED_VERIFICATION ||
                     cr == CURLE_SSL_CACERT_BADFILE;
    if (dl && (b.refused || cr == CURLE_FILESIZE_EXCEEDED)) {
        if (!b.refused)
            snprintf(dl->why, sizeof(dl->why), "the server announced more bytes than the signed size %lld",
                     (long long)dl->size);
        snprintf(err, err_len, "%s", dl->why);
        r = dl->io_error ? M2MVPN_E_SYSTEM : M2MVPN_E_BUNDLE;
    } else if (cr == CURLE_PEER_FAILED_VERIFICATION || cr == CURLE_SSL_CACERT_BADFILE) {
        snprintf(err, err_len, "management server %s: certificate not accepted with the bootstrap's server_ca "
                 "(%s): check that server_ca is the CA of this server", t->url, a.easy_strerror(cr));
        r = M2MVPN_E_SERVER_CERT;
    } else if (cr != CURLE_OK) {
        snprintf(err, err_len, "management server %s: %s", t->url, a.easy_strerror(cr));
        r = M2MVPN_E_NETWORK;
    } else {
        a.easy_getinfo(c, CURLINFO_RESPONSE_CODE, ret_status);
        *ret = b.data;
        *ret_len = b.len;
        b.data = NULL;
    }
    secure_free(b.data, b.data ? b.len + 1 : 0);
    a.slist_free_all(hdr);
    a.easy_cleanup(c);
    dlclose(a.lib);
    return r;
}

int mgmt_http(const mgmt_tls *t, const char *path, const char *ctype, const uint8_t *body, size_t body_len,
              const char *etag_in, long *ret_status, uint8_t **ret, size_t *ret_len, char *etag_out,
              size_t etag_cap, char *err, size_t err_len)
{
    return request(t, path, ctype, body, body_len, etag_in, ret_status, ret, ret_len, etag_out, etag_cap, NULL, err,
                   err_len);
}

int mgmt_http_download(const mgmt_tls *t, const char *path, mgmt_dl *d, long *ret_status, char *err,
                       size_t err_len)
{
    uint8_t *body = NULL;
    size_t len = 0;
    *ret_status = 0;
    int r = request(t, path, NULL, NULL, 0, NULL, ret_status, &body, &len, NULL, 0, d, err, err_len);
    if (r == 0 && *ret_status != 200) {
        snprintf(err, err_len, "the server answered the download with HTTP %ld: %.200s", *ret_status,
                 body ? (const char *)body : "");
        for (char *c = err; *c; c++)
            if ((unsigned char)*c < 0x20)
                *c = ' ';
    }
    free(body);
    return r;
}
