/* SPDX-License-Identifier: Apache-2.0 */
/* IKE identities: from profile strings and ID payloads, compared with each
 * other and matched against certificates (contract: pki.h). */
#include "pki.h"
#include "pki_internal.h"

#include <m2mvpn/m2mvpn.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

/* Attribute names OpenSSL does not know by these spellings (strongSwan's). */
static int dn_attr_nid(const char *key)
{
    if (!strcasecmp(key, "E") || !strcasecmp(key, "Email") || !strcasecmp(key, "emailAddress"))
        return NID_pkcs9_emailAddress;
    if (!strcasecmp(key, "S"))
        return NID_stateOrProvinceName;
    int nid = OBJ_sn2nid(key);
    if (nid == NID_undef) {
        /* Short names are case-insensitive for people: "cn", "ou", "dc". */
        char upper[32];
        size_t n = strlen(key);
        if (n < sizeof upper) {
            for (size_t i = 0; i <= n; i++)
                upper[i] = (char)toupper((unsigned char)key[i]);
            nid = OBJ_sn2nid(upper);
        }
    }
    if (nid == NID_undef)
        nid = OBJ_ln2nid(key);
    if (nid == NID_undef)
        nid = OBJ_txt2nid(key); /* dotted OID */
    return nid;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    return s;
}

/*
 * "C=CH, O=m2m, CN=gw.m2m.test" -> X509_NAME, one RDN per ',' in the order
 * written (which is the encoding order, as strongSwan writes DNs). A '\'
 * escapes the next character (e.g. "O=a\, b").
 */
static X509_NAME *dn_parse(const char *text, char *err, size_t err_len)
{
    size_t tlen = strlen(text);
    char part[PKI_ID_MAX];
    X509_NAME *name = X509_NAME_new();
    if (!name)
        return NULL;
    size_t i = 0;
    while (i <= tlen) {
        size_t k = 0;
        /* Copy one component, unescaping, until an unescaped ',' or the end. */
        for (; i < tlen && text[i] != ','; i++) {
            if (text[i] == '\\' && i + 1 < tlen)
                i++;
            if (k + 1 >= sizeof part)
                goto fail_len;
            part[k++] = text[i];
        }
        part[k] = '\0';
        i++; /* skip ',' (or step past the end) */
        char *comp = trim(part);
        char *eq = strchr(comp, '=');
        if (!eq) {
            pki_set_err(err, err_len, "DN component '%s' has no '='", comp);
            goto fail;
        }
        *eq = '\0';
        char *key = trim(comp);
        char *value = trim(eq + 1);
        int nid = dn_attr_nid(key);
        if (nid == NID_undef) {
            pki_set_err(err, err_len, "unknown DN attribute '%s'", key);
            goto fail;
        }
        if (!*value) {
            pki_set_err(err, err_len, "DN attribute '%s' has an empty value", key);
            goto fail;
        }
        if (!X509_NAME_add_entry_by_NID(name, nid, MBSTRING_UTF8,
                                        (const unsigned char *)value, -1, -1, 0)) {
            char why[96];
            pki_set_err(err, err_len, "DN attribute '%s': %s", key,
                        pki_openssl_reason(why, sizeof why));
            goto fail;
        }
    }
    return name;
fail_len:
    pki_set_err(err, err_len, "DN component too long");
fail:
    X509_NAME_free(name);
    ERR_clear_error();
    return NULL;
}

static int id_set(pki_id *ret, pki_id_type type, const void *data, size_t len)
{
    if (len == 0 || len > PKI_ID_MAX)
        return M2MVPN_E_INVAL;
    memset(ret, 0, sizeof *ret);
    ret->type = type;
    ret->len = len;
    memcpy(ret->data, data, len);
    return 0;
}

static int id_from_dn_text(const char *text, pki_id *ret, char *err, size_t err_len)
{
    X509_NAME *name = dn_parse(text, err, err_len);
    if (!name)
        return M2MVPN_E_INVAL;
    unsigned char *der = NULL;
    int n = i2d_X509_NAME(name, &der);
    X509_NAME_free(name);
    int rc;
    if (n <= 0) {
        rc = M2MVPN_E_NOMEM;
    } else if ((size_t)n > PKI_ID_MAX) {
        pki_set_err(err, err_len, "DN longer than %d bytes encoded", PKI_ID_MAX);
        rc = M2MVPN_E_INVAL;
    } else {
        rc = id_set(ret, PKI_ID_DER_ASN1_DN, der, (size_t)n);
    }
    OPENSSL_free(der);
    return rc;
}

int pki_id_from_string(const char *text, pki_id *ret, char *err, size_t err_len)
{
    if (!text || !ret)
        return M2MVPN_E_INVAL;
    size_t len = strlen(text);
    if (len == 0) {
        pki_set_err(err, err_len, "empty identity");
        return M2MVPN_E_INVAL;
    }
    if (len >= PKI_ID_MAX) {
        pki_set_err(err, err_len, "identity longer than %d characters", PKI_ID_MAX - 1);
        return M2MVPN_E_INVAL;
    }
    if (strchr(text, '='))
        return id_from_dn_text(text, ret, err, err_len);
    uint8_t addr[16];
    if (inet_pton(AF_INET, text, addr) == 1)
        return id_set(ret, PKI_ID_IPV4_ADDR, addr, 4);
    if (inet_pton(AF_INET6, text, addr) == 1)
        return id_set(ret, PKI_ID_IPV6_ADDR, addr, 16);
    if (text[0] == '@') {
        /* strongSwan's "@name": force ID_FQDN (even with another '@' inside). */
        if (len == 1) {
            pki_set_err(err, err_len, "empty identity after '@'");
            return M2MVPN_E_INVAL;
        }
        return id_set(ret, PKI_ID_FQDN, text + 1, len - 1);
    }
    if (strchr(text, '@'))
        return id_set(ret, PKI_ID_RFC822_ADDR, text, len);
    return id_set(ret, PKI_ID_FQDN, text, len);
}

int pki_id_from_payload(uint8_t type, const uint8_t *data, size_t len, pki_id *ret,
                        char *err, size_t err_len)
{
    if ((!data && len) || !ret)
        return M2MVPN_E_INVAL;
    switch (type) {
    case PKI_ID_IPV4_ADDR:
    case PKI_ID_IPV6_ADDR:
        if (len != (type == PKI_ID_IPV4_ADDR ? 4u : 16u)) {
            pki_set_err(err, err_len, "%s of %zu bytes", pki_id_type_name(type), len);
            return M2MVPN_E_PROTOCOL;
        }
        return id_set(ret, type, data, len);
    case PKI_ID_FQDN:
    case PKI_ID_RFC822_ADDR:
        if (len == 0 || len >= PKI_ID_MAX || memchr(data, '\0', len)) {
            pki_set_err(err, err_len, "malformed %s (%zu bytes)", pki_id_type_name(type), len);
            return M2MVPN_E_PROTOCOL;
        }
        return id_set(ret, type, data, len);
    case PKI_ID_DER_ASN1_DN: {
        if (len == 0 || len > PKI_ID_MAX) {
            pki_set_err(err, err_len, "ID_DER_ASN1_DN of %zu bytes", len);
            return M2MVPN_E_PROTOCOL;
        }
        const unsigned char *p = data;
        X509_NAME *name = d2i_X509_NAME(NULL, &p, (long)len);
        bool whole = name && (size_t)(p - data) == len;
        X509_NAME_free(name);
        ERR_clear_error();
        if (!whole) {
            pki_set_err(err, err_len, "ID_DER_ASN1_DN is not a DER Name");
            return M2MVPN_E_PROTOCOL;
        }
        return id_set(ret, type, data, len);
    }
    case PKI_ID_KEY_ID:
        if (len == 0 || len > PKI_ID_MAX) {
            pki_set_err(err, err_len, "ID_KEY_ID of %zu bytes", len);
            return M2MVPN_E_PROTOCOL;
        }
        return id_set(ret, type, data, len);
    default:
        pki_set_err(err, err_len, "unsupported ID type %u", type);
        return M2MVPN_E_NOTSUPP;
    }
}

int pki_id_from_cert_subject(const pki_cert *c, pki_id *ret)
{
    if (!c || !ret)
        return M2MVPN_E_INVAL;
    const uint8_t *der;
    size_t len;
    pki_cert_subject_der(c, &der, &len);
    if (len > PKI_ID_MAX)
        return M2MVPN_E_CERT;
    return id_set(ret, PKI_ID_DER_ASN1_DN, der, len);
}

static X509_NAME *id_dn(const pki_id *id)
{
    const unsigned char *p = id->data;
    X509_NAME *name = d2i_X509_NAME(NULL, &p, (long)id->len);
    if (!name)
        ERR_clear_error();
    return name;
}

void pki_id_to_string(const pki_id *id, char *buf, size_t len)
{
    if (!len)
        return;
    buf[0] = '\0';
    switch (id->type) {
    case PKI_ID_IPV4_ADDR:
    case PKI_ID_IPV6_ADDR: {
        char tmp[INET6_ADDRSTRLEN];
        int af = id->type == PKI_ID_IPV4_ADDR ? AF_INET : AF_INET6;
        if (id->len == (af == AF_INET ? 4u : 16u) && inet_ntop(af, id->data, tmp, sizeof tmp))
            snprintf(buf, len, "%s", tmp);
        break;
    }
    case PKI_ID_FQDN:
    case PKI_ID_RFC822_ADDR: {
        size_t k = 0;
        for (; k < id->len && k + 1 < len; k++)
            buf[k] = isprint(id->data[k]) ? (char)id->data[k] : '?';
        buf[k] = '\0';
        break;
    }
    case PKI_ID_DER_ASN1_DN: {
        X509_NAME *name = id_dn(id);
        if (name)
            pki_name_text(name, buf, len);
        X509_NAME_free(name);
        break;
    }
    case PKI_ID_KEY_ID: {
        size_t o = 0;
        if (o + 1 < len)
            buf[o++] = '#';
        for (size_t k = 0; k < id->len && o + 3 <= len; k++, o += 2)
            snprintf(buf + o, 3, "%02x", id->data[k]);
        buf[o < len ? o : len - 1] = '\0';
        break;
    }
    }
}

static bool ascii_case_equal(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (tolower(a[i]) != tolower(b[i]))
            return false;
    return true;
}

static bool names_equal(const X509_NAME *a, const X509_NAME *b)
{
    int r = X509_NAME_cmp(a, b);
    ERR_clear_error();
    return r == 0;
}

bool pki_id_equal(const pki_id *a, const pki_id *b)
{
    if (!a || !b || a->type != b->type)
        return false;
    switch (a->type) {
    case PKI_ID_FQDN:
    case PKI_ID_RFC822_ADDR:
        return ascii_case_equal(a->data, a->len, b->data, b->len);
    case PKI_ID_DER_ASN1_DN: {
        X509_NAME *na = id_dn(a), *nb = id_dn(b);
        bool eq = na && nb && names_equal(na, nb);
        X509_NAME_free(na);
        X509_NAME_free(nb);
        return eq;
    }
    default:
        return a->len == b->len && !memcmp(a->data, b->data, a->len);
    }
}

/* Does one subjectAltName entry carry `id`? */
static bool san_matches(const GENERAL_NAME *gn, const pki_id *id)
{
    int type;
    void *value = GENERAL_NAME_get0_value(gn, &type);
    /* Only these three types hold an ASN1_STRING. */
    if (!value || (type != GEN_DNS && type != GEN_EMAIL && type != GEN_IPADD))
        return false;
    const ASN1_STRING *s = value;
    const uint8_t *d = ASN1_STRING_get0_data(s);
    size_t n = (size_t)ASN1_STRING_length(s);
    switch (id->type) {
    case PKI_ID_FQDN:
        return type == GEN_DNS && ascii_case_equal(d, n, id->data, id->len);
    case PKI_ID_RFC822_ADDR:
        return type == GEN_EMAIL && ascii_case_equal(d, n, id->data, id->len);
    case PKI_ID_IPV4_ADDR:
    case PKI_ID_IPV6_ADDR:
        return type == GEN_IPADD && n == id->len && !memcmp(d, id->data, n);
    default:
        return false;
    }
}

bool pki_cert_matches_id(const pki_cert *c, const pki_id *id)
{
    if (!c || !id)
        return false;
    X509 *x = pki_cert_x509(c);
    if (id->type == PKI_ID_DER_ASN1_DN) {
        X509_NAME *want = id_dn(id);
        bool eq = want && names_equal(X509_get_subject_name(x), want);
        X509_NAME_free(want);
        return eq;
    }
    GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    bool found = false;
    for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans) && !found; i++)
        found = san_matches(sk_GENERAL_NAME_value(sans, i), id);
    GENERAL_NAMES_free(sans);
    ERR_clear_error();
    return found;
}
