/* SPDX-License-Identifier: Apache-2.0 */
/* The engine side of management: the enrol / fetch cycle, one worker
 * thread for the network, results back through an eventfd in the loop. */
#include "mgmt.h"

#include "core/secmem.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cred/cred_hw.h"
#include "cred/keygen.h"
#include "cred/p11_uri.h"

#define SUB "mgmt"
#define PENDING_RETRY_S 30
#define FAIL_RETRY_S 60

typedef enum job_type {
    JOB_NONE, JOB_ENROL, JOB_FETCH, JOB_POLL, JOB_DEPLOY, JOB_ARTIFACT, JOB_RENEW, JOB_INSTALL, JOB_RR
} job_type;

#define TRY_POLL_S 3          /* trying a profile: poll this often for the commit */
#define TRY_DEFAULT_S 90      /* give a new profile this long to come up */
#define BACKOFF_MIN_S 10


typedef struct job {
    job_type type;
    /* in (engine → worker); the worker only reads them */
    mgmt_tls tls;
    char etag[128];
    /* out (worker → engine) */
    int r;
    char err[512];
    EVP_PKEY *key;            /* ENROL: the device key made or loaded */
    cred_provider *cred;      /* ENROL: the token holding it (pkcs11), or NULL */
    bool reopen;              /* FETCH: free key/cred given, open the token key again */
    bool made_key;            /* ENROL: the key file was made by this attempt */
    X509 *cert;               /* ENROL, RENEW: issued */
    X509 *old_cert;           /* RENEW, RR: the current one (a reference) */
    bool rr_signed_only;      /* RR: a refusal too must be signed (a retry) */
    bool rr_maybe_sent;       /* RR failed: it may have reached the server */
    EVP_PKEY *new_key;        /* RENEW: the key of the new certificate */
    bool new_key_file;        /* RENEW: new key in <key>.next (file provider) */
    bool p11_new;             /* RENEW: new key pair on the token, CKA_ID p11_id */
    uint8_t p11_id[8];
    char same_why[128];       /* RENEW: why the same key was renewed ("": by design) */
    int check_after_s;
    long http;
    uint8_t *body;
    size_t len;
    char new_etag[128];
    /* POLL: the poll path; DEPLOY: the deployment's href; ARTIFACT: its url */
    char path[256];
    mgmt_dep_type dep_type;   /* DEPLOY */
    bool window_open;         /* DEPLOY */
    /* POLL: feedback to post first (fb_id 0: none) */
    int64_t fb_id;
    char fb_body[512];
    int fb_r;
    long fb_http;
    /* ARTIFACT: streamed into the state dir (name, signed size and hash);
     * INSTALL: the verified file given to the installer */
    char file[4200];
    char version[64];
    int64_t size;
    char sha256[65];
    char *out;                /* INSTALL: its output (MGMT_INSTALL_OUT_MAX) */
} job;

typedef struct feedback {
    int64_t id;               /* 0: none owed */
    bool ok;
    bool proceeding;          /* "proceeding" (ok ignored) */
    char details[256];
} feedback;

struct mgmt {
    core_loop *loop;
    core_log *log;
    mgmt_hooks hooks;
    int evfd;
    core_io io;
    core_timer timer;

    pthread_t worker;
    bool worker_started;
    pthread_mutex_t mu;       /* guards job hand-over, stop, status */
    pthread_cond_t cv;
    bool stop;
    atomic_bool cancel;       /* mgmt_free: abort a transfer under way */
    job *todo;                /* for the worker */
    job *done;                /* for the engine */
    bool busy;                /* engine: a job is out */

    /* engine thread */
    profile_set *set;
    const profile *boot;
    char *dir;
    char key_path[4096];
    mgmt_state st;
    bool key_stale;           /* pkcs11: a request failed, open the token again */
    cred_provider *cred;      /* pkcs11: the open token behind key */
    EVP_PKEY *key;
    X509 *cert;
    X509 *signer;
    mgmt_status status;       /* under mu */

    /* day N */
    mgmt_journal jr;          /* apply.json as on disk */
    mgmt_poll_answer last;    /* the last poll answer (304: still this) */
    char poll_etag[128];
    uint32_t poll_s;          /* the server's, else the bootstrap's */
    unsigned fails;           /* poll failures in a row: back-off */
    feedback fb;              /* owed to the server */
    int64_t refused[8];       /* deployments refused this run (feedback sent or owed) */
    size_t n_refused;
    const profile_set *trying; /* TRYING: the set handed over (compared only) */
    int64_t try_deadline;
    bool no_poll;             /* the server has no day-N poll route: day-0 profile fetch */
    /* software: the verified bundle being downloaded / the file handed over */
    struct {
        int64_t dep;
        mgmt_bundle b;        /* software fields (no payload) */
        bool window_open;
        bool stored;          /* update-<version>.bin verified in the state dir */
        bool handed;          /* UPDATE_AVAILABLE emitted, result awaited */
        char path[4200];
    } upd;
    /* under mu: the application's result, for the engine */
    char res_version[64];     /* handed-over version (under mu); "" none */
    bool res_set, res_ok;
    char res_details[256];
    /* certificate renewal (CMP KUR) */
    core_timer renew_timer;
    unsigned renew_fails;     /* failed renewals in a row: back-off */
    bool p11_old_pending;     /* pkcs11: the replaced key's objects (<label>.old) still to delete */
    int64_t renew_dep;        /* a cert deployment asking for it (0: the schedule) */
    mgmt_renew_mark renew_mark; /* renew.json as on disk (deployment 0: none) */
    feedback renew_owed;      /* a restart's renewal feedback waiting for the one slot */
    mgmt_dep_type ask_type;   /* the deployment being fetched */
    bool ask_window;
    /* decommissioning (CMP RR, decommission.json) */
    bool decom_asked;         /* under mu: m2mvpn_decommission asked, engine not yet told */
    bool decom_unfinished;    /* under mu: a restart's RR failed, the device waits for another */
    mgmt_decom decom;         /* engine: as on disk */
    bool decom_out;           /* engine: the RR is queued or under way */
};

static void renew_arm(mgmt *m);
static void renew_test_pause(const mgmt *m, const char *step);
static void renew_recover(mgmt *m);
static void renew_done(mgmt *m, job *j);
static void on_renew_timer(void *arg);
static void decom_start(mgmt *m);
static void decom_done(mgmt *m, job *j);
static void decom_submit(mgmt *m);
static void cert_serial_hex(X509 *c, char *out, size_t cap);
static X509 *read_cert(const char *path);

/* ------------------------------------------------------------- helpers */

static int64_t wall_now(void)
{
    return (int64_t)time(NULL);
}

static void publish_status(mgmt *m, const char *error)
{
    pthread_mutex_lock(&m->mu);
    m->status.on = true;
    m->status.phase = m->st.phase;
    m->status.last_contact = m->st.last_contact;
    m->status.profile_version = m->st.profile_version;
    snprintf(m->status.device_id, sizeof(m->status.device_id), "%s", m->st.device_id);
    if (m->cert) {
        const ASN1_TIME *na = X509_get0_notAfter(m->cert);
        struct tm tm;
        if (na && ASN1_TIME_to_tm(na, &tm))
            m->status.cert_not_after = (int64_t)timegm(&tm);
    }
    if (error)
        snprintf(m->status.last_error, sizeof(m->status.last_error), "%s", error);
    pthread_mutex_unlock(&m->mu);
}

/* A request went through: the last failure is history. */
static void clear_error(mgmt *m)
{
    pthread_mutex_lock(&m->mu);
    if (!m->status.cert_refused) /* the gateway's refusal stays until connected */
        m->status.last_error[0] = '\0';
    pthread_mutex_unlock(&m->mu);
}

void mgmt_get_status(mgmt *m, mgmt_status *st)
{
    memset(st, 0, sizeof(*st));
    if (!m)
        return;
    pthread_mutex_lock(&m->mu);
    *st = m->status;
    pthread_mutex_unlock(&m->mu);
}

void mgmt_note_tunnel(mgmt *m, int err, const char *detail)
{
    if (!m || !m->boot || !m->cert)
        return;
    pthread_mutex_lock(&m->mu);
    if (err == M2MVPN_E_AUTH_LOCAL) {
        m->status.cert_refused = true;
        snprintf(m->status.last_error, sizeof(m->status.last_error),
                 "the gateway refused this device's certificate (%.80s): it may have been revoked; ask the "
                 "operator (m2mvpn-admin device list); a revoked device enrols again with a new token and an "
                 "empty state directory", detail ? detail : "AUTHENTICATION_FAILED");
    } else if (err == 0 && m->status.cert_refused) {
        m->status.cert_refused = false;
        m->status.last_error[0] = '\0';
    }
    pthread_mutex_unlock(&m->mu);
}

static void set_phase(mgmt *m, mgmt_phase p, const char *why)
{
    if (m->st.phase != p)
        LOG_INFO(m->log, SUB, "management %s -> %s%s%s", mgmt_phase_name(m->st.phase), mgmt_phase_name(p),
                 why ? ": " : "", why ? why : "");
    m->st.phase = p;
    publish_status(m, p == MGMT_ERROR ? why : NULL);
}

static void save_state(mgmt *m)
{
    char err[512];
    if (mgmt_state_save(m->dir, &m->st, err, sizeof(err)) < 0)
        LOG_ERR(m->log, SUB, "%s", err);
}

/* delay_s jittered by +-20 percent: a fleet must not ask at the same second. */
static void schedule(mgmt *m, uint32_t delay_s)
{
    uint32_t rnd = 0;
    RAND_bytes((unsigned char *)&rnd, sizeof(rnd));
    uint64_t ms = (uint64_t)delay_s * 1000;
    uint64_t span = ms * 2 / 5;
    ms = ms - ms / 5 + (span ? rnd % span : 0);
    core_timer_arm(m->loop, &m->timer, ms);
}

/* ------------------------------------------------------------- worker */

static size_t pin_len(const profile *b)
{
    return b->mgmt.pin ? strlen(b->mgmt.pin) : 0;
}

/* The key of a pkcs11 or tpm bootstrap, made on first use: the provider
 * holding it and an EVP_PKEY signing through it. */
static int token_key(mgmt *m, bool make, EVP_PKEY **ret, cred_provider **ret_cred, bool *made, char *err,
                     size_t err_len)
{
    const profile *b = m->boot;
    bool tpm = b->mgmt.provider == PROFILE_CERT_TPM;
    bool handle = tpm && !strncmp(m->key_path, "0x", 2);
    cred_provider *p = NULL;
    int r = M2MVPN_E_CERT;
    if (!tpm)
        r = cred_pkcs11_open_key(b->mgmt.pkcs11_module, b->mgmt.pkcs11_uri, b->mgmt.pin, pin_len(b), &p, err,
                                 err_len);
    else if (handle || access(m->key_path, F_OK) == 0)
        r = cred_tpm_open_key(m->key_path, b->mgmt.tpm_tcti, b->mgmt.pin, pin_len(b), &p, err, err_len);
    else
        snprintf(err, err_len, "no TPM key file %s", m->key_path);
    if (r == M2MVPN_E_CERT && make) {
        /* No such key yet (or unusable): make it; if that fails too, the
         * first reason is the one to show. */
        char kerr[256];
        char *csr = NULL;
        keygen_request rq = { .provider = tpm ? KEYGEN_TPM : KEYGEN_PKCS11, .subject = "/CN=m2mvpn-device",
                              .pkcs11_module = b->mgmt.pkcs11_module, .pkcs11_uri = b->mgmt.pkcs11_uri,
                              .tpm_tcti = b->mgmt.tpm_tcti, .pin = b->mgmt.pin, .pin_len = pin_len(b) };
        if (handle)
            rq.tpm_handle = (uint32_t)strtoul(m->key_path, NULL, 16);
        else if (tpm)
            rq.out = m->key_path;
        if (keygen_run(&rq, &csr, kerr, sizeof(kerr)) == 0) {
            if (made && tpm && !handle)
                *made = true;
            r = tpm ? cred_tpm_open_key(m->key_path, b->mgmt.tpm_tcti, b->mgmt.pin, pin_len(b), &p, err, err_len)
                    : cred_pkcs11_open_key(b->mgmt.pkcs11_module, b->mgmt.pkcs11_uri, b->mgmt.pin, pin_len(b), &p,
                                           err, err_len);
        }
        free(csr);
    }
    if (r < 0)
        return r;
    EVP_PKEY *k = cred_evp_key(p, err, err_len);
    if (!k) {
        cred_free(p);
        return M2MVPN_E_CERT;
    }
    *ret = k;
    *ret_cred = p;
    return 0;
}

/* tpm: the TPM is not held between requests (the engine may use it for
 * IKE, and a TPM without resource manager serves one client): the provider
 * is closed and only the public key kept. */
static void release_tpm(mgmt *m, EVP_PKEY **key, cred_provider **cred)
{
    if (m->boot->mgmt.provider != PROFILE_CERT_TPM || !*cred)
        return;
    EVP_PKEY *pub = cred_public_copy(*key);
    EVP_PKEY_free(*key);
    cred_free(*cred);
    *key = pub;
    *cred = NULL;
}

/* The device key where the bootstrap says: made on first use (make). */
static int device_key(mgmt *m, bool make, EVP_PKEY **ret, cred_provider **ret_cred, bool *made, char *err,
                      size_t err_len)
{
    *ret_cred = NULL;
    if (m->boot->mgmt.provider != PROFILE_CERT_FILE)
        return token_key(m, make, ret, ret_cred, made, err, err_len);
    if (make && access(m->key_path, F_OK) < 0) {
        /* pin: the key file is encrypted with it (AES-256). */
        keygen_request rq = { .provider = KEYGEN_FILE, .subject = "/CN=m2mvpn-device", .out = m->key_path,
                              .pin = m->boot->mgmt.pin, .pin_len = pin_len(m->boot) };
        char *csr = NULL;
        int r = keygen_run(&rq, &csr, err, err_len);
        free(csr);
        if (r < 0)
            return r;
        if (made)
            *made = true;
    }
    FILE *f = fopen(m->key_path, "r");
    const char *pass = m->boot->mgmt.pin ? m->boot->mgmt.pin : "";
    EVP_PKEY *k = f ? PEM_read_PrivateKey(f, NULL, NULL, (void *)pass) : NULL;
    if (f)
        fclose(f);
    if (!k) {
        ERR_clear_error();
        snprintf(err, err_len, "cannot read the device key %s (or management.key.pin does not open it)",
                 m->key_path);
        return M2MVPN_E_CERT;
    }
    *ret = k;
    return 0;
}

/* ------------------------------------- pkcs11: a new key pair on renewal
 *
 * The bootstrap's URI names the key by its label L (object=, no id=). A
 * renewal makes the new pair as L.next with a fresh CKA_ID, writing that id
 * to device.p11id.next (fsync) BEFORE it asks the token. Once the
 * certificate is issued (device.crt.pem.next written), the switch: the
 * objects labelled L of another id become L.old, the new id's become L
 * (both steps idempotent, so the next start can redo them), then
 * device.p11id.next is removed and the certificate file renamed (a
 * device.crt.pem.next without intent is finished as a same-key renewal:
 * its certificate stored next to the key labelled L). The L.old
 * objects are deleted once the tunnel runs on the new certificate (the
 * first poll that finds it up after the reauthentication), or at the next
 * start. A device.p11id.next without device.crt.pem.next is an attempt
 * that never got its certificate: its objects are deleted at the next
 * start. */

#define P11_INTENT "device.p11id.next"

static bool p11_renewable(const mgmt *m, p11_uri *u)
{
    char e[256];
    const profile *b = m->boot;
    return b->mgmt.provider == PROFILE_CERT_PKCS11 && b->mgmt.pkcs11_uri &&
           p11_uri_parse(b->mgmt.pkcs11_uri, u, e, sizeof(e)) == 0 && u->object[0] && !u->has_id &&
           strlen(u->object) + 6 <= sizeof(u->object) - 1;
}

static int p11_objects(const mgmt *m, const char *label, const uint8_t *id, bool other_id, const char *new_label,
                       size_t *n_keys, char *err, size_t err_len)
{
    const profile *b = m->boot;
    return cred_pkcs11_objects(b->mgmt.pkcs11_module, b->mgmt.pkcs11_uri, b->mgmt.pin, pin_len(b), label, id,
                               id ? 8 : 0, other_id, new_label, n_keys, err, err_len);
}

/* The switch to the new pair (idempotent). pause: the renewal's (the test
 * hook between the two steps), not a start's recovery. */
static int p11_switch(const mgmt *m, const p11_uri *u, const uint8_t *id, bool pause, char *err, size_t err_len)
{
    char old[160];
    snprintf(old, sizeof(old), "%s.old", u->object);
    int r = p11_objects(m, u->object, id, true, old, NULL, err, err_len);
    if (r == 0 && pause)
        renew_test_pause(m, "p11-relabelled");
    return r < 0 ? r : p11_objects(m, NULL, id, false, u->object, NULL, err, err_len);
}

/* An attempt undone: the old objects back under L, the new ones deleted.
 * < 0: not (the token failed); its intent must stay for the next start. */
static int p11_rollback(const mgmt *m, const p11_uri *u, const uint8_t *id)
{
    char old[160], e[256];
    snprintf(old, sizeof(old), "%s.old", u->object);
    int r = p11_objects(m, old, NULL, false, u->object, NULL, e, sizeof(e));
    if (r == 0)
        r = p11_objects(m, NULL, id, false, NULL, NULL, e, sizeof(e));
    if (r < 0)
        LOG_ERR(m->log, SUB, "undoing a key renewal on the token: %s (tried again at the next start)", e);
    return r;
}

static void p11_drop_old(mgmt *m)
{
    p11_uri u;
    char old[160], e[256];
    if (!p11_renewable(m, &u))
        return;
    snprintf(old, sizeof(old), "%s.old", u.object);
    size_t n = 0;
    if (p11_objects(m, old, NULL, false, NULL, &n, e, sizeof(e)) < 0) {
        LOG_WARN(m->log, SUB, "cannot delete the replaced key \"%s\" from the token: %s", old, e);
        return;
    }
    m->p11_old_pending = false;
    if (n)
        LOG_INFO(m->log, SUB, "the replaced key \"%s\" deleted from the token", old);
}

static int p11_intent_read(const mgmt *m, uint8_t id[8])
{
    char path[4200], hex[17] = "";
    snprintf(path, sizeof(path), "%s/" P11_INTENT, m->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(hex, 1, 16, f);
    fclose(f);
    for (size_t i = 0; i < 8; i++) {
        unsigned v;
        if (n != 16 || sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        id[i] = (uint8_t)v;
    }
    return 1;
}

static void p11_intent_drop(const mgmt *m)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/" P11_INTENT, m->dir);
    unlink(path);
    int dfd = open(m->dir, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
}

/* Worker: the new pair on the token, the KUR signed with the current key,
 * the certificate stored next to the new key. 1: done (j->r the KUR's
 * result); 0: this token makes no keys (j->same_why), renew the same key. */
static int p11_renew(mgmt *m, job *j, const p11_uri *u)
{
    const profile *b = m->boot;
    char label[160], uri[1024], hex[17];
    snprintf(label, sizeof(label), "%s.next", u->object);
    if (RAND_bytes(j->p11_id, sizeof(j->p11_id)) != 1 ||
        p11_uri_compose(u, label, j->p11_id, sizeof(j->p11_id), uri, sizeof(uri)) < 0) {
        j->r = M2MVPN_E_CRYPTO;
        snprintf(j->err, sizeof(j->err), "cannot name the new key");
        return 1;
    }
    for (size_t i = 0; i < 8; i++)
        snprintf(hex + 2 * i, 3, "%02x", j->p11_id[i]);
    /* leftovers of an attempt stopped before its intent was written */
    p11_objects(m, label, NULL, false, NULL, NULL, j->err, sizeof(j->err));
    j->r = mgmt_write_file(m->dir, P11_INTENT, hex, 16, j->err, sizeof(j->err));
    if (j->r < 0)
        return 1;
    j->r = cred_pkcs11_generate(b->mgmt.pkcs11_module, uri, b->mgmt.pin, pin_len(b),
                                EVP_PKEY_get_base_id(j->tls.key) == EVP_PKEY_RSA, j->err, sizeof(j->err));
    if (j->r == 0)
        renew_test_pause(m, "p11-generated"); /* the worker thread: the engine goes on */
    if (j->r == M2MVPN_E_NOTSUPP) {
        p11_intent_drop(m);
        snprintf(j->same_why, sizeof(j->same_why), "%s", j->err);
        j->r = 0;
        return 0;
    }
    cred_provider *np = NULL;
    EVP_PKEY *nk = NULL;
    if (j->r == 0)
        j->r = cred_pkcs11_open_key(b->mgmt.pkcs11_module, uri, b->mgmt.pin, pin_len(b), &np, j->err,
                                    sizeof(j->err));
    if (j->r == 0 && !(nk = cred_evp_key(np, j->err, sizeof(j->err))))
        j->r = M2MVPN_E_CERT;
    /* Opening the new key read-write closed this process's other sessions
     * on the token (libp11 changes the session mode with C_CloseAllSessions):
     * the current key is opened again after it, by the bootstrap's URI (the
     * label L, only the old pair has it yet), for the mutual TLS and the
     * KUR's protection. */
    cred_provider *op = NULL;
    EVP_PKEY *ok = NULL;
    if (j->r == 0)
        j->r = cred_pkcs11_open(b->mgmt.pkcs11_module, b->mgmt.pkcs11_uri, b->mgmt.pin, pin_len(b), &op, j->err,
                                sizeof(j->err));
    if (j->r == 0 && !(ok = cred_evp_key(op, j->err, sizeof(j->err))))
        j->r = M2MVPN_E_CERT;
    if (j->r == 0) {
        mgmt_tls tls = j->tls;
        tls.key = ok;
        j->r = mgmt_cmp_kur(&tls, ok, j->old_cert, nk, &j->cert, j->err, sizeof(j->err));
    }
    if (j->r == 0) {
        unsigned char *der = NULL;
        int dn = i2d_X509(j->cert, &der);
        j->r = dn > 0 ? cred_pkcs11_store_cert(np, der, (size_t)dn, j->err, sizeof(j->err)) : M2MVPN_E_NOMEM;
        OPENSSL_free(der);
    }
    EVP_PKEY_free(ok);
    cred_free(op);
    if (j->r == 0 && !(j->new_key = cred_public_copy(nk)))
        j->r = M2MVPN_E_NOMEM;
    EVP_PKEY_free(nk);
    cred_free(np);
    if (j->r < 0) {
        char e[256];
        p11_objects(m, NULL, j->p11_id, false, NULL, NULL, e, sizeof(e));
        p11_intent_drop(m);
        return 1;
    }
    j->p11_new = true;
    return 1;
}

/* ------------------------------------------ tpm: a new key on renewal
 *
 * A key file (device.tss2.pem, not a persistent handle): the renewal makes
 * a new key in the TPM, its blob written atomically (temp file, fsync,
 * rename) to <key>.next beside the current one: that file is the intent.
 * The KUR is signed (protection, TLS) with the current key and carries the
 * new public key with its proof of possession. Once the certificate is
 * issued, device.crt.pem.next is written, then the swap renames <key>.next
 * over the key (the old blob gone with it) and the certificate last; a stop
 * anywhere is finished (both .next files) or undone (<key>.next alone, an
 * attempt without its certificate) at the next start (renew_recover). The
 * swap checks first that <key>.next holds the public key of
 * device.crt.pem.next: a tampered or foreign blob is never switched to. */

static bool tpm_renewable(const mgmt *m)
{
    return m->boot->mgmt.provider == PROFILE_CERT_TPM && strncmp(m->key_path, "0x", 2) != 0;
}

/* Worker. 1: done (j->r the result); 0: the TPM made no new key
 * (j->same_why), renew the same key. */
static int tpm_renew(mgmt *m, job *j)
{
    const profile *b = m->boot;
    char next[4200], kerr[256];
    snprintf(next, sizeof(next), "%s.next", m->key_path);
    unlink(next); /* an earlier attempt's */
    keygen_request rq = { .provider = KEYGEN_TPM, .subject = "/CN=m2mvpn-device", .out = next,
                          .tpm_tcti = b->mgmt.tpm_tcti, .pin = b->mgmt.pin, .pin_len = pin_len(b) };
    char *csr = NULL;
    int r = keygen_run(&rq, &csr, kerr, sizeof(kerr));
    free(csr);
    cred_provider *np = NULL;
    EVP_PKEY *nk = NULL;
    if (r == 0)
        r = cred_tpm_open_key(next, b->mgmt.tpm_tcti, b->mgmt.pin, pin_len(b), &np, kerr, sizeof(kerr));
    if (r == 0 && !(nk = cred_evp_key(np, kerr, sizeof(kerr))))
        r = M2MVPN_E_CERT;
    if (r < 0) {
        cred_free(np);
        unlink(next);
        if (r != M2MVPN_E_CERT) { /* not reachable, no memory: tried again later */
            j->r = r;
            snprintf(j->err, sizeof(j->err), "making the new key in the TPM: %s", kerr);
            return 1;
        }
        snprintf(j->same_why, sizeof(j->same_why), "the TPM made no new key: %s", kerr);
        return 0;
    }
    j->new_key_file = true; /* <key>.next removed by renew_done if this fails */
    j->r = mgmt_cmp_kur(&j->tls, j->tls.key, j->old_cert, nk, &j->cert, j->err, sizeof(j->err));
    if (j->r == 0 && !(j->new_key = cred_public_copy(nk)))
        j->r = M2MVPN_E_NOMEM;
    EVP_PKEY_free(nk);
    cred_free(np);
    return 1;
}

/* The key of the renewed certificate: file provider a new key written to
 * <key>.next (swapped in once the certificate is issued); PKCS#11 and TPM
 * a new key as well where they can (above), else the same key (KUR of the
 * key in use). Then the KUR. */
static void renew_run(mgmt *m, job *j)
{
    if (m->boot->mgmt.provider == PROFILE_CERT_FILE) {
        char next[4200];
        snprintf(next, sizeof(next), "%s.next", m->key_path);
        unlink(next); /* a half-made one of an earlier attempt */
        keygen_request rq = { .provider = KEYGEN_FILE, .subject = "/CN=m2mvpn-device", .out = next,
                              .pin = m->boot->mgmt.pin, .pin_len = pin_len(m->boot) };
        char *csr = NULL;
        j->r = keygen_run(&rq, &csr, j->err, sizeof(j->err));
        free(csr);
        if (j->r < 0)
            return;
        j->new_key_file = true;
        FILE *f = fopen(next, "r");
        const char *pass = m->boot->mgmt.pin ? m->boot->mgmt.pin : "";
        j->new_key = f ? PEM_read_PrivateKey(f, NULL, NULL, (void *)pass) : NULL;
        if (f)
            fclose(f);
        if (!j->new_key) {
            ERR_clear_error();
            snprintf(j->err, sizeof(j->err), "cannot read the new device key %s", next);
            j->r = M2MVPN_E_CERT;
            return;
        }
    } else {
        p11_uri u;
        if (p11_renewable(m, &u) && p11_renew(m, j, &u))
            return;
        if (tpm_renewable(m) && tpm_renew(m, j))
            return;
        if (m->boot->mgmt.provider == PROFILE_CERT_TPM && !j->same_why[0])
            snprintf(j->same_why, sizeof(j->same_why), "the key is a persistent TPM handle (%s)", m->key_path);
        if (m->boot->mgmt.provider == PROFILE_CERT_PKCS11 && !j->same_why[0])
            snprintf(j->same_why, sizeof(j->same_why), "the bootstrap's pkcs11_uri names no object= label or gives an id=");
        if (!EVP_PKEY_up_ref(j->tls.key)) {
            j->r = M2MVPN_E_NOMEM;
            return;
        }
        j->new_key = j->tls.key;
    }
    j->r = mgmt_cmp_kur(&j->tls, j->tls.key, j->old_cert, j->new_key, &j->cert, j->err, sizeof(j->err));
}

static void run_job(mgmt *m, job *j)
{
    if (j->type != JOB_ENROL && j->reopen) {
        /* The module may have been finalised under us (another user of
         * the token in this process closed it): the old handles go
         * first, then the key is opened again. */
        EVP_PKEY_free(j->key);
        cred_free(j->cred);
        j->key = NULL;
        j->cred = NULL;
        j->r = device_key(m, false, &j->key, &j->cred, NULL, j->err, sizeof(j->err));
        if (j->r < 0)
            return;
        j->tls.key = j->key;
    }
    switch (j->type) {
    case JOB_ENROL:
        j->r = device_key(m, true, &j->key, &j->cred, &j->made_key, j->err, sizeof(j->err));
        if (j->r == 0)
            j->r = mgmt_cmp_enrol(&j->tls, m->boot->mgmt.token, j->key, &j->cert, &j->check_after_s, j->err,
                                  sizeof(j->err));
        break;
    case JOB_FETCH:
        j->r = mgmt_http(&j->tls, "/api/v1/device/profile", NULL, NULL, 0, j->etag, &j->http, &j->body, &j->len,
                         j->new_etag, sizeof(j->new_etag), j->err, sizeof(j->err));
        break;
    case JOB_POLL:
        if (j->fb_id) {
            char fpath[96];
            uint8_t *b = NULL;
            size_t bl = 0;
            snprintf(fpath, sizeof(fpath), "/api/v1/device/deployments/%lld/feedback", (long long)j->fb_id);
            j->fb_r = mgmt_http(&j->tls, fpath, "application/json", (const uint8_t *)j->fb_body, strlen(j->fb_body),
                                NULL, &j->fb_http, &b, &bl, NULL, 0, j->err, sizeof(j->err));
            secure_free(b, b ? bl + 1 : 0);
        }
        j->r = mgmt_http(&j->tls, j->path, NULL, NULL, 0, j->etag[0] ? j->etag : NULL, &j->http, &j->body, &j->len,
                         j->new_etag, sizeof(j->new_etag), j->err, sizeof(j->err));
        break;
    case JOB_DEPLOY:
        j->r = mgmt_http(&j->tls, j->path, NULL, NULL, 0, NULL, &j->http, &j->body, &j->len, NULL, 0, j->err,
                         sizeof(j->err));
        break;
    case JOB_ARTIFACT: {
        /* streamed to .NAME.part, renamed to NAME only once verified */
        mgmt_dl d;
        j->r = mgmt_dl_open(&d, m->dir, j->file, j->size, j->sha256, j->err, sizeof(j->err));
        if (j->r < 0)
            break;
        j->r = mgmt_http_download(&j->tls, j->path, &d, &j->http, j->err, sizeof(j->err));
        if (j->r == 0 && j->http == 200)
            j->r = mgmt_dl_finish(&d, j->err, sizeof(j->err));
        else
            mgmt_dl_abort(&d);
        break;
    }
    case JOB_INSTALL: {
        j->out = malloc(MGMT_INSTALL_OUT_MAX);
        if (!j->out) {
            j->r = M2MVPN_E_NOMEM;
            break;
        }
        /* hashed once more on the descriptor the installer gets: never a
         * file put at the path after the check */
        int fd = -1;
        j->r = mgmt_file_open_verified(j->file, j->size, j->sha256, &fd, j->err, sizeof(j->err));
        if (j->r == 0)
            j->r = mgmt_install_run(m->boot->mgmt.installer, j->file, fd, j->version,
                                    m->boot->mgmt.installer_timeout_s, &m->cancel, j->out, MGMT_INSTALL_OUT_MAX,
                                    j->err, sizeof(j->err));
        if (fd >= 0)
            close(fd);
        break;
    }
    case JOB_RENEW:
        renew_run(m, j);
        break;
    case JOB_RR:
        j->r = mgmt_cmp_rr(&j->tls, j->tls.key, j->old_cert, j->rr_signed_only, &j->rr_maybe_sent, j->err,
                           sizeof(j->err));
        release_tpm(m, &j->key, &j->cred);
        break;
    case JOB_NONE:
        break;
    }
    /* Whatever the job and however it ended: the TPM key is flushed (the
     * engine keeps its public half only), never held loaded between
     * requests. */
    release_tpm(m, &j->key, &j->cred);
}

static void *worker_main(void *arg)
{
    mgmt *m = arg;
    pthread_mutex_lock(&m->mu);
    for (;;) {
        while (!m->todo && !m->stop)
            pthread_cond_wait(&m->cv, &m->mu);
        if (m->stop)
            break;
        job *j = m->todo;
        m->todo = NULL;
        pthread_mutex_unlock(&m->mu);
        run_job(m, j);
        pthread_mutex_lock(&m->mu);
        m->done = j;
        uint64_t one = 1;
        if (write(m->evfd, &one, sizeof(one)) < 0) {
            /* the counter cannot overflow with one job out */
        }
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

static void job_free(job *j)
{
    if (!j)
        return;
    EVP_PKEY_free(j->key);
    cred_free(j->cred);
    X509_free(j->cert);
    X509_free(j->old_cert);
    EVP_PKEY_free(j->new_key);
    secure_free(j->body, j->body ? j->len + 1 : 0); /* an HTTP body: a profile, a bundle */
    free(j->out);
    free(j);
}

static void poll_path(mgmt *m, char *out, size_t cap);
static void feedback_body(const feedback *f, char *out, size_t cap);

static void submit_path(mgmt *m, job_type type, const char *path)
{
    if (m->busy)
        return;
    job *j = calloc(1, sizeof(*j));
    if (!j) {
        schedule(m, FAIL_RETRY_S);
        return;
    }
    j->type = type;
    j->tls.cancel = &m->cancel;
    j->tls.url = m->boot->mgmt.url;
    j->tls.server_ca = m->boot->mgmt.server_ca;
    if (type != JOB_ENROL && type != JOB_INSTALL) {
        j->tls.cert = m->cert;
        j->tls.key = m->key;
        if ((m->key_stale && m->boot->mgmt.provider == PROFILE_CERT_PKCS11) ||
            m->boot->mgmt.provider == PROFILE_CERT_TPM) {
            j->reopen = true;
            j->key = m->key;
            j->cred = m->cred;
            m->key = NULL;
            m->cred = NULL;
        }
        if (type == JOB_FETCH)
            snprintf(j->etag, sizeof(j->etag), "%s", m->st.etag);
    }
    if (type == JOB_POLL) {
        poll_path(m, j->path, sizeof(j->path));
        snprintf(j->etag, sizeof(j->etag), "%s", m->poll_etag);
        if (m->fb.id) {
            j->fb_id = m->fb.id;
            feedback_body(&m->fb, j->fb_body, sizeof(j->fb_body));
        }
        LOG_DBG(m->log, SUB, "polling %s%s", m->boot->mgmt.url, j->path);
    } else if (type == JOB_RR) {
        X509_up_ref(m->cert);
        j->old_cert = m->cert;
        j->rr_signed_only = m->st.phase != MGMT_ENROLLED; /* a retry (restart or unanswered RR) */
        LOG_INFO(m->log, SUB, "decommissioning: revoking the device certificate (CMP RR) at %s", m->boot->mgmt.url);
    } else if (type == JOB_RENEW) {
        X509_up_ref(m->cert);
        j->old_cert = m->cert;
        LOG_INFO(m->log, SUB, "renewing the device certificate (CMP KUR) at %s", m->boot->mgmt.url);
    } else if (type == JOB_DEPLOY || type == JOB_ARTIFACT) {
        snprintf(j->path, sizeof(j->path), "%s", path ? path : "");
        LOG_INFO(m->log, SUB, "fetching deployment %s", j->path);
        if (type == JOB_ARTIFACT) {
            snprintf(j->file, sizeof(j->file), "update-%s.bin", m->upd.b.software_version);
            j->size = m->upd.b.size;
            memcpy(j->sha256, m->upd.b.sha256, sizeof(j->sha256));
        }
    } else if (type == JOB_INSTALL) {
        snprintf(j->file, sizeof(j->file), "%s", m->upd.path);
        snprintf(j->version, sizeof(j->version), "%s", m->upd.b.software_version);
        j->size = m->upd.b.size;
        memcpy(j->sha256, m->upd.b.sha256, sizeof(j->sha256));
        LOG_INFO(m->log, SUB, "update %s: running the installer %s (at most %u s)", j->version,
                 m->boot->mgmt.installer, m->boot->mgmt.installer_timeout_s);
    } else {
        LOG_INFO(m->log, SUB, "%s at %s", type == JOB_ENROL ? "enrolling (CMP)" : "asking for a newer profile",
                 m->boot->mgmt.url);
    }
    m->busy = true;
    pthread_mutex_lock(&m->mu);
    m->todo = j;
    pthread_cond_signal(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

static void submit(mgmt *m, job_type type)
{
    submit_path(m, type, NULL);
}

/* ------------------------------------------------------ installing */

/* Day 0 (first install, version 0 before): ca-N.pem; day N: each version
 * its own ca-vV-N.pem, so a rollback finds the previous profile's CAs. */
static void ca_name(char *out, size_t cap, int64_t version, size_t i)
{
    if (version <= 1)
        snprintf(out, cap, "ca-%zu.pem", i);
    else
        snprintf(out, cap, "ca-v%lld-%zu.pem", (long long)version, i);
}

/* The delivered profile as the device installs it: inline CA PEMs become
 * ca-N.pem, auth.cert names the enrolled credential. Returns the new JSON
 * text (malloc'd) or NULL with err; *ret_cas gets the PEMs to write. */
static char *localise(mgmt *m, const uint8_t *payload, size_t len, int64_t version, json_object **ret_cas, char *err,
                      size_t err_len)
{
    json_object *p = json_tokener_parse((const char *)payload);
    (void)len;
    if (!p || !json_object_is_type(p, json_type_object)) {
        snprintf(err, err_len, "profile bundle refused: payload is not a JSON profile object");
        json_object_put(p);
        return NULL;
    }
    if (json_object_object_get_ex(p, "management", NULL)) {
        snprintf(err, err_len, "profile bundle refused: a delivered profile may not hold \"management\"");
        json_object_put(p);
        return NULL;
    }
    /* A set would pass the rules below untouched (its profiles' auth.cert,
     * ca, management); a program to run is no setting the server picks. */
    json_object *tun;
    const char *local = json_object_object_get_ex(p, "profiles", NULL)
                            ? "must be one profile object, not a set (\"profiles\")"
                        : json_object_object_get_ex(p, "tunnel", &tun) && json_object_is_type(tun, json_type_object) &&
                                json_object_object_get_ex(tun, "dns_hook", NULL)
                            ? "may not name a program to run (tunnel.dns_hook)"
                            : NULL;
    if (local) {
        snprintf(err, err_len, "profile bundle refused: a delivered profile %s", local);
        json_object_put(p);
        return NULL;
    }
    json_object *cas = json_object_new_array(), *ca;
    if (json_object_object_get_ex(p, "ca", &ca) && json_object_is_type(ca, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(ca); i++) {
            json_object *v = json_object_array_get_idx(ca, i);
            const char *s = json_object_get_string(v);
            if (json_object_is_type(v, json_type_string) && !strncmp(s, "-----BEGIN CERTIFICATE-----", 27)) {
                char name[48];
                ca_name(name, sizeof(name), version, i);
                json_object_array_add(cas, json_object_get(v));
                json_object_array_put_idx(ca, i, json_object_new_string(name));
            } else {
                snprintf(err, err_len, "profile bundle refused: ca[%zu] is not an inline PEM certificate", i);
                json_object_put(cas);
                json_object_put(p);
                return NULL;
            }
        }
    }
    json_object *auth, *method;
    if (json_object_object_get_ex(p, "auth", &auth) && json_object_is_type(auth, json_type_object) &&
        json_object_object_get_ex(auth, "method", &method) && !strcmp(json_object_get_string(method), "cert")) {
        const profile *b = m->boot;
        json_object *cert = json_object_new_object();
        if (b->mgmt.provider == PROFILE_CERT_PKCS11) {
            json_object_object_add(cert, "source", json_object_new_string("pkcs11"));
            json_object_object_add(cert, "pkcs11_module", json_object_new_string(b->mgmt.pkcs11_module));
            json_object_object_add(cert, "pkcs11_uri", json_object_new_string(b->mgmt.pkcs11_uri));
            if (b->mgmt.pin)
                json_object_object_add(cert, "pin", json_object_new_string(b->mgmt.pin));
        } else if (b->mgmt.provider == PROFILE_CERT_TPM) {
            json_object_object_add(cert, "source", json_object_new_string("tpm"));
            json_object_object_add(cert, "tpm_key", json_object_new_string(m->key_path));
            json_object_object_add(cert, "file", json_object_new_string("device.crt.pem"));
            if (b->mgmt.tpm_tcti)
                json_object_object_add(cert, "tpm_tcti", json_object_new_string(b->mgmt.tpm_tcti));
            if (b->mgmt.pin)
                json_object_object_add(cert, "pin", json_object_new_string(b->mgmt.pin));
        } else {
            json_object_object_add(cert, "source", json_object_new_string("file"));
            json_object_object_add(cert, "file", json_object_new_string("device.crt.pem"));
            json_object_object_add(cert, "key", json_object_new_string(m->key_path));
            if (b->mgmt.pin)
                json_object_object_add(cert, "pin", json_object_new_string(b->mgmt.pin));
        }
        json_object_object_add(auth, "cert", cert);
    }
    char *text = strdup(json_object_to_json_string_ext(p, JSON_C_TO_STRING_PRETTY));
    json_object_put(p);
    *ret_cas = cas;
    return text;
}

/* A verified bundle: check the profile, then write CAs, profile, version. */
static int install(mgmt *m, const uint8_t *der, size_t len, const char *etag, char *err, size_t err_len)
{
    mgmt_bundle b;
    int r = mgmt_bundle_verify(der, len, m->signer, "profile", m->st.device_id, m->st.profile_version, wall_now(),
                               &b, err, err_len);
    if (r < 0)
        return r;
    json_object *cas = NULL;
    char *text = localise(m, b.payload, b.payload_len, 1, &cas, err, err_len);
    int version = (int)b.version;
    int64_t v64 = b.version;
    (void)version;
    mgmt_bundle_clear(&b);
    if (!text)
        return M2MVPN_E_BUNDLE;
    profile_set *set = NULL;
    char perr[512];
    r = profile_set_parse(text, strlen(text), m->dir, &set, perr, sizeof(perr));
    if (r < 0) {
        snprintf(err, err_len, "profile bundle refused: the profile is not valid: %s", perr);
        r = M2MVPN_E_BUNDLE;
        goto out;
    }
    if (set->items[0].mgmt.on || set->items[0].n_gateways == 0) {
        snprintf(err, err_len, "profile bundle refused: the profile has no gateways");
        r = M2MVPN_E_BUNDLE;
        goto out;
    }
    for (size_t i = 0; i < json_object_array_length(cas) && r == 0; i++) {
        char name[32];
        snprintf(name, sizeof(name), "ca-%zu.pem", i);
        const char *pem = json_object_get_string(json_object_array_get_idx(cas, i));
        r = mgmt_write_file(m->dir, name, pem, strlen(pem), err, err_len);
    }
    if (r == 0)
        r = mgmt_write_file(m->dir, "profile.json", text, strlen(text), err, err_len);
    if (r == 0) {
        m->st.profile_version = v64; /* only after everything is in place */
        snprintf(m->st.etag, sizeof(m->st.etag), "%s", etag ? etag : "");
        save_state(m);
        publish_status(m, NULL);
        char what[128];
        snprintf(what, sizeof(what), "profile version %lld installed", (long long)v64);
        LOG_INFO(m->log, SUB, "%s", what);
        m->hooks.on_event(m->hooks.arg, M2MVPN_EVENT_CONFIG_UPDATED, 0, what);
        m->hooks.on_profile(m->hooks.arg, set);
        set = NULL;
    }
out:
    profile_set_free(set);
    json_object_put(cas);
    secure_free_str(text); /* the profile, with the key's PIN */
    return r;
}

/* ------------------------------------------------------- results */

static void fail_event(mgmt *m, int r, const char *err, bool retry)
{
    LOG_ERR(m->log, SUB, "%s", err);
    if (m->st.phase != MGMT_ENROLLED)
        set_phase(m, MGMT_ERROR, err);
    else
        publish_status(m, err);
    m->hooks.on_event(m->hooks.arg, M2MVPN_EVENT_AUTH_FAILED, r, err);
    if (retry)
        schedule(m, m->boot->mgmt.poll_s < FAIL_RETRY_S ? m->boot->mgmt.poll_s : FAIL_RETRY_S);
}

static void enrol_done(mgmt *m, job *j)
{
    char err[512];
    if (j->r == M2MVPN_E_PENDING) {
        /* The id the server derives from our key: what the operator
         * approves (m2mvpn-admin device approve ID). */
        char id[21];
        if (j->key && mgmt_device_id(j->key, id) == 0)
            snprintf(m->st.device_id, sizeof(m->st.device_id), "%s", id);
        m->st.last_contact = wall_now();
        set_phase(m, MGMT_PENDING, "waiting for the operator's approval");
        save_state(m);
        publish_status(m, j->err);
        /* The server's checkAfter, but never later than the bootstrap's
         * poll_s (the operator's own bound). */
        uint32_t after = j->check_after_s > 0 ? (uint32_t)j->check_after_s : PENDING_RETRY_S;
        schedule(m, after < m->boot->mgmt.poll_s ? after : m->boot->mgmt.poll_s);
        return;
    }
    if (j->r < 0 && j->made_key && j->r != M2MVPN_E_NETWORK && j->r != M2MVPN_E_PROTOCOL) {
        /* Refused: a key made by this attempt goes again, so a refused
         * enrolment leaves the state directory as it was (the next attempt
         * makes a new one). Not when the answer was lost or garbled: the
         * server may have bound the token to this key (or issued its
         * certificate) already, and only this key can ask again. */
        if (unlink(m->key_path) < 0)
            LOG_WARN(m->log, SUB, "cannot remove %s: %s", m->key_path, strerror(errno));
    }
    if (j->r < 0) {
        /* A refused token or an operator's rejection does not heal by asking again. */
        /* Nor does a wrong PIN: never presented again by itself (a TPM counts each towards its lockout). */
        fail_event(m, j->r, j->err, j->r != M2MVPN_E_TOKEN && j->r != M2MVPN_E_ENROL && j->r != M2MVPN_E_NOTSUPP &&
                   j->r != M2MVPN_E_PIN);
        return;
    }
    char id[21];
    mgmt_device_id(j->key, id);
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem = NULL;
    long n = bio && PEM_write_bio_X509(bio, j->cert) ? BIO_get_mem_data(bio, &pem) : 0;
    int r = n > 0 ? mgmt_write_file(m->dir, "device.crt.pem", pem, (size_t)n, err, sizeof(err)) : M2MVPN_E_NOMEM;
    BIO_free(bio);
    if (r == 0 && j->cred && m->boot->mgmt.provider == PROFILE_CERT_PKCS11) {
        /* The pkcs11 source reads the certificate from the token. */
        unsigned char *der = NULL;
        int dn = i2d_X509(j->cert, &der);
        r = dn > 0 ? cred_pkcs11_store_cert(j->cred, der, (size_t)dn, err, sizeof(err)) : M2MVPN_E_NOMEM;
        OPENSSL_free(der);
    }
    if (r < 0) {
        fail_event(m, r, r == M2MVPN_E_NOMEM ? "out of memory storing the certificate" : err, true);
        return;
    }
    m->key = j->key;
    m->cert = j->cert;
    m->cred = j->cred;
    j->key = NULL;
    j->cert = NULL;
    j->cred = NULL;
    snprintf(m->st.device_id, sizeof(m->st.device_id), "%s", id);
    m->st.last_contact = wall_now();
    clear_error(m);
    set_phase(m, MGMT_ENROLLED, id);
    save_state(m);
    char what[128];
    snprintf(what, sizeof(what), "enrolled as %s", id);
    m->hooks.on_event(m->hooks.arg, M2MVPN_EVENT_ENROLLED, 0, what);
    renew_arm(m);
    submit(m, JOB_FETCH);
}

/* The pkcs11 token key opened again by the worker: ours now. */
static void take_reopened(mgmt *m, job *j)
{
    if (j->reopen && j->key) {
        m->key = j->key;
        m->cred = j->cred;
        j->key = NULL;
        j->cred = NULL;
        m->key_stale = false;
    }
    if (j->r < 0 && m->boot->mgmt.provider == PROFILE_CERT_PKCS11)
        m->key_stale = true; /* pkcs11: open the token again next time */
}

static void fetch_done(mgmt *m, job *j)
{
    char err[600];
    take_reopened(m, j);
    if (j->r < 0) {
        fail_event(m, j->r, j->err, j->r != M2MVPN_E_PIN);
        return;
    }
    m->st.last_contact = wall_now();
    if (j->http == 304 || j->http == 200)
        clear_error(m);
    if (j->http == 304) {
        LOG_DBG(m->log, SUB, "profile unchanged (version %lld)", (long long)m->st.profile_version);
    } else if (j->http == 200) {
        int r = install(m, j->body, j->len, j->new_etag, err, sizeof(err));
        if (r < 0) {
            /* A refused bundle changes nothing stored, mgmt.json included
             * (its last_contact is saved with the next accepted answer). */
            fail_event(m, r, err, false);
            publish_status(m, NULL);
            schedule(m, m->boot->mgmt.poll_s);
            return;
        }
    } else {
        snprintf(err, sizeof(err), "management server answered the profile request with HTTP %ld: %.200s",
                 j->http, j->body ? (const char *)j->body : "");
        for (char *c = err; *c; c++)
            if ((unsigned char)*c < 0x20)
                *c = ' ';
        LOG_WARN(m->log, SUB, "%s", err);
        publish_status(m, err);
    }
    save_state(m);
    publish_status(m, NULL);
    schedule(m, m->boot->mgmt.poll_s);
}

/* ------------------------------------------------------- day N: polling */

static void poll_path(mgmt *m, char *out, size_t cap)
{
    bool up_with = false;
    const char *tun = m->hooks.tunnel ? m->hooks.tunnel(m->hooks.arg, NULL, &up_with) : "down";
    int64_t na = 0;
    if (m->cert) {
        struct tm tm;
        const ASN1_TIME *t = X509_get0_notAfter(m->cert);
        if (t && ASN1_TIME_to_tm(t, &tm))
            na = (int64_t)timegm(&tm);
    }
    mgmt_poll_query(out, cap, tun, m->st.profile_version, m2mvpn_version(), na);
}

static void feedback_body(const feedback *f, char *out, size_t cap)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "result",
                           json_object_new_string(f->proceeding ? "proceeding" : f->ok ? "success" : "failure"));
    json_object_object_add(o, "details", json_object_new_string(f->details));
    snprintf(out, cap, "%s", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
}

/* Test hook (documented in docs/mgmt.md): M2MVPN_TEST_APPLY_PAUSE=<phase>
 * stops the engine thread right after that step of applying a profile
 * reached the disk, so a test can SIGKILL it there. */
static void test_pause(mgmt *m, const char *phase)
{
    const char *p = getenv("M2MVPN_TEST_APPLY_PAUSE");
    if (!p || strcmp(p, phase) != 0)
        return;
    LOG_WARN(m->log, SUB, "test hook: paused after apply step %s", phase);
    for (;;)
        sleep(1);
}

/* Test hook (documented in docs/mgmt.md): M2MVPN_TEST_RENEW_PAUSE=issued
 * (the new key <key>.next on disk, the issued certificate not yet) or
 * written (device.crt.pem.next on disk too, before the renames) stops the
 * engine thread there, so a test can SIGKILL it; p11-generated (the
 * worker), p11-relabelled, p11-intent-dropped, p11-swapped: the steps of a
 * PKCS#11 new-key renewal. */
static void renew_test_pause(const mgmt *m, const char *step)
{
    const char *p = getenv("M2MVPN_TEST_RENEW_PAUSE");
    if (!p || strcmp(p, step) != 0)
        return;
    LOG_WARN(m->log, SUB, "test hook: paused after renewal step %s", step);
    for (;;)
        sleep(1);
}

/* The next poll: poll_s with +-10 percent jitter. */
static void schedule_poll(mgmt *m, uint32_t delay_s)
{
    uint32_t rnd = 0;
    RAND_bytes((unsigned char *)&rnd, sizeof(rnd));
    uint64_t ms = (uint64_t)delay_s * 1000;
    uint64_t span = ms / 5;
    ms = ms - ms / 10 + (span ? rnd % span : 0);
    core_timer_arm(m->loop, &m->timer, ms ? ms : 1);
}

static uint32_t poll_interval(mgmt *m)
{
    return m->poll_s ? m->poll_s : m->boot->mgmt.poll_s;
}

/* Unreachable server: 10 s, doubling, at most poll_s. */
static uint32_t backoff_s(mgmt *m)
{
    uint32_t b = BACKOFF_MIN_S;
    for (unsigned i = 1; i < m->fails && b < 86400; i++)
        b *= 2;
    return b < poll_interval(m) ? b : poll_interval(m);
}

static void owe_feedback(mgmt *m, int64_t id, bool ok, const char *details)
{
    m->fb.id = id;
    m->fb.ok = ok;
    m->fb.proceeding = false;
    snprintf(m->fb.details, sizeof(m->fb.details), "%s", details ? details : "");
    for (char *c = m->fb.details; *c; c++)
        if ((unsigned char)*c < 0x20)
            *c = ' ';
    if (m->n_refused < sizeof(m->refused) / sizeof(m->refused[0]))
        m->refused[m->n_refused++] = id;
    else
        m->refused[id % (int64_t)m->n_refused] = id;
}

static bool was_handled(mgmt *m, int64_t id)
{
    for (size_t i = 0; i < m->n_refused; i++)
        if (m->refused[i] == id)
            return true;
    return m->fb.id == id;
}

static profile_set *load_installed(mgmt *m, char *err, size_t err_len)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/profile.json", m->dir);
    profile_set *set = NULL;
    if (profile_set_load_file(path, &set, err, err_len) < 0)
        return NULL;
    return set;
}

static void journal_err(mgmt *m, const char *err)
{
    LOG_ERR(m->log, SUB, "%s", err);
    publish_status(m, err);
}

/* Back to the previous profile: files, engine, feedback. */
static void rollback(mgmt *m, const char *reason)
{
    char err[512];
    LOG_WARN(m->log, SUB, "profile version %lld failed (%s): restoring version %lld", (long long)m->jr.to, reason,
             (long long)m->jr.from);
    bool had_prev = m->jr.had_prev;
    if (mgmt_apply_rollback(m->dir, &m->jr, reason, err, sizeof(err)) < 0) {
        journal_err(m, err);
        return;
    }
    m->trying = NULL;
    char detail[400];
    snprintf(detail, sizeof(detail), "profile version %lld rolled back to %lld: %s", (long long)m->jr.to,
             (long long)m->jr.from, reason);
    owe_feedback(m, m->jr.deployment, false, detail);
    publish_status(m, detail);
    m->hooks.on_event(m->hooks.arg, M2MVPN_EVENT_CONFIG_UPDATED, M2MVPN_E_BUNDLE, detail);
    if (had_prev) {
        profile_set *set = load_installed(m, err, sizeof(err));
        if (set)
            m->hooks.on_profile(m->hooks.arg, set);
        else
            journal_err(m, err);
    }
}

static void commit(mgmt *m)
{
    char err[512];
    if (mgmt_apply_commit(m->dir, &m->jr, &m->st, err, sizeof(err)) < 0) {
        journal_err(m, err);
        return;
    }
    test_pause(m, "committed");
    m->trying = NULL;
    char what[160];
    snprintf(what, sizeof(what), "profile version %lld committed (tunnel up with it, server reachable)",
             (long long)m->jr.to);
    LOG_INFO(m->log, SUB, "%s", what);
    owe_feedback(m, m->jr.deployment, true, what);
    publish_status(m, NULL);
    m->hooks.on_event(m->hooks.arg, M2MVPN_EVENT_CONFIG_UPDATED, 0, what);
}

/* A deployment's bundle: verify everything, then stage, write, try. */
static void apply_profile(mgmt *m, int64_t dep_id, const uint8_t *der, size_t len)
{
    char err[600];
    mgmt_bundle b;
    if (m->st.profile_version > 0 &&
        mgmt_bundle_verify(der, len, m->signer, "profile", m->st.device_id, m->st.profile_version - 1, wall_now(),
                           &b, err, sizeof(err)) == 0) {
        bool same = b.version == m->st.profile_version;
        mgmt_bundle_clear(&b);
        if (!same)
            goto newer;
        /* The version installed already (the day-0 route delivered it
         * first): nothing to apply, the deployment is done here. */
        snprintf(err, sizeof(err), "profile version %lld already installed", (long long)m->st.profile_version);
        LOG_INFO(m->log, SUB, "deployment %lld: %s", (long long)dep_id, err);
        owe_feedback(m, dep_id, true, err);
        return;
    }
newer:;
    int r = mgmt_bundle_verify(der, len, m->signer, "profile", m->st.device_id, m->st.profile_version, wall_now(),
                               &b, err, sizeof(err));
    if (r == 0 && b.deployment != dep_id) {
        /* a bundle of another deployment replayed under this id */
        snprintf(err, sizeof(err), "profile bundle refused: it belongs to deployment %lld, not %lld",
                 (long long)b.deployment, (long long)dep_id);
        mgmt_bundle_clear(&b);
        r = M2MVPN_E_BUNDLE;
    }
    if (r == 0) {
        r = mgmt_version_check(m->st.profile_version, b.version, b.not_after, wall_now(), err, sizeof(err));
        if (r < 0)
            mgmt_bundle_clear(&b);
    }
    if (r < 0) {
        LOG_ERR(m->log, SUB, "deployment %lld: %s", (long long)dep_id, err);
        owe_feedback(m, dep_id, false, err);
        publish_status(m, err);
        m->hooks.on_event(m->hooks.arg, M2MVPN_EVENT_CONFIG_UPDATED, M2MVPN_E_BUNDLE, err);
        return;
    }
    int64_t version = b.version;
    json_object *cas = NULL;
    char *text = localise(m, b.payload, b.payload_len, version, &cas, err, sizeof(err));
    mgmt_bundle_clear(&b);
    profile_set *set = NULL;
    if (text) {
        char perr[512];
        r = profile_set_parse(text, strlen(text), m->dir, &set, perr, sizeof(perr));
        if (r < 0)
            snprintf(err, sizeof(err), "profile bundle refused: the profile is not valid: %s", perr);
        else if (set->items[0].mgmt.on || set->items[0].n_gateways == 0) {
            snprintf(err, sizeof(err), "profile bundle refused: the profile has no gateways");
            r = M2MVPN_E_BUNDLE;
        }
    } else {
        r = M2MVPN_E_BUNDLE;
    }
    for (size_t i = 0; r == 0 && i < json_object_array_length(cas); i++) {
        char name[48];
        ca_name(name, sizeof(name), version, i);
        const char *pem = json_object_get_string(json_object_array_get_idx(cas, i));
        r = mgmt_write_file(m->dir, name, pem, strlen(pem), err, sizeof(err));
    }
    json_object_put(cas);
    if (r == 0)
        r = mgmt_apply_stage(m->dir, &m->jr, dep_id, m->st.profile_version, version, text, strlen(text), err,
                             sizeof(err));
    secure_free_str(text); /* the profile, with the key's PIN */
    if (r < 0) {
        profile_set_free(set);
        LOG_ERR(m->log, SUB, "deployment %lld: %s", (long long)dep_id, err);
        owe_feedback(m, dep_id, false, err);
        publish_status(m, err);
        m->hooks.on_event(m->hooks.arg, M2MVPN_EVENT_CONFIG_UPDATED, r, err);
        return;
    }
    test_pause(m, "staged");
    if ((r = mgmt_apply_write(m->dir, &m->jr, err, sizeof(err))) == 0) {
        test_pause(m, "written");
        r = mgmt_apply_trying(m->dir, &m->jr, err, sizeof(err));
    }
    if (r < 0) {
        profile_set_free(set);
        rollback(m, err);
        return;
    }
    test_pause(m, "trying");
    const char *t = getenv("M2MVPN_MGMT_TRY_S");
    long try_s = t ? strtol(t, NULL, 10) : TRY_DEFAULT_S;
    if (try_s < 5 || try_s > 3600)
        try_s = TRY_DEFAULT_S;
    m->try_deadline = wall_now() + try_s;
    m->trying = set;
    LOG_INFO(m->log, SUB, "trying profile version %lld (deployment %lld, %ld s to come up)", (long long)version,
             (long long)dep_id, try_s);
    m->hooks.on_profile(m->hooks.arg, set);
}

/* TRYING: commit when up with it and this poll went through; roll back
 * at the deadline. Returns true while still trying. */
static bool check_trying(mgmt *m, bool poll_ok)
{
    if (m->jr.phase != MGMT_APPLY_TRYING)
        return false;
    bool up_with = false;
    const char *tun = m->hooks.tunnel ? m->hooks.tunnel(m->hooks.arg, m->trying, &up_with) : "down";
    if (up_with && poll_ok) {
        commit(m);
        return false;
    }
    if (wall_now() >= m->try_deadline) {
        char reason[200];
        snprintf(reason, sizeof(reason), "the tunnel did not come up with it (%s) and reach the server in time",
                 tun);
        rollback(m, reason);
        return false;
    }
    return true;
}

static void hand_over(mgmt *m);

static void poll_done(mgmt *m, job *j)
{
    char err[600];
    take_reopened(m, j);
    if (m->p11_old_pending) {
        /* the replaced key goes once the tunnel runs on the new certificate
         * (reauthenticated at the renewal, a poll interval ago) */
        bool uw = false;
        const char *tun = m->hooks.tunnel ? m->hooks.tunnel(m->hooks.arg, NULL, &uw) : "down";
        if (!strcmp(tun, "up"))
            p11_drop_old(m);
    }
    if (j->fb_id && j->fb_r == 0 && (j->fb_http / 100 == 2 || j->fb_http == 404 || j->fb_http == 409)) {
        /* Delivered (or the deployment is gone): no longer owed. */
        LOG_INFO(m->log, SUB, "deployment %lld: feedback %s sent (HTTP %ld)", (long long)j->fb_id,
                 m->fb.ok ? "success" : "failure", j->fb_http);
        if (m->fb.id == j->fb_id)
            m->fb.id = 0;
        if (m->renew_mark.deployment == j->fb_id) {
            m->renew_mark.deployment = 0;
            if (mgmt_renew_mark_save(m->dir, &m->renew_mark, err, sizeof(err)) < 0)
                journal_err(m, err);
        }
        if ((m->jr.phase == MGMT_APPLY_COMMITTED || m->jr.phase == MGMT_APPLY_FAILED) &&
            m->jr.deployment == j->fb_id) {
            m->jr.phase = MGMT_APPLY_NONE;
            if (mgmt_journal_save(m->dir, &m->jr, err, sizeof(err)) < 0)
                journal_err(m, err);
        }
    }
    if (!m->fb.id && m->renew_owed.id) {
        /* a restart's renewal feedback, once the slot is free */
        owe_feedback(m, m->renew_owed.id, m->renew_owed.ok, m->renew_owed.details);
        if (m->renew_dep == m->renew_owed.id)
            m->renew_dep = 0;
        m->renew_owed.id = 0;
    }
    bool ok = j->r == 0 && (j->http == 200 || j->http == 304);
    if (j->r < 0) {
        m->fails++;
        LOG_WARN(m->log, SUB, "poll failed (%u in a row, next in %u s): %s", m->fails, backoff_s(m), j->err);
        publish_status(m, j->err);
    } else if (j->http == 200) {
        mgmt_poll_answer a;
        if (mgmt_poll_parse((const char *)j->body, j->len, &a, err, sizeof(err)) < 0) {
            LOG_ERR(m->log, SUB, "%s", err);
            publish_status(m, err);
            ok = false;
        } else {
            m->last = a;
            m->poll_s = a.poll_s;
            snprintf(m->poll_etag, sizeof(m->poll_etag), "%s", j->new_etag);
        }
    } else if (j->http == 404 && !m->no_poll) {
        /* A day-0 server: no poll route; the profile route as before. */
        LOG_INFO(m->log, SUB, "the server has no poll route (HTTP 404): asking for the profile instead");
        m->no_poll = true;
        submit(m, JOB_FETCH);
        return;
    } else if (j->http != 304) {
        snprintf(err, sizeof(err), "management server answered the poll with HTTP %ld: %.200s", j->http,
                 j->body ? (const char *)j->body : "");
        for (char *c = err; *c; c++)
            if ((unsigned char)*c < 0x20)
                *c = ' ';
        LOG_WARN(m->log, SUB, "%s", err);
        publish_status(m, err);
    }
    if (ok) {
        m->fails = 0;
        m->st.last_contact = wall_now();
        clear_error(m);
        save_state(m);
        publish_status(m, NULL);
    }
    if (check_trying(m, ok)) {
        schedule_poll(m, TRY_POLL_S);
        return;
    }
    if (m->fb.id) {
        /* feedback owed: at the next poll, soon */
        schedule_poll(m, ok ? 1 : backoff_s(m));
        return;
    }
    if (!ok) {
        schedule_poll(m, j->r < 0 ? backoff_s(m) : poll_interval(m));
        return;
    }
    for (size_t i = 0; i < m->last.n; i++) {
        const mgmt_deployment *d = &m->last.deps[i];
        if (d->type == MGMT_DEP_SOFTWARE && m->upd.dep == d->id) {
            if (m->upd.stored && !m->upd.handed && d->window_open) {
                hand_over(m);
                schedule_poll(m, 1);
                return;
            }
            continue; /* downloading, or waiting for the window / the result */
        }
        if (was_handled(m, d->id))
            continue;
        if (d->type == MGMT_DEP_PROFILE || (d->type == MGMT_DEP_SOFTWARE && !m->upd.dep)) {
            m->ask_type = d->type;
            m->ask_window = d->window_open;
            submit_path(m, JOB_DEPLOY, d->href);
            return;
        }
        if (d->type == MGMT_DEP_CERT && m->renew_dep != d->id) {
            /* A cert deployment asks for a renewal now (the operator's
             * "renew"); its result goes back as the deployment's feedback. */
            LOG_INFO(m->log, SUB, "deployment %lld: certificate renewal asked by the server", (long long)d->id);
            m->renew_dep = d->id;
            /* kept until its feedback is delivered: a restart finishes
             * this deployment, never renews for it twice */
            m->renew_mark.deployment = d->id;
            cert_serial_hex(m->cert, m->renew_mark.old_serial, sizeof(m->renew_mark.old_serial));
            if (mgmt_renew_mark_save(m->dir, &m->renew_mark, err, sizeof(err)) < 0)
                journal_err(m, err);
            m->renew_fails = 0;
            submit(m, JOB_RENEW);
            return;
        }
    }
    schedule_poll(m, poll_interval(m));
}

/* ------------------------------------------------------ day N: software */

/* The stored update is done with (installed, failed, refused): its file
 * record update.json goes with it. */
static void upd_forget(mgmt *m)
{
    char err[512];
    if (m->upd.stored) {
        mgmt_update_mark none = { 0 };
        if (mgmt_update_mark_save(m->dir, &none, err, sizeof(err)) < 0)
            journal_err(m, err);
    }
    memset(&m->upd, 0, sizeof(m->upd));
}

/* The verified file to the application (the maintenance window is open):
 * UPDATE_AVAILABLE with "<version> <path>", "proceeding" to the server.
 * The file is hashed again first: it waited on disk (maybe across a
 * restart), and only the signed bytes are ever installed. */
static void hand_over(mgmt *m)
{
    char err[600];
    int r = mgmt_file_check(m->upd.path, m->upd.b.size, m->upd.b.sha256, err, sizeof(err));
    if (r < 0) {
        char why[700];
        snprintf(why, sizeof(why), "update %s refused: %s", m->upd.b.software_version, err);
        LOG_ERR(m->log, SUB, "deployment %lld: %s", (long long)m->upd.dep, why);
        owe_feedback(m, m->upd.dep, false, why);
        publish_status(m, why);
        unlink(m->upd.path);
        upd_forget(m);
        return;
    }
    if (m->boot->mgmt.installer) {
        /* the profile's installer, run by the worker; its exit status is
         * the result (install_done) */
        submit(m, JOB_INSTALL);
        m->upd.handed = m->busy; /* else tried again from the next poll */
        return;
    }
    char detail[4400];
    snprintf(detail, sizeof(detail), "%s %s", m->upd.b.software_version, m->upd.path);
    m->upd.handed = true;
    pthread_mutex_lock(&m->mu);
    snprintf(m->res_version, sizeof(m->res_version), "%s", m->upd.b.software_version);
    pthread_mutex_unlock(&m->mu);
    LOG_INFO(m->log, SUB, "update %s verified, handed to the application: %s", m->upd.b.software_version,
             m->upd.path);
    char what[160];
    snprintf(what, sizeof(what), "update %s downloaded and verified, handed to the application",
             m->upd.b.software_version);
    owe_feedback(m, m->upd.dep, true, what);
    m->fb.proceeding = true;
    m->hooks.on_event(m->hooks.arg, M2MVPN_EVENT_UPDATE_AVAILABLE, 0, detail);
}

static void apply_software(mgmt *m, int64_t dep_id, const uint8_t *der, size_t len, bool window_open)
{
    char err[600];
    mgmt_bundle b;
    int64_t installed = m->st.software_seq;
    if (m->st.software_refetch > 0 && dep_id == m->st.software_refetch && installed > 0)
        installed--; /* update_recover dropped this deployment's stored update */
    int r = mgmt_bundle_verify(der, len, m->signer, "software", m->st.device_id, installed, wall_now(), &b, err,
                               sizeof(err));
    if (r == 0 && b.deployment != dep_id) {
        snprintf(err, sizeof(err), "software bundle refused: it belongs to deployment %lld, not %lld",
                 (long long)b.deployment, (long long)dep_id);
        mgmt_bundle_clear(&b);
        r = M2MVPN_E_BUNDLE;
    }
    if (r < 0) {
        LOG_ERR(m->log, SUB, "deployment %lld: %s", (long long)dep_id, err);
        owe_feedback(m, dep_id, false, err);
        publish_status(m, err);
        return;
    }
    /* the signed bundle itself is what a restart trusts (update_recover
     * verifies it again), not update.json */
    if (mgmt_write_file(m->dir, MGMT_UPDATE_BUNDLE, der, len, err, sizeof(err)) < 0)
        journal_err(m, err); /* still installed by this run */
    memset(&m->upd, 0, sizeof(m->upd));
    m->upd.dep = dep_id;
    m->upd.b = b;
    m->upd.b.payload = NULL; /* the empty payload stays with b */
    mgmt_bundle_clear(&b);
    m->upd.window_open = window_open;
    LOG_INFO(m->log, SUB, "deployment %lld: software %s (%lld bytes), downloading", (long long)dep_id,
             m->upd.b.software_version, (long long)m->upd.b.size);
    submit_path(m, JOB_ARTIFACT, m->upd.b.url);
}

static void artifact_done(mgmt *m, job *j)
{
    char err[600];
    take_reopened(m, j);
    if (j->r < 0 && j->r != M2MVPN_E_BUNDLE) {
        m->fails++;
        LOG_WARN(m->log, SUB, "update %s: download failed: %s", m->upd.b.software_version, j->err);
        publish_status(m, j->err);
        m->upd.dep = 0; /* asked again from the next poll */
        schedule_poll(m, backoff_s(m));
        return;
    }
    int r = j->r;
    if (r < 0)
        snprintf(err, sizeof(err), "update %s: %s", m->upd.b.software_version, j->err);
    else if (j->http != 200) {
        snprintf(err, sizeof(err), "update %s: %s", m->upd.b.software_version, j->err);
        r = M2MVPN_E_PROTOCOL;
    }
    if (r < 0) {
        /* refused (size, sha256) or not served: nothing was kept */
        LOG_ERR(m->log, SUB, "deployment %lld: %s", (long long)m->upd.dep, err);
        owe_feedback(m, m->upd.dep, false, err);
        publish_status(m, err);
        memset(&m->upd, 0, sizeof(m->upd));
        schedule_poll(m, 1);
        return;
    }
    /* every check passed (the worker verified size and sha256 against the
     * signed manifest before the rename): the update is recorded
     * (update.json, so a restart still installs it), then the version is
     * persisted */
    snprintf(m->upd.path, sizeof(m->upd.path), "%s/%s", m->dir, j->file);
    m->upd.stored = true;
    mgmt_update_mark mk = { .deployment = m->upd.dep, .version = m->upd.b.version, .size = m->upd.b.size };
    snprintf(mk.software_version, sizeof(mk.software_version), "%s", m->upd.b.software_version);
    snprintf(mk.file, sizeof(mk.file), "%s", j->file);
    memcpy(mk.sha256, m->upd.b.sha256, sizeof(mk.sha256));
    if (mgmt_update_mark_save(m->dir, &mk, err, sizeof(err)) < 0)
        journal_err(m, err); /* still installed by this run */
    m->st.software_seq = m->upd.b.version;
    m->st.software_refetch = 0; /* stored again (if it was the dropped one) */
    save_state(m);
    LOG_INFO(m->log, SUB, "update %s: %lld bytes downloaded and verified: %s", m->upd.b.software_version,
             (long long)m->upd.b.size, m->upd.path);
    if (m->upd.window_open)
        hand_over(m);
    else
        LOG_INFO(m->log, SUB, "update %s stored; waiting for the maintenance window", m->upd.b.software_version);
    if (!m->busy)
        schedule_poll(m, m->fb.id ? 1 : poll_interval(m));
}

/* The installer's output to the log, line by line, bounded (it is a
 * program of the device's own bootstrap; control characters dropped). */
static void log_install_output(mgmt *m, const char *version, const char *out)
{
    unsigned lines = 0;
    for (const char *p = out; p && *p && lines < 40;) {
        size_t n = strcspn(p, "\n");
        char line[240];
        size_t k = n < sizeof(line) - 1 ? n : sizeof(line) - 1;
        memcpy(line, p, k);
        line[k] = 0;
        for (char *c = line; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f)
                *c = ' ';
        if (k) {
            LOG_INFO(m->log, SUB, "update %s: installer: %s", version, line);
            lines++;
        }
        p += n;
        if (*p)
            p++;
    }
}

static void install_done(mgmt *m, job *j)
{
    log_install_output(m, j->version, j->out);
    bool ok = j->r == 0;
    char details[300];
    if (ok)
        snprintf(details, sizeof(details), "installed by %s", m->boot->mgmt.installer);
    else
        snprintf(details, sizeof(details), "%s", j->err);
    if (ok)
        LOG_INFO(m->log, SUB, "update %s: %s", j->version, details);
    else
        LOG_ERR(m->log, SUB, "update %s: %s", j->version, details);
    if (!m->upd.handed || strcmp(m->upd.b.software_version, j->version) != 0)
        return;
    owe_feedback(m, m->upd.dep, ok, details);
    /* the file was the installer's to take: not kept for another run */
    unlink(m->upd.path);
    upd_forget(m);
    if (!ok)
        publish_status(m, details);
    schedule_poll(m, 1);
}

/* The application's result (posted by mgmt_update_result): feedback. */
static void take_result(mgmt *m)
{
    pthread_mutex_lock(&m->mu);
    bool set = m->res_set, ok = m->res_ok;
    char details[256];
    snprintf(details, sizeof(details), "%s", m->res_details);
    m->res_set = false;
    if (set)
        m->res_version[0] = '\0';
    pthread_mutex_unlock(&m->mu);
    if (!set || !m->upd.handed)
        return;
    LOG_INFO(m->log, SUB, "update %s: the application reports %s%s%s", m->upd.b.software_version,
             ok ? "success" : "failure", details[0] ? ": " : "", details);
    owe_feedback(m, m->upd.dep, ok, details[0] ? details : ok ? "installed" : "installation failed");
    upd_forget(m);
    if (!m->busy)
        schedule_poll(m, 1);
}

int mgmt_update_result(mgmt *m, const char *version, bool ok, const char *details)
{
    if (!m || !version)
        return M2MVPN_E_INVAL;
    pthread_mutex_lock(&m->mu);
    if (!m->res_version[0] || strcmp(m->res_version, version) != 0) {
        pthread_mutex_unlock(&m->mu);
        return M2MVPN_E_STATE;
    }
    m->res_set = true;
    m->res_ok = ok;
    snprintf(m->res_details, sizeof(m->res_details), "%s", details ? details : "");
    for (char *c = m->res_details; *c; c++)
        if ((unsigned char)*c < 0x20)
            *c = ' ';
    uint64_t one = 1;
    if (write(m->evfd, &one, sizeof(one)) < 0) {
        /* counter full: a wake is pending anyway */
    }
    pthread_mutex_unlock(&m->mu);
    return 0;
}

static void deploy_done(mgmt *m, job *j)
{
    int64_t id = 0;
    take_reopened(m, j);
    const char *slash = strrchr(j->path, '/');
    if (slash)
        id = strtoll(slash + 1, NULL, 10);
    if (j->r < 0) {
        m->fails++;
        LOG_WARN(m->log, SUB, "deployment %lld: %s", (long long)id, j->err);
        publish_status(m, j->err);
        schedule_poll(m, backoff_s(m));
        return;
    }
    if (j->http != 200) {
        char err[400];
        snprintf(err, sizeof(err), "deployment %lld: the server answered HTTP %ld: %.200s", (long long)id, j->http,
                 j->body ? (const char *)j->body : "");
        for (char *c = err; *c; c++)
            if ((unsigned char)*c < 0x20)
                *c = ' ';
        LOG_WARN(m->log, SUB, "%s", err);
        publish_status(m, err);
        /* halted or gone: not asked again in this run */
        if (m->n_refused < sizeof(m->refused) / sizeof(m->refused[0]))
            m->refused[m->n_refused++] = id;
        schedule_poll(m, poll_interval(m));
        return;
    }
    if (m->ask_type == MGMT_DEP_SOFTWARE) {
        apply_software(m, id, j->body, j->len, m->ask_window);
        if (!m->busy)
            schedule_poll(m, 1);
        return;
    }
    apply_profile(m, id, j->body, j->len);
    schedule_poll(m, m->jr.phase == MGMT_APPLY_TRYING ? TRY_POLL_S : 1);
}

/* ------------------------------------------- day N: certificate renewal */

static int64_t asn1_unix(const ASN1_TIME *t)
{
    struct tm tm;
    return t && ASN1_TIME_to_tm(t, &tm) ? (int64_t)timegm(&tm) : 0;
}

/* The renewal timer from the certificate in use (mgmt_renew_at), or the
 * back-off after a failure. */
static void renew_arm(mgmt *m)
{
    if (!m->cert)
        return;
    int64_t nb = asn1_unix(X509_get0_notBefore(m->cert)), na = asn1_unix(X509_get0_notAfter(m->cert));
    int64_t now = wall_now(), at;
    if (m->renew_fails) {
        at = now + mgmt_renew_retry_s(m->renew_fails, now, na);
    } else {
        uint32_t rnd = 0;
        RAND_bytes((unsigned char *)&rnd, sizeof(rnd));
        at = mgmt_renew_at(nb, na, (double)rnd / 4294967296.0);
    }
    int64_t delay = at > now ? at - now : 0;
    LOG_INFO(m->log, SUB, "certificate renewal in %lld s (valid until %lld)", (long long)delay, (long long)na);
    core_timer_arm(m->loop, &m->renew_timer, (uint64_t)delay * 1000 + 1);
}

static void on_renew_timer(void *arg)
{
    mgmt *m = arg;
    if (!m->cert || m->st.phase != MGMT_ENROLLED || m->decom.phase != MGMT_DECOM_NONE)
        return;
    if (m->busy) { /* one request at a time: right after the one under way */
        core_timer_arm(m->loop, &m->renew_timer, 2000);
        return;
    }
    submit(m, JOB_RENEW);
}

/* The public key of a key file of the bootstrap (a PEM file opened with
 * its pin, or a TSS2 key file: no TPM needed). */
static EVP_PKEY *key_file_public(void *arg, const char *path)
{
    mgmt *m = arg;
    EVP_PKEY *k = NULL;
    char e[256];
    if (m->boot->mgmt.provider == PROFILE_CERT_TPM)
        return cred_tpm_key_public(path, &k, e, sizeof(e)) == 0 ? k : NULL;
    FILE *f = fopen(path, "r");
    const char *pass = m->boot->mgmt.pin ? m->boot->mgmt.pin : "";
    EVP_PKEY *priv = f ? PEM_read_PrivateKey(f, NULL, NULL, (void *)pass) : NULL;
    if (f)
        fclose(f);
    k = priv ? cred_public_copy(priv) : NULL;
    EVP_PKEY_free(priv);
    ERR_clear_error();
    return k;
}

/* The swap of key and certificate: device.crt.pem.next is written (fsync)
 * once the certificate is issued; then <key>.next is renamed over the key
 * and device.crt.pem.next over device.crt.pem. A stop anywhere: with
 * device.crt.pem.next present the swap is finished at the next start, else
 * a <key>.next is an attempt that never got its certificate (removed).
 * Key files (file provider, TPM key file): device.crt.pem.next is first
 * checked to hold the key it goes with (mgmt_renew_swap), else both .next
 * files go and the current pair stays. pkcs11: the token's side is checked
 * where the certificate is stored (cred_pkcs11_replace_cert) or came with
 * the KUR of the new key. */
static int renew_swap(mgmt *m, bool new_key_file, bool *key_moved, char *err, size_t err_len)
{
    bool key_files = m->boot->mgmt.provider == PROFILE_CERT_FILE || tpm_renewable(m);
    return mgmt_renew_swap(m->dir, m->key_path, new_key_file, key_files ? key_file_public : NULL, m, key_moved, err,
                           err_len);
}

/* pkcs11, same key renewed: the new certificate onto the token in place of
 * the old one, the one the tunnel reads (not a second one next to it).
 * Idempotent: a start after a stop does it again from the .next file. */
static int p11_store_same_key_cert(mgmt *m, X509 *x, EVP_PKEY *key, char *err, size_t err_len)
{
    const profile *b = m->boot;
    unsigned char *der = NULL;
    int dn = x ? i2d_X509(x, &der) : -1;
    EVP_PKEY *pub = key ? cred_public_copy(key) : NULL; /* compared as the token's own keys are */
    int r = dn > 0 && pub ? cred_pkcs11_replace_cert(b->mgmt.pkcs11_module, b->mgmt.pkcs11_uri, b->mgmt.pin,
                                                     pin_len(b), der, (size_t)dn, pub, err, err_len)
                          : M2MVPN_E_CERT;
    if (dn <= 0)
        snprintf(err, err_len, "the renewed certificate is unreadable");
    else if (!pub)
        snprintf(err, err_len, "the device key's public half is unreadable");
    EVP_PKEY_free(pub);
    OPENSSL_free(der);
    return r;
}

static void renew_recover(mgmt *m)
{
    char kn[4200], cn[4200], err[512];
    snprintf(kn, sizeof(kn), "%s.next", m->key_path);
    snprintf(cn, sizeof(cn), "%s/device.crt.pem.next", m->dir);
    uint8_t id[8];
    if (m->boot->mgmt.provider == PROFILE_CERT_PKCS11 && p11_intent_read(m, id) != 0) {
        /* p11_recover could not finish the token's side (not reachable?):
         * the certificate waits with it, else the next start would take
         * its intent for an attempt without certificate and delete the
         * new key the certificate is for. */
        if (access(cn, F_OK) == 0)
            LOG_WARN(m->log, SUB, "an interrupted key renewal on the token is left for the next start");
        return;
    }
    if (access(cn, F_OK) == 0) {
        uint8_t id[8];
        if (m->boot->mgmt.provider == PROFILE_CERT_PKCS11 && p11_intent_read(m, id) == 0) {
            X509 *x = read_cert(cn);
            EVP_PKEY *k = NULL;
            cred_provider *p = NULL;
            int r = token_key(m, false, &k, &p, NULL, err, sizeof(err));
            EVP_PKEY *pub = r == 0 ? cred_public_copy(k) : NULL;
            EVP_PKEY_free(k);
            cred_free(p);
            if (r == 0 && (!x || !pub || EVP_PKEY_eq(X509_get0_pubkey(x), pub) != 1)) {
                /* not the token key's (its renewal was undone, its key
                 * deleted): never stored over the key's own certificate */
                LOG_ERR(m->log, SUB, "%s is not a certificate of the device key on the token: removed, the "
                        "current certificate stays", cn);
                ERR_clear_error();
                unlink(cn);
                X509_free(x);
                EVP_PKEY_free(pub);
                return;
            }
            if (r == 0)
                r = p11_store_same_key_cert(m, x, pub, err, sizeof(err));
            X509_free(x);
            EVP_PKEY_free(pub);
            if (r < 0) {
                LOG_ERR(m->log, SUB, "finishing an interrupted certificate renewal on the token: %s", err);
                return;
            }
        }
        if (renew_swap(m, true, NULL, err, sizeof(err)) < 0)
            LOG_ERR(m->log, SUB, "finishing an interrupted certificate renewal: %s", err);
        else
            LOG_WARN(m->log, SUB, "an interrupted certificate renewal finished (renewed key and certificate in use)");
    } else if ((m->boot->mgmt.provider == PROFILE_CERT_FILE || tpm_renewable(m)) && access(kn, F_OK) == 0) {
        unlink(kn);
    }
}

/* pkcs11 (before renew_recover: the certificate's rename comes last). */
static void p11_recover(mgmt *m)
{
    p11_uri u;
    uint8_t id[8];
    char cn[4200], err[512];
    if (!p11_renewable(m, &u))
        return;
    int has = p11_intent_read(m, id);
    snprintf(cn, sizeof(cn), "%s/device.crt.pem.next", m->dir);
    if (has < 0) {
        LOG_ERR(m->log, SUB, "%s/" P11_INTENT " is unreadable: left as is", m->dir);
        return;
    }
    if (has && access(cn, F_OK) == 0) {
        if (p11_switch(m, &u, id, false, err, sizeof(err)) < 0) {
            LOG_ERR(m->log, SUB, "finishing an interrupted key renewal on the token: %s", err);
            return;
        }
        if (renew_swap(m, false, NULL, err, sizeof(err)) < 0) {
            LOG_ERR(m->log, SUB, "finishing an interrupted certificate renewal: %s", err);
            return;
        }
        LOG_WARN(m->log, SUB, "an interrupted key renewal on the token finished (new key and certificate in use)");
    } else if (has) {
        if (p11_rollback(m, &u, id) < 0)
            return; /* the intent stays */
        LOG_WARN(m->log, SUB, "an interrupted key renewal on the token undone (its new key deleted)");
    }
    if (has)
        p11_intent_drop(m);
}

/* The certificate's serial, uppercase hex ("?" if unreadable). */
static void cert_serial_hex(X509 *c, char *out, size_t cap)
{
    BIGNUM *bn = c ? ASN1_INTEGER_to_BN(X509_get0_serialNumber(c), NULL) : NULL;
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    snprintf(out, cap, "%s", hex ? hex : "?");
    OPENSSL_free(hex);
    BN_free(bn);
}

/* At start: an operator's renewal (renew.json) whose feedback never left.
 * device.crt.pem of another serial than the one it replaced: done (the
 * swap was finished by renew_recover, or before the stop), its success is
 * owed and the deployment is not renewed again. The same serial: it never
 * got as far, the mark goes and the still open deployment asks again. */
static void renew_mark_recover(mgmt *m)
{
    char err[512], serial[80];
    if (mgmt_renew_mark_load(m->dir, &m->renew_mark, err, sizeof(err)) < 0) {
        LOG_ERR(m->log, SUB, "%s: ignored", err);
        m->renew_mark.deployment = 0;
        return;
    }
    if (!m->renew_mark.deployment)
        return;
    cert_serial_hex(m->cert, serial, sizeof(serial));
    if (!m->cert || !strcmp(serial, m->renew_mark.old_serial)) {
        LOG_INFO(m->log, SUB, "deployment %lld: the certificate renewal did not finish before the stop: "
                 "done again", (long long)m->renew_mark.deployment);
        m->renew_mark.deployment = 0;
        if (mgmt_renew_mark_save(m->dir, &m->renew_mark, err, sizeof(err)) < 0)
            LOG_ERR(m->log, SUB, "%s", err);
        return;
    }
    feedback *f = &m->renew_owed;
    f->id = m->renew_mark.deployment;
    f->ok = true;
    snprintf(f->details, sizeof(f->details), "certificate renewed: serial %s, not_after %lld (finished after a "
             "restart)", serial, (long long)asn1_unix(X509_get0_notAfter(m->cert)));
    LOG_INFO(m->log, SUB, "deployment %lld: %s", (long long)f->id, f->details);
    if (!m->fb.id) {
        owe_feedback(m, f->id, true, f->details);
        f->id = 0;
    } else {
        m->renew_dep = f->id; /* not renewed again while its feedback waits */
    }
}

/* At start: a verified update stored by an earlier run (update.json) is
 * taken up again: handed over when the poll says its window is open (its
 * file hashed again then). What it is (version, hash, size) comes from its
 * signed bundle, verified again here, never from update.json alone: the
 * state directory may have been written by someone else while the device
 * was off. Its version counts as accepted. */
static void update_recover(mgmt *m)
{
    char err[700];
    mgmt_update_mark mk;
    mgmt_bundle b = { 0 };
    int r = mgmt_update_stored(m->dir, m->signer, m->st.device_id, m->st.software_seq, wall_now(), &mk, &b, err,
                               sizeof(err));
    if (r < 0) {
        if (mk.deployment)
            LOG_ERR(m->log, SUB, "%s: the stored update is dropped; deployment %lld is asked again", err,
                    (long long)mk.deployment);
        else
            LOG_ERR(m->log, SUB, "%s: the stored update is dropped", err);
        /* its version was accepted (software_seq) before the bundle went
         * missing or stale: the same deployment's bundle, verified afresh,
         * may carry that version once more; no other. Persisted: a
         * download that fails or a stop before the file is stored again
         * must not turn it into a refused replay. */
        if (mk.deployment) {
            m->st.software_refetch = mk.deployment;
            save_state(m);
            /* its file: the download's name of that version */
            char path[4200];
            snprintf(path, sizeof(path), "%s/%s", m->dir, mk.file);
            unlink(path);
        }
        mgmt_update_mark none = { 0 };
        if (mgmt_update_mark_save(m->dir, &none, err, sizeof(err)) < 0)
            LOG_ERR(m->log, SUB, "%s", err);
        return;
    }
    if (!mk.deployment)
        return;
    memset(&m->upd, 0, sizeof(m->upd));
    m->upd.dep = mk.deployment;
    m->upd.b = b;
    m->upd.b.payload = NULL; /* the empty payload stays with b */
    mgmt_bundle_clear(&b);
    snprintf(m->upd.path, sizeof(m->upd.path), "%s/%s", m->dir, mk.file);
    m->upd.stored = true;
    if (m->st.software_seq < m->upd.b.version) { /* stopped between update.json and mgmt.json */
        m->st.software_seq = m->upd.b.version;
        save_state(m);
    }
    LOG_INFO(m->log, SUB, "update %s (deployment %lld) stored before the restart: waiting for the maintenance "
             "window", m->upd.b.software_version, (long long)mk.deployment);
}

static void renew_done(mgmt *m, job *j)
{
    char err[600];
    take_reopened(m, j);
    int r = j->r;
    bool key_moved = false; /* the swap renamed the new key in: its certificate file stays */
    snprintf(err, sizeof(err), "%s", j->err);
    if (r == 0) {
        renew_test_pause(m, "issued");
        BIO *bio = BIO_new(BIO_s_mem());
        char *pem = NULL;
        long n = bio && PEM_write_bio_X509(bio, j->cert) ? BIO_get_mem_data(bio, &pem) : 0;
        r = n > 0 ? mgmt_write_file(m->dir, "device.crt.pem.next", pem, (size_t)n, err, sizeof(err))
                  : M2MVPN_E_NOMEM;
        BIO_free(bio);
        if (r == 0 && m->boot->mgmt.provider == PROFILE_CERT_PKCS11 && !j->p11_new) {
            r = p11_store_same_key_cert(m, j->cert, j->new_key, err, sizeof(err));
            if (r < 0) {
                char cn[4200];
                snprintf(cn, sizeof(cn), "%s/device.crt.pem.next", m->dir);
                unlink(cn);
            }
        }
        p11_uri u;
        if (r == 0 && j->p11_new && p11_renewable(m, &u) && (r = p11_switch(m, &u, j->p11_id, true, err, sizeof(err))) < 0) {
            char cn[4200];
            snprintf(cn, sizeof(cn), "%s/device.crt.pem.next", m->dir);
            unlink(cn);
        }
        if (r == 0)
            renew_test_pause(m, "written");
        /* pkcs11: the switch on the token is complete, so the intent goes
         * before the certificate file moves. The other order left, after a
         * stop between the two, an intent without device.crt.pem.next: the
         * start undid the switch and deleted the key device.crt.pem is for. */
        if (r == 0 && j->p11_new) {
            p11_intent_drop(m);
            renew_test_pause(m, "p11-intent-dropped");
        }
        if (r == 0)
            r = renew_swap(m, j->new_key_file, &key_moved, err, sizeof(err));
        if (r == 0 && j->p11_new) {
            m->p11_old_pending = true;
            renew_test_pause(m, "p11-swapped");
        }
    }
    if (r < 0) {
        p11_uri u;
        if (j->p11_new && p11_renewable(m, &u)) {
            if (p11_rollback(m, &u, j->p11_id) == 0) {
                p11_intent_drop(m);
            } else {
                /* kept (written again if the switch had dropped it): the
                 * next start rolls back, never deletes "L.old" (the
                 * current key) for a finished renewal's leftover */
                char hex[17], e[256];
                for (size_t i = 0; i < 8; i++)
                    snprintf(hex + 2 * i, 3, "%02x", j->p11_id[i]);
                if (mgmt_write_file(m->dir, P11_INTENT, hex, 16, e, sizeof(e)) < 0)
                    LOG_ERR(m->log, SUB, "%s", e);
            }
        }
        if (j->new_key_file && !key_moved) {
            char kn[4200];
            snprintf(kn, sizeof(kn), "%s.next", m->key_path);
            unlink(kn);
        }
        if (!key_moved) {
            /* never a certificate file without its key: a next start
             * would put it next to the old key (or store it on the token
             * for a key that was deleted) */
            char cn[4200];
            snprintf(cn, sizeof(cn), "%s/device.crt.pem.next", m->dir);
            unlink(cn);
        }
        m->renew_fails++;
        char why[700];
        snprintf(why, sizeof(why), "certificate renewal failed (%u in a row): %s", m->renew_fails, err);
        LOG_WARN(m->log, SUB, "%s", why);
        publish_status(m, why);
        if (m->renew_dep)
            owe_feedback(m, m->renew_dep, false, why);
        m->renew_dep = 0;
        renew_arm(m);
    } else {
        if (j->p11_new) {
            /* the token is opened again (by the label, now the new pair's)
             * for the next request */
            EVP_PKEY_free(m->key);
            cred_free(m->cred);
            m->cred = NULL;
            m->key = j->new_key;
            j->new_key = NULL;
            m->key_stale = true;
        } else if (j->new_key_file || !m->key) {
            EVP_PKEY_free(m->key);
            m->key = j->new_key;
            j->new_key = NULL;
            if (m->boot->mgmt.provider == PROFILE_CERT_TPM)
                release_tpm(m, &m->key, &m->cred);
        }
        X509_free(m->cert);
        m->cert = j->cert;
        j->cert = NULL;
        m->renew_fails = 0;
        publish_status(m, NULL);
        clear_error(m);
        char serial[80];
        cert_serial_hex(m->cert, serial, sizeof(serial));
        int64_t na = asn1_unix(X509_get0_notAfter(m->cert));
        bool tpm = m->boot->mgmt.provider == PROFILE_CERT_TPM;
        char what[400];
        snprintf(what, sizeof(what), "certificate renewed: serial %s, not_after %lld%s%s%s", serial, (long long)na,
                 j->new_key_file || j->p11_new ? " (new key)" : " (same key)",
                 tpm && j->same_why[0] ? ": " : "", tpm ? j->same_why : "");
        LOG_INFO(m->log, SUB, "%s", what);
        if (j->same_why[0])
            LOG_WARN(m->log, SUB, "the same key was renewed: %s", j->same_why);
        if (m->renew_dep)
            owe_feedback(m, m->renew_dep, true, what);
        m->renew_dep = 0;
        m->hooks.on_event(m->hooks.arg, M2MVPN_EVENT_CERT_RENEWED, 0, what);
        if (m->hooks.on_cert_renewed)
            m->hooks.on_cert_renewed(m->hooks.arg);
        renew_arm(m);
    }
    if (!m->timer.armed)
        schedule_poll(m, m->fb.id ? 1 : poll_interval(m));
}

/* ------------------------------------------------- decommissioning (RR)
 *
 * decommission.json "requested" is on disk before the RR goes out, so a
 * stop while it is under way is known at the next start (the RR is sent
 * again there, before anything else and without using the profile). Only
 * an accepted answer (mgmt_cmp_rr: signed by the device CA, matching the
 * request) moves it to "revoked", and only then do the tunnel, the polling
 * and the files go; "done" last. A retried RR (its first answer was lost)
 * also counts a rejection with failInfo certRevoked as "revoked" when it is
 * signed like an accepted answer. An RR refused by the server, or failed
 * before it was sent, removes the intent again: nothing else changed. One
 * that failed after it may have reached the server (cut, timeout, an answer
 * not to be trusted) leaves the intent "requested": the certificate is not
 * used any more (management ERROR, the tunnel stops) until another RR is
 * answered. */

static void decom_event(mgmt *m, int r, const char *detail)
{
    m->hooks.on_event(m->hooks.arg, M2MVPN_EVENT_DECOMMISSIONED, r, detail);
}

static void decom_submit(mgmt *m)
{
    if (m->busy)
        return; /* on_result sends it once the request under way is back */
    submit(m, JOB_RR);
    if (!m->busy) { /* out of memory */
        m->decom_out = false;
        m->decom.phase = MGMT_DECOM_NONE;
        char err[256];
        if (m->st.phase == MGMT_ENROLLED)
            mgmt_decom_save(m->dir, &m->decom, err, sizeof(err));
        decom_event(m, M2MVPN_E_NOMEM, "decommissioning: out of memory, nothing changed");
    }
}

static void decom_start(mgmt *m)
{
    char err[512];
    if (m->decom_out || !m->cert || !m->dir)
        return;
    snprintf(m->decom.device_id, sizeof(m->decom.device_id), "%s", m->st.device_id);
    m->decom.phase = MGMT_DECOM_REQUESTED;
    m->decom.time = wall_now();
    int r = mgmt_decom_save(m->dir, &m->decom, err, sizeof(err));
    if (r < 0) {
        m->decom.phase = MGMT_DECOM_NONE;
        LOG_ERR(m->log, SUB, "decommissioning: %s", err);
        decom_event(m, r, err);
        return;
    }
    core_timer_cancel(m->loop, &m->timer);
    core_timer_cancel(m->loop, &m->renew_timer);
    m->decom_out = true;
    decom_submit(m);
}

static void decom_finish(mgmt *m)
{
    char err[512], serial[80] = "";
    core_timer_cancel(m->loop, &m->timer);
    core_timer_cancel(m->loop, &m->renew_timer);
    if (m->cert) {
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(m->cert), NULL);
        char *hex = bn ? BN_bn2hex(bn) : NULL;
        if (hex)
            snprintf(serial, sizeof(serial), "%s", hex);
        OPENSSL_free(hex);
        BN_free(bn);
    }
    if (m->hooks.on_decommissioned)
        m->hooks.on_decommissioned(m->hooks.arg);
    EVP_PKEY_free(m->key);
    cred_free(m->cred);
    X509_free(m->cert);
    m->key = NULL;
    m->cred = NULL;
    m->cert = NULL;
    const profile *b = m->boot;
    bool key_file = b->mgmt.provider == PROFILE_CERT_FILE ||
                    (b->mgmt.provider == PROFILE_CERT_TPM && strncmp(m->key_path, "0x", 2) != 0);
    p11_uri u;
    if (b->mgmt.provider == PROFILE_CERT_PKCS11) {
        if (!p11_renewable(m, &u) || p11_objects(m, u.object, NULL, false, NULL, NULL, err, sizeof(err)) < 0)
            LOG_WARN(m->log, SUB, "decommissioning: the key stays on the token (%s): delete it there",
                     p11_renewable(m, &u) ? err : "the bootstrap's pkcs11_uri names no object= label");
    } else if (!key_file) {
        LOG_WARN(m->log, SUB, "decommissioning: the TPM persistent key %s stays: evict it (tpm2_evictcontrol)",
                 m->key_path);
    }
    int r = mgmt_decom_wipe(m->dir, key_file ? m->key_path : NULL, err, sizeof(err));
    if (r < 0) {
        /* decommission.json stays "revoked": the next start finishes */
        LOG_ERR(m->log, SUB, "decommissioning: the certificate is revoked but removing the credential failed: %s",
                err);
        set_phase(m, MGMT_DECOMMISSIONED, err);
        decom_event(m, r, err);
        return;
    }
    m->decom.phase = MGMT_DECOM_DONE;
    m->decom.time = wall_now();
    if (mgmt_decom_save(m->dir, &m->decom, err, sizeof(err)) < 0)
        LOG_WARN(m->log, SUB, "decommissioning: %s", err);
    set_phase(m, MGMT_DECOMMISSIONED, NULL);
    memset(&m->st, 0, sizeof(m->st));
    m->st.phase = MGMT_DECOMMISSIONED;
    pthread_mutex_lock(&m->mu);
    m->status.cert_not_after = 0;
    m->status.cert_refused = false;
    m->status.last_error[0] = '\0';
    pthread_mutex_unlock(&m->mu);
    char detail[300];
    snprintf(detail, sizeof(detail), "device %s decommissioned: certificate %s revoked, key and certificate "
             "removed from %s", m->decom.device_id[0] ? m->decom.device_id : "(unknown)", serial[0] ? serial : "?",
             m->dir);
    LOG_INFO(m->log, SUB, "%s", detail);
    publish_status(m, NULL);
    decom_event(m, 0, detail);
}

static void decom_done(mgmt *m, job *j)
{
    char err[512];
    bool retry = m->st.phase != MGMT_ENROLLED; /* the restart's RR */
    m->decom_out = false;
    if (j->r == 0) {
        m->decom.phase = MGMT_DECOM_REVOKED;
        m->decom.time = wall_now();
        if (mgmt_decom_save(m->dir, &m->decom, err, sizeof(err)) < 0)
            LOG_ERR(m->log, SUB, "decommissioning: %s (removing the credential anyway)", err);
        LOG_INFO(m->log, SUB, "decommissioning: the server revoked the device certificate");
        decom_finish(m);
        return;
    }
    LOG_ERR(m->log, SUB, "%s", j->err);
    if (retry || j->rr_maybe_sent) {
        /* Restarted during an RR whose outcome is unknown, or an RR that
         * may have reached the server (which may have revoked the
         * certificate) without a readable answer: the device does not use
         * its certificate until an RR is answered (decommission again);
         * decommission.json stays. */
        char why[600];
        snprintf(why, sizeof(why), "%s decommissioning is unfinished (%s): call m2mvpn_decommission again",
                 retry ? "an interrupted" : "the server may have revoked the certificate: the", j->err);
        if (!retry && m->hooks.on_decommissioned)
            m->hooks.on_decommissioned(m->hooks.arg); /* the tunnel stops */
        set_phase(m, MGMT_ERROR, why);
        pthread_mutex_lock(&m->mu);
        m->decom_unfinished = true;
        pthread_mutex_unlock(&m->mu);
        decom_event(m, j->r, why);
        return;
    }
    m->decom.phase = MGMT_DECOM_NONE;
    if (mgmt_decom_save(m->dir, &m->decom, err, sizeof(err)) < 0)
        LOG_ERR(m->log, SUB, "decommissioning: %s", err);
    decom_event(m, j->r, j->err);
    renew_arm(m);
    schedule_poll(m, poll_interval(m));
}

int mgmt_decommission(mgmt *m, char *err, size_t err_len)
{
    if (!m)
        return M2MVPN_E_INVAL;
    pthread_mutex_lock(&m->mu);
    mgmt_phase p = m->status.phase;
    bool on = m->status.on;
    if (!on || (p != MGMT_ENROLLED && !(p == MGMT_ERROR && m->decom_unfinished))) {
        pthread_mutex_unlock(&m->mu);
        snprintf(err, err_len, "not an enrolled managed device (management state %s)",
                 on ? mgmt_phase_name(p) : "off");
        return M2MVPN_E_STATE;
    }
    m->decom_asked = true;
    m->decom_unfinished = false;
    uint64_t one = 1;
    if (write(m->evfd, &one, sizeof(one)) < 0) {
        /* counter full: a wake is pending anyway */
    }
    pthread_mutex_unlock(&m->mu);
    return 0;
}

static void on_result(void *arg, uint32_t events)
{
    (void)events;
    mgmt *m = arg;
    uint64_t v;
    if (read(m->evfd, &v, sizeof(v)) < 0) {
        /* nothing to read: spurious wake */
    }
    take_result(m);
    pthread_mutex_lock(&m->mu);
    job *j = m->done;
    m->done = NULL;
    bool asked = m->decom_asked;
    m->decom_asked = false;
    pthread_mutex_unlock(&m->mu);
    if (asked)
        decom_start(m);
    if (!j)
        return;
    m->busy = false;
    if (j->type == JOB_ENROL)
        enrol_done(m, j);
    else if (j->type == JOB_POLL)
        poll_done(m, j);
    else if (j->type == JOB_DEPLOY)
        deploy_done(m, j);
    else if (j->type == JOB_ARTIFACT)
        artifact_done(m, j);
    else if (j->type == JOB_RENEW)
        renew_done(m, j);
    else if (j->type == JOB_INSTALL)
        install_done(m, j);
    else if (j->type == JOB_RR)
        decom_done(m, j);
    else
        fetch_done(m, j);
    job_free(j);
    if (m->decom_out && !m->busy && !m->done)
        decom_submit(m); /* asked while another request was out */
}

static void on_timer(void *arg)
{
    mgmt *m = arg;
    if (m->decom.phase != MGMT_DECOM_NONE)
        return; /* decommissioning: no other request */
    /* Day 0 until a first profile is installed, then the day-N poll. */
    submit(m, !m->cert ? JOB_ENROL : m->st.profile_version > 0 && !m->no_poll ? JOB_POLL : JOB_FETCH);
}

/* ------------------------------------------------------- lifecycle */

int mgmt_new(core_loop *loop, core_log *log, const mgmt_hooks *hooks, mgmt **ret)
{
    mgmt *m = calloc(1, sizeof(*m));
    if (!m)
        return M2MVPN_E_NOMEM;
    m->loop = loop;
    m->log = log;
    m->hooks = *hooks;
    m->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (m->evfd < 0) {
        free(m);
        return M2MVPN_E_SYSTEM;
    }
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
    core_timer_init(&m->timer, on_timer, m);
    core_timer_init(&m->renew_timer, on_renew_timer, m);
    *ret = m;
    return 0;
}

void mgmt_free(mgmt *m)
{
    if (!m)
        return;
    if (m->worker_started) {
        atomic_store(&m->cancel, true);
        pthread_mutex_lock(&m->mu);
        m->stop = true;
        pthread_cond_signal(&m->cv);
        pthread_mutex_unlock(&m->mu);
        pthread_join(m->worker, NULL);
        core_io_remove(m->loop, &m->io);
    }
    core_timer_cancel(m->loop, &m->timer);
    core_timer_cancel(m->loop, &m->renew_timer);
    job_free(m->todo);
    job_free(m->done);
    close(m->evfd);
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    EVP_PKEY_free(m->key);
    cred_free(m->cred);
    X509_free(m->cert);
    X509_free(m->signer);
    profile_set_free(m->set);
    free(m->dir);
    free(m);
}

static X509 *read_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    X509 *c = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    return c;
}

/* An enrolled state directory: key, certificate and the installed profile. */
static int resume(mgmt *m, char *err, size_t err_len)
{
    char path[4200];
    p11_recover(m);
    renew_recover(m);
    snprintf(path, sizeof(path), "%s/device.crt.pem", m->dir);
    m->cert = read_cert(path);
    char kerr[256] = "";
    if (device_key(m, false, &m->key, &m->cred, NULL, kerr, sizeof(kerr)) < 0)
        m->key = NULL;
    release_tpm(m, &m->key, &m->cred);
    if (!m->cert || !m->key || EVP_PKEY_eq(X509_get0_pubkey(m->cert), m->key) != 1) {
        if (kerr[0] && !m->key)
            snprintf(err, err_len, "state directory %s says enrolled but the device key is unusable: %s", m->dir,
                     kerr);
        else
            snprintf(err, err_len, "state directory %s says enrolled but its device.crt.pem and device key do "
                     "not match or are missing: empty the folder to enrol again", m->dir);
        return M2MVPN_E_CERT;
    }
    /* nothing uses a replaced key after a start, once the key labelled L
     * is known to be the certificate's (else "L.old" may be the only key) */
    if (m->boot->mgmt.provider == PROFILE_CERT_PKCS11)
        p11_drop_old(m);
    snprintf(path, sizeof(path), "%s/profile.json", m->dir);
    profile_set *set = NULL;
    char perr[512];
    if (m->decom.phase != MGMT_DECOM_NONE) {
        /* an interrupted decommissioning: the RR first, no tunnel */
    } else if (m->st.profile_version > 0 && profile_set_load_file(path, &set, perr, sizeof(perr)) == 0) {
        LOG_INFO(m->log, SUB, "using the stored profile version %lld", (long long)m->st.profile_version);
        m->hooks.on_profile(m->hooks.arg, set);
    } else if (m->st.profile_version > 0) {
        LOG_WARN(m->log, SUB, "stored profile unusable (%s): asking for it again", perr);
        m->st.profile_version = 0;
        m->st.etag[0] = 0;
    }
    return 0;
}

int mgmt_run(mgmt *m, profile_set *set, const profile *boot, const char *state_dir, char *err, size_t err_len)
{
    if (m->boot == boot)
        return 0; /* already running this bootstrap */
    if (m->boot) {
        snprintf(err, err_len, "management already runs bootstrap '%s'", m->boot->name);
        return M2MVPN_E_STATE;
    }
    struct stat sb;
    if (!state_dir || !*state_dir) {
        snprintf(err, err_len, "profile '%s' is a management bootstrap: a state directory is needed "
                 "(m2mvpn_set_state_dir, m2mvpn run --state-dir DIR)", boot->name);
        return M2MVPN_E_INVAL;
    }
    if (stat(state_dir, &sb) < 0 || !S_ISDIR(sb.st_mode) || access(state_dir, W_OK) < 0) {
        snprintf(err, err_len, "state directory %s is not a writable folder", state_dir);
        return M2MVPN_E_IO;
    }
    /* Whoever else may write there could put their own key, certificate,
     * profile and mgmt.json in it (or links where we write). */
    if ((sb.st_uid != 0 && sb.st_uid != geteuid()) || (sb.st_mode & (S_IWGRP | S_IWOTH))) {
        snprintf(err, err_len, "state directory %s is writable by other users (or belongs to another user): "
                 "make it this user's own, mode 0700", state_dir);
        return M2MVPN_E_IO;
    }
    mgmt_dl_sweep(state_dir); /* partial downloads of a stopped engine */
    X509 *signer = read_cert(boot->mgmt.bundle_signer);
    if (!signer) {
        snprintf(err, err_len, "management.bundle_signer %s: no PEM certificate readable there",
                 boot->mgmt.bundle_signer);
        return M2MVPN_E_CERT;
    }
    X509 *ca = read_cert(boot->mgmt.server_ca);
    X509_free(ca);
    if (!ca) {
        X509_free(signer);
        snprintf(err, err_len, "management.server_ca %s: no PEM certificate readable there", boot->mgmt.server_ca);
        return M2MVPN_E_CERT;
    }
    mgmt_decom decom;
    char derr[512] = "";
    if (mgmt_decom_load(state_dir, &decom, derr, sizeof(derr)) < 0)
        LOG_WARN(m->log, SUB, "%s", derr);
    if (decom.phase == MGMT_DECOM_REVOKED || decom.phase == MGMT_DECOM_DONE) {
        /* revoked: finish the removal (idempotent), then refuse to run */
        bool key_file = boot->mgmt.provider == PROFILE_CERT_FILE ||
                        (boot->mgmt.provider == PROFILE_CERT_TPM && !(boot->mgmt.tpm_key &&
                                                                      !strncmp(boot->mgmt.tpm_key, "0x", 2)));
        char kp[4200];
        snprintf(kp, sizeof(kp), "%s%s", boot->mgmt.provider == PROFILE_CERT_TPM
                                              ? (boot->mgmt.tpm_key ? boot->mgmt.tpm_key : state_dir)
                                              : (boot->mgmt.key ? boot->mgmt.key : state_dir),
                 (boot->mgmt.provider == PROFILE_CERT_TPM ? boot->mgmt.tpm_key : boot->mgmt.key) ? ""
                 : boot->mgmt.provider == PROFILE_CERT_TPM                                     ? "/device.tss2.pem"
                                                                                                : "/device.key.pem");
        if (decom.phase == MGMT_DECOM_REVOKED) {
            if (mgmt_decom_wipe(state_dir, key_file ? kp : NULL, derr, sizeof(derr)) == 0) {
                decom.phase = MGMT_DECOM_DONE;
                mgmt_decom_save(state_dir, &decom, derr, sizeof(derr));
                LOG_WARN(m->log, SUB, "an interrupted decommissioning finished: the credential is removed");
            } else {
                LOG_ERR(m->log, SUB, "finishing an interrupted decommissioning: %s", derr);
            }
        }
        X509_free(signer);
        pthread_mutex_lock(&m->mu);
        m->status.on = true;
        m->status.phase = MGMT_DECOMMISSIONED;
        snprintf(m->status.device_id, sizeof(m->status.device_id), "%s", decom.device_id);
        pthread_mutex_unlock(&m->mu);
        snprintf(err, err_len, "this device (%s) was decommissioned: its certificate is revoked and its key "
                 "removed; to enrol it again remove %s/decommission.json and give the bootstrap a new "
                 "enrolment token", decom.device_id[0] ? decom.device_id : "unknown id", state_dir);
        pthread_mutex_lock(&m->mu);
        snprintf(m->status.last_error, sizeof(m->status.last_error), "%s", err);
        pthread_mutex_unlock(&m->mu);
        return M2MVPN_E_STATE;
    }
    mgmt_state st;
    int r = mgmt_state_load(state_dir, &st, err, err_len);
    if (r < 0) {
        X509_free(signer);
        return r;
    }
    m->decom = decom;
    if (!(m->dir = strdup(state_dir))) {
        X509_free(signer);
        return M2MVPN_E_NOMEM;
    }
    m->signer = signer;
    m->st = st;
    m->set = profile_set_ref(set);
    m->boot = boot;
    if (boot->mgmt.provider == PROFILE_CERT_TPM)
        snprintf(m->key_path, sizeof(m->key_path), "%s%s", boot->mgmt.tpm_key ? boot->mgmt.tpm_key : state_dir,
                 boot->mgmt.tpm_key ? "" : "/device.tss2.pem");
    else if (boot->mgmt.key)
        snprintf(m->key_path, sizeof(m->key_path), "%s", boot->mgmt.key);
    else
        snprintf(m->key_path, sizeof(m->key_path), "%s/device.key.pem", state_dir);
    if (!m->worker_started) {
        if (core_io_add(m->loop, &m->io, m->evfd, EPOLLIN, on_result, m) < 0 ||
            pthread_create(&m->worker, NULL, worker_main, m) != 0) {
            snprintf(err, err_len, "cannot start the management worker thread");
            return M2MVPN_E_SYSTEM;
        }
        m->worker_started = true;
    }
    if (m->st.phase == MGMT_ENROLLED) {
        char what[300];
        r = mgmt_apply_recover(m->dir, &m->jr, &m->st, what, sizeof(what), err, err_len);
        if (r < 0) {
            set_phase(m, MGMT_ERROR, err);
            return r;
        }
        if (what[0])
            LOG_WARN(m->log, SUB, "apply journal: %s", what);
        if (m->jr.phase == MGMT_APPLY_COMMITTED)
            owe_feedback(m, m->jr.deployment, true, what);
        else if (m->jr.phase == MGMT_APPLY_FAILED)
            owe_feedback(m, m->jr.deployment, false, m->jr.reason);
        r = resume(m, err, err_len);
        if (r < 0) {
            set_phase(m, MGMT_ERROR, err);
            return r;
        }
        if (m->decom.phase == MGMT_DECOM_REQUESTED) {
            /* Stopped while an RR was out: its outcome is unknown, so
             * the certificate is not used; the RR goes again (a refusal
             * counts only if signed by the CA). */
            set_phase(m, MGMT_ERROR, "an interrupted decommissioning is being finished (CMP RR sent again)");
            m->decom_out = true;
            decom_submit(m);
            return 0;
        }
        renew_mark_recover(m);
        update_recover(m);
        publish_status(m, NULL);
        renew_arm(m);
        submit(m, m->st.profile_version > 0 ? JOB_POLL : JOB_FETCH);
        return 0;
    }
    if (m->st.phase == MGMT_ERROR)
        m->st.phase = MGMT_UNENROLLED;
    publish_status(m, NULL);
    submit(m, JOB_ENROL);
    return 0;
}
