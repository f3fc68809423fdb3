/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Management, device side (DESIGN §9, issue 14): a bootstrap profile (one
 * with "management") becomes an enrolled device with its own profile.
 *
 *  1. the device key is made in the bootstrap's provider (lib/cred keygen);
 *  2. CMP IR over HTTPS (libcurl, the server's TLS pinned to the bootstrap's
 *     server_ca, no system store), MAC-protected with the enrolment token;
 *     PKIStatus waiting = "pending", asked again later with jitter;
 *  3. the certificate (public key = ours, a subject) is stored, ENROLLED;
 *  4. GET /api/v1/device/profile over mutual TLS with the enrolled key,
 *     If-None-Match; the bundle is verified completely (mgmt_bundle_verify)
 *     before anything is written; then the CA PEMs, the profile and last the
 *     version go into the state directory; CONFIG_UPDATED; the new profile
 *     is handed to the engine (hooks.on_profile);
 *  5. polled again every poll_s (jittered).
 *
 * Threads: every network request runs on one worker thread of the module;
 * its result comes back to the engine loop through an eventfd registered in
 * the loop, and all state changes, files and hooks happen on the engine
 * thread. Blocking functions below are the worker's; they touch no state.
 *
 * Errors: 0 or negative M2MVPN_E_*; err gets one line (no secret) saying
 * what to do where a user can do something.
 */
#ifndef M2MVPN_MGMT_H
#define M2MVPN_MGMT_H

#include <m2mvpn/m2mvpn.h>
#include <openssl/cmp.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/log.h"
#include "core/loop.h"
#include "profile/profile.h"

/* ------------------------------------------------------------- bundles */

#define MGMT_BUNDLE_MAX (1u << 20)
/* The largest software artifact a signed manifest may announce: it is
 * streamed to a file (mgmt_dl), never held in memory. */
#define MGMT_ARTIFACT_MAX (1ll << 30)

/* For type "software" the payload must be empty and the manifest's sha256,
 * size, url (the artifact route of that sha256) and software_version
 * describe the file fetched separately (mgmt_artifact_check). */
typedef struct mgmt_bundle {
    int64_t version;
    int64_t not_after;
    int64_t deployment;       /* day N: the deployment it belongs to (0: none said) */
    /* type "software": the artifact (payload empty; sha256 is the file's) */
    char software_version[64];
    char url[128];            /* "/api/v1/device/artifacts/<sha256>" */
    char sha256[65];
    int64_t size;
    uint8_t *payload;         /* malloc'd, NUL-terminated for convenience */
    size_t payload_len;
} mgmt_bundle;

/* Verify a bundle (CMS SignedData DER, content attached, id-data) against
 * the contract: signed by `signer` and no other (no chain to anything else),
 * manifest format 1, type == `type`, device == `device_id`, not_after >
 * `now`, sha256 of the payload as stated, version > `installed`. On success
 * *out holds the payload; on failure *out is untouched and err says which
 * rule failed (M2MVPN_E_BUNDLE, or NOMEM). */
int mgmt_bundle_verify(const uint8_t *der, size_t len, X509 *signer, const char *type, const char *device_id,
                       int64_t installed, int64_t now, mgmt_bundle *out, char *err, size_t err_len);
void mgmt_bundle_clear(mgmt_bundle *b);
/* A software_version a device takes: 1..63 characters of letters, digits
 * and ". _ + ~ -", the first a letter or digit. It names the stored file
 * (update-<version>.bin) and is the installer's second argument, so it is
 * never a path, an option or anything a shell would read. */
bool mgmt_software_version_ok(const char *sv);

/* -------------------------------------------------------- state directory */

/* Replace dir/name atomically (temporary file, fsync, rename, fsync of the
 * folder), mode 0600. */
int mgmt_write_file(const char *dir, const char *name, const void *data, size_t len, char *err, size_t err_len);

/* The state files in JSON. Write: o as text through mgmt_write_file, then o
 * put (NULL o: NOMEM). Read: 0 with *ret NULL when there is no such file;
 * M2MVPN_E_IO naming the file when it is unreadable or not JSON. */
struct json_object;
int mgmt_write_json(const char *dir, const char *name, struct json_object *o, char *err, size_t err_len);
int mgmt_read_json(const char *dir, const char *name, struct json_object **ret, char *err, size_t err_len);

typedef enum mgmt_phase { MGMT_UNENROLLED, MGMT_PENDING, MGMT_ENROLLED, MGMT_ERROR, MGMT_DECOMMISSIONED } mgmt_phase;
const char *mgmt_phase_name(mgmt_phase p);

/* mgmt.json */
typedef struct mgmt_state {
    mgmt_phase phase;
    char device_id[64];
    int64_t last_contact;
    int64_t profile_version;  /* 0: none installed */
    char etag[128];
    int64_t software_seq;     /* day N: version of the last software bundle accepted */
    int64_t software_refetch; /* a deployment whose stored update was dropped at a start: its bundle
                                 may carry software_seq once more, until its file is stored */
} mgmt_state;
/* Missing file: zeroed state (unenrolled), 0. Unreadable or malformed: error. */
int mgmt_state_load(const char *dir, mgmt_state *st, char *err, size_t err_len);
int mgmt_state_save(const char *dir, const mgmt_state *st, char *err, size_t err_len);

/* renew.json: an operator's certificate renewal (a cert deployment) under
 * way or whose feedback is not yet delivered, so a restart finishes that
 * deployment instead of renewing again: the deployment and the serial of
 * the certificate it replaces (uppercase hex). A device.crt.pem of another
 * serial at the next start means the renewal was done. */
typedef struct mgmt_renew_mark {
    int64_t deployment;       /* 0: none */
    char old_serial[80];
} mgmt_renew_mark;
/* Missing: deployment 0, 0; old_serial not hex (empty, another text):
 * error (deployment 0). Saving deployment 0 removes the file. */
int mgmt_renew_mark_load(const char *dir, mgmt_renew_mark *mk, char *err, size_t err_len);
int mgmt_renew_mark_save(const char *dir, const mgmt_renew_mark *mk, char *err, size_t err_len);

/* update.json: a verified software update stored in the state directory
 * (file, a plain name there) waiting for its maintenance window or its
 * result, with the facts of its verified manifest, so a restart still
 * installs it. The file is hashed again before it is used. */
typedef struct mgmt_update_mark {
    int64_t deployment;       /* 0: none */
    int64_t version;          /* the software bundle's version (software_seq) */
    char software_version[64];
    char file[128];
    char sha256[65];
    int64_t size;
} mgmt_update_mark;
/* Missing: deployment 0, 0; a malformed one: error (mk zeroed). Its file
 * must be "update-<software_version>.bin", software_version one that
 * mgmt_software_version_ok accepts (the file the download wrote, never
 * another one of the state directory). Saving deployment 0 removes the
 * file. */
int mgmt_update_mark_load(const char *dir, mgmt_update_mark *mk, char *err, size_t err_len);
int mgmt_update_mark_save(const char *dir, const mgmt_update_mark *mk, char *err, size_t err_len);
/* The signed software bundle (CMS DER as received) of the stored update,
 * kept beside update.json: a restart trusts what it signs, not update.json
 * (saving a mark of deployment 0 removes it too). */
#define MGMT_UPDATE_BUNDLE "update.p7m"
/* At start: the stored update, if any. update.json is loaded and its
 * bundle MGMT_UPDATE_BUNDLE verified again (mgmt_bundle_verify: signer,
 * device, not expired) with a version not below software_seq (the one
 * accepted, or a later one when the stop came before mgmt.json was
 * saved); deployment, version, software_version, sha256 and size of the
 * mark must be the bundle's. 0: mk->deployment 0 (none stored), or *ret
 * the bundle (its facts are the ones to use). Else M2MVPN_E_IO (mark
 * unreadable, mk zeroed) or M2MVPN_E_BUNDLE (bundle missing or refused, mk
 * as loaded: its file is the download's) with err; *ret untouched. */
int mgmt_update_stored(const char *dir, X509 *signer, const char *device_id, int64_t software_seq, int64_t now,
                       mgmt_update_mark *mk, mgmt_bundle *ret, char *err, size_t err_len);

/* ------------------------------------------------------ requests (worker) */

typedef struct mgmt_tls {
    const char *url;          /* "https://host:port", no trailing '/' */
    const char *server_ca;    /* PEM file: the one anchor */
    X509 *cert;               /* client certificate (mutual TLS) or NULL */
    EVP_PKEY *key;            /* its key or NULL */
    const atomic_bool *cancel; /* set: abort the transfer soon (NULL: never) */
    bool *unsent;             /* not NULL: set true when the request failed before any of it was
                               * sent (name not resolved, connection refused, TLS handshake
                               * failed), else false */
} mgmt_tls;

/* POST `path` (body of content type ctype) or GET (body NULL); answer body
 * malloc'd into *ret (caller frees). *ret_status: the HTTP status. etag_in:
 * If-None-Match (or NULL); etag_out (may be NULL): the answer's ETag.
 * TLS failures to the pinned CA are M2MVPN_E_SERVER_CERT. */
int mgmt_http(const mgmt_tls *t, const char *path, const char *ctype, const uint8_t *body, size_t body_len,
              const char *etag_in, long *ret_status, uint8_t **ret, size_t *ret_len, char *etag_out,
              size_t etag_cap, char *err, size_t err_len);

/* One CMP IR (MAC with the token "ID.SECRET", senderKID = ID; newPkey = key).
 * 0: *ret_cert issued and checked (public key == key, subject present);
 * M2MVPN_E_PENDING: waiting (*ret_check_after_s, 0 if none given);
 * M2MVPN_E_TOKEN, M2MVPN_E_ENROL, M2MVPN_E_SERVER_CERT, NETWORK, PROTOCOL. */
int mgmt_cmp_enrol(const mgmt_tls *t, const char *token, EVP_PKEY *key, X509 **ret_cert,
                   int *ret_check_after_s, char *err, size_t err_len);
/* The CMP answer handling alone (tests, fuzzing): parse a DER PKIMessage as
 * the answer to an IR and check it as mgmt_cmp_enrol would. */
int mgmt_cmp_check_answer(const uint8_t *der, size_t len, char *err, size_t err_len);

/* Day N: one CMP KUR signed with the current (old_key, old_cert) for a
 * certificate of new_key (may be old_key: same key). The answer is trusted
 * only if signed by the issuer of old_cert; the new certificate must be for
 * new_key, keep the subject and come from that issuer. 0: *ret_cert; else
 * M2MVPN_E_CERT, M2MVPN_E_ENROL (refused), SERVER_CERT, NETWORK, PROTOCOL. */
int mgmt_cmp_kur(const mgmt_tls *t, EVP_PKEY *old_key, X509 *old_cert, EVP_PKEY *new_key, X509 **ret_cert,
                 char *err, size_t err_len);
/* The same KUR answered by an in-process OpenSSL CMP server (tests: the
 * failure texts of a renewal without a network). */
int mgmt_cmp_kur_local(OSSL_CMP_SRV_CTX *srv, EVP_PKEY *old_key, X509 *old_cert, EVP_PKEY *new_key,
                       X509 **ret_cert, char *err, size_t err_len);

/* Day N: one CMP RR (RFC 4210 5.3.9) revoking `cert`, signed with (key,
 * cert), reason cessationOfOperation. 0 only for a positive answer signed
 * by the issuer of `cert` that matches the request (transactionID, nonce),
 * or, when `retry` (an RR whose earlier answer was lost), for a rejection
 * with failInfo certRevoked equally signed and matching: the earlier RR did
 * revoke it. Else M2MVPN_E_DECOMMISSION (refused by the server, its reason
 * in err), NETWORK, SERVER_CERT, PROTOCOL (an answer not to be trusted).
 * retry: a refusal too must be signed (else an unprotected refusal is read
 * for its reason). *ret_maybe_sent (may be NULL): on failure, whether the
 * request may have reached the server without an answer the device can
 * read as a refusal (false: it was never sent, or the server refused it). */
int mgmt_cmp_rr(const mgmt_tls *t, EVP_PKEY *key, X509 *cert, bool retry, bool *ret_maybe_sent, char *err,
                size_t err_len);
/* The same RR answered by an in-process OpenSSL CMP server (tests);
 * lose_answer: the server handles the request but its answer is lost. */
int mgmt_cmp_rr_local(OSSL_CMP_SRV_CTX *srv, EVP_PKEY *key, X509 *cert, bool retry, bool lose_answer,
                      bool *ret_maybe_sent, char *err, size_t err_len);
/* The RR answer handling alone (tests, fuzzing): `der` is taken as the
 * answer to an RR for (key, cert). */
int mgmt_cmp_check_rr_answer(const uint8_t *der, size_t len, EVP_PKEY *key, X509 *cert, char *err,
                             size_t err_len);

/* The device id the server derives: "dev-" + 16 hex of SHA-256(SPKI DER). */
int mgmt_device_id(EVP_PKEY *key, char out[21]);

/* ------------------------------------------------------ day N: polling */

typedef enum mgmt_dep_type { MGMT_DEP_PROFILE, MGMT_DEP_SOFTWARE, MGMT_DEP_CERT } mgmt_dep_type;
const char *mgmt_dep_type_name(mgmt_dep_type t);

#define MGMT_POLL_MAX_DEPS 8

typedef struct mgmt_deployment {
    int64_t id;
    mgmt_dep_type type;
    bool window_open;         /* maintenance_window "available" (or absent) */
    char href[80];            /* always "/api/v1/device/deployments/<id>" */
} mgmt_deployment;

typedef struct mgmt_poll_answer {
    uint32_t poll_s;
    size_t n;
    mgmt_deployment deps[MGMT_POLL_MAX_DEPS];
} mgmt_poll_answer;

/* Parse the answer of GET /api/v1/device/poll. Unknown deployment types are
 * skipped; an href other than the route of its own id is refused. 0 or
 * M2MVPN_E_PROTOCOL with err (out zeroed). */
int mgmt_poll_parse(const char *text, size_t len, mgmt_poll_answer *out, char *err, size_t err_len);
/* The poll path with the state query. */
int mgmt_poll_query(char *out, size_t cap, const char *tunnel, int64_t profile_version, const char *software,
                    int64_t cert_not_after);

/* ------------------------------------------- day N: certificate renewal */

#define MGMT_RENEW_RETRY_MIN_S 60
#define MGMT_RENEW_RETRY_MAX_S 3600

/* When to renew a certificate valid from not_before to not_after (Unix
 * time): about 2/3 of its lifetime, jittered by +-1/18 of it with `rnd`, a
 * uniform draw in [0, 1). */
int64_t mgmt_renew_at(int64_t not_before, int64_t not_after, double rnd);
/* Wait before the next attempt after `failures` (>= 1) failed ones: 60 s
 * doubling up to 1 h, but at most half of the time left before not_after
 * (at least 5 s). */
int64_t mgmt_renew_retry_s(unsigned failures, int64_t now, int64_t not_after);

/* The swap of a renewal's files in dir: <key_path>.next (if new_key_file
 * and it is there) renamed over key_path, then device.crt.pem.next over
 * device.crt.pem, the folder fsynced. key_of (NULL: no check, the caller
 * checked the key elsewhere) reads the public key of a key file (its own
 * format and PIN; NULL if unreadable): first, device.crt.pem.next must
 * hold the key of <key_path>.next when that is there, else the one of
 * key_path (the stop came between the two renames). A certificate that
 * does not (tampered, another attempt's, for a key deleted since) is
 * never swapped in: both .next files are removed, the current key and
 * certificate stay, M2MVPN_E_CERT. A failed key rename removes both .next
 * files too (M2MVPN_E_IO); a failed certificate rename leaves
 * device.crt.pem.next, and *key_moved (may be NULL) says whether the key
 * was renamed (then that file is the new key's only certificate: the next
 * start finishes the swap). */
int mgmt_renew_swap(const char *dir, const char *key_path, bool new_key_file,
                    EVP_PKEY *(*key_of)(void *arg, const char *path), void *arg, bool *key_moved, char *err,
                    size_t err_len);

/* ------------------------------------- day N: applying a profile (apply.json) */

typedef enum mgmt_apply_phase {
    MGMT_APPLY_NONE,          /* no journal */
    MGMT_APPLY_STAGED,        /* profile.next.json (+ profile.prev.json) being written */
    MGMT_APPLY_WRITTEN,       /* profile.json is the new one, prev kept */
    MGMT_APPLY_TRYING,        /* the engine runs it, not committed */
    MGMT_APPLY_COMMITTED,     /* version moved; success feedback owed */
    MGMT_APPLY_FAILED,        /* rolled back; failure feedback owed (reason) */
} mgmt_apply_phase;
const char *mgmt_apply_phase_name(mgmt_apply_phase p);

typedef struct mgmt_journal {
    mgmt_apply_phase phase;
    int64_t deployment, from, to;
    bool had_prev;            /* a profile.json existed before */
    char reason[256];
} mgmt_journal;

/* Missing: phase NONE, 0. Saving phase NONE removes the file. */
int mgmt_journal_load(const char *dir, mgmt_journal *j, char *err, size_t err_len);
int mgmt_journal_save(const char *dir, const mgmt_journal *j, char *err, size_t err_len);
/* Version rule of every bundle: offered > installed, not_after > now. */
int mgmt_version_check(int64_t installed, int64_t offered, int64_t not_after, int64_t now, char *err,
                       size_t err_len);
/* journal STAGED, profile.next.json, copy of profile.json as profile.prev.json. */
int mgmt_apply_stage(const char *dir, mgmt_journal *j, int64_t deployment, int64_t from, int64_t to,
                     const char *text, size_t len, char *err, size_t err_len);
/* rename profile.next.json over profile.json, journal WRITTEN. */
int mgmt_apply_write(const char *dir, mgmt_journal *j, char *err, size_t err_len);
int mgmt_apply_trying(const char *dir, mgmt_journal *j, char *err, size_t err_len);
/* journal COMMITTED, st->profile_version = to (mgmt.json), prev removed. */
int mgmt_apply_commit(const char *dir, mgmt_journal *j, mgmt_state *st, char *err, size_t err_len);
/* profile.prev.json back (or profile.json removed when there was none),
 * journal FAILED with reason. */
int mgmt_apply_rollback(const char *dir, mgmt_journal *j, const char *reason, char *err, size_t err_len);
/* At start: an unfinished apply is rolled back (STAGED/WRITTEN/TRYING) or
 * its commit completed (COMMITTED); what says which (empty: nothing). */
int mgmt_apply_recover(const char *dir, mgmt_journal *j, mgmt_state *st, char *what, size_t what_len, char *err,
                       size_t err_len);

/* ------------------------------------ day N: decommissioning (decommission.json) */

typedef enum mgmt_decom_phase {
    MGMT_DECOM_NONE,          /* no file */
    MGMT_DECOM_REQUESTED,     /* the CMP RR was (or is about to be) sent: outcome unknown */
    MGMT_DECOM_REVOKED,       /* the server accepted it: the credential is being removed */
    MGMT_DECOM_DONE,          /* removed; the bootstrap does not run again */
} mgmt_decom_phase;
const char *mgmt_decom_phase_name(mgmt_decom_phase p);

typedef struct mgmt_decom {
    mgmt_decom_phase phase;
    char device_id[64];
    int64_t time;             /* when the phase was written (Unix time) */
} mgmt_decom;

/* Missing: phase NONE, 0. Malformed: phase REQUESTED (the safe reading)
 * and M2MVPN_E_IO with err. Saving phase NONE removes the file. */
int mgmt_decom_load(const char *dir, mgmt_decom *d, char *err, size_t err_len);
int mgmt_decom_save(const char *dir, const mgmt_decom *d, char *err, size_t err_len);
/* Remove the device's files from dir (key, certificate, intents, mgmt.json,
 * apply journal, profiles, CA files, update files; decommission.json and
 * anything else stays), and key_file (may be outside dir, NULL: none) and
 * its ".next" first; keys and all are overwritten with zeros before the
 * unlink, the folder fsynced. Idempotent. */
int mgmt_decom_wipe(const char *dir, const char *key_file, char *err, size_t err_len);

/* ------------------------------------------------------- the engine side */

typedef struct mgmt mgmt;

typedef struct mgmt_hooks {
    void *arg;
    /* ENROLLED, CONFIG_UPDATED, or an error event (err < 0) with detail. */
    void (*on_event)(void *arg, m2mvpn_event_type type, int err, const char *detail);
    /* A verified individual profile to use now; the hook takes the set. */
    void (*on_profile)(void *arg, profile_set *set);
    /* The tunnel's state for the poll ("up", "connecting", "down"); *up_with:
     * true when it is up with exactly `set` (compared, never used). NULL:
     * "down". */
    const char *(*tunnel)(void *arg, const profile_set *set, bool *up_with);
    /* The certificate was renewed (files swapped, CERT_RENEWED emitted):
     * reauthenticate now so the next IKE SA uses it. NULL: nothing. */
    void (*on_cert_renewed)(void *arg);
    /* The server revoked the certificate on our RR: stop the tunnel for
     * good and drop the managed profile (the credential goes next). Also
     * called when it may have (the RR's answer was lost): the tunnel stops
     * until an RR is answered. */
    void (*on_decommissioned)(void *arg);
} mgmt_hooks;

typedef struct mgmt_status {
    bool on;                  /* a bootstrap runs */
    mgmt_phase phase;
    int64_t last_contact;
    int64_t profile_version;
    int64_t cert_not_after;
    char device_id[64];
    char last_error[256];
    bool cert_refused;        /* the gateway refused our certificate (revoked?) */
} mgmt_status;

int mgmt_new(core_loop *loop, core_log *log, const mgmt_hooks *hooks, mgmt **ret);
/* Stops the worker (an ongoing request is waited for, bounded by its
 * timeouts). NULL is fine. */
void mgmt_free(mgmt *m);
/* Run bootstrap profile `boot` (a reference on set is taken) with the state
 * directory `state_dir` (copied; NULL: refused with a clear error). An
 * enrolled state directory skips enrolment and hands its stored profile to
 * on_profile at once, then asks for a newer one. */
int mgmt_run(mgmt *m, profile_set *set, const profile *boot, const char *state_dir, char *err, size_t err_len);
void mgmt_get_status(mgmt *m, mgmt_status *st);
/* The tunnel's outcome (engine thread): err M2MVPN_E_AUTH_LOCAL while a
 * managed device runs means the gateway refused the enrolled certificate
 * (revoked, expired): status says so and what to do. 0: connected. */
void mgmt_note_tunnel(mgmt *m, int err, const char *detail);
/* The application installed (ok) or failed to install the update `version`
 * handed over with UPDATE_AVAILABLE: reported to the server. Any thread.
 * M2MVPN_E_STATE: no update of that version is waiting for its result. */
int mgmt_update_result(mgmt *m, const char *version, bool ok, const char *details);
/* Decommission the device (any thread): a CMP RR for the device
 * certificate signed with the device key; the answer comes as event
 * DECOMMISSIONED (error 0: revoked, tunnel stopped, credential removed;
 * < 0: nothing changed, detail says why). 0: asked; M2MVPN_E_STATE with
 * err: not an enrolled managed device or a decommissioning under way. */
int mgmt_decommission(mgmt *m, char *err, size_t err_len);
/* The artifact against its verified software bundle: size and sha256. */
int mgmt_artifact_check(const uint8_t *data, size_t len, const mgmt_bundle *b, char *err, size_t err_len);

/* ---------------------------------- day N: software download and installer */

/* A software artifact streamed into the state directory: written to the
 * hidden temporary ".NAME.part" (0600, O_EXCL) while hashed; more bytes
 * than the signed size stop it at once; finished only if size and sha256
 * are the signed ones: fsync, rename to NAME, fsync of the folder. Any
 * failure removes the temporary file: NAME exists only verified. */
typedef struct mgmt_dl {
    int fd;                   /* -1: closed */
    char tmp[4200], path[4200], dir[4096];
    void *md;                 /* EVP_MD_CTX */
    int64_t size, got;
    char sha256[65];
    char why[256];            /* set when a write was refused */
    bool io_error;            /* ... by the disk, not by the size */
} mgmt_dl;

/* name: a plain file name (no '/'); size 1..MGMT_ARTIFACT_MAX; sha256 64
 * lowercase hex. A stale temporary file of the same name is replaced; the
 * free space of the folder must hold size. */
int mgmt_dl_open(mgmt_dl *d, const char *dir, const char *name, int64_t size, const char *sha256, char *err,
                 size_t err_len);
/* 0, or -1 (why set, nothing written) when the bytes would pass the signed
 * size, or on a write error. */
int mgmt_dl_write(mgmt_dl *d, const void *data, size_t len);
/* Verify and rename into place: 0, or M2MVPN_E_BUNDLE (size, sha256),
 * M2MVPN_E_SYSTEM; the temporary file is gone either way. */
int mgmt_dl_finish(mgmt_dl *d, char *err, size_t err_len);
/* Drop a download: the temporary file removed. Idempotent. */
void mgmt_dl_abort(mgmt_dl *d);
/* A stored file (not a link) still what the signed manifest says: size and
 * sha256 (64 lowercase hex). 0, or M2MVPN_E_BUNDLE (changed) / M2MVPN_E_IO
 * with err. */
int mgmt_file_check(const char *path, int64_t size, const char *sha256, char *err, size_t err_len);
/* The same check on a descriptor kept open (O_CLOEXEC, at offset 0 on
 * success, *ret_fd the caller's to close): what is handed on is the file
 * that was hashed, whatever is renamed to its path afterwards. */
int mgmt_file_open_verified(const char *path, int64_t size, const char *sha256, int *ret_fd, char *err,
                            size_t err_len);
/* Remove every ".update-*.part" left in dir by a stopped engine. */
void mgmt_dl_sweep(const char *dir);

/* GET `path` streamed into d (opened): status 200 only goes to the file
 * (another status: *ret_status set, the answer's first bytes in err);
 * the transfer stops once the bytes pass d's size. Then mgmt_dl_finish or
 * mgmt_dl_abort is the caller's. M2MVPN_E_BUNDLE: refused by d (why). */
int mgmt_http_download(const mgmt_tls *t, const char *path, mgmt_dl *d, long *ret_status, char *err,
                       size_t err_len);

#define MGMT_INSTALL_OUT_MAX 4096 /* installer output kept for the log */

/* Run the profile's installer: argv {installer, file, version}, no shell,
 * stdin /dev/null, stdout and stderr into out (the first out_cap - 1
 * bytes, NUL-terminated, the rest read and dropped), its own process
 * group, a minimal environment (PATH, LANG), every other descriptor
 * closed. file_fd >= 0 (mgmt_file_open_verified): the installer gets that
 * open file as its descriptor 3 and argv[1] "/dev/fd/3" instead of file
 * (never opened again by its path); -1: argv[1] is file. Killed (the
 * whole group, SIGKILL) after timeout_s or when *cancel is set. 0: exited
 * 0. Else M2MVPN_E_SYSTEM with err saying how it ended (exit status N,
 * killed by signal, timed out, could not start). */
int mgmt_install_run(const char *installer, const char *file, int file_fd, const char *version, uint32_t timeout_s,
                     const atomic_bool *cancel, char *out, size_t out_cap, char *err, size_t err_len);

#endif
