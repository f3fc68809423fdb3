/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The PKCS#11 credential provider (profile cert.source "pkcs11"), on libp11.
 * Contract: cred.h (cred_pkcs11_open) and cred_hw.h (key generation).
 *
 * The private key stays on the token: libp11 hands us an EVP_PKEY whose RSA
 * or EC method calls C_Sign, so signing goes through the same OpenSSL calls
 * as for a file key (EVP_DigestSign with the scheme's hash and padding).
 *
 * PIN rules (DESIGN.md §8): C_Login is called at most once per PIN we are
 * given, never again by ourselves; a token that reports its user PIN locked
 * is not even tried. Any C_Login failure but a token absent before the call
 * (TOKEN_NOT_PRESENT, DEVICE_REMOVED) is final, as the token may have counted
 * it (hw_class.h); the profile's PIN is not tried when the token reports its
 * counter low (COUNT_LOW, FINAL_TRY): the provider stays locked and the user
 * is asked (PIN_REQUIRED says why). libp11 keeps the session logged in (and, inside, a copy
 * of the PIN to log in again after a fork, which this process never does).
 *
 * A token that disappears (removed, C_Sign failing with a device or session
 * error) marks the provider lost: the engine opens it again for its next
 * attempt, which finds the token once it is back (a new C_Initialize).
 */
#include "cred.h"
#include "cred_hw.h"

#include <m2mvpn/m2mvpn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/secmem.h"
#include "crypto/pki_internal.h"

#ifndef M2MVPN_HAVE_PKCS11

static int no_pkcs11(char *err, size_t err_len)
{
    pki_set_err(err, err_len, "this build has no PKCS#11 support (built with -Dpkcs11=disabled)");
    return M2MVPN_E_NOTSUPP;
}

int cred_pkcs11_open(const char *module, const char *uri, const char *pin, size_t pin_len,
                     cred_provider **ret, char *err, size_t err_len)
{
    (void)module, (void)uri, (void)pin, (void)pin_len, (void)ret;
    return no_pkcs11(err, err_len);
}

int cred_pkcs11_open_key(const char *module, const char *uri, const char *pin, size_t pin_len,
                         cred_provider **ret, char *err, size_t err_len)
{
    (void)module, (void)uri, (void)pin, (void)pin_len, (void)ret;
    return no_pkcs11(err, err_len);
}

int cred_pkcs11_generate(const char *module, const char *uri, const char *pin, size_t pin_len,
                         bool rsa, char *err, size_t err_len)
{
    (void)module, (void)uri, (void)pin, (void)pin_len, (void)rsa;
    return no_pkcs11(err, err_len);
}

int cred_pkcs11_store_cert(cred_provider *p, const uint8_t *der, size_t len, char *err, size_t err_len)
{
    (void)p, (void)der, (void)len;
    return no_pkcs11(err, err_len);
}

int cred_pkcs11_replace_cert(const char *module, const char *uri, const char *pin, size_t pin_len,
                             const uint8_t *der, size_t len, EVP_PKEY *key_pub, char *err, size_t err_len)
{
    (void)module, (void)uri, (void)pin, (void)pin_len, (void)der, (void)len, (void)key_pub;
    return no_pkcs11(err, err_len);
}

int cred_pkcs11_objects(const char *module, const char *uri, const char *pin, size_t pin_len, const char *label,
                        const uint8_t *id, size_t id_len, bool other_id, const char *new_label, size_t *ret_n,
                        char *err, size_t err_len)
{
    (void)module, (void)uri, (void)pin, (void)pin_len, (void)label, (void)id, (void)id_len, (void)other_id;
    (void)new_label, (void)ret_n;
    return no_pkcs11(err, err_len);
}

#else /* M2MVPN_HAVE_PKCS11 */

#include <dlfcn.h>

#include <libp11.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

#include <pthread.h>

#include "hw_class.h"
#include "p11_uri.h"

/* libp11 is loaded (dlopen) when a token is first used, not linked: linked
 * in, it costs every client, PSK ones too, private memory for good (measured
 * with bench/footprint). Once loaded it stays (keys it made live on). The
 * header still types every call: each pointer has its function's type. */
#define P11_LIBRARY "libp11.so.3"
#define P11_CALLS(X)               \
    X(ERR_get_CKR_code)            \
    X(PKCS11_CTX_free)             \
    X(PKCS11_CTX_load)             \
    X(PKCS11_CTX_new)              \
    X(PKCS11_CTX_unload)           \
    X(PKCS11_enumerate_certs)      \
    X(PKCS11_enumerate_keys)       \
    X(PKCS11_enumerate_slots)      \
    X(PKCS11_find_certificate)     \
    X(PKCS11_get_private_key)      \
    X(PKCS11_get_slotid_from_slot) \
    X(PKCS11_login)                \
    X(PKCS11_open_session)         \
    X(PKCS11_release_all_slots)    \
    X(PKCS11_store_certificate)

static struct {
#define P11_FIELD(name) __typeof__(name) *name;
    P11_CALLS(P11_FIELD)
#undef P11_FIELD
} p11;
#define P11_NAME(name) #name,
static const char *const p11_call_names[] = {P11_CALLS(P11_NAME)};
#undef P11_NAME
#define P11_N_CALLS (sizeof p11_call_names / sizeof p11_call_names[0])
_Static_assert(sizeof p11 == P11_N_CALLS * sizeof(void *), "one pointer per call, no padding");
static bool p11_loaded;
static pthread_mutex_t p11_lock = PTHREAD_MUTEX_INITIALIZER;

/* Loads libp11 once. Every path to a libp11 call goes through open_token,
 * which calls this first. */
static int p11_load(char *err, size_t err_len)
{
    int rc = 0;
    pthread_mutex_lock(&p11_lock);
    if (!p11_loaded) {
        void *lib = dlopen(P11_LIBRARY, RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            const char *why = dlerror();
            pki_set_err(err, err_len, "PKCS#11 support needs %s: %s", P11_LIBRARY, why ? why : "?");
            rc = M2MVPN_E_NOTSUPP;
        }
        for (size_t i = 0; i < P11_N_CALLS && rc == 0; i++) {
            void *p = dlsym(lib, p11_call_names[i]);
            if (!p) {
                pki_set_err(err, err_len, "PKCS#11 support needs %s with %s", P11_LIBRARY, p11_call_names[i]);
                rc = M2MVPN_E_NOTSUPP;
            }
            /* POSIX: a function pointer from dlsym's void * (through
             * memcpy, which ISO C allows), into its slot of the struct. */
            memcpy((char *)&p11 + i * sizeof p, &p, sizeof p);
        }
        if (rc == 0) {
            p11_loaded = true;
        } else {
            memset(&p11, 0, sizeof p11); /* no pointer into the library closed here */
            if (lib)
                dlclose(lib);
        }
    }
    pthread_mutex_unlock(&p11_lock);
    return rc;
}

/* From here on, the calls go through the loaded pointers. */
#define ERR_get_CKR_code (*p11.ERR_get_CKR_code)
#define PKCS11_CTX_free (*p11.PKCS11_CTX_free)
#define PKCS11_CTX_load (*p11.PKCS11_CTX_load)
#define PKCS11_CTX_new (*p11.PKCS11_CTX_new)
#define PKCS11_CTX_unload (*p11.PKCS11_CTX_unload)
#define PKCS11_enumerate_certs (*p11.PKCS11_enumerate_certs)
#define PKCS11_enumerate_keys (*p11.PKCS11_enumerate_keys)
#define PKCS11_enumerate_slots (*p11.PKCS11_enumerate_slots)
#define PKCS11_find_certificate (*p11.PKCS11_find_certificate)
#define PKCS11_get_private_key (*p11.PKCS11_get_private_key)
#define PKCS11_get_slotid_from_slot (*p11.PKCS11_get_slotid_from_slot)
#define PKCS11_login (*p11.PKCS11_login)
#define PKCS11_open_session (*p11.PKCS11_open_session)
#define PKCS11_release_all_slots (*p11.PKCS11_release_all_slots)
#define PKCS11_store_certificate (*p11.PKCS11_store_certificate)

_Static_assert(CKR_PIN_INCORRECT == 0xa0 && CKR_TOKEN_NOT_PRESENT == 0xe0 && CKR_DEVICE_REMOVED == 0x32 &&
               CKR_SESSION_COUNT == 0xb1 && CKR_USER_NOT_LOGGED_IN == 0x101, "CKRs as in hw_class.c");

typedef struct p11_cred {
    char *module;
    p11_uri uri;
    bool need_cert;
    PKCS11_CTX *ctx;
    PKCS11_SLOT *slots;
    unsigned n_slots;
    PKCS11_SLOT *slot;
    char label[64];          /* token label, for messages */
    char key_label[64];
    unsigned char key_id[64];
    size_t key_id_len;
    bool logged_in;
    bool lost;
    bool pin_counter_low;    /* the profile PIN was not tried: COUNT_LOW / FINAL_TRY */
    pki_cert **chain;        /* end-entity only: the token holds no chain */
    size_t n_chain;
    EVP_PKEY *key;           /* signs on the token; NULL while locked */
    EVP_PKEY *pub;           /* its public half */
} p11_cred;

/* ------------------------------------------------------------- helpers */

/* The CKR_* value behind the last libp11 failure (0 if none). */
static unsigned long last_ckr(void)
{
    unsigned long e, ckr = 0;
    while ((e = ERR_get_error()) != 0)
        if (ERR_GET_LIB(e) == ERR_get_CKR_code())
            ckr = ERR_GET_REASON(e);
    return ckr;
}

static bool ckr_means_gone(unsigned long ckr)
{
    return cred_hw_ckr_class(ckr, false) == CRED_HW_GONE;
}

static bool token_matches(const p11_uri *u, const PKCS11_TOKEN *t)
{
    return (!u->token[0] || (t->label && strcmp(u->token, t->label) == 0)) &&
           (!u->manufacturer[0] || (t->manufacturer && strcmp(u->manufacturer, t->manufacturer) == 0)) &&
           (!u->serial[0] || (t->serialnr && strcmp(u->serial, t->serialnr) == 0)) &&
           (!u->model[0] || (t->model && strcmp(u->model, t->model) == 0));
}

static bool object_matches(const p11_uri *u, const char *label, const unsigned char *id, size_t id_len)
{
    return (!u->object[0] || (label && strcmp(u->object, label) == 0)) &&
           (!u->has_id || (id_len == u->id_len && memcmp(id, u->id, id_len) == 0));
}

/* ------------------------------------------------------------- lifecycle */

static void close_module(p11_cred *pc)
{
    EVP_PKEY_free(pc->key);
    pc->key = NULL;
    EVP_PKEY_free(pc->pub);
    pc->pub = NULL;
    if (pc->ctx) {
        if (pc->slots)
            PKCS11_release_all_slots(pc->ctx, pc->slots, pc->n_slots);
        PKCS11_CTX_unload(pc->ctx);
        PKCS11_CTX_free(pc->ctx);
    }
    pc->ctx = NULL;
    pc->slots = NULL;
    pc->n_slots = 0;
    pc->slot = NULL;
    pc->logged_in = false;
    ERR_clear_error();
}

static void p11_destroy(void *ctx)
{
    p11_cred *pc = ctx;
    if (!pc)
        return;
    close_module(pc);
    pki_cert_array_free(pc->chain, pc->n_chain);
    free(pc->module);
    free(pc);
}

/* Load the module and find the token. */
static int open_token(p11_cred *pc, char *err, size_t err_len)
{
    int lrc = p11_load(err, err_len);
    if (lrc != 0)
        return lrc;
    pc->ctx = PKCS11_CTX_new();
    if (!pc->ctx)
        return M2MVPN_E_NOMEM;
    if (PKCS11_CTX_load(pc->ctx, pc->module) != 0) {
        PKCS11_CTX_free(pc->ctx);
        pc->ctx = NULL;
        ERR_clear_error();
        /* A module that loads but does not initialize (SoftHSM without its
         * token folder, a reader that is gone) may work later: retryable.
         * One that cannot be loaded at all is a configuration error. */
        void *dl = dlopen(pc->module, RTLD_NOW | RTLD_LOCAL);
        if (!dl) {
            const char *why = dlerror();
            pki_set_err(err, err_len, "cannot load PKCS#11 module %s (%s)", pc->module, why ? why : "?");
            return M2MVPN_E_CERT;
        }
        dlclose(dl);
        pki_set_err(err, err_len, "PKCS#11 module %s does not initialize: token%s%s%s not present",
                    pc->module, pc->uri.token[0] ? " \"" : "", pc->uri.token, pc->uri.token[0] ? "\"" : "");
        return M2MVPN_E_IO;
    }
    if (PKCS11_enumerate_slots(pc->ctx, &pc->slots, &pc->n_slots) != 0) {
        ERR_clear_error();
        pki_set_err(err, err_len, "PKCS#11 module %s lists no slots", pc->module);
        return M2MVPN_E_IO;
    }
    for (unsigned i = 0; i < pc->n_slots; i++) {
        PKCS11_SLOT *s = &pc->slots[i];
        if (!s->token || !s->token->initialized)
            continue;
        if (pc->uri.has_slot_id && PKCS11_get_slotid_from_slot(s) != pc->uri.slot_id)
            continue;
        if (token_matches(&pc->uri, s->token)) {
            pc->slot = s;
            snprintf(pc->label, sizeof pc->label, "%s", s->token->label ? s->token->label : "");
            return 0;
        }
    }
    pki_set_err(err, err_len, "PKCS#11 token%s%s%s not present (module %s)",
                pc->uri.token[0] ? " \"" : "", pc->uri.token, pc->uri.token[0] ? "\"" : "", pc->module);
    return M2MVPN_E_IO;
}

/* The certificate that goes with the key: the URI's object/id, or the key's
 * id. pub: the key's public half (NULL: not known yet). */
static int find_cert(p11_cred *pc, PKCS11_KEY *key, EVP_PKEY *pub)
{
    PKCS11_CERT *certs = NULL;
    unsigned n = 0;
    if (PKCS11_enumerate_certs(pc->slot->token, &certs, &n) != 0) {
        ERR_clear_error();
        return 0;
    }
    /* Several may match (a renewal of the same key stopped between storing
     * the new certificate and deleting the old): the key's own, newest
     * first (notBefore, then notAfter), whatever order the token lists. */
    PKCS11_CERT *found = NULL;
    bool found_fits = false;
    for (unsigned i = 0; i < n; i++) {
        if (!(pc->uri.object[0] || pc->uri.has_id) ||
            !object_matches(&pc->uri, certs[i].label, certs[i].id, certs[i].id_len) || !certs[i].x509)
            continue;
        bool fits = pub && EVP_PKEY_eq(X509_get0_pubkey(certs[i].x509), pub) == 1;
        if (found && (found_fits && !fits))
            continue;
        if (found && found_fits == fits) {
            int c = ASN1_TIME_compare(X509_get0_notBefore(certs[i].x509), X509_get0_notBefore(found->x509));
            if (c == 0)
                c = ASN1_TIME_compare(X509_get0_notAfter(certs[i].x509), X509_get0_notAfter(found->x509));
            if (c <= 0)
                continue;
        }
        found = &certs[i];
        found_fits = fits;
    }
    if (!found && key)
        found = PKCS11_find_certificate(key);
    ERR_clear_error();
    if (!found || !found->x509)
        return 0;
    X509 *x = found->x509;
    if (!X509_up_ref(x))
        return M2MVPN_E_NOMEM;
    pki_cert *c = pki_cert_wrap(x);
    if (!c)
        return M2MVPN_E_NOMEM;
    pki_cert **arr = calloc(1, sizeof *arr);
    if (!arr) {
        pki_cert_free(c);
        return M2MVPN_E_NOMEM;
    }
    arr[0] = c;
    pki_cert_array_free(pc->chain, pc->n_chain);
    pc->chain = arr;
    pc->n_chain = 1;
    return 0;
}

/* After login (or on a token that needs none): the private key, its public
 * half and the certificate; the key must belong to the certificate. */
static int take_key(p11_cred *pc, char *err, size_t err_len)
{
    PKCS11_KEY *keys = NULL, *key = NULL;
    unsigned n = 0;
    if (PKCS11_enumerate_keys(pc->slot->token, &keys, &n) != 0) {
        unsigned long ckr = last_ckr();
        pc->lost = ckr_means_gone(ckr);
        pki_set_err(err, err_len, "cannot list the keys of token \"%s\" (CKR 0x%lx)", pc->label, ckr);
        return pc->lost ? M2MVPN_E_IO : M2MVPN_E_CERT;
    }
    for (unsigned i = 0; i < n && !key; i++)
        if (keys[i].isPrivate && object_matches(&pc->uri, keys[i].label, keys[i].id, keys[i].id_len))
            key = &keys[i];
    if (!key) {
        pki_set_err(err, err_len, "no private key%s%s%s on token \"%s\"", pc->uri.object[0] ? " \"" : "",
                    pc->uri.object, pc->uri.object[0] ? "\"" : "", pc->label);
        return M2MVPN_E_CERT;
    }
    snprintf(pc->key_label, sizeof pc->key_label, "%s", key->label ? key->label : "");
    pc->key_id_len = key->id_len <= sizeof pc->key_id ? key->id_len : 0;
    if (pc->key_id_len)
        memcpy(pc->key_id, key->id, pc->key_id_len);
    EVP_PKEY *priv = PKCS11_get_private_key(key);
    /* libp11's private key carries the public components
     * (PKCS11_get_public_key() of libp11 0.4.12 leaks memory) */
    EVP_PKEY *pub = cred_public_copy(priv);
    ERR_clear_error();
    if (!priv || !pub || pki_pkey_type(pub, NULL) == PKI_KEY_UNKNOWN ||
        pki_pkey_type(pub, NULL) == PKI_KEY_ED25519) {
        EVP_PKEY_free(priv);
        EVP_PKEY_free(pub);
        pki_set_err(err, err_len, "key \"%s\" on token \"%s\": unusable or unsupported type (want RSA or "
                    "ECDSA P-256/384/521)", pc->key_label, pc->label);
        return M2MVPN_E_CERT;
    }
    /* chosen again now the key is known: the pick before the login (for
     * status) took the newest certificate of the label, which a planted
     * one of another key could be */
    int rc = find_cert(pc, key, pub);
    if (rc < 0) {
        EVP_PKEY_free(priv);
        EVP_PKEY_free(pub);
        return rc;
    }
    if (pc->n_chain && EVP_PKEY_eq(pki_cert_pubkey(pc->chain[0]), pub) != 1) {
        char subject[256];
        pki_cert_subject_text(pc->chain[0], subject, sizeof subject);
        pki_set_err(err, err_len, "key \"%s\" on token \"%s\" does not match certificate %s",
                    pc->key_label, pc->label, subject);
        EVP_PKEY_free(priv);
        EVP_PKEY_free(pub);
        ERR_clear_error();
        return M2MVPN_E_CERT;
    }
    if (pc->need_cert && !pc->n_chain) {
        pki_set_err(err, err_len, "no certificate for key \"%s\" on token \"%s\"", pc->key_label, pc->label);
        EVP_PKEY_free(priv);
        EVP_PKEY_free(pub);
        return M2MVPN_E_CERT;
    }
    pc->key = priv;
    pc->pub = pub;
    return 0;
}

/* One C_Login with this PIN (never repeated here), then the key. Any login
 * failure but a token absent before the call is final (E_PIN): the token may
 * have counted it. `automatic`: the profile's PIN, not a user's answer; not
 * tried when the token says its PIN counter is low (the user decides, through
 * PIN_REQUIRED): the provider stays locked. */
static int login(p11_cred *pc, const char *pin, size_t pin_len, bool automatic, char *err, size_t err_len)
{
    PKCS11_TOKEN *t = pc->slot->token;
    if (t->userPinLocked) {
        pki_set_err(err, err_len, "the user PIN of token \"%s\" is locked (unblock it with the SO PIN)",
                    pc->label);
        return M2MVPN_E_PIN;
    }
    if (automatic && (t->userPinFinalTry || t->userPinCountLow)) {
        pc->pin_counter_low = true;
        return 0;
    }
    char *z = secure_memdup(pin, pin_len); /* NUL-terminated copy for libp11 */
    if (!z)
        return M2MVPN_E_NOMEM;
    int r = PKCS11_login(pc->slot, 0, z);
    secure_free_str(z);
    if (r != 0) {
        unsigned long ckr = last_ckr();
        cred_hw_class k = cred_hw_ckr_class(ckr, true);
        switch (ckr) {
        case CKR_PIN_INCORRECT:
        case CKR_PIN_INVALID:
        case CKR_PIN_LEN_RANGE:
            pki_set_err(err, err_len, "wrong PIN for token \"%s\"", pc->label);
            break;
        case CKR_PIN_LOCKED:
            pki_set_err(err, err_len, "the user PIN of token \"%s\" is locked (unblock it with the SO PIN)",
                        pc->label);
            break;
        default:
            if (k == CRED_HW_GONE) {
                pc->lost = true;
                pki_set_err(err, err_len, "token \"%s\" not present at login (CKR 0x%lx)", pc->label, ckr);
            } else {
                pki_set_err(err, err_len, "login to token \"%s\" failed (CKR 0x%lx): not tried again by "
                            "itself (the token may have counted it); give the PIN again", pc->label, ckr);
            }
            break;
        }
        return cred_hw_class_error(k);
    }
    pc->logged_in = true;
    return take_key(pc, err, err_len);
}

/* ------------------------------------------------------------ operations */

static bool p11_pin_needed(void *ctx)
{
    return ((p11_cred *)ctx)->key == NULL;
}

static bool p11_lost(void *ctx)
{
    return ((p11_cred *)ctx)->lost;
}

static void p11_describe(void *ctx, char *buf, size_t len)
{
    p11_cred *pc = ctx;
    snprintf(buf, len, "PKCS#11 token \"%s\", key \"%s\"%s", pc->label,
             pc->key_label[0] ? pc->key_label : pc->uri.object,
             pc->pin_counter_low && !pc->key ? " (the token's PIN retry counter is low: the profile PIN "
                                               "was not tried)" : "");
}

static int p11_chain(void *ctx, pki_cert *const **ret_certs, size_t *ret_n, char *err, size_t err_len)
{
    p11_cred *pc = ctx;
    if (!pc->n_chain) {
        if (!pc->key) {
            pki_set_err(err, err_len, "PIN required for token \"%s\"", pc->label);
            return M2MVPN_E_PIN;
        }
        pki_set_err(err, err_len, "no certificate for key \"%s\" on token \"%s\"", pc->key_label, pc->label);
        return M2MVPN_E_CERT;
    }
    *ret_certs = pc->chain;
    *ret_n = pc->n_chain;
    return 0;
}

static int p11_key_info(void *ctx, pki_key_type *ret_type, unsigned *ret_bits, char *err, size_t err_len)
{
    p11_cred *pc = ctx;
    if (pc->pub) {
        *ret_type = pki_pkey_type(pc->pub, ret_bits);
        return 0;
    }
    if (pc->n_chain) {
        *ret_type = pki_cert_key_type(pc->chain[0], ret_bits);
        return 0;
    }
    pki_set_err(err, err_len, "PIN required for token \"%s\"", pc->label);
    return M2MVPN_E_PIN;
}

static int p11_set_pin(void *ctx, const char *pin, size_t len, char *err, size_t err_len)
{
    p11_cred *pc = ctx;
    if (pc->key)
        return 0;
    if (!pc->slot) {
        pki_set_err(err, err_len, "PKCS#11 token \"%s\" not present", pc->uri.token);
        return M2MVPN_E_IO;
    }
    pc->pin_counter_low = false;
    return login(pc, pin, len, false, err, err_len);
}

static int p11_spki(void *ctx, uint8_t *out, size_t cap, size_t *ret_len, char *err, size_t err_len)
{
    p11_cred *pc = ctx;
    if (!pc->pub) {
        pki_set_err(err, err_len, "PIN required for token \"%s\"", pc->label);
        return M2MVPN_E_PIN;
    }
    int n = i2d_PUBKEY(pc->pub, NULL);
    if (n <= 0 || (size_t)n > cap) {
        ERR_clear_error();
        pki_set_err(err, err_len, "public key of \"%s\" cannot be encoded", pc->key_label);
        return M2MVPN_E_INVAL;
    }
    unsigned char *p = out;
    i2d_PUBKEY(pc->pub, &p);
    *ret_len = (size_t)n;
    return 0;
}

static int p11_sign(void *ctx, pki_sig_scheme scheme, const uint8_t *data, size_t len,
                    uint8_t *sig, size_t cap, size_t *ret_len, char *err, size_t err_len)
{
    p11_cred *pc = ctx;
    if (!pc->key) {
        pki_set_err(err, err_len, "PIN required for token \"%s\"", pc->label);
        return M2MVPN_E_PIN;
    }
    if (pc->lost) {
        pki_set_err(err, err_len, "PKCS#11 token \"%s\" was removed", pc->label);
        return M2MVPN_E_IO;
    }
    pki_key_type kt = pki_pkey_type(pc->pub, NULL);
    if (!pki_auth_scheme_fits(PKI_AUTH_DIGITAL_SIGNATURE, scheme, kt) &&
        !(scheme == PKI_SIG_RSA_PKCS1_SHA1 && kt == PKI_KEY_RSA)) {
        pki_set_err(err, err_len, "cannot sign %s with a %s key", pki_sig_scheme_name(scheme),
                    pki_key_type_name(kt));
        return M2MVPN_E_INVAL;
    }
    size_t need = (size_t)EVP_PKEY_get_size(pc->pub);
    if (need > cap) {
        pki_set_err(err, err_len, "signature buffer too small (%zu < %zu)", cap, need);
        return M2MVPN_E_INVAL;
    }
    ERR_clear_error();
    int rc = M2MVPN_E_CRYPTO;
    EVP_PKEY_CTX *pctx = NULL;
    EVP_MD_CTX *mdctx = EVP_MD_CTX_new();
    size_t got = cap;
    if (mdctx && EVP_DigestSignInit(mdctx, &pctx, pki_scheme_md(scheme), NULL, pc->key) == 1 &&
        pki_scheme_set_padding(pctx, scheme) && EVP_DigestSign(mdctx, sig, &got, data, len) == 1) {
        *ret_len = got;
        rc = 0;
    }
    EVP_MD_CTX_free(mdctx);
    if (rc < 0) {
        unsigned long ckr = last_ckr();
        if (ckr_means_gone(ckr)) {
            pc->lost = true;
            pki_set_err(err, err_len, "PKCS#11 token \"%s\" was removed or stopped answering (CKR 0x%lx)",
                        pc->label, ckr);
            rc = M2MVPN_E_IO;
        } else {
            pki_set_err(err, err_len, "token \"%s\" could not sign %s (CKR 0x%lx)", pc->label,
                        pki_sig_scheme_name(scheme), ckr);
        }
    }
    ERR_clear_error();
    return rc;
}

static EVP_PKEY *p11_evp_key(void *ctx)
{
    p11_cred *pc = ctx;
    return pc->key && EVP_PKEY_up_ref(pc->key) ? pc->key : NULL;
}

static const cred_ops p11_ops = {
    .name = "pkcs11",
    .chain = p11_chain,
    .key_info = p11_key_info,
    .pin_needed = p11_pin_needed,
    .set_pin = p11_set_pin,
    .sign = p11_sign,
    .destroy = p11_destroy,
    .describe = p11_describe,
    .lost = p11_lost,
    .spki = p11_spki,
    .evp_key = p11_evp_key,
};

int cred_pkcs11_store_cert(cred_provider *p, const uint8_t *der, size_t len, char *err, size_t err_len)
{
    if (!p || p->ops != &p11_ops || !der)
        return M2MVPN_E_INVAL;
    p11_cred *pc = p->ctx;
    const unsigned char *q = der;
    X509 *x = d2i_X509(NULL, &q, (long)len);
    if (!x)
        return M2MVPN_E_CERT;
    int r = PKCS11_store_certificate(pc->slot->token, x, pc->key_label, pc->key_id_len ? pc->key_id : NULL,
                                     pc->key_id_len, NULL);
    X509_free(x);
    if (r != 0) {
        unsigned long ckr = last_ckr();
        pki_set_err(err, err_len, "cannot store the certificate on token \"%s\" (CKR 0x%lx)", pc->label, ckr);
        ERR_clear_error();
        return ckr_means_gone(ckr) ? M2MVPN_E_IO : M2MVPN_E_CERT;
    }
    return 0;
}

/* ------------------------------------------------------------------ open */

static int open_common(const char *module, const char *uri, const char *pin, size_t pin_len,
                       bool need_cert, cred_provider **ret, char *err, size_t err_len)
{
    if (!module || !uri || !ret || (pin && pin_len == 0))
        return M2MVPN_E_INVAL;
    p11_cred *pc = calloc(1, sizeof *pc);
    cred_provider *p = calloc(1, sizeof *p);
    int rc = M2MVPN_E_NOMEM;
    if (!pc || !p || !(pc->module = strdup(module)))
        goto fail;
    pc->need_cert = need_cert;
    if ((rc = p11_uri_parse(uri, &pc->uri, err, err_len)) < 0)
        goto fail;
    if ((rc = open_token(pc, err, err_len)) < 0)
        goto fail;
    /* A key without certificate yet gets one stored (cred_pkcs11_store_cert):
     * read-write sessions, chosen before the login (changing the mode later
     * closes the sessions, and the login with them). */
    if (!need_cert && PKCS11_open_session(pc->slot, 1) != 0) {
        pki_set_err(err, err_len, "cannot open a read-write session on token \"%s\"", pc->label);
        ERR_clear_error();
        rc = M2MVPN_E_IO;
        goto fail;
    }
    /* Public certificates can be read before login (to show in status). */
    if ((rc = find_cert(pc, NULL, NULL)) < 0)
        goto fail;
    if (pin)
        rc = login(pc, pin, pin_len, need_cert /* the profile PIN; keygen: the user's */, err, err_len);
    else if (!pc->slot->token->loginRequired)
        rc = take_key(pc, err, err_len);
    if (rc < 0)
        goto fail;
    if (err && err_len)
        err[0] = '\0';
    p->ops = &p11_ops;
    p->ctx = pc;
    *ret = p;
    return 0;
fail:
    p11_destroy(pc);
    free(p);
    return rc;
}

int cred_pkcs11_open(const char *module, const char *uri, const char *pin, size_t pin_len,
                     cred_provider **ret, char *err, size_t err_len)
{
    return open_common(module, uri, pin, pin_len, true, ret, err, err_len);
}

int cred_pkcs11_open_key(const char *module, const char *uri, const char *pin, size_t pin_len,
                         cred_provider **ret, char *err, size_t err_len)
{
    if (!pin) {
        pki_set_err(err, err_len, "a PIN is needed to use the token");
        return M2MVPN_E_PIN;
    }
    return open_common(module, uri, pin, pin_len, false, ret, err, err_len);
}

/* ------------------------------------------------------- key generation */

/* libp11 0.4 cannot make EC keys, so generation talks PKCS#11 directly: one
 * session, one C_Login, one C_GenerateKeyPair, then everything is closed. */

typedef struct raw_p11 {
    void *dl;
    CK_FUNCTION_LIST_PTR f;
    bool initialized;   /* by us: we finalize */
    CK_SESSION_HANDLE s;
    CK_SLOT_ID slot;
    bool have_session, logged_in;
} raw_p11;

static void raw_close(raw_p11 *r)
{
    if (r->logged_in)
        r->f->C_Logout(r->s);
    if (r->have_session)
        r->f->C_CloseSession(r->s);
    if (r->initialized)
        r->f->C_Finalize(NULL);
    if (r->dl)
        dlclose(r->dl);
}

/* Blank-padded PKCS#11 text field == NUL-terminated want ("" matches all). */
static bool field_is(const unsigned char *f, size_t n, const char *want)
{
    if (!want[0])
        return true;
    size_t wl = strlen(want);
    if (wl > n || memcmp(f, want, wl) != 0)
        return false;
    for (size_t i = wl; i < n; i++)
        if (f[i] != ' ')
            return false;
    return true;
}

static int raw_open(raw_p11 *r, const char *module, const p11_uri *u, char *err, size_t err_len)
{
    r->dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    CK_C_GetFunctionList gfl = r->dl ? (CK_C_GetFunctionList)dlsym(r->dl, "C_GetFunctionList") : NULL;
    if (!gfl || gfl(&r->f) != CKR_OK || !r->f) {
        pki_set_err(err, err_len, "cannot load PKCS#11 module %s", module);
        return M2MVPN_E_CERT;
    }
    CK_RV rv = r->f->C_Initialize(NULL);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        pki_set_err(err, err_len, "PKCS#11 module %s: C_Initialize failed (CKR 0x%lx)", module, rv);
        return M2MVPN_E_CERT;
    }
    r->initialized = rv == CKR_OK;
    CK_ULONG n = 0;
    CK_SLOT_ID slots[64];
    if (r->f->C_GetSlotList(CK_TRUE, NULL, &n) != CKR_OK || n > 64 ||
        r->f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        n = 0;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (u->has_slot_id && slots[i] != u->slot_id)
            continue;
        if (r->f->C_GetTokenInfo(slots[i], &ti) != CKR_OK || !(ti.flags & CKF_TOKEN_INITIALIZED))
            continue;
        if (!field_is(ti.label, sizeof ti.label, u->token) ||
            !field_is(ti.manufacturerID, sizeof ti.manufacturerID, u->manufacturer) ||
            !field_is(ti.serialNumber, sizeof ti.serialNumber, u->serial) ||
            !field_is(ti.model, sizeof ti.model, u->model))
            continue;
        if (ti.flags & CKF_USER_PIN_LOCKED) {
            pki_set_err(err, err_len, "the user PIN of token \"%s\" is locked", u->token);
            return M2MVPN_E_PIN;
        }
        rv = r->f->C_OpenSession(slots[i], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &r->s);
        if (rv != CKR_OK) {
            pki_set_err(err, err_len, "cannot open a session with token \"%s\" (CKR 0x%lx)", u->token, rv);
            return M2MVPN_E_CERT;
        }
        r->have_session = true;
        r->slot = slots[i];
        return 0;
    }
    pki_set_err(err, err_len, "PKCS#11 token \"%s\" not present (module %s)", u->token, module);
    return M2MVPN_E_IO;
}

/* raw_open, then one C_Login with the user PIN (a wrong one is E_PIN and
 * never presented again here). A login of another user of this process is
 * not ours to end: logged_in only when this one logged in. On failure the
 * caller still calls raw_close. */
static int raw_open_login(raw_p11 *r, const char *module, const p11_uri *u, const char *pin, size_t pin_len,
                          char *err, size_t err_len)
{
    int rc = raw_open(r, module, u, err, err_len);
    if (rc < 0)
        return rc;
    CK_RV rv = r->f->C_Login(r->s, CKU_USER, (CK_UTF8CHAR_PTR)pin, pin_len);
    if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE) {
        pki_set_err(err, err_len, "wrong PIN for token \"%s\"", u->token);
        return M2MVPN_E_PIN;
    }
    if (rv == CKR_PIN_LOCKED) {
        pki_set_err(err, err_len, "the user PIN of token \"%s\" is locked", u->token);
        return M2MVPN_E_PIN;
    }
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        pki_set_err(err, err_len, "login to token \"%s\" failed (CKR 0x%lx)", u->token, rv);
        return M2MVPN_E_CERT;
    }
    r->logged_in = rv == CKR_OK;
    return 0;
}

/* The token lists the mechanism with CKF_GENERATE_KEY_PAIR (a list it
 * cannot give: assumed offered, C_GenerateKeyPair says). */
static bool raw_offers(raw_p11 *r, CK_MECHANISM_TYPE mech)
{
    CK_ULONG n = 0;
    if (r->f->C_GetMechanismList(r->slot, NULL, &n) != CKR_OK || n == 0 || n > 1024)
        return true;
    CK_MECHANISM_TYPE *list = calloc(n, sizeof *list);
    if (!list || r->f->C_GetMechanismList(r->slot, list, &n) != CKR_OK) {
        free(list);
        return true;
    }
    bool listed = false;
    for (CK_ULONG i = 0; i < n && !listed; i++)
        listed = list[i] == mech;
    free(list);
    CK_MECHANISM_INFO mi;
    return listed && (r->f->C_GetMechanismInfo(r->slot, mech, &mi) != CKR_OK || (mi.flags & CKF_GENERATE_KEY_PAIR));
}

/* 1: such a private key exists, 0: none, <0: the search failed (the caller
 * must not create a key: it could duplicate one). */
static int raw_exists(raw_p11 *r, const p11_uri *u, const uint8_t *id, size_t id_len, bool by_id)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[2] = { { CKA_CLASS, &cls, sizeof cls } };
    if (by_id)
        t[1] = (CK_ATTRIBUTE){ CKA_ID, (void *)id, id_len };
    else
        t[1] = (CK_ATTRIBUTE){ CKA_LABEL, (void *)u->object, strlen(u->object) };
    CK_OBJECT_HANDLE h;
    CK_ULONG found = 0;
    if (r->f->C_FindObjectsInit(r->s, t, 2) != CKR_OK)
        return -1;
    CK_RV rv = r->f->C_FindObjects(r->s, &h, 1, &found);
    r->f->C_FindObjectsFinal(r->s);
    if (rv != CKR_OK)
        return -1;
    return found > 0;
}

int cred_pkcs11_generate(const char *module, const char *uri, const char *pin, size_t pin_len,
                         bool rsa, char *err, size_t err_len)
{
    if (!module || !uri || !pin || pin_len == 0)
        return M2MVPN_E_INVAL;
    p11_uri u;
    int rc = p11_uri_parse(uri, &u, err, err_len);
    if (rc < 0)
        return rc;
    if (!u.object[0] || !u.token[0]) {
        pki_set_err(err, err_len, "pkcs11_uri: give token= and object= (the new key's label)");
        return M2MVPN_E_INVAL;
    }
    uint8_t id[sizeof u.id];
    size_t id_len = u.id_len;
    if (u.has_id)
        memcpy(id, u.id, id_len);
    else if (RAND_bytes(id, 8) == 1)
        id_len = 8;
    else
        return M2MVPN_E_CRYPTO;
    raw_p11 r;
    memset(&r, 0, sizeof r);
    if ((rc = raw_open_login(&r, module, &u, pin, pin_len, err, err_len)) < 0)
        goto out;
    CK_RV rv;
    int by_label = raw_exists(&r, &u, id, id_len, false);
    int by_id = by_label == 0 ? raw_exists(&r, &u, id, id_len, true) : 0;
    if (by_label < 0 || by_id < 0) {
        pki_set_err(err, err_len, "cannot search token \"%s\" for a key labelled \"%s\" or with that id: "
                    "no key made (it could duplicate one)", u.token, u.object);
        rc = M2MVPN_E_CERT;
        goto out;
    }
    if (by_label || by_id) {
        pki_set_err(err, err_len, "token \"%s\" already holds a private key labelled \"%s\" or with "
                    "that id: not replaced", u.token, u.object);
        rc = M2MVPN_E_CERT;
        goto out;
    }
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG bits = 2048;
    static const CK_BYTE exponent[] = { 0x01, 0x00, 0x01 };
    static const CK_BYTE p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
    CK_ATTRIBUTE pub_t[] = {
        { CKA_TOKEN, &yes, sizeof yes },
        { CKA_VERIFY, &yes, sizeof yes },
        { CKA_LABEL, u.object, strlen(u.object) },
        { CKA_ID, id, id_len },
        rsa ? (CK_ATTRIBUTE){ CKA_MODULUS_BITS, &bits, sizeof bits }
            : (CK_ATTRIBUTE){ CKA_EC_PARAMS, (void *)p256, sizeof p256 },
        { CKA_PUBLIC_EXPONENT, (void *)exponent, sizeof exponent },
    };
    CK_ATTRIBUTE priv_t[] = {
        { CKA_TOKEN, &yes, sizeof yes },
        { CKA_PRIVATE, &yes, sizeof yes },
        { CKA_SENSITIVE, &yes, sizeof yes },
        { CKA_EXTRACTABLE, &no, sizeof no },
        { CKA_SIGN, &yes, sizeof yes },
        { CKA_DECRYPT, &no, sizeof no },
        { CKA_UNWRAP, &no, sizeof no },
        { CKA_LABEL, u.object, strlen(u.object) },
        { CKA_ID, id, id_len },
    };
    CK_MECHANISM mech = { rsa ? CKM_RSA_PKCS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN, NULL, 0 };
    if (!raw_offers(&r, mech.mechanism)) {
        /* not listed by the token: asking anyway could still make a key
         * the token was configured not to make (SoftHSM2 does) */
        pki_set_err(err, err_len, "token \"%s\" does not offer %s key generation (mechanism not listed)",
                    u.token, rsa ? "RSA 2048" : "ECC P-256");
        rc = M2MVPN_E_NOTSUPP;
        goto out;
    }
    CK_OBJECT_HANDLE hpub, hpriv;
    rv = r.f->C_GenerateKeyPair(r.s, &mech, pub_t, rsa ? 6 : 5, priv_t, 9, &hpub, &hpriv);
    if (rv != CKR_OK) {
        pki_set_err(err, err_len, "token \"%s\" refused to generate a %s key (CKR 0x%lx)", u.token,
                    rsa ? "RSA 2048" : "ECC P-256", rv);
        /* a token that cannot make keys (or not this kind) at all */
        rc = rv == CKR_FUNCTION_NOT_SUPPORTED || rv == CKR_MECHANISM_INVALID ? M2MVPN_E_NOTSUPP : M2MVPN_E_CERT;
        goto out;
    }
    rc = 0;
out:
    raw_close(&r);
    return rc;
}

/* Relabel or destroy objects of any class (key renewal: the new key pair
 * and certificate take the old ones' label, the old ones go). */
int cred_pkcs11_objects(const char *module, const char *uri, const char *pin, size_t pin_len, const char *label,
                        const uint8_t *id, size_t id_len, bool other_id, const char *new_label, size_t *ret_n,
                        char *err, size_t err_len)
{
    if (ret_n)
        *ret_n = 0;
    if (!module || !uri || !pin || pin_len == 0 || (!label && !id))
        return M2MVPN_E_INVAL;
    p11_uri u;
    int rc = p11_uri_parse(uri, &u, err, err_len);
    if (rc < 0)
        return rc;
    raw_p11 r;
    memset(&r, 0, sizeof r);
    if ((rc = raw_open_login(&r, module, &u, pin, pin_len, err, err_len)) < 0)
        goto out;
    CK_RV rv;
    CK_ATTRIBUTE t[1] = { { CKA_LABEL, (void *)label, label ? strlen(label) : 0 } };
    CK_OBJECT_HANDLE h[64];
    CK_ULONG found = 0;
    rv = r.f->C_FindObjectsInit(r.s, label ? t : NULL, label ? 1 : 0);
    if (rv == CKR_OK) {
        rv = r.f->C_FindObjects(r.s, h, 64, &found);
        r.f->C_FindObjectsFinal(r.s);
    }
    if (rv != CKR_OK) {
        pki_set_err(err, err_len, "cannot search token \"%s\" (CKR 0x%lx)", u.token, rv);
        rc = M2MVPN_E_CERT;
        goto out;
    }
    /* the objects that match, private keys last (a stop half way leaves
     * the key findable where it was) */
    CK_OBJECT_HANDLE sel[64];
    size_t n = 0, n_priv = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (CK_ULONG i = 0; i < found; i++) {
            uint8_t oid[64];
            CK_OBJECT_CLASS cls = 0;
            CK_ATTRIBUTE a[2] = { { CKA_ID, oid, sizeof oid }, { CKA_CLASS, &cls, sizeof cls } };
            if (r.f->C_GetAttributeValue(r.s, h[i], a, 2) != CKR_OK)
                continue;
            if ((cls == CKO_PRIVATE_KEY) != (pass == 1))
                continue;
            if (id) {
                bool same = a[0].ulValueLen == id_len && memcmp(oid, id, id_len) == 0;
                if (same == other_id)
                    continue;
            }
            sel[n++] = h[i];
            n_priv += pass;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (new_label) {
            CK_ATTRIBUTE l[1] = { { CKA_LABEL, (void *)new_label, strlen(new_label) } };
            rv = r.f->C_SetAttributeValue(r.s, sel[i], l, 1);
        } else {
            rv = r.f->C_DestroyObject(r.s, sel[i]);
        }
        if (rv != CKR_OK) {
            pki_set_err(err, err_len, "token \"%s\": cannot %s an object (CKR 0x%lx)", u.token,
                        new_label ? "relabel" : "delete", rv);
            rc = M2MVPN_E_CERT;
            goto out;
        }
    }
    if (ret_n)
        *ret_n = n_priv;
    rc = 0;
out:
    raw_close(&r);
    return rc;
}

/* Does the certificate object h hold the public key `pub`? */
static bool raw_cert_holds(raw_p11 *r, CK_OBJECT_HANDLE h, EVP_PKEY *pub)
{
    CK_ATTRIBUTE v = { CKA_VALUE, NULL, 0 };
    if (r->f->C_GetAttributeValue(r->s, h, &v, 1) != CKR_OK || v.ulValueLen == 0 ||
        v.ulValueLen == CK_UNAVAILABLE_INFORMATION || v.ulValueLen > 65536)
        return false;
    unsigned char *buf = malloc(v.ulValueLen);
    v.pValue = buf;
    bool eq = false;
    if (buf && r->f->C_GetAttributeValue(r->s, h, &v, 1) == CKR_OK) {
        const unsigned char *q = buf;
        X509 *x = d2i_X509(NULL, &q, (long)v.ulValueLen);
        eq = x && EVP_PKEY_eq(X509_get0_pubkey(x), pub) == 1;
        X509_free(x);
    }
    free(buf);
    ERR_clear_error();
    return eq;
}

/* Same key renewed (a token that cannot make keys): the new certificate
 * takes the old one's place next to the key. Created first, the others
 * destroyed after, so a stop in between leaves both (find_cert then takes
 * the newest that fits the key), never none. */
int cred_pkcs11_replace_cert(const char *module, const char *uri, const char *pin, size_t pin_len,
                             const uint8_t *der, size_t len, EVP_PKEY *key_pub, char *err, size_t err_len)
{
    if (!module || !uri || !pin || pin_len == 0 || !der || !len || !key_pub)
        return M2MVPN_E_INVAL;
    p11_uri u;
    int rc = p11_uri_parse(uri, &u, err, err_len);
    if (rc < 0)
        return rc;
    if (!u.object[0] && !u.has_id) {
        pki_set_err(err, err_len, "pkcs11_uri: give object= or id= (the key the certificate belongs to)");
        return M2MVPN_E_INVAL;
    }
    const unsigned char *q = der;
    X509 *x = d2i_X509(NULL, &q, (long)len);
    unsigned char *subj = NULL, *iss = NULL, *ser = NULL;
    int subj_len = x ? i2d_X509_NAME(X509_get_subject_name(x), &subj) : -1;
    int iss_len = x ? i2d_X509_NAME(X509_get_issuer_name(x), &iss) : -1;
    int ser_len = x ? i2d_ASN1_INTEGER(X509_get_serialNumber(x), &ser) : -1;
    bool fits = x && EVP_PKEY_eq(X509_get0_pubkey(x), key_pub) == 1;
    X509_free(x);
    ERR_clear_error();
    raw_p11 r;
    memset(&r, 0, sizeof r);
    if (subj_len <= 0 || iss_len <= 0 || ser_len <= 0) {
        pki_set_err(err, err_len, "the certificate to store is not DER X.509");
        rc = M2MVPN_E_CERT;
        goto out;
    }
    if (!fits) {
        /* it would replace the key's own certificate with an unusable one */
        pki_set_err(err, err_len, "the certificate to store on token \"%s\" is not for key \"%s\" (another "
                    "public key): nothing changed", u.token, u.object);
        rc = M2MVPN_E_CERT;
        goto out;
    }
    if ((rc = raw_open_login(&r, module, &u, pin, pin_len, err, err_len)) < 0)
        goto out;
    CK_RV rv;
    /* the private key the URI names: its label and id go to the certificate */
    CK_OBJECT_CLASS kcls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE kt[3] = { { CKA_CLASS, &kcls, sizeof kcls } };
    CK_ULONG nkt = 1;
    if (u.object[0])
        kt[nkt++] = (CK_ATTRIBUTE){ CKA_LABEL, u.object, strlen(u.object) };
    if (u.has_id)
        kt[nkt++] = (CK_ATTRIBUTE){ CKA_ID, u.id, u.id_len };
    CK_OBJECT_HANDLE hk[2];
    CK_ULONG nk = 0;
    rv = r.f->C_FindObjectsInit(r.s, kt, nkt);
    if (rv == CKR_OK) {
        rv = r.f->C_FindObjects(r.s, hk, 2, &nk);
        r.f->C_FindObjectsFinal(r.s);
    }
    char label[sizeof u.object];
    uint8_t id[64];
    CK_ATTRIBUTE ka[2] = { { CKA_LABEL, label, sizeof label - 1 }, { CKA_ID, id, sizeof id } };
    if (rv != CKR_OK || nk != 1) {
        pki_set_err(err, err_len, "token \"%s\": %s private key \"%s\" to store the certificate with", u.token,
                    rv != CKR_OK ? "cannot search for the" : nk ? "more than one" : "no", u.object);
        rc = M2MVPN_E_CERT;
        goto out;
    }
    if ((rv = r.f->C_GetAttributeValue(r.s, hk[0], ka, 2)) != CKR_OK) {
        pki_set_err(err, err_len, "token \"%s\": cannot read the label and id of key \"%s\" (CKR 0x%lx)", u.token,
                    u.object, rv);
        rc = M2MVPN_E_CERT;
        goto out;
    }
    CK_ULONG label_len = ka[0].ulValueLen, id_len = ka[1].ulValueLen;
    CK_OBJECT_CLASS ccls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ctype = CKC_X_509;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE ct[] = {
        { CKA_CLASS, &ccls, sizeof ccls },
        { CKA_CERTIFICATE_TYPE, &ctype, sizeof ctype },
        { CKA_TOKEN, &yes, sizeof yes },
        { CKA_LABEL, label, label_len },
        { CKA_ID, id, id_len },
        { CKA_SUBJECT, subj, (CK_ULONG)subj_len },
        { CKA_ISSUER, iss, (CK_ULONG)iss_len },
        { CKA_SERIAL_NUMBER, ser, (CK_ULONG)ser_len },
        { CKA_VALUE, (void *)der, len },
    };
    CK_OBJECT_HANDLE hnew;
    rv = r.f->C_CreateObject(r.s, ct, sizeof ct / sizeof ct[0], &hnew);
    if (rv != CKR_OK) {
        pki_set_err(err, err_len, "cannot store the certificate on token \"%s\" (CKR 0x%lx)", u.token, rv);
        rc = ckr_means_gone(rv) ? M2MVPN_E_IO : M2MVPN_E_CERT;
        goto out;
    }
    /* every other certificate of that key with that label or that id goes
     * (an empty label or id selects nothing: it is not the key's name);
     * one of another key is not this renewal's to delete */
    for (int pass = 0; pass < 2; pass++) {
        if ((pass == 0 && label_len == 0) || (pass == 1 && id_len == 0))
            continue;
        CK_ATTRIBUTE ft[2] = { { CKA_CLASS, &ccls, sizeof ccls },
                               pass ? (CK_ATTRIBUTE){ CKA_ID, id, id_len }
                                    : (CK_ATTRIBUTE){ CKA_LABEL, label, label_len } };
        CK_OBJECT_HANDLE h[64];
        CK_ULONG found = 0;
        rv = r.f->C_FindObjectsInit(r.s, ft, 2);
        if (rv == CKR_OK) {
            rv = r.f->C_FindObjects(r.s, h, 64, &found);
            r.f->C_FindObjectsFinal(r.s);
        }
        for (CK_ULONG i = 0; rv == CKR_OK && i < found; i++)
            if (h[i] != hnew && raw_cert_holds(&r, h[i], key_pub))
                rv = r.f->C_DestroyObject(r.s, h[i]);
        if (rv != CKR_OK) {
            pki_set_err(err, err_len, "token \"%s\": the new certificate is stored, an old one could not be "
                        "deleted (CKR 0x%lx)", u.token, rv);
            rc = M2MVPN_E_CERT;
            goto out;
        }
    }
    rc = 0;
out:
    OPENSSL_free(subj);
    OPENSSL_free(iss);
    OPENSSL_free(ser);
    raw_close(&r);
    return rc;
}

#endif /* M2MVPN_HAVE_PKCS11 */
