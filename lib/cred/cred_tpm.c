/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The TPM 2.0 credential provider (profile cert.source "tpm"), on tpm2-tss
 * ESYS. Contract: cred.h (cred_tpm_open) and cred_hw.h (key generation).
 *
 * Keys: a TSS2 PEM key file (tss2_pem.h) whose parent is the owner
 * hierarchy's primary storage key (re-created from its template, which the
 * TPM derives from its seed: the same key every time) or a persistent
 * handle; or a persistent key handle. The key is loaded once and kept
 * loaded (with its authValue inside ESYS) until the provider is freed.
 *
 * Dictionary-attack rules: the authValue is presented exactly once per PIN
 * we are given, by one test signature; TPM_RC_AUTH_FAIL (which counts one
 * failure in the TPM) and TPM_RC_LOCKOUT end in E_PIN and nothing is tried
 * again. Signing keys are made without noDA, so the TPM counts failures.
 */
/* The management key (tpm_evp_key) is a legacy EC_KEY whose signing method
 * calls the TPM: deprecated in OpenSSL 3.0 but supported, and it needs no
 * provider (nothing loaded process-wide, the default library context). */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "cred.h"
#include "cred_hw.h"

#include <m2mvpn/m2mvpn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/secmem.h"
#include "crypto/pki_internal.h"

#ifndef M2MVPN_HAVE_TPM

static int no_tpm(char *err, size_t err_len)
{
    pki_set_err(err, err_len, "this build has no TPM support (built with -Dtpm=disabled)");
    return M2MVPN_E_NOTSUPP;
}

int cred_tpm_open(const char *key, const char *cert_file, const char *tcti,
                  const char *pin, size_t pin_len, cred_provider **ret, char *err, size_t err_len)
{
    (void)key, (void)cert_file, (void)tcti, (void)pin, (void)pin_len, (void)ret;
    return no_tpm(err, err_len);
}

int cred_tpm_open_key(const char *key, const char *tcti, const char *pin, size_t pin_len,
                      cred_provider **ret, char *err, size_t err_len)
{
    (void)key, (void)tcti, (void)pin, (void)pin_len, (void)ret;
    return no_tpm(err, err_len);
}

int cred_tpm_generate(const char *tcti, bool rsa, const char *pin, size_t pin_len,
                      uint32_t handle, char **ret_pem, char *err, size_t err_len)
{
    (void)tcti, (void)rsa, (void)pin, (void)pin_len, (void)handle, (void)ret_pem;
    return no_tpm(err, err_len);
}

int cred_tpm_key_public(const char *path, EVP_PKEY **ret, char *err, size_t err_len)
{
    (void)path, (void)ret;
    return no_tpm(err, err_len);
}

#else /* M2MVPN_HAVE_TPM */

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <dlfcn.h>
#include <pthread.h>

#include "hw_class.h"
#include "tss2_pem.h"

/* tpm2-tss is loaded (dlopen) when a TPM is first used, not linked: linked
 * in, its four libraries (and libtss2-sys) cost every client, PSK ones too,
 * about 40 KB of private memory for good (measured with bench/footprint).
 * Once loaded they stay (contexts and their TCTI modules live on). The
 * headers still type every call: each pointer has its function's type. */
enum { TSS2_LIB_ESYS, TSS2_LIB_MU, TSS2_LIB_RC, TSS2_LIB_TCTILDR, TSS2_N_LIBS };
static const char *const tss2_lib_names[TSS2_N_LIBS] = {
    "libtss2-esys.so.0", "libtss2-mu.so.0", "libtss2-rc.so.0", "libtss2-tctildr.so.0"};

#define TSS2_CALLS(X)                               \
    X(TSS2_LIB_ESYS, Esys_ContextLoad)              \
    X(TSS2_LIB_ESYS, Esys_ContextSave)              \
    X(TSS2_LIB_ESYS, Esys_Create)                   \
    X(TSS2_LIB_ESYS, Esys_CreatePrimary)            \
    X(TSS2_LIB_ESYS, Esys_EvictControl)             \
    X(TSS2_LIB_ESYS, Esys_Finalize)                 \
    X(TSS2_LIB_ESYS, Esys_FlushContext)             \
    X(TSS2_LIB_ESYS, Esys_Free)                     \
    X(TSS2_LIB_ESYS, Esys_GetCapability)            \
    X(TSS2_LIB_ESYS, Esys_Initialize)               \
    X(TSS2_LIB_ESYS, Esys_Load)                     \
    X(TSS2_LIB_ESYS, Esys_ReadPublic)               \
    X(TSS2_LIB_ESYS, Esys_Sign)                     \
    X(TSS2_LIB_ESYS, Esys_TR_Close)                 \
    X(TSS2_LIB_ESYS, Esys_TR_FromTPMPublic)         \
    X(TSS2_LIB_ESYS, Esys_TR_SetAuth)               \
    X(TSS2_LIB_MU, Tss2_MU_TPM2B_PRIVATE_Marshal)   \
    X(TSS2_LIB_MU, Tss2_MU_TPM2B_PRIVATE_Unmarshal) \
    X(TSS2_LIB_MU, Tss2_MU_TPM2B_PUBLIC_Marshal)    \
    X(TSS2_LIB_MU, Tss2_MU_TPM2B_PUBLIC_Unmarshal)  \
    X(TSS2_LIB_RC, Tss2_RC_Decode)                  \
    X(TSS2_LIB_TCTILDR, Tss2_TctiLdr_Finalize)      \
    X(TSS2_LIB_TCTILDR, Tss2_TctiLdr_Initialize)

static struct {
#define TSS2_FIELD(lib, name) __typeof__(name) *name;
    TSS2_CALLS(TSS2_FIELD)
#undef TSS2_FIELD
} tss2;
#define TSS2_NAME(l, name) #name,
#define TSS2_LIB(l, name) l,
static const char *const tss2_call_names[] = {TSS2_CALLS(TSS2_NAME)};
static const unsigned char tss2_call_lib[] = {TSS2_CALLS(TSS2_LIB)};
#undef TSS2_NAME
#undef TSS2_LIB
#define TSS2_N_CALLS (sizeof tss2_call_lib)
_Static_assert(sizeof tss2 == TSS2_N_CALLS * sizeof(void *), "one pointer per call, no padding");
static bool tss2_loaded;
static pthread_mutex_t tss2_lock = PTHREAD_MUTEX_INITIALIZER;

/* Loads the libraries once; the error names the one missing. Every path
 * to a tpm2-tss call goes through connect_tpm, which calls this first, or
 * (no TPM involved) cred_tpm_key_public. */
static int tss2_load(char *err, size_t err_len)
{
    int rc = 0;
    pthread_mutex_lock(&tss2_lock);
    if (!tss2_loaded) {
        void *lib[TSS2_N_LIBS] = {0};
        for (int i = 0; i < TSS2_N_LIBS && rc == 0; i++) {
            lib[i] = dlopen(tss2_lib_names[i], RTLD_NOW | RTLD_LOCAL);
            if (!lib[i]) {
                const char *why = dlerror();
                pki_set_err(err, err_len, "TPM support needs %s: %s", tss2_lib_names[i], why ? why : "?");
                rc = M2MVPN_E_NOTSUPP;
            }
        }
        for (size_t i = 0; i < TSS2_N_CALLS && rc == 0; i++) {
            void *p = dlsym(lib[tss2_call_lib[i]], tss2_call_names[i]);
            if (!p) {
                pki_set_err(err, err_len, "TPM support needs %s with %s", tss2_lib_names[tss2_call_lib[i]],
                            tss2_call_names[i]);
                rc = M2MVPN_E_NOTSUPP;
            }
            /* POSIX: a function pointer from dlsym's void * (through
             * memcpy, which ISO C allows), into its slot of the struct. */
            memcpy((char *)&tss2 + i * sizeof p, &p, sizeof p);
        }
        if (rc == 0) {
            tss2_loaded = true;
        } else {
            memset(&tss2, 0, sizeof tss2); /* no pointer into a library closed here */
            for (int i = 0; i < TSS2_N_LIBS; i++)
                if (lib[i])
                    dlclose(lib[i]);
        }
    }
    pthread_mutex_unlock(&tss2_lock);
    return rc;
}

/* From here on, the calls go through the loaded pointers. */
#define Esys_ContextLoad (*tss2.Esys_ContextLoad)
#define Esys_ContextSave (*tss2.Esys_ContextSave)
#define Esys_Create (*tss2.Esys_Create)
#define Esys_CreatePrimary (*tss2.Esys_CreatePrimary)
#define Esys_EvictControl (*tss2.Esys_EvictControl)
#define Esys_Finalize (*tss2.Esys_Finalize)
#define Esys_FlushContext (*tss2.Esys_FlushContext)
#define Esys_Free (*tss2.Esys_Free)
#define Esys_GetCapability (*tss2.Esys_GetCapability)
#define Esys_Initialize (*tss2.Esys_Initialize)
#define Esys_Load (*tss2.Esys_Load)
#define Esys_ReadPublic (*tss2.Esys_ReadPublic)
#define Esys_Sign (*tss2.Esys_Sign)
#define Esys_TR_Close (*tss2.Esys_TR_Close)
#define Esys_TR_FromTPMPublic (*tss2.Esys_TR_FromTPMPublic)
#define Esys_TR_SetAuth (*tss2.Esys_TR_SetAuth)
#define Tss2_MU_TPM2B_PRIVATE_Marshal (*tss2.Tss2_MU_TPM2B_PRIVATE_Marshal)
#define Tss2_MU_TPM2B_PRIVATE_Unmarshal (*tss2.Tss2_MU_TPM2B_PRIVATE_Unmarshal)
#define Tss2_MU_TPM2B_PUBLIC_Marshal (*tss2.Tss2_MU_TPM2B_PUBLIC_Marshal)
#define Tss2_MU_TPM2B_PUBLIC_Unmarshal (*tss2.Tss2_MU_TPM2B_PUBLIC_Unmarshal)
#define Tss2_RC_Decode (*tss2.Tss2_RC_Decode)
#define Tss2_TctiLdr_Finalize (*tss2.Tss2_TctiLdr_Finalize)
#define Tss2_TctiLdr_Initialize (*tss2.Tss2_TctiLdr_Initialize)

_Static_assert(TPM2_RC_LOCKOUT == 0x921 && TPM2_RC_AUTH_FAIL == 0x08e && TPM2_RC_BAD_AUTH == 0x0a2 &&
               TPM2_RC_INITIALIZE == 0x100 && TPM2_RC_WARN == 0x900, "TPM RCs as in hw_class.c");

typedef struct tpm_cred {
    char *key_ref;            /* file path or "0x81..." as configured */
    char *tcti_conf;          /* NULL: default */
    TSS2_TCTI_CONTEXT *tcti;
    ESYS_CONTEXT *esys;
    ESYS_TR key;              /* ESYS_TR_NONE until loaded */
    bool persistent;          /* key is a persistent handle: never flushed */
    bool unloaded;            /* cred_tpm_open_key: in the TPM only while it signs */
    TPMS_CONTEXT *saved;      /* unloaded: the key's saved context (once unlocked) */
    TPM2B_AUTH auth;          /* unloaded: its authValue, set again at each load */
    uint32_t handle;
    bool empty_auth;          /* the key file says it has no authValue */
    bool unlocked;
    bool lost;
    TPM2B_PUBLIC pub;
    EVP_PKEY *pkey;           /* public key built from pub */
    EVP_PKEY *evp;            /* tpm_evp_key(): signs through this provider */
    pki_cert **chain;
    size_t n_chain;
} tpm_cred;

/* ------------------------------------------------------------- helpers */

static bool rc_is_tpm(TSS2_RC rc)
{
    return (rc & TSS2_RC_LAYER_MASK) == TSS2_TPM_RC_LAYER;
}

/* TPM format-one codes carry a handle/parameter/session number in bits 8-11. */
static TSS2_RC rc_base(TSS2_RC rc)
{
    if (rc_is_tpm(rc) && (rc & TPM2_RC_FMT1))
        return rc & (TPM2_RC_FMT1 | 0x3f);
    return rc & 0xffff;
}

static bool rc_auth_fail(TSS2_RC rc)
{
    return rc_is_tpm(rc) && (rc_base(rc) == TPM2_RC_AUTH_FAIL || rc_base(rc) == TPM2_RC_BAD_AUTH);
}

static bool rc_lockout(TSS2_RC rc)
{
    return rc_is_tpm(rc) && rc_base(rc) == TPM2_RC_LOCKOUT;
}

/* An error outside an authorization: errors outside the TPM (TCTI, resource
 * manager, ESYS transport) and TPM_RC_INITIALIZE mean the TPM is not
 * reachable (lost: opened again); warnings (out of memory or sessions,
 * NV_RATE, RETRY, ...: the command was not executed) and the lockout are
 * retried later; the rest is a refusal. */
static int rc_error(tpm_cred *tc, TSS2_RC rc, const char *what, char *err, size_t err_len)
{
    cred_hw_class k = cred_hw_tpm_class(rc, false);
    switch (k) {
    case CRED_HW_GONE:
        if (tc)
            tc->lost = true;
        pki_set_err(err, err_len, "TPM not reachable (%s): %s", what, Tss2_RC_Decode(rc));
        break;
    case CRED_HW_RETRY:
        pki_set_err(err, err_len, "TPM busy or out of resources (%s): %s; tried again later", what,
                    Tss2_RC_Decode(rc));
        break;
    case CRED_HW_LOCKOUT:
        pki_set_err(err, err_len, "TPM is in dictionary-attack lockout (%s); tried again later", what);
        break;
    default:
        k = CRED_HW_REFUSED; /* an authorization we do not hold (e.g. the hierarchy's) */
        pki_set_err(err, err_len, "TPM refused %s: %s", what, Tss2_RC_Decode(rc));
        break;
    }
    return cred_hw_class_error(k);
}

static int connect_tpm(const char *conf, TSS2_TCTI_CONTEXT **tcti, ESYS_CONTEXT **esys,
                       char *err, size_t err_len)
{
    int lrc = tss2_load(err, err_len);
    if (lrc != 0)
        return lrc;
    TSS2_RC rc = Tss2_TctiLdr_Initialize(conf, tcti);
    if (rc != TSS2_RC_SUCCESS) {
        pki_set_err(err, err_len, "TPM not reachable (TCTI \"%s\"): %s", conf ? conf : "default",
                    Tss2_RC_Decode(rc));
        return M2MVPN_E_IO;
    }
    rc = Esys_Initialize(esys, *tcti, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        Tss2_TctiLdr_Finalize(tcti);
        pki_set_err(err, err_len, "TPM not reachable (TCTI \"%s\"): %s", conf ? conf : "default",
                    Tss2_RC_Decode(rc));
        return M2MVPN_E_IO;
    }
    return 0;
}

static void disconnect_tpm(TSS2_TCTI_CONTEXT **tcti, ESYS_CONTEXT **esys)
{
    if (*esys)
        Esys_Finalize(esys);
    if (*tcti)
        Tss2_TctiLdr_Finalize(tcti);
    *esys = NULL;
    *tcti = NULL;
}

/* The owner hierarchy's storage primary key, the template tpm2-tss-engine and
 * tpm2-openssl use for TSS2 key files whose parent is TPM2_RH_OWNER. */
static int create_primary(ESYS_CONTEXT *esys, ESYS_TR *ret, TSS2_RC *ret_rc)
{
    TPM2B_SENSITIVE_CREATE sens;
    memset(&sens, 0, sizeof sens);
    TPM2B_PUBLIC tpl;
    memset(&tpl, 0, sizeof tpl);
    tpl.publicArea.type = TPM2_ALG_ECC;
    tpl.publicArea.nameAlg = TPM2_ALG_SHA256;
    tpl.publicArea.objectAttributes = TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_RESTRICTED |
                                      TPMA_OBJECT_DECRYPT | TPMA_OBJECT_NODA | TPMA_OBJECT_FIXEDTPM |
                                      TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN;
    tpl.publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
    tpl.publicArea.parameters.eccDetail.symmetric.keyBits.aes = 128;
    tpl.publicArea.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
    tpl.publicArea.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
    tpl.publicArea.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    tpl.publicArea.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
    TPM2B_DATA outside;
    memset(&outside, 0, sizeof outside);
    TPML_PCR_SELECTION pcrs;
    memset(&pcrs, 0, sizeof pcrs);
    *ret_rc = Esys_CreatePrimary(esys, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                 &sens, &tpl, &outside, &pcrs, ret, NULL, NULL, NULL, NULL);
    return *ret_rc == TSS2_RC_SUCCESS ? 0 : -1;
}

/* An OpenSSL public key from the TPM's public area (RSA or ECC P-256/384). */
static EVP_PKEY *pkey_from_public(const TPMT_PUBLIC *pub)
{
    OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pk = NULL;
    BIGNUM *n = NULL, *e = NULL;
    uint8_t point[1 + 2 * 66];
    if (!b)
        return NULL;
    if (pub->type == TPM2_ALG_RSA) {
        uint32_t exp = pub->parameters.rsaDetail.exponent ? pub->parameters.rsaDetail.exponent : 65537;
        n = BN_bin2bn(pub->unique.rsa.buffer, pub->unique.rsa.size, NULL);
        e = BN_new();
        if (!n || !e || !BN_set_word(e, exp) || !OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_N, n) ||
            !OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_E, e))
            goto out;
        ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    } else if (pub->type == TPM2_ALG_ECC) {
        const char *group;
        size_t fl;
        switch (pub->parameters.eccDetail.curveID) {
        case TPM2_ECC_NIST_P256: group = "P-256"; fl = 32; break;
        case TPM2_ECC_NIST_P384: group = "P-384"; fl = 48; break;
        default: goto out;
        }
        const TPMS_ECC_POINT *q = &pub->unique.ecc;
        if (q->x.size > fl || q->y.size > fl)
            goto out;
        memset(point, 0, sizeof point);
        point[0] = 0x04;
        memcpy(point + 1 + fl - q->x.size, q->x.buffer, q->x.size);
        memcpy(point + 1 + 2 * fl - q->y.size, q->y.buffer, q->y.size);
        if (!OSSL_PARAM_BLD_push_utf8_string(b, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) ||
            !OSSL_PARAM_BLD_push_octet_string(b, OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * fl))
            goto out;
        ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    } else {
        goto out;
    }
    if (!ctx || !(params = OSSL_PARAM_BLD_to_param(b)) || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pk = NULL;
out:
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(b);
    EVP_PKEY_CTX_free(ctx);
    BN_free(n);
    BN_free(e);
    ERR_clear_error();
    return pk;
}

static TPMI_ALG_HASH tpm_hash(pki_sig_scheme s)
{
    switch (s) {
    case PKI_SIG_RSA_PKCS1_SHA1: return TPM2_ALG_SHA1;
    case PKI_SIG_RSA_PKCS1_SHA256:
    case PKI_SIG_RSA_PSS_SHA256:
    case PKI_SIG_ECDSA_SHA256: return TPM2_ALG_SHA256;
    case PKI_SIG_RSA_PKCS1_SHA384:
    case PKI_SIG_RSA_PSS_SHA384:
    case PKI_SIG_ECDSA_SHA384: return TPM2_ALG_SHA384;
    case PKI_SIG_RSA_PKCS1_SHA512:
    case PKI_SIG_RSA_PSS_SHA512:
    case PKI_SIG_ECDSA_SHA512: return TPM2_ALG_SHA512;
    default: return TPM2_ALG_NULL;
    }
}

/* ------------------------------------------ the key as an OpenSSL EVP_PKEY */

static int ec_idx = -1;                 /* EC_KEY ex_data: its tpm_cred */
static EC_KEY_METHOD *ec_meth;
static CRYPTO_ONCE ec_once = CRYPTO_ONCE_STATIC_INIT;

static ECDSA_SIG *ec_sign_sig(const unsigned char *dgst, int dlen, const BIGNUM *kinv, const BIGNUM *r,
                              EC_KEY *ec);

static void ec_init(void)
{
    ec_idx = EC_KEY_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    /* ECDSA_sign() keeps OpenSSL's DER encoding and calls sign_sig: ours. */
    int (*sign)(int, const unsigned char *, int, unsigned char *, unsigned int *, const BIGNUM *,
                const BIGNUM *, EC_KEY *) = NULL;
    int (*setup)(EC_KEY *, BN_CTX *, BIGNUM **, BIGNUM **) = NULL;
    EC_KEY_METHOD_get_sign(EC_KEY_OpenSSL(), &sign, &setup, NULL);
    if (ec_idx >= 0 && (ec_meth = EC_KEY_METHOD_new(EC_KEY_OpenSSL())))
        EC_KEY_METHOD_set_sign(ec_meth, sign, setup, ec_sign_sig);
}

/* The provider goes: a key someone still holds must fail, not sign with it. */
static void evp_detach(tpm_cred *tc)
{
    if (tc->evp) {
        EC_KEY_set_ex_data((EC_KEY *)EVP_PKEY_get0_EC_KEY(tc->evp), ec_idx, NULL);
        EVP_PKEY_free(tc->evp);
        tc->evp = NULL;
    }
}

/* ------------------------------------------------------------- lifecycle */

static void tpm_unload(tpm_cred *tc)
{
    if (tc->saved) /* (tpm2-tss loaded then): nothing of it in the TPM, flushed after each use */
        Esys_Free(tc->saved);
    tc->saved = NULL;
    secure_wipe(&tc->auth, sizeof tc->auth);
    if (tc->esys && tc->key != ESYS_TR_NONE) {
        static const TPM2B_AUTH none = { 0 };
        Esys_TR_SetAuth(tc->esys, tc->key, &none); /* ESYS's copy of the authValue */
        if (tc->persistent)
            Esys_TR_Close(tc->esys, &tc->key);
        else
            Esys_FlushContext(tc->esys, tc->key);
    }
    tc->key = ESYS_TR_NONE;
    disconnect_tpm(&tc->tcti, &tc->esys);
}

static void tpm_destroy(void *ctx)
{
    tpm_cred *tc = ctx;
    if (!tc)
        return;
    tpm_unload(tc);
    evp_detach(tc);
    EVP_PKEY_free(tc->pkey);
    pki_cert_array_free(tc->chain, tc->n_chain);
    free(tc->key_ref);
    free(tc->tcti_conf);
    free(tc);
}

/* Load the key (file) or attach to it (handle); fills pub and pkey. */
static int load_key(tpm_cred *tc, char *err, size_t err_len)
{
    int rc = connect_tpm(tc->tcti_conf, &tc->tcti, &tc->esys, err, err_len);
    if (rc < 0) {
        tc->lost = true;
        return rc;
    }
    TSS2_RC trc;
    if (tc->persistent) {
        trc = Esys_TR_FromTPMPublic(tc->esys, tc->handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &tc->key);
        if (trc != TSS2_RC_SUCCESS) {
            tc->key = ESYS_TR_NONE;
            if (rc_is_tpm(trc)) {
                pki_set_err(err, err_len, "no key at TPM handle 0x%08x (%s)", tc->handle, Tss2_RC_Decode(trc));
                return M2MVPN_E_CERT;
            }
            return rc_error(tc, trc, "reading the key handle", err, err_len);
        }
        TPM2B_PUBLIC *pub = NULL;
        trc = Esys_ReadPublic(tc->esys, tc->key, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub, NULL, NULL);
        if (trc != TSS2_RC_SUCCESS)
            return rc_error(tc, trc, "reading the public key", err, err_len);
        tc->pub = *pub;
        Esys_Free(pub);
    } else {
        uint8_t *data = NULL;
        size_t len = 0;
        tss2_key_blob *blob = calloc(1, sizeof *blob);
        if (!blob)
            return M2MVPN_E_NOMEM;
        rc = pki_read_file(tc->key_ref, &data, &len, err, err_len);
        char why[200] = "";
        if (rc == 0)
            rc = tss2_key_parse_pem(data, len, blob, why, sizeof why);
        free(data);
        TPM2B_PRIVATE priv;
        size_t off1 = 0, off2 = 0;
        if (rc == 0 &&
            (Tss2_MU_TPM2B_PUBLIC_Unmarshal(blob->pub, blob->pub_len, &off1, &tc->pub) != TSS2_RC_SUCCESS ||
             Tss2_MU_TPM2B_PRIVATE_Unmarshal(blob->priv, blob->priv_len, &off2, &priv) != TSS2_RC_SUCCESS ||
             off1 != blob->pub_len || off2 != blob->priv_len)) {
            snprintf(why, sizeof why, "TSS2 key: public or private part malformed");
            rc = M2MVPN_E_CERT;
        }
        uint32_t parent = blob->parent;
        tc->empty_auth = blob->empty_auth;
        secure_wipe(blob, sizeof *blob);
        free(blob);
        if (rc < 0) {
            if (why[0])
                pki_set_err(err, err_len, "%s: %s", tc->key_ref, why);
            return rc;
        }
        ESYS_TR parent_tr = ESYS_TR_NONE;
        bool flush_parent = false;
        if (parent == TPM2_RH_OWNER) {
            if (create_primary(tc->esys, &parent_tr, &trc) < 0)
                return rc_error(tc, trc, "creating the storage primary key", err, err_len);
            flush_parent = true;
        } else if ((parent >> 24) == TPM2_HT_PERSISTENT) {
            trc = Esys_TR_FromTPMPublic(tc->esys, parent, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &parent_tr);
            if (trc != TSS2_RC_SUCCESS)
                return rc_error(tc, trc, "finding the parent key", err, err_len);
        } else {
            pki_set_err(err, err_len, "%s: parent 0x%08x is neither the owner hierarchy nor a persistent "
                        "handle", tc->key_ref, parent);
            return M2MVPN_E_CERT;
        }
        trc = Esys_Load(tc->esys, parent_tr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &priv, &tc->pub,
                        &tc->key);
        secure_wipe(&priv, sizeof priv);
        if (flush_parent)
            Esys_FlushContext(tc->esys, parent_tr);
        else
            Esys_TR_Close(tc->esys, &parent_tr);
        if (trc != TSS2_RC_SUCCESS) {
            tc->key = ESYS_TR_NONE;
            return rc_error(tc, trc, "loading the key (made by another TPM?)", err, err_len);
        }
    }
    TPMA_OBJECT a = tc->pub.publicArea.objectAttributes;
    if (!(a & TPMA_OBJECT_SIGN_ENCRYPT) || (a & TPMA_OBJECT_RESTRICTED)) {
        pki_set_err(err, err_len, "TPM key %s is not an unrestricted signing key", tc->key_ref);
        return M2MVPN_E_CERT;
    }
    if (!tc->pkey && !(tc->pkey = pkey_from_public(&tc->pub.publicArea))) {
        pki_set_err(err, err_len, "TPM key %s: unsupported type (want RSA or ECC P-256/384)", tc->key_ref);
        return M2MVPN_E_CERT;
    }
    return 0;
}

/* An unloaded key back in the TPM for one use (its saved context needs no
 * parent and no primary key, one object slot), and out again. */
static TSS2_RC key_in(tpm_cred *tc)
{
    if (!tc->saved || tc->key != ESYS_TR_NONE)
        return TSS2_RC_SUCCESS;
    TSS2_RC trc = Esys_ContextLoad(tc->esys, tc->saved, &tc->key);
    if (trc != TSS2_RC_SUCCESS) {
        tc->key = ESYS_TR_NONE;
        return trc;
    }
    return Esys_TR_SetAuth(tc->esys, tc->key, &tc->auth);
}

static void key_out(tpm_cred *tc)
{
    if (tc->saved && tc->key != ESYS_TR_NONE) {
        static const TPM2B_AUTH none = { 0 };
        Esys_TR_SetAuth(tc->esys, tc->key, &none);
        Esys_FlushContext(tc->esys, tc->key);
        tc->key = ESYS_TR_NONE;
    }
}

/* The signature itself; the caller has checked the scheme. */
static TSS2_RC tpm_sign_digest(tpm_cred *tc, pki_sig_scheme scheme, const uint8_t *digest, size_t dlen,
                               TPMT_SIGNATURE **ret)
{
    TSS2_RC trc = key_in(tc);
    if (trc != TSS2_RC_SUCCESS)
        return trc;
    TPM2B_DIGEST d;
    memset(&d, 0, sizeof d);
    d.size = (UINT16)dlen;
    memcpy(d.buffer, digest, dlen);
    TPMT_SIG_SCHEME s;
    memset(&s, 0, sizeof s);
    s.scheme = pki_scheme_is_ecdsa(scheme) ? TPM2_ALG_ECDSA
               : pki_scheme_is_pss(scheme) ? TPM2_ALG_RSAPSS
                                           : TPM2_ALG_RSASSA;
    s.details.any.hashAlg = tpm_hash(scheme);
    TPMT_TK_HASHCHECK check = { .tag = TPM2_ST_HASHCHECK, .hierarchy = TPM2_RH_NULL };
    trc = Esys_Sign(tc->esys, tc->key, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &d, &s, &check, ret);
    key_out(tc);
    return trc;
}

static int auth_error(tpm_cred *tc, TSS2_RC trc, char *err, size_t err_len)
{
    if (rc_lockout(trc)) {
        pki_set_err(err, err_len, "TPM is in dictionary-attack lockout: key %s not usable now (nothing "
                    "was counted); tried again later", tc->key_ref);
        return M2MVPN_E_IO;
    }
    pki_set_err(err, err_len, "wrong PIN for TPM key %s", tc->key_ref);
    return M2MVPN_E_PIN;
}

/* Whether the TPM is in dictionary-attack lockout (TPMA_PERMANENT inLockout,
 * read by GetCapability, which needs no authorization and counts nothing). */
static TSS2_RC read_in_lockout(tpm_cred *tc, bool *ret)
{
    TPMS_CAPABILITY_DATA *cap = NULL;
    TPMI_YES_NO more = TPM2_NO;
    TSS2_RC trc = Esys_GetCapability(tc->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                     TPM2_CAP_TPM_PROPERTIES, TPM2_PT_PERMANENT, 1, &more, &cap);
    *ret = false;
    if (trc == TSS2_RC_SUCCESS && cap->data.tpmProperties.count >= 1 &&
        cap->data.tpmProperties.tpmProperty[0].property == TPM2_PT_PERMANENT)
        *ret = (cap->data.tpmProperties.tpmProperty[0].value & TPMA_PERMANENT_INLOCKOUT) != 0;
    Esys_Free(cap);
    return trc;
}

/* Present the authValue once, by a test signature over a fixed digest. */
static int unlock(tpm_cred *tc, const char *pin, size_t pin_len, char *err, size_t err_len)
{
    TPM2B_AUTH auth;
    memset(&auth, 0, sizeof auth);
    if (pin_len > sizeof auth.buffer) {
        pki_set_err(err, err_len, "PIN for TPM key %s too long (at most %zu bytes)", tc->key_ref,
                    sizeof auth.buffer);
        return M2MVPN_E_PIN;
    }
    /* In lockout a DA-protected key refuses every use: nothing is presented
     * (another process may have caused it; ours must not prolong it). */
    if (!(tc->pub.publicArea.objectAttributes & TPMA_OBJECT_NODA)) {
        bool locked = false;
        TSS2_RC lrc = read_in_lockout(tc, &locked);
        if (lrc != TSS2_RC_SUCCESS)
            return rc_error(tc, lrc, "reading the lockout state", err, err_len);
        if (locked) {
            pki_set_err(err, err_len, "TPM is in dictionary-attack lockout: the PIN of key %s was not "
                        "presented (nothing counted); tried again later", tc->key_ref);
            return M2MVPN_E_IO;
        }
    }
    auth.size = (UINT16)pin_len;
    if (pin_len)
        memcpy(auth.buffer, pin, pin_len);
    TSS2_RC trc = key_in(tc); /* a PIN given again (after a refused one) */
    if (trc == TSS2_RC_SUCCESS)
        trc = Esys_TR_SetAuth(tc->esys, tc->key, &auth);
    if (trc == TSS2_RC_SUCCESS && tc->unloaded)
        tc->auth = auth;
    secure_wipe(&auth, sizeof auth);
    if (trc != TSS2_RC_SUCCESS) {
        key_out(tc);
        return rc_error(tc, trc, "setting the authValue", err, err_len);
    }
    static const uint8_t probe[32];
    pki_sig_scheme s = tc->pub.publicArea.type == TPM2_ALG_RSA ? PKI_SIG_RSA_PKCS1_SHA256 : PKI_SIG_ECDSA_SHA256;
    TPMT_SIGNATURE *sig = NULL;
    trc = tpm_sign_digest(tc, s, probe, sizeof probe, &sig);
    Esys_Free(sig);
    if (trc != TSS2_RC_SUCCESS) {
        static const TPM2B_AUTH none = { 0 };
        Esys_TR_SetAuth(tc->esys, tc->key, &none);
        if (rc_auth_fail(trc) || rc_lockout(trc))
            return auth_error(tc, trc, err, err_len);
        if (cred_hw_tpm_class(trc, true) == CRED_HW_PIN) {
            /* The answer is lost: the TPM may have counted a failure. */
            pki_set_err(err, err_len, "the TPM stopped answering while it checked the PIN of key %s "
                        "(%s): not presented again by itself (a failure may have been counted); "
                        "give the PIN again", tc->key_ref, Tss2_RC_Decode(trc));
            return M2MVPN_E_PIN;
        }
        return rc_error(tc, trc, "signing", err, err_len);
    }
    if (tc->unloaded && !tc->saved) {
        /* Out of the TPM from now on: its context saved (by the TPM, under
         * its own key), the object flushed; loaded again for each use. */
        trc = Esys_ContextSave(tc->esys, tc->key, &tc->saved);
        if (trc != TSS2_RC_SUCCESS) {
            tc->saved = NULL;
            return rc_error(tc, trc, "saving the key's context", err, err_len);
        }
        key_out(tc);
    }
    tc->unlocked = true;
    return 0;
}

/* ------------------------------------------------------------ operations */

static bool tpm_pin_needed(void *ctx)
{
    return !((tpm_cred *)ctx)->unlocked;
}

static bool tpm_lost(void *ctx)
{
    return ((tpm_cred *)ctx)->lost;
}

static void tpm_describe(void *ctx, char *buf, size_t len)
{
    tpm_cred *tc = ctx;
    snprintf(buf, len, "TPM key %s%s%s", tc->key_ref, tc->tcti_conf ? " via " : "",
             tc->tcti_conf ? tc->tcti_conf : "");
}

static int tpm_chain(void *ctx, pki_cert *const **ret_certs, size_t *ret_n, char *err, size_t err_len)
{
    tpm_cred *tc = ctx;
    if (!tc->n_chain) {
        pki_set_err(err, err_len, "no certificate for TPM key %s", tc->key_ref);
        return M2MVPN_E_CERT;
    }
    *ret_certs = tc->chain;
    *ret_n = tc->n_chain;
    return 0;
}

static int tpm_key_info(void *ctx, pki_key_type *ret_type, unsigned *ret_bits, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    tpm_cred *tc = ctx;
    *ret_type = pki_pkey_type(tc->pkey, ret_bits);
    return 0;
}

static int tpm_set_pin(void *ctx, const char *pin, size_t len, char *err, size_t err_len)
{
    tpm_cred *tc = ctx;
    if (tc->unlocked)
        return 0;
    return unlock(tc, pin, len, err, err_len);
}

static int tpm_spki(void *ctx, uint8_t *out, size_t cap, size_t *ret_len, char *err, size_t err_len)
{
    tpm_cred *tc = ctx;
    int n = i2d_PUBKEY(tc->pkey, NULL);
    if (n <= 0 || (size_t)n > cap) {
        ERR_clear_error();
        pki_set_err(err, err_len, "public key of TPM key %s cannot be encoded", tc->key_ref);
        return M2MVPN_E_INVAL;
    }
    unsigned char *p = out;
    i2d_PUBKEY(tc->pkey, &p);
    *ret_len = (size_t)n;
    return 0;
}

static int tpm_sign(void *ctx, pki_sig_scheme scheme, const uint8_t *data, size_t len,
                    uint8_t *sig, size_t cap, size_t *ret_len, char *err, size_t err_len)
{
    tpm_cred *tc = ctx;
    if (!tc->unlocked) {
        pki_set_err(err, err_len, "PIN required for TPM key %s", tc->key_ref);
        return M2MVPN_E_PIN;
    }
    if (tc->lost) {
        pki_set_err(err, err_len, "TPM of key %s not reachable", tc->key_ref);
        return M2MVPN_E_IO;
    }
    pki_key_type kt = pki_pkey_type(tc->pkey, NULL);
    if ((!pki_auth_scheme_fits(PKI_AUTH_DIGITAL_SIGNATURE, scheme, kt) &&
         !(scheme == PKI_SIG_RSA_PKCS1_SHA1 && kt == PKI_KEY_RSA)) || tpm_hash(scheme) == TPM2_ALG_NULL) {
        pki_set_err(err, err_len, "cannot sign %s with a %s key", pki_sig_scheme_name(scheme),
                    pki_key_type_name(kt));
        return M2MVPN_E_INVAL;
    }
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned dlen = 0;
    if (EVP_Digest(data, len, digest, &dlen, pki_scheme_md(scheme), NULL) != 1) {
        ERR_clear_error();
        return M2MVPN_E_CRYPTO;
    }
    TPMT_SIGNATURE *ts = NULL;
    TSS2_RC trc = tpm_sign_digest(tc, scheme, digest, dlen, &ts);
    if (trc != TSS2_RC_SUCCESS) {
        Esys_Free(ts);
        if (rc_lockout(trc))
            return auth_error(tc, trc, err, err_len); /* not counted: the PIN stays */
        if (rc_auth_fail(trc)) {
            tc->unlocked = false; /* never presented again by itself */
            return auth_error(tc, trc, err, err_len);
        }
        return rc_error(tc, trc, "signing", err, err_len);
    }
    int rc = 0;
    if (ts->sigAlg == TPM2_ALG_ECDSA) {
        size_t fl = pki_key_field_len(kt);
        const TPMS_SIGNATURE_ECDSA *e = &ts->signature.ecdsa;
        uint8_t raw[2 * 66];
        if (fl == 0 || e->signatureR.size > fl || e->signatureS.size > fl) {
            rc = M2MVPN_E_CRYPTO;
        } else {
            memset(raw, 0, sizeof raw);
            memcpy(raw + fl - e->signatureR.size, e->signatureR.buffer, e->signatureR.size);
            memcpy(raw + 2 * fl - e->signatureS.size, e->signatureS.buffer, e->signatureS.size);
            rc = pki_ecdsa_raw_to_der(raw, 2 * fl, sig, cap, ret_len);
        }
    } else {
        const TPM2B_PUBLIC_KEY_RSA *r = &ts->signature.rsassa.sig; /* same layout for PSS */
        if (r->size > cap) {
            rc = M2MVPN_E_INVAL;
        } else {
            memcpy(sig, r->buffer, r->size);
            *ret_len = r->size;
        }
    }
    Esys_Free(ts);
    if (rc < 0)
        pki_set_err(err, err_len, "TPM signature cannot be used (%s)", pki_sig_scheme_name(scheme));
    return rc;
}

/* OpenSSL's ECDSA over a digest it computed (CMP proof of possession, TLS
 * CertificateVerify): the TPM signs the digest, the key never leaves it. */
static ECDSA_SIG *ec_sign_sig(const unsigned char *dgst, int dlen, const BIGNUM *kinv, const BIGNUM *r,
                              EC_KEY *ec)
{
    (void)kinv, (void)r;
    tpm_cred *tc = EC_KEY_get_ex_data(ec, ec_idx);
    pki_sig_scheme s = dlen == 32 ? PKI_SIG_ECDSA_SHA256 : dlen == 48 ? PKI_SIG_ECDSA_SHA384
                     : dlen == 64 ? PKI_SIG_ECDSA_SHA512 : PKI_SIG_NONE;
    if (!tc || !tc->unlocked || tc->lost || s == PKI_SIG_NONE) {
        ECerr(0, ERR_R_PASSED_INVALID_ARGUMENT);
        return NULL;
    }
    TPMT_SIGNATURE *ts = NULL;
    TSS2_RC trc = tpm_sign_digest(tc, s, dgst, (size_t)dlen, &ts);
    ECDSA_SIG *sig = NULL;
    if (trc == TSS2_RC_SUCCESS && ts->sigAlg == TPM2_ALG_ECDSA && (sig = ECDSA_SIG_new())) {
        const TPMS_SIGNATURE_ECDSA *e = &ts->signature.ecdsa;
        BIGNUM *br = BN_bin2bn(e->signatureR.buffer, e->signatureR.size, NULL);
        BIGNUM *bs = BN_bin2bn(e->signatureS.buffer, e->signatureS.size, NULL);
        if (!br || !bs || !ECDSA_SIG_set0(sig, br, bs)) {
            BN_free(br);
            BN_free(bs);
            ECDSA_SIG_free(sig);
            sig = NULL;
        }
    } else if (trc != TSS2_RC_SUCCESS) {
        if (rc_auth_fail(trc))
            tc->unlocked = false; /* never presented again by itself */
        else if (cred_hw_tpm_class(trc, false) == CRED_HW_GONE)
            tc->lost = true;
        ECerr(0, ERR_R_INTERNAL_ERROR);
    }
    Esys_Free(ts);
    return sig;
}

/* An EVP_PKEY of the default library context that signs through this
 * provider (ECC only; an RSA TPM key has none). */
static EVP_PKEY *tpm_evp_key(void *ctx)
{
    tpm_cred *tc = ctx;
    if (!tc->unlocked || !CRYPTO_THREAD_run_once(&ec_once, ec_init) || !ec_meth)
        return NULL;
    if (!tc->evp && EVP_PKEY_get_base_id(tc->pkey) == EVP_PKEY_EC) {
        EC_KEY *ec = EC_KEY_dup(EVP_PKEY_get0_EC_KEY(tc->pkey));
        EVP_PKEY *k = EVP_PKEY_new();
        if (ec && k && EC_KEY_set_method(ec, ec_meth) && EC_KEY_set_ex_data(ec, ec_idx, tc) &&
            EVP_PKEY_assign_EC_KEY(k, ec)) {
            tc->evp = k;
        } else {
            EC_KEY_free(ec);
            EVP_PKEY_free(k);
        }
    }
    ERR_clear_error();
    return tc->evp && EVP_PKEY_up_ref(tc->evp) ? tc->evp : NULL;
}

static const cred_ops tpm_ops = {
    .name = "tpm",
    .chain = tpm_chain,
    .key_info = tpm_key_info,
    .pin_needed = tpm_pin_needed,
    .set_pin = tpm_set_pin,
    .sign = tpm_sign,
    .destroy = tpm_destroy,
    .describe = tpm_describe,
    .lost = tpm_lost,
    .spki = tpm_spki,
    .evp_key = tpm_evp_key,
};

/* ------------------------------------------------------------------ open */

static bool parse_handle(const char *s, uint32_t *ret)
{
    if (strncmp(s, "0x", 2) != 0 || strlen(s) != 10 || strspn(s + 2, "0123456789abcdefABCDEF") != 8)
        return false;
    unsigned long v = strtoul(s + 2, NULL, 16);
    if ((v >> 24) != TPM2_HT_PERSISTENT)
        return false;
    *ret = (uint32_t)v;
    return true;
}

static int open_common(const char *key, const char *cert_file, const char *tcti, const char *pin, size_t pin_len,
                       bool unloaded, cred_provider **ret, char *err, size_t err_len)
{
    if (!key || !ret || (pin && pin_len == 0))
        return M2MVPN_E_INVAL;
    tpm_cred *tc = calloc(1, sizeof *tc);
    cred_provider *p = calloc(1, sizeof *p);
    int rc = M2MVPN_E_NOMEM;
    if (!tc || !p || !(tc->key_ref = strdup(key)) || (tcti && !(tc->tcti_conf = strdup(tcti))))
        goto fail;
    tc->key = ESYS_TR_NONE;
    tc->persistent = parse_handle(key, &tc->handle);
    tc->unloaded = unloaded && !tc->persistent;
    if (cert_file && (rc = pki_cert_load_file(cert_file, &tc->chain, &tc->n_chain, err, err_len)) < 0)
        goto fail;
    if ((rc = load_key(tc, err, err_len)) < 0)
        goto fail;
    if (tc->n_chain && EVP_PKEY_eq(pki_cert_pubkey(tc->chain[0]), tc->pkey) != 1) {
        char subject[256];
        pki_cert_subject_text(tc->chain[0], subject, sizeof subject);
        pki_set_err(err, err_len, "TPM key %s does not match certificate %s", key, subject);
        ERR_clear_error();
        rc = M2MVPN_E_CERT;
        goto fail;
    }
    /* A key file tells whether it has an authValue; for a handle an absent
     * PIN means the empty one (checked once, like any PIN). */
    if (pin)
        rc = unlock(tc, pin, pin_len, err, err_len);
    else if (tc->empty_auth || tc->persistent)
        rc = unlock(tc, "", 0, err, err_len);
    if (rc < 0)
        goto fail;
    if (err && err_len)
        err[0] = '\0';
    p->ops = &tpm_ops;
    p->ctx = tc;
    *ret = p;
    return 0;
fail:
    tpm_destroy(tc);
    free(p);
    return rc;
}

int cred_tpm_open(const char *key, const char *cert_file, const char *tcti,
                  const char *pin, size_t pin_len, cred_provider **ret, char *err, size_t err_len)
{
    if (!cert_file)
        return M2MVPN_E_INVAL;
    return open_common(key, cert_file, tcti, pin, pin_len, false, ret, err, err_len);
}

int cred_tpm_open_key(const char *key, const char *tcti, const char *pin, size_t pin_len,
                      cred_provider **ret, char *err, size_t err_len)
{
    return open_common(key, NULL, tcti, pin, pin_len, true, ret, err, err_len);
}

/* ------------------------------------------------------- key generation */

int cred_tpm_generate(const char *tcti, bool rsa, const char *pin, size_t pin_len,
                      uint32_t handle, char **ret_pem, char *err, size_t err_len)
{
    if (!ret_pem || (pin && (pin_len == 0 || pin_len > sizeof(((TPM2B_AUTH *)0)->buffer))) ||
        (handle && (handle >> 24) != TPM2_HT_PERSISTENT))
        return M2MVPN_E_INVAL;
    *ret_pem = NULL;
    TSS2_TCTI_CONTEXT *t = NULL;
    ESYS_CONTEXT *e = NULL;
    int rc = connect_tpm(tcti, &t, &e, err, err_len);
    if (rc < 0)
        return rc;
    ESYS_TR primary = ESYS_TR_NONE, loaded = ESYS_TR_NONE, persisted = ESYS_TR_NONE;
    TPM2B_PRIVATE *priv = NULL;
    TPM2B_PUBLIC *pub = NULL;
    tss2_key_blob *blob = NULL;
    TSS2_RC trc;
    if (create_primary(e, &primary, &trc) < 0) {
        rc = rc_error(NULL, trc, "creating the storage primary key", err, err_len);
        goto out;
    }
    TPM2B_SENSITIVE_CREATE sens;
    memset(&sens, 0, sizeof sens);
    if (pin) {
        sens.sensitive.userAuth.size = (UINT16)pin_len;
        memcpy(sens.sensitive.userAuth.buffer, pin, pin_len);
    }
    TPM2B_PUBLIC tpl;
    memset(&tpl, 0, sizeof tpl);
    TPMT_PUBLIC *a = &tpl.publicArea;
    a->nameAlg = TPM2_ALG_SHA256;
    /* No noDA: wrong authValues count towards the TPM's lockout. No
     * encryptedDuplication/duplication: fixedTPM | fixedParent. */
    a->objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                          TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_SIGN_ENCRYPT;
    if (rsa) {
        a->type = TPM2_ALG_RSA;
        a->parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_NULL;
        a->parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
        a->parameters.rsaDetail.keyBits = 2048;
        a->parameters.rsaDetail.exponent = 0;
    } else {
        a->type = TPM2_ALG_ECC;
        a->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
        a->parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
        a->parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
        a->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
    }
    TPM2B_DATA outside;
    memset(&outside, 0, sizeof outside);
    TPML_PCR_SELECTION pcrs;
    memset(&pcrs, 0, sizeof pcrs);
    trc = Esys_Create(e, primary, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sens, &tpl, &outside, &pcrs,
                      &priv, &pub, NULL, NULL, NULL);
    secure_wipe(&sens, sizeof sens);
    if (trc != TSS2_RC_SUCCESS) {
        rc = rc_error(NULL, trc, rsa ? "creating an RSA 2048 key" : "creating an ECC P-256 key", err, err_len);
        goto out;
    }
    if (handle) {
        trc = Esys_Load(e, primary, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, priv, pub, &loaded);
        if (trc == TSS2_RC_SUCCESS)
            trc = Esys_EvictControl(e, ESYS_TR_RH_OWNER, loaded, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                    handle, &persisted);
        if (trc != TSS2_RC_SUCCESS) {
            rc = rc_error(NULL, trc, "making the key persistent (handle taken?)", err, err_len);
            goto out;
        }
        Esys_TR_Close(e, &persisted);
        rc = 0;
        goto out;
    }
    if (!(blob = calloc(1, sizeof *blob))) {
        rc = M2MVPN_E_NOMEM;
        goto out;
    }
    blob->empty_auth = pin == NULL;
    blob->parent = TPM2_RH_OWNER;
    if (Tss2_MU_TPM2B_PUBLIC_Marshal(pub, blob->pub, sizeof blob->pub, &blob->pub_len) != TSS2_RC_SUCCESS ||
        Tss2_MU_TPM2B_PRIVATE_Marshal(priv, blob->priv, sizeof blob->priv, &blob->priv_len) != TSS2_RC_SUCCESS) {
        pki_set_err(err, err_len, "cannot encode the TPM key");
        rc = M2MVPN_E_CRYPTO;
        goto out;
    }
    rc = tss2_key_encode_pem(blob, ret_pem);
out:
    if (blob) {
        secure_wipe(blob, sizeof *blob);
        free(blob);
    }
    Esys_Free(priv);
    Esys_Free(pub);
    if (loaded != ESYS_TR_NONE)
        Esys_FlushContext(e, loaded);
    if (primary != ESYS_TR_NONE)
        Esys_FlushContext(e, primary);
    disconnect_tpm(&t, &e);
    return rc;
}

/* ------------------------------------------------- a key file's public key */

int cred_tpm_key_public(const char *path, EVP_PKEY **ret, char *err, size_t err_len)
{
    if (!path || !ret)
        return M2MVPN_E_INVAL;
    *ret = NULL;
    /* No TPM connection here, so the libraries are loaded for the
     * unmarshalling: a restart finishing a renewal calls this first. */
    int lrc = tss2_load(err, err_len);
    if (lrc != 0)
        return lrc;
    uint8_t *data = NULL;
    size_t len = 0;
    char why[200] = "";
    tss2_key_blob *blob = calloc(1, sizeof *blob);
    if (!blob)
        return M2MVPN_E_NOMEM;
    int rc = pki_read_file(path, &data, &len, err, err_len);
    if (rc == 0)
        rc = tss2_key_parse_pem(data, len, blob, why, sizeof why);
    free(data);
    TPM2B_PUBLIC pub;
    memset(&pub, 0, sizeof pub);
    size_t off = 0;
    if (rc == 0 && (Tss2_MU_TPM2B_PUBLIC_Unmarshal(blob->pub, blob->pub_len, &off, &pub) != TSS2_RC_SUCCESS ||
                    off != blob->pub_len)) {
        snprintf(why, sizeof why, "TSS2 key: public part malformed");
        rc = M2MVPN_E_CERT;
    }
    secure_wipe(blob, sizeof *blob);
    free(blob);
    if (rc == 0 && !(*ret = pkey_from_public(&pub.publicArea))) {
        snprintf(why, sizeof why, "unsupported key type (want RSA or ECC P-256/384)");
        rc = M2MVPN_E_CERT;
    }
    if (rc < 0 && why[0])
        pki_set_err(err, err_len, "%s: %s", path, why);
    return rc;
}

#endif /* M2MVPN_HAVE_TPM */
