/* SPDX-License-Identifier: Apache-2.0 */
/* HTTPS to the management server through libcurl (OpenSSL backend): the
 * server's certificate verified against the bootstrap's server_ca alone
 * (no system store), the device's certificate and key installed into the
 * SSL_CTX for mutual TLS. */
#include "mgmt.h"

#include <curl/curl.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct http_buf {
    uint8_t *data;
    size_t len;
    char *etag;
    size_t etag_cap;
} http_buf;

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    http_buf *b = arg;
    size_t add = size * n;
    if (b->len + add > MGMT_BUNDLE_MAX)
        return 0;
    uint8_t *nd = realloc(b->data, b->len + add + 1);
    if (!nd)
        return 0;
    memcpy(nd + b->len, p, add);
    b->data = nd;
    b->len += add;
    b->data[b->len] = 0;
    return add;
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
    const mgmt_tls *t = arg;
    SSL_CTX *ctx = sslctx;
    if (SSL_CTX_use_certificate(ctx, t->cert) != 1 || SSL_CTX_use_PrivateKey(ctx, t->key) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        return CURLE_SSL_CERTPROBLEM;
    return CURLE_OK;
}

int mgmt_http(const mgmt_tls *t, const char *path, const char *ctype, const uint8_t *body, size_t body_len,
              const char *etag_in, long *ret_status, uint8_t **ret, size_t *ret_len, char *etag_out,
              size_t etag_cap, char *err, size_t err_len)
{
    char url[2300];
    snprintf(url, sizeof(url), "%s%s", t->url, path);
    CURL *c = curl_easy_init();
    if (!c)
        return M2MVPN_E_NOMEM;
    http_buf b = { .etag = etag_out, .etag_cap = etag_cap };
    if (etag_out && etag_cap)
        etag_out[0] = 0;
    struct curl_slist *hdr = NULL;
    char line[256];
    if (ctype) {
        snprintf(line, sizeof(line), "Content-Type: %s", ctype);
        hdr = curl_slist_append(hdr, line);
        hdr = curl_slist_append(hdr, "Expect:");
    }
    if (etag_in && *etag_in) {
        snprintf(line, sizeof(line), "If-None-Match: %s", etag_in);
        hdr = curl_slist_append(hdr, line);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 15L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    /* The pinned CA only: no system store, no CA path. */
    curl_easy_setopt(c, CURLOPT_CAINFO, t->server_ca);
    curl_easy_setopt(c, CURLOPT_CAPATH, NULL);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (t->cert && t->key) {
        curl_easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx);
        curl_easy_setopt(c, CURLOPT_SSL_CTX_DATA, (void *)t);
    }
    if (hdr)
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    if (t->cancel) {
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, (void *)t);
    }
    if (body) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, (const char *)body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &b);
    CURLcode cr = curl_easy_perform(c);
    int r = 0;
    if (cr == CURLE_PEER_FAILED_VERIFICATION || cr == CURLE_SSL_CACERT_BADFILE) {
        snprintf(err, err_len, "management server %s: certificate not accepted with the bootstrap's server_ca "
                 "(%s): check that server_ca is the CA of this server", t->url, curl_easy_strerror(cr));
        r = M2MVPN_E_SERVER_CERT;
    } else if (cr != CURLE_OK) {
        snprintf(err, err_len, "management server %s: %s", t->url, curl_easy_strerror(cr));
        r = M2MVPN_E_NETWORK;
    } else {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, ret_status);
        *ret = b.data;
        *ret_len = b.len;
        b.data = NULL;
    }
    free(b.data);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
    return r;
}
