/* SPDX-License-Identifier: Apache-2.0 */
/* Key generation and CSRs (contract: keygen.h). */
#include "keygen.h"

#include <m2mvpn/m2mvpn.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "core/secmem.h"
#include "crypto/pki_internal.h"
#include "cred_hw.h"

/* "/CN=a/O=b" -> X509_NAME, entries in the order given. */
static int parse_subject(const char *text, X509_NAME **ret, char *err, size_t err_len)
{
    if (!text || text[0] != '/' || strlen(text) > 1024) {
        pki_set_err(err, err_len, "subject must look like \"/CN=dev1/O=m2m\"");
        return M2MVPN_E_INVAL;
    }
    X509_NAME *n = X509_NAME_new();
    char *buf = malloc(strlen(text) + 1);
    int rc = n && buf ? 0 : M2MVPN_E_NOMEM;
    const char *p = text + 1;
    while (rc == 0 && *p) {
        size_t o = 0;
        while (*p && *p != '/') {
            if (*p == '\\' && p[1])
                p++;
            buf[o++] = *p++;
        }
        buf[o] = '\0';
        if (*p == '/')
            p++;
        char *eq = strchr(buf, '=');
        if (!eq || eq == buf || !eq[1]) {
            pki_set_err(err, err_len, "subject: \"%s\" is not TYPE=value", buf);
            rc = M2MVPN_E_INVAL;
            break;
        }
        *eq = '\0';
        if (X509_NAME_add_entry_by_txt(n, buf, MBSTRING_UTF8, (const unsigned char *)eq + 1, -1, -1, 0) != 1) {
            pki_set_err(err, err_len, "subject: unknown attribute type \"%s\"", buf);
            rc = M2MVPN_E_INVAL;
        }
    }
    if (rc == 0 && X509_NAME_entry_count(n) == 0) {
        pki_set_err(err, err_len, "subject is empty");
        rc = M2MVPN_E_INVAL;
    }
    free(buf);
    ERR_clear_error();
    if (rc < 0) {
        X509_NAME_free(n);
        return rc;
    }
    *ret = n;
    return 0;
}

static int req_to_pem(X509_REQ *req, char **ret)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *mem = NULL, *out = NULL;
    long n;
    if (bio && PEM_write_bio_X509_REQ(bio, req) == 1 && (n = BIO_get_mem_data(bio, &mem)) > 0 &&
        (out = malloc((size_t)n + 1))) {
        memcpy(out, mem, (size_t)n);
        out[n] = '\0';
    }
    BIO_free(bio);
    ERR_clear_error();
    if (!out)
        return M2MVPN_E_NOMEM;
    *ret = out;
    return 0;
}

/* A request with subject and public key, not yet signed. */
static int req_new(const char *subject, EVP_PKEY *pub, X509_REQ **ret, char *err, size_t err_len)
{
    X509_NAME *name = NULL;
    int rc = parse_subject(subject, &name, err, err_len);
    if (rc < 0)
        return rc;
    X509_REQ *req = X509_REQ_new();
    if (!req || X509_REQ_set_version(req, 0) != 1 || X509_REQ_set_subject_name(req, name) != 1 ||
        X509_REQ_set_pubkey(req, pub) != 1) {
        X509_REQ_free(req);
        X509_NAME_free(name);
        ERR_clear_error();
        return M2MVPN_E_NOMEM;
    }
    X509_NAME_free(name);
    *ret = req;
    return 0;
}

int keygen_csr(cred_provider *p, const char *subject, char **ret_csr_pem, char *err, size_t err_len)
{
    if (!p || !subject || !ret_csr_pem)
        return M2MVPN_E_INVAL;
    uint8_t spki[2048];
    size_t spki_len = 0;
    int rc = cred_spki(p, spki, sizeof spki, &spki_len, err, err_len);
    if (rc < 0)
        return rc;
    const unsigned char *sp = spki;
    EVP_PKEY *pub = d2i_PUBKEY(NULL, &sp, (long)spki_len);
    if (!pub) {
        ERR_clear_error();
        pki_set_err(err, err_len, "the provider's public key does not parse");
        return M2MVPN_E_CRYPTO;
    }
    pki_key_type kt = pki_pkey_type(pub, NULL);
    pki_sig_scheme scheme;
    int nid;
    switch (kt) {
    case PKI_KEY_RSA: scheme = PKI_SIG_RSA_PKCS1_SHA256; nid = NID_sha256WithRSAEncryption; break;
    case PKI_KEY_EC_P256: scheme = PKI_SIG_ECDSA_SHA256; nid = NID_ecdsa_with_SHA256; break;
    case PKI_KEY_EC_P384: scheme = PKI_SIG_ECDSA_SHA384; nid = NID_ecdsa_with_SHA384; break;
    case PKI_KEY_EC_P521: scheme = PKI_SIG_ECDSA_SHA512; nid = NID_ecdsa_with_SHA512; break;
    default:
        EVP_PKEY_free(pub);
        pki_set_err(err, err_len, "no CSR signature for a %s key", pki_key_type_name(kt));
        return M2MVPN_E_NOTSUPP;
    }
    X509_REQ *req = NULL;
    X509_ALGOR *alg = NULL;
    ASN1_BIT_STRING *bits = NULL;
    unsigned char *tbs = NULL;
    uint8_t sig[1024];
    size_t sig_len = 0;
    if ((rc = req_new(subject, pub, &req, err, err_len)) < 0)
        goto out;
    rc = M2MVPN_E_NOMEM;
    alg = X509_ALGOR_new();
    if (!alg || X509_ALGOR_set0(alg, OBJ_nid2obj(nid), kt == PKI_KEY_RSA ? V_ASN1_NULL : V_ASN1_UNDEF,
                                NULL) != 1 ||
        X509_REQ_set1_signature_algo(req, alg) != 1)
        goto out;
    int tbs_len = i2d_re_X509_REQ_tbs(req, &tbs);
    if (tbs_len <= 0)
        goto out;
    if ((rc = cred_sign(p, scheme, tbs, (size_t)tbs_len, sig, sizeof sig, &sig_len, err, err_len)) < 0)
        goto out;
    rc = M2MVPN_E_NOMEM;
    if (!(bits = ASN1_BIT_STRING_new()) || ASN1_BIT_STRING_set(bits, sig, (int)sig_len) != 1)
        goto out;
    /* All bits used (else DER would drop trailing zero bits of the signature). */
    bits->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07);
    bits->flags |= ASN1_STRING_FLAG_BITS_LEFT;
    X509_REQ_set0_signature(req, bits);
    bits = NULL;
    /* Proof for the CA that the provider signed with the key we put in. */
    if (X509_REQ_verify(req, pub) != 1) {
        pki_set_err(err, err_len, "the provider's signature over the CSR does not verify");
        rc = M2MVPN_E_CRYPTO;
        goto out;
    }
    rc = req_to_pem(req, ret_csr_pem);
out:
    ERR_clear_error();
    OPENSSL_free(tbs);
    ASN1_BIT_STRING_free(bits);
    X509_ALGOR_free(alg);
    X509_REQ_free(req);
    EVP_PKEY_free(pub);
    return rc;
}

int keygen_write_new_file(const char *path, const void *data, size_t len, unsigned mode,
                          char *err, size_t err_len)
{
    if (!path || (!data && len))
        return M2MVPN_E_INVAL;
    if (access(path, F_OK) == 0) {
        pki_set_err(err, err_len, "%s exists: not replaced", path);
        return M2MVPN_E_IO;
    }
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 16);
    if (!tmp)
        return M2MVPN_E_NOMEM;
    snprintf(tmp, pl + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    int rc = 0;
    if (fd < 0) {
        pki_set_err(err, err_len, "cannot create %s: %s", path, strerror(errno));
        free(tmp);
        return M2MVPN_E_IO;
    }
    const uint8_t *p = data;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, p + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    if (done != len || fchmod(fd, mode) != 0 || fsync(fd) != 0)
        rc = M2MVPN_E_IO;
    if (close(fd) != 0)
        rc = M2MVPN_E_IO;
    if (rc == 0 && link(tmp, path) != 0)
        rc = M2MVPN_E_IO;
    int saved = errno;
    unlink(tmp);
    free(tmp);
    if (rc < 0)
        pki_set_err(err, err_len, "cannot write %s: %s", path,
                    saved == EEXIST ? "exists: not replaced" : strerror(saved));
    return rc;
}

static int keygen_file(const keygen_request *rq, char **ret_csr, char *err, size_t err_len)
{
    EVP_PKEY *k = rq->rsa ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048)
                          : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!k) {
        ERR_clear_error();
        return M2MVPN_E_CRYPTO;
    }
    X509_REQ *req = NULL;
    BIO *bio = NULL;
    char *pass = NULL;
    int rc = req_new(rq->subject, k, &req, err, err_len);
    if (rc < 0)
        goto out;
    rc = M2MVPN_E_CRYPTO;
    if (X509_REQ_sign(req, k, EVP_sha256()) <= 0)
        goto out;
    rc = M2MVPN_E_NOMEM;
    if (rq->pin && !(pass = secure_memdup(rq->pin, rq->pin_len)))
        goto out;
    if (!(bio = BIO_new(BIO_s_secmem())) && !(bio = BIO_new(BIO_s_mem())))
        goto out;
    if (PEM_write_bio_PKCS8PrivateKey(bio, k, pass ? EVP_aes_256_cbc() : NULL, NULL, 0, NULL, pass) != 1)
        goto out;
    char *mem = NULL;
    long n = BIO_get_mem_data(bio, &mem);
    if ((rc = keygen_write_new_file(rq->out, mem, (size_t)n, 0600, err, err_len)) < 0)
        goto out;
    rc = req_to_pem(req, ret_csr);
out:
    if (pass)
        secure_free_str(pass);
    BIO_free(bio);
    X509_REQ_free(req);
    EVP_PKEY_free(k);
    ERR_clear_error();
    return rc;
}

static int keygen_tpm(const keygen_request *rq, char **ret_csr, char *err, size_t err_len)
{
    if (!rq->out == !rq->tpm_handle) {
        pki_set_err(err, err_len, "give either a key file or a persistent handle for the TPM key");
        return M2MVPN_E_INVAL;
    }
    if (rq->out && access(rq->out, F_OK) == 0) {
        pki_set_err(err, err_len, "%s exists: not replaced", rq->out);
        return M2MVPN_E_IO;
    }
    /* Check the subject before the TPM does any work. */
    X509_NAME *name = NULL;
    int rc = parse_subject(rq->subject, &name, err, err_len);
    X509_NAME_free(name);
    if (rc < 0)
        return rc;
    char *pem = NULL;
    rc = cred_tpm_generate(rq->tpm_tcti, rq->rsa, rq->pin, rq->pin_len, rq->tpm_handle, &pem, err, err_len);
    if (rc < 0)
        return rc;
    if (pem) {
        rc = keygen_write_new_file(rq->out, pem, strlen(pem), 0600, err, err_len);
        free(pem);
        if (rc < 0)
            return rc;
    }
    char ref[16];
    snprintf(ref, sizeof ref, "0x%08x", rq->tpm_handle);
    cred_provider *p = NULL;
    rc = cred_tpm_open_key(rq->out ? rq->out : ref, rq->tpm_tcti, rq->pin, rq->pin_len, &p, err, err_len);
    if (rc == 0)
        rc = keygen_csr(p, rq->subject, ret_csr, err, err_len);
    cred_free(p);
    return rc;
}

static int keygen_pkcs11(const keygen_request *rq, char **ret_csr, char *err, size_t err_len)
{
    if (!rq->pkcs11_module || !rq->pkcs11_uri || !rq->pin) {
        pki_set_err(err, err_len, "a token key needs the module, a pkcs11: URI and the PIN");
        return M2MVPN_E_INVAL;
    }
    X509_NAME *name = NULL;
    int rc = parse_subject(rq->subject, &name, err, err_len);
    X509_NAME_free(name);
    if (rc < 0)
        return rc;
    rc = cred_pkcs11_generate(rq->pkcs11_module, rq->pkcs11_uri, rq->pin, rq->pin_len, rq->rsa, err, err_len);
    if (rc < 0)
        return rc;
    cred_provider *p = NULL;
    rc = cred_pkcs11_open_key(rq->pkcs11_module, rq->pkcs11_uri, rq->pin, rq->pin_len, &p, err, err_len);
    if (rc == 0)
        rc = keygen_csr(p, rq->subject, ret_csr, err, err_len);
    cred_free(p);
    return rc;
}

int keygen_run(const keygen_request *rq, char **ret_csr_pem, char *err, size_t err_len)
{
    if (!rq || !ret_csr_pem || !rq->subject || (rq->pin && rq->pin_len == 0))
        return M2MVPN_E_INVAL;
    switch (rq->provider) {
    case KEYGEN_FILE:
        if (!rq->out) {
            pki_set_err(err, err_len, "a file key needs the output path");
            return M2MVPN_E_INVAL;
        }
        return keygen_file(rq, ret_csr_pem, err, err_len);
    case KEYGEN_PKCS11:
        return keygen_pkcs11(rq, ret_csr_pem, err, err_len);
    case KEYGEN_TPM:
        return keygen_tpm(rq, ret_csr_pem, err, err_len);
    }
    return M2MVPN_E_INVAL;
}
