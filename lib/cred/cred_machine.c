/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Machine-bound private keys (profile auth.cert.source "machine"): the key
 * file is encrypted (AES-256-GCM) under a key derived with HKDF-SHA256 from a
 * fingerprint of the machine, so that a copy of the file is useless on
 * another machine. Contract in cred.h; format:
 *
 *   offset  size  field
 *   0       8     magic "M2MVPNBK"
 *   8       1     version (1)
 *   9       1     AEAD (1 = AES-256-GCM)
 *   10      1     KDF (1 = HKDF-SHA256)
 *   11      1     reserved (0)
 *   12      32    HKDF salt (random)
 *   44      12    GCM nonce (random)
 *   56      2     length n of the source list (big-endian)
 *   58      n     the fingerprint sources, "machine-id,mac:eth0" (ASCII)
 *   58+n    ...   ciphertext of the PEM private key
 *   end-16  16    GCM tag
 * The header (bytes 0 .. 58+n) is the GCM additional data: a changed source
 * list or version fails like a wrong fingerprint.
 *
 * Key = HKDF-SHA256(IKM = for each source in order: its name, a 0 byte, its
 * value's length (4 bytes, big-endian) and value; salt; info "m2mvpn
 * machine-bound key v1"). The sources:
 *   machine-id   /etc/machine-id
 *   dmi-uuid     /sys/class/dmi/id/product_uuid (the board's UUID; root only)
 *   mac:IFNAME   /sys/class/net/IFNAME/address
 *   file:PATH    any file (e.g. a serial number provisioned at the factory)
 * Values are read whole, trailing white space removed; a missing or empty
 * source is an error (it would make a weaker key without saying so).
 */
#include "cred.h"

#include <m2mvpn/m2mvpn.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include "core/secmem.h"
#include "crypto/crypto.h"
#include "crypto/pki_internal.h"

#define BK_MAGIC "M2MVPNBK"
#define BK_HEADER_FIXED 58
#define BK_SALT_LEN 32
#define BK_NONCE_LEN 12
#define BK_TAG_LEN 16
#define BK_INFO "m2mvpn machine-bound key v1"
#define BK_MAX_SOURCES_TEXT 1024
#define BK_MAX_VALUE 4096

const char *const cred_machine_default_sources = "machine-id,dmi-uuid";

/* ---------------------------------------------------------- fingerprint */

static void trim(uint8_t *v, size_t *len)
{
    while (*len && isspace(v[*len - 1]))
        (*len)--;
}

/* The file behind one source spec. */
static int source_path(const char *spec, size_t len, char *path, size_t cap, char *err, size_t err_len)
{
    if (len == 10 && !memcmp(spec, "machine-id", 10))
        snprintf(path, cap, "/etc/machine-id");
    else if (len == 8 && !memcmp(spec, "dmi-uuid", 8))
        snprintf(path, cap, "/sys/class/dmi/id/product_uuid");
    else if (len > 4 && len <= 4 + 15 && !memcmp(spec, "mac:", 4) && !memchr(spec + 4, '/', len - 4) &&
             !memchr(spec + 4, '.', 1))
        snprintf(path, cap, "/sys/class/net/%.*s/address", (int)(len - 4), spec + 4);
    else if (len > 6 && !memcmp(spec, "file:", 5) && spec[5] == '/' && len - 5 < cap)
        snprintf(path, cap, "%.*s", (int)(len - 5), spec + 5);
    else {
        pki_set_err(err, err_len, "unknown fingerprint source '%.*s' (machine-id, dmi-uuid, mac:IFNAME, "
                    "file:/ABSOLUTE/PATH)", (int)(len > 64 ? 64 : len), spec);
        return M2MVPN_E_INVAL;
    }
    return 0;
}

/* Validate a comma-separated source list. */
int cred_machine_check_sources(const char *sources, char *err, size_t err_len)
{
    if (!sources || !*sources || strlen(sources) > BK_MAX_SOURCES_TEXT) {
        pki_set_err(err, err_len, "fingerprint sources: 1..%d characters needed", BK_MAX_SOURCES_TEXT);
        return M2MVPN_E_INVAL;
    }
    char path[4200];
    for (const char *p = sources; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        int r = source_path(p, len, path, sizeof(path), err, err_len);
        if (r < 0)
            return r;
        p += len + (comma ? 1 : 0);
        if (comma && !*p) {
            pki_set_err(err, err_len, "fingerprint sources: empty entry at the end");
            return M2MVPN_E_INVAL;
        }
    }
    return 0;
}

/* The IKM of all sources (see the top of this file). */
static int fingerprint(const char *sources, uint8_t **ret, size_t *ret_len, char *err, size_t err_len)
{
    int r = cred_machine_check_sources(sources, err, err_len);
    if (r < 0)
        return r;
    size_t cap = 16 * (BK_MAX_VALUE + 64) + BK_MAX_SOURCES_TEXT, n = 0;
    uint8_t *ikm = malloc(cap);
    if (!ikm)
        return M2MVPN_E_NOMEM;
    char path[4200];
    for (const char *p = sources; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        source_path(p, len, path, sizeof(path), NULL, 0);
        uint8_t *v = NULL;
        size_t vlen = 0;
        char why[256];
        r = pki_read_file(path, &v, &vlen, why, sizeof(why));
        if (r == 0)
            trim(v, &vlen);
        if (r < 0 || vlen == 0 || vlen > BK_MAX_VALUE || n + len + 5 + vlen > cap) {
            secure_free(v, vlen);
            pki_set_err(err, err_len, "fingerprint source '%.*s' unavailable: %s", (int)len, p,
                        r < 0 ? why : vlen == 0 ? "empty" : "too large");
            secure_free(ikm, cap);
            return M2MVPN_E_CERT;
        }
        if (len >= 4 && !memcmp(p, "mac:", 4))
            for (size_t i = 0; i < vlen; i++)
                v[i] = (uint8_t)tolower(v[i]);
        memcpy(ikm + n, p, len);
        n += len;
        ikm[n++] = 0;
        ikm[n++] = (uint8_t)(vlen >> 24);
        ikm[n++] = (uint8_t)(vlen >> 16);
        ikm[n++] = (uint8_t)(vlen >> 8);
        ikm[n++] = (uint8_t)vlen;
        memcpy(ikm + n, v, vlen);
        n += vlen;
        secure_free(v, vlen);
        p += len + (comma ? 1 : 0);
    }
    *ret = ikm;
    *ret_len = n; /* the buffer is `cap` bytes: wiped whole by the caller */
    return 0;
}

static int derive(const char *sources, const uint8_t salt[BK_SALT_LEN], uint8_t key[32], char *err, size_t err_len)
{
    uint8_t *ikm = NULL;
    size_t ikm_len = 0;
    int r = fingerprint(sources, &ikm, &ikm_len, err, err_len);
    if (r < 0)
        return r;
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM params[5];
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, ikm, ikm_len);
    params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, BK_SALT_LEN);
    params[3] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)BK_INFO, strlen(BK_INFO));
    params[4] = OSSL_PARAM_construct_end();
    r = kctx && EVP_KDF_derive(kctx, key, 32, params) == 1 ? 0 : M2MVPN_E_CRYPTO;
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    secure_free(ikm, 16 * (BK_MAX_VALUE + 64) + BK_MAX_SOURCES_TEXT);
    if (r < 0)
        pki_set_err(err, err_len, "key derivation (HKDF-SHA256) failed");
    return r;
}

/* AES-256-GCM one-shot; dec: verify the tag. */
static int gcm(bool enc, const uint8_t key[32], const uint8_t *nonce, const uint8_t *aad, size_t aad_len,
               const uint8_t *in, size_t len, uint8_t *out, uint8_t *tag)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, ok = c && EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) &&
                    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, BK_NONCE_LEN, NULL) &&
                    EVP_CipherInit_ex(c, NULL, NULL, key, nonce, enc) &&
                    EVP_CipherUpdate(c, NULL, &n, aad, (int)aad_len) &&
                    EVP_CipherUpdate(c, out, &n, in, (int)len);
    if (ok && !enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, BK_TAG_LEN, tag);
    ok = ok && EVP_CipherFinal_ex(c, out + n, &n);
    if (ok && enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, BK_TAG_LEN, tag);
    EVP_CIPHER_CTX_free(c);
    return ok ? 0 : -1;
}

/* ----------------------------------------------------------------- bind */

int cred_machine_bind(const uint8_t *key_pem, size_t key_len, const char *sources, uint8_t **ret,
                      size_t *ret_len, char *err, size_t err_len)
{
    if (!key_pem || !key_len || !ret || !ret_len)
        return M2MVPN_E_INVAL;
    if (!sources)
        sources = cred_machine_default_sources;
    size_t slen = strlen(sources);
    int r = cred_machine_check_sources(sources, err, err_len);
    if (r < 0)
        return r;
    size_t hlen = BK_HEADER_FIXED + slen, total = hlen + key_len + BK_TAG_LEN;
    uint8_t *out = malloc(total), key[32];
    if (!out)
        return M2MVPN_E_NOMEM;
    memcpy(out, BK_MAGIC, 8);
    out[8] = 1;
    out[9] = 1;
    out[10] = 1;
    out[11] = 0;
    if ((r = crypto_random(out + 12, BK_SALT_LEN + BK_NONCE_LEN)) < 0) {
        free(out);
        pki_set_err(err, err_len, "random number generator failed");
        return r;
    }
    out[56] = (uint8_t)(slen >> 8);
    out[57] = (uint8_t)slen;
    memcpy(out + BK_HEADER_FIXED, sources, slen);
    if ((r = derive(sources, out + 12, key, err, err_len)) < 0) {
        free(out);
        return r;
    }
    if (gcm(true, key, out + 44, out, hlen, key_pem, key_len, out + hlen, out + hlen + key_len) < 0) {
        secure_wipe(key, sizeof(key));
        secure_free(out, total);
        pki_set_err(err, err_len, "AES-256-GCM encryption failed");
        return M2MVPN_E_CRYPTO;
    }
    secure_wipe(key, sizeof(key));
    *ret = out;
    *ret_len = total;
    return 0;
}

int cred_machine_unbind(const uint8_t *data, size_t len, const char *name, const char *want_sources,
                        uint8_t **ret, size_t *ret_len, char *err, size_t err_len)
{
    if (!data || !ret || !ret_len)
        return M2MVPN_E_INVAL;
    if (len < BK_HEADER_FIXED + BK_TAG_LEN || memcmp(data, BK_MAGIC, 8) != 0) {
        pki_set_err(err, err_len, "%s: not a machine-bound key (make one with 'm2mvpn bind-key')", name);
        return M2MVPN_E_CERT;
    }
    if (data[8] != 1 || data[9] != 1 || data[10] != 1) {
        pki_set_err(err, err_len, "%s: machine-bound key format version %u (AEAD %u, KDF %u) is not "
                    "supported by this build", name, data[8], data[9], data[10]);
        return M2MVPN_E_CERT;
    }
    size_t slen = (size_t)data[56] << 8 | data[57];
    if (slen == 0 || slen > BK_MAX_SOURCES_TEXT || len < BK_HEADER_FIXED + slen + BK_TAG_LEN + 1) {
        pki_set_err(err, err_len, "%s: damaged machine-bound key (header)", name);
        return M2MVPN_E_CERT;
    }
    char sources[BK_MAX_SOURCES_TEXT + 1];
    memcpy(sources, data + BK_HEADER_FIXED, slen);
    sources[slen] = '\0';
    if (memchr(sources, '\0', slen) || cred_machine_check_sources(sources, NULL, 0) < 0) {
        pki_set_err(err, err_len, "%s: damaged machine-bound key (source list)", name);
        return M2MVPN_E_CERT;
    }
    if (want_sources && strcmp(want_sources, sources) != 0) {
        pki_set_err(err, err_len, "%s is bound to the sources %s, the profile requires %s", name, sources,
                     want_sources);
        return M2MVPN_E_CERT;
    }
    size_t hlen = BK_HEADER_FIXED + slen, clen = len - hlen - BK_TAG_LEN;
    uint8_t key[32], tag[BK_TAG_LEN];
    int r = derive(sources, data + 12, key, err, err_len);
    if (r < 0) {
        if (err && err_len) {
            char inner[320];
            snprintf(inner, sizeof(inner), "%s", err);
            pki_set_err(err, err_len, "%s: %s", name, inner);
        }
        return r;
    }
    uint8_t *plain = malloc(clen + 1);
    if (!plain) {
        secure_wipe(key, sizeof(key));
        return M2MVPN_E_NOMEM;
    }
    memcpy(tag, data + len - BK_TAG_LEN, BK_TAG_LEN);
    r = gcm(false, key, data + 44, data, hlen, data + hlen, clen, plain, tag);
    secure_wipe(key, sizeof(key));
    if (r < 0) {
        secure_free(plain, clen + 1);
        pki_set_err(err, err_len, "%s is bound to another machine (its fingerprint from %s does not "
                    "match this one), or the file was changed", name, sources);
        return M2MVPN_E_CERT;
    }
    plain[clen] = '\0';
    *ret = plain;
    *ret_len = clen;
    return 0;
}

int cred_machine_open(const char *cert_file, const char *bound_key_file, const char *want_sources,
                      const char *pin, size_t pin_len, cred_provider **ret, char *err, size_t err_len)
{
    if (!cert_file || !bound_key_file || !ret)
        return M2MVPN_E_INVAL;
    uint8_t *data = NULL, *key = NULL;
    size_t len = 0, key_len = 0;
    int r = pki_read_file(bound_key_file, &data, &len, err, err_len);
    if (r < 0)
        return r;
    r = cred_machine_unbind(data, len, bound_key_file, want_sources, &key, &key_len, err, err_len);
    free(data);
    if (r < 0)
        return r;
    r = cred_file_open_key_mem(cert_file, key, key_len, bound_key_file, pin, pin_len, ret, err, err_len);
    secure_free(key, key_len + 1);
    return r;
}
