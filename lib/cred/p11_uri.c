/* SPDX-License-Identifier: Apache-2.0 */
/* PKCS#11 URIs, RFC 7512 (contract: p11_uri.h). */
#include "p11_uri.h"

#include <m2mvpn/m2mvpn.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/pki_internal.h"

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode v[0..n) into out[cap]; no NUL bytes. Returns the length or -1. */
static long pct_decode(const char *v, size_t n, uint8_t *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int b = (unsigned char)v[i];
        if (v[i] == '%') {
            if (i + 2 >= n)
                return -1;
            int h = hexval(v[i + 1]), l = hexval(v[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            b = h * 16 + l;
            i += 2;
        }
        if (o >= cap)
            return -1;
        out[o++] = (uint8_t)b;
    }
    return (long)o;
}

static int take_text(const char *name, const char *v, size_t n, char *out, size_t cap,
                     char *err, size_t err_len)
{
    long len = pct_decode(v, n, (uint8_t *)out, cap - 1);
    if (len < 0 || memchr(out, '\0', (size_t)len)) {
        pki_set_err(err, err_len, "pkcs11_uri: bad or too long value of '%s' (at most %zu bytes, "
                    "%%XX escapes)", name, cap - 1);
        return M2MVPN_E_INVAL;
    }
    out[len] = '\0';
    return 0;
}

int p11_uri_parse(const char *text, p11_uri *ret, char *err, size_t err_len)
{
    if (!text || !ret)
        return M2MVPN_E_INVAL;
    if (strncmp(text, "pkcs11:", 7) != 0) {
        pki_set_err(err, err_len, "pkcs11_uri: must start with \"pkcs11:\" (RFC 7512)");
        return M2MVPN_E_INVAL;
    }
    p11_uri u;
    memset(&u, 0, sizeof u);
    const char *p = text + 7;
    if (strchr(p, '?')) {
        pki_set_err(err, err_len, "pkcs11_uri: query attributes (pin-value, module-path, ...) are not "
                    "supported; give the PIN as auth.cert.pin and the module as auth.cert.pkcs11_module");
        return M2MVPN_E_INVAL;
    }
    while (*p) {
        size_t n = strcspn(p, ";");
        const char *eq = memchr(p, '=', n);
        if (!eq) {
            pki_set_err(err, err_len, "pkcs11_uri: attribute without '=' in \"%.*s\"", (int)n, p);
            return M2MVPN_E_INVAL;
        }
        size_t kn = (size_t)(eq - p);
        const char *v = eq + 1;
        size_t vn = n - kn - 1;
#define KEY(s) (kn == sizeof(s) - 1 && memcmp(p, s, kn) == 0)
        int rc = 0;
        if (KEY("token"))
            rc = take_text("token", v, vn, u.token, sizeof u.token, err, err_len);
        else if (KEY("manufacturer"))
            rc = take_text("manufacturer", v, vn, u.manufacturer, sizeof u.manufacturer, err, err_len);
        else if (KEY("serial"))
            rc = take_text("serial", v, vn, u.serial, sizeof u.serial, err, err_len);
        else if (KEY("model"))
            rc = take_text("model", v, vn, u.model, sizeof u.model, err, err_len);
        else if (KEY("object"))
            rc = take_text("object", v, vn, u.object, sizeof u.object, err, err_len);
        else if (KEY("id")) {
            long len = pct_decode(v, vn, u.id, sizeof u.id);
            if (len <= 0) {
                pki_set_err(err, err_len, "pkcs11_uri: bad id (1..%zu bytes as %%XX escapes)", sizeof u.id);
                return M2MVPN_E_INVAL;
            }
            u.id_len = (size_t)len;
            u.has_id = true;
        } else if (KEY("type")) {
            if (vn == 7 && !memcmp(v, "private", 7))
                u.type = P11_TYPE_PRIVATE;
            else if (vn == 6 && !memcmp(v, "public", 6))
                u.type = P11_TYPE_PUBLIC;
            else if (vn == 4 && !memcmp(v, "cert", 4))
                u.type = P11_TYPE_CERT;
            else {
                pki_set_err(err, err_len, "pkcs11_uri: type must be private, public or cert");
                return M2MVPN_E_INVAL;
            }
        } else if (KEY("slot-id")) {
            char num[24];
            if (vn == 0 || vn >= sizeof num || strspn(v, "0123456789") < vn) {
                pki_set_err(err, err_len, "pkcs11_uri: slot-id must be a decimal number");
                return M2MVPN_E_INVAL;
            }
            memcpy(num, v, vn);
            num[vn] = '\0';
            errno = 0;
            u.slot_id = strtoul(num, NULL, 10);
            if (errno) {
                pki_set_err(err, err_len, "pkcs11_uri: slot-id out of range");
                return M2MVPN_E_INVAL;
            }
            u.has_slot_id = true;
        } else {
            pki_set_err(err, err_len, "pkcs11_uri: unknown attribute '%.*s'", (int)(kn > 40 ? 40 : kn), p);
            return M2MVPN_E_INVAL;
        }
#undef KEY
        if (rc < 0)
            return rc;
        p += n;
        if (*p == ';')
            p++;
    }
    *ret = u;
    return 0;
}

/* Append attribute name=value (value bytes percent-encoded except the RFC
 * 3986 unreserved ones) with a ';' before all but the first. */
static bool put_attr(char *out, size_t cap, size_t *o, const char *name, const uint8_t *v, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    int w = snprintf(out + *o, cap - *o, "%s%s=", out[*o - 1] == ':' ? "" : ";", name);
    if (w < 0 || (size_t)w >= cap - *o)
        return false;
    *o += (size_t)w;
    for (size_t i = 0; i < n; i++) {
        bool plain = (v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z') || (v[i] >= '0' && v[i] <= '9') ||
                     v[i] == '-' || v[i] == '.' || v[i] == '_' || v[i] == '~';
        if (*o + (plain ? 1 : 3) >= cap)
            return false;
        if (plain) {
            out[(*o)++] = (char)v[i];
        } else {
            out[(*o)++] = '%';
            out[(*o)++] = hex[v[i] >> 4];
            out[(*o)++] = hex[v[i] & 15];
        }
    }
    out[*o] = '\0';
    return true;
}

int p11_uri_compose(const p11_uri *u, const char *object, const uint8_t *id, size_t id_len, char *out, size_t cap)
{
    if (!u || !out || cap < 8)
        return M2MVPN_E_INVAL;
    size_t o = (size_t)snprintf(out, cap, "pkcs11:");
    const struct { const char *name; const char *v; } text[] = {
        { "token", u->token }, { "manufacturer", u->manufacturer }, { "serial", u->serial }, { "model", u->model },
        { "object", object ? object : "" },
    };
    for (size_t i = 0; i < sizeof(text) / sizeof(text[0]); i++)
        if (text[i].v[0] && !put_attr(out, cap, &o, text[i].name, (const uint8_t *)text[i].v, strlen(text[i].v)))
            return M2MVPN_E_INVAL;
    if (id_len && !put_attr(out, cap, &o, "id", id, id_len))
        return M2MVPN_E_INVAL;
    if (u->has_slot_id) {
        char slot[32];
        snprintf(slot, sizeof(slot), "%lu", u->slot_id);
        if (!put_attr(out, cap, &o, "slot-id", (const uint8_t *)slot, strlen(slot)))
            return M2MVPN_E_INVAL;
    }
    return 0;
}
