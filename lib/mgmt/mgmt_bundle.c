/* SPDX-License-Identifier: Apache-2.0 */
/* Bundles: CMS SignedData over a JSON manifest (the contract's rules). */
#include "mgmt.h"

#include "core/secmem.h"

#include <json-c/json.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t err_len, const char *what)
{
    if (err && err_len)
        snprintf(err, err_len, "profile bundle refused: %s", what);
    ERR_clear_error();
    return M2MVPN_E_BUNDLE;
}

/* The signed content, if it verifies with `signer` as its one signer. */
static int cms_content(const uint8_t *der, size_t len, X509 *signer, BIO *out, char *err, size_t err_len)
{
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    if (!cms || p != der + len) {
        CMS_ContentInfo_free(cms);
        return fail(err, err_len, "not a CMS message (DER)");
    }
    int r = 0;
    const char *why = NULL;
    STACK_OF(CMS_SignerInfo) *sis = NULL;
    if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed)
        why = "not CMS SignedData (unsigned content)";
    else if (OBJ_obj2nid(CMS_get0_eContentType(cms)) != NID_pkcs7_data)
        why = "content type is not id-data";
    else if (CMS_is_detached(cms))
        why = "content not attached";
    else if (!(sis = CMS_get0_SignerInfos(cms)) || sk_CMS_SignerInfo_num(sis) != 1)
        why = "not exactly one signer";
    else if (CMS_SignerInfo_cert_cmp(sk_CMS_SignerInfo_value(sis, 0), signer) != 0)
        why = "signed by another key than the pinned bundle_signer";
    if (why) {
        CMS_ContentInfo_free(cms);
        return fail(err, err_len, why);
    }
    STACK_OF(X509) *certs = sk_X509_new_null();
    if (!certs || !sk_X509_push(certs, signer)) {
        sk_X509_free(certs);
        CMS_ContentInfo_free(cms);
        return M2MVPN_E_NOMEM;
    }
    /* Only the pinned certificate; no chain building to any anchor. */
    if (CMS_verify(cms, certs, NULL, NULL, out, CMS_NOINTERN | CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY) != 1)
        r = fail(err, err_len, "signature does not verify with the pinned bundle_signer");
    sk_X509_free(certs);
    CMS_ContentInfo_free(cms);
    return r;
}

static const char *json_str(json_object *m, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(m, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    const char *s = json_object_get_string(v);
    return strlen(s) == (size_t)json_object_get_string_len(v) ? s : NULL;
}

static bool json_int(json_object *m, const char *key, int64_t *out)
{
    json_object *v;
    if (!json_object_object_get_ex(m, key, &v) || !json_object_is_type(v, json_type_int))
        return false;
    *out = json_object_get_int64(v);
    return true;
}

static int manifest_check(const char *text, size_t len, const char *type, const char *device_id,
                          int64_t installed, int64_t now, mgmt_bundle *out, char *err, size_t err_len)
{
    /* day N adds the deployment id and the keys of software and cert bundles */
    static const char *const keys[] = { "format", "type", "device", "version", "not_after", "sha256",
                                        "payload", "deployment", "software_version", "url", "size", "action" };
    json_tokener *tok = json_tokener_new();
    if (!tok)
        return M2MVPN_E_NOMEM;
    json_object *m = json_tokener_parse_ex(tok, text, (int)len);
    bool whole = m && json_tokener_get_error(tok) == json_tokener_success &&
                 (size_t)json_tokener_get_parse_end(tok) == len;
    json_tokener_free(tok);
    char why[160];
    why[0] = '\0';
    int64_t format = 0, version = 0, not_after = 0, deployment = 0;
    const char *t, *dev, *sha = NULL, *b64 = NULL;
    if (!whole || !json_object_is_type(m, json_type_object)) {
        snprintf(why, sizeof(why), "manifest is not a JSON object");
        goto out;
    }
    json_object_object_foreach(m, k, v) {
        (void)v;
        bool known = false;
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
            known |= strcmp(k, keys[i]) == 0;
        if (!known) {
            snprintf(why, sizeof(why), "manifest has an unknown key");
            goto out;
        }
    }
    if (!json_int(m, "format", &format) || format != 1)
        snprintf(why, sizeof(why), "manifest format is not 1");
    else if (!(t = json_str(m, "type")) || strcmp(t, type) != 0)
        snprintf(why, sizeof(why), "manifest type is not \"%s\"", type);
    else if (!(dev = json_str(m, "device")) || strcmp(dev, device_id) != 0)
        snprintf(why, sizeof(why), "made for another device (this one is %s)", device_id);
    else if (!json_int(m, "not_after", &not_after) || not_after <= now)
        snprintf(why, sizeof(why), "expired (not_after in the past)");
    else if (!json_int(m, "version", &version) || version <= installed)
        snprintf(why, sizeof(why), "version %lld is not newer than the installed %lld (replay or downgrade)",
                 (long long)version, (long long)installed);
    else if (!(sha = json_str(m, "sha256")) || strlen(sha) != 64)
        snprintf(why, sizeof(why), "manifest sha256 missing or not 64 hex digits");
    else if (!(b64 = json_str(m, "payload")))
        snprintf(why, sizeof(why), "manifest payload missing");
    else if (json_object_object_get_ex(m, "deployment", NULL) &&
             (!json_int(m, "deployment", &deployment) || deployment < 1))
        snprintf(why, sizeof(why), "manifest deployment is not a positive whole number");
    if (why[0])
        goto out;

    size_t blen = strlen(b64);
    if (blen % 4 || blen / 4 * 3 > MGMT_BUNDLE_MAX) {
        snprintf(why, sizeof(why), "payload is not base64");
        goto out;
    }
    uint8_t *pl = malloc(blen / 4 * 3 + 1);
    if (!pl) {
        json_object_put(m);
        return M2MVPN_E_NOMEM;
    }
    int n = EVP_DecodeBlock(pl, (const unsigned char *)b64, (int)blen);
    if (n < 0) {
        secure_free(pl, blen / 4 * 3 + 1);
        snprintf(why, sizeof(why), "payload is not base64");
        goto out;
    }
    size_t pad = blen >= 1 && b64[blen - 1] == '=' ? (blen >= 2 && b64[blen - 2] == '=' ? 2 : 1) : 0;
    size_t pl_len = (size_t)n - pad;
    pl[pl_len] = 0;
    unsigned char md[32];
    char hex[65];
    EVP_Digest(pl, pl_len, md, NULL, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    bool software = strcmp(type, "software") == 0;
    if (software) {
        /* the hash is the artifact's; the bundle describes it */
        const char *sv = json_str(m, "software_version"), *url = json_str(m, "url");
        int64_t size = 0;
        char want[128];
        snprintf(want, sizeof(want), "/api/v1/device/artifacts/%s", sha);
        if (pl_len != 0)
            snprintf(why, sizeof(why), "a software bundle carries no payload");
        else if (!sv || !mgmt_software_version_ok(sv))
            snprintf(why, sizeof(why), "manifest software_version missing or not a version string (1 to 63 "
                     "letters, digits and . _ + ~ -, the first a letter or digit)");
        else if (!json_int(m, "size", &size) || size < 1 || size > MGMT_ARTIFACT_MAX)
            snprintf(why, sizeof(why), "manifest size missing or out of range (1..%lld bytes)",
                     (long long)MGMT_ARTIFACT_MAX);
        else if (!url || strcmp(url, want) != 0)
            snprintf(why, sizeof(why), "manifest url is not the artifact route of its sha256");
        else if (strspn(sha, "0123456789abcdef") != 64)
            snprintf(why, sizeof(why), "manifest sha256 is not 64 lowercase hex digits");
        if (why[0]) {
            secure_free(pl, blen / 4 * 3 + 1);
            goto out;
        }
        snprintf(out->software_version, sizeof(out->software_version), "%s", sv);
        snprintf(out->url, sizeof(out->url), "%s", url);
        snprintf(out->sha256, sizeof(out->sha256), "%s", sha);
        out->size = size;
    } else if (strcasecmp(hex, sha) != 0) {
        secure_free(pl, blen / 4 * 3 + 1);
        snprintf(why, sizeof(why), "sha256 of the payload does not match the manifest");
        goto out;
    }
    out->version = version;
    out->not_after = not_after;
    out->deployment = deployment;
    out->payload = pl;
    out->payload_len = pl_len;
out:
    json_object_put(m);
    return why[0] ? fail(err, err_len, why) : 0;
}

static bool ascii_alnum(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

bool mgmt_software_version_ok(const char *sv)
{
    size_t n = sv ? strlen(sv) : 0;
    if (n < 1 || n >= sizeof(((mgmt_bundle *)0)->software_version) || !ascii_alnum(sv[0]))
        return false;
    for (const char *c = sv; *c; c++)
        if (!ascii_alnum(*c) && !strchr("._+~-", *c))
            return false;
    return true;
}

int mgmt_artifact_check(const uint8_t *data, size_t len, const mgmt_bundle *b, char *err, size_t err_len)
{
    if ((int64_t)len != b->size) {
        snprintf(err, err_len, "update %s refused: the file has %zu bytes, the signed manifest says %lld",
                 b->software_version, len, (long long)b->size);
        return M2MVPN_E_BUNDLE;
    }
    unsigned char md[32];
    char hex[65];
    EVP_Digest(data, len, md, NULL, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    if (strcmp(hex, b->sha256) != 0) {
        snprintf(err, err_len, "update %s refused: the file's sha256 does not match the signed manifest",
                 b->software_version);
        return M2MVPN_E_BUNDLE;
    }
    return 0;
}

int mgmt_bundle_verify(const uint8_t *der, size_t len, X509 *signer, const char *type, const char *device_id,
                       int64_t installed, int64_t now, mgmt_bundle *out, char *err, size_t err_len)
{
    if (!der || !len || len > MGMT_BUNDLE_MAX || !signer || !type || !device_id || !out)
        return fail(err, err_len, "empty or larger than 1 MiB");
    BIO *content = BIO_new(BIO_s_mem());
    if (!content)
        return M2MVPN_E_NOMEM;
    int r = cms_content(der, len, signer, content, err, err_len);
    if (r == 0) {
        char *text;
        long n = BIO_get_mem_data(content, &text);
        mgmt_bundle b = { 0 };
        r = manifest_check(text, (size_t)n, type, device_id, installed, now, &b, err, err_len);
        if (r == 0)
            *out = b;
        secure_wipe(text, n > 0 ? (size_t)n : 0); /* the manifest holds the profile */
    }
    BIO_free(content);
    return r;
}

void mgmt_bundle_clear(mgmt_bundle *b)
{
    if (!b)
        return;
    secure_free(b->payload, b->payload ? b->payload_len + 1 : 0); /* a profile */
    memset(b, 0, sizeof(*b));
}
