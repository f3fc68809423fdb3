/* SPDX-License-Identifier: Apache-2.0 */
/* The management server's store: devices, enrolment tokens, groups with
 * their profile templates and published versions. All state lives in the
 * database (SQLite by default, PostgreSQL for several server instances);
 * the handle holds only the connection. Every mutation is one SQL
 * transaction. Functions return 0 on success, STORE_NOTFOUND or STORE_REFUSED
 * (with a reason in err) for the caller's mistakes, -1 on a database error. */
#ifndef M2MVPN_SERVER_STORE_H
#define M2MVPN_SERVER_STORE_H

#include <stddef.h>

#define STORE_NOTFOUND 1
#define STORE_REFUSED 2

#define STORE_ID_MAX 64        /* device id, token id, group name: at most 63 chars */
#define STORE_SCHEMA_VERSION 3

typedef struct store store;

/* database: "sqlite:PATH" or a libpq conninfo ("postgresql://...", "host=... dbname=...").
   Applies the schema migrations that are missing (idempotent; serialised
   across processes). */
int store_open(store **out, const char *database, char *err, size_t errlen);
void store_close(store *s);
const char *store_engine(const store *s);   /* "sqlite" | "postgresql" */
int store_schema_version(store *s, int *version, char *err, size_t errlen);

/* A group name and a device id: 1..63 chars of [A-Za-z0-9._-]. */
int store_valid_name(const char *name);

/* ---- enrolment tokens (no secret stored: it is derived from the id) ---- */
typedef enum { STORE_TOKEN_UNUSED, STORE_TOKEN_BOUND, STORE_TOKEN_USED, STORE_TOKEN_REVOKED } store_token_state;
const char *store_token_state_name(store_token_state st);

typedef struct {
    char id[STORE_ID_MAX];
    char group[STORE_ID_MAX];
    long long expires;
    int auto_approve;
    store_token_state state;
    char device[STORE_ID_MAX];     /* "" until bound */
} store_token;

/* n tokens of one group in one transaction (all or none). */
int store_token_create(store *s, const char *const *ids, size_t n, const char *group, long long expires,
                       int auto_approve, char *err, size_t errlen);
int store_token_get(store *s, const char *id, store_token *t, char *err, size_t errlen);
/* Can this token still be used to enrol at time now (its MAC secret may be
   given out)? 0 yes; STORE_NOTFOUND unknown; STORE_REFUSED expired, revoked
   or used, with the reason. A token bound to a device pending approval stays
   usable by that device after its expiry (the expiry limits binding). */
int store_token_usable(store *s, const char *id, long long now, char *err, size_t errlen);

/* ---- devices ---- */
typedef enum { STORE_DEV_PENDING, STORE_DEV_APPROVED, STORE_DEV_ENROLLED, STORE_DEV_REJECTED,
               STORE_DEV_REVOKED } store_device_state;
const char *store_device_state_name(store_device_state st);

typedef struct {
    char id[STORE_ID_MAX];
    char group[STORE_ID_MAX];
    store_device_state state;
    char token[STORE_ID_MAX];
    char cn[STORE_ID_MAX];
    char serial[80];               /* hex, "" before issuance */
    long long not_after;           /* 0 before issuance */
    long long last_contact;        /* 0 never */
    long long profile_version;     /* reported by the device's poll, else last delivered; 0 none */
    char tunnel[16];               /* reported: up | down | connecting, "" never reported */
    char software_version[64];     /* reported, "" never reported */
    long long cert_not_after;      /* reported by the device, 0 never */
} store_device;

/* An IR MAC-verified with token_id asks to enrol device_id (derived from its
   key). In one transaction: an unused, unexpired token is bound to the device
   (created pending, or approved if the token auto-approves); the same token
   with the same device returns that device's state; the same token with
   another device is refused ("enrolment token already used"), and so is an
   expired or revoked one. On success *state is the device's state. */
int store_enrol(store *s, const char *token_id, const char *device_id, long long now,
                store_device_state *state, char *err, size_t errlen);
/* The certificate was issued: device enrolled, serial/not_after recorded, token used. */
int store_issued(store *s, const char *token_id, const char *device_id, const char *serial_hex,
                 long long not_after, long long now, char *err, size_t errlen);

typedef enum { STORE_ACT_APPROVE, STORE_ACT_REJECT, STORE_ACT_REVOKE } store_action;
/* approve: pending -> approved; reject: pending|approved -> rejected;
   revoke: any but revoked -> revoked (its token too, and every certificate of it not yet
   expired: revoked now, reason keyCompromise). Else STORE_REFUSED. */
int store_device_act(store *s, const char *device_id, store_action act, char *err, size_t errlen);
int store_device_get(store *s, const char *device_id, store_device *d, char *err, size_t errlen);
/* *list is malloc'd (free it), *n devices, ordered by id. */
int store_device_list(store *s, store_device **list, size_t *n, char *err, size_t errlen);
/* Record a contact (and, when profile_version > 0, the version delivered). */
int store_device_contact(store *s, const char *device_id, long long now, long long profile_version,
                         char *err, size_t errlen);

/* A poll: last contact and the reported state. NULL / negative values keep
   what was recorded before. */
int store_device_report(store *s, const char *device_id, long long now, const char *tunnel,
                        long long profile_version, const char *software_version, long long cert_not_after,
                        char *err, size_t errlen);

/* ---- artifacts (software update files; the bytes live in a file) ---- */
/* Records an uploaded file (sha256 = 64 lowercase hex); an existing one is kept. */
int store_artifact_put(store *s, const char *sha256, long long size, const char *path, char *err, size_t errlen);
int store_artifact_get(store *s, const char *sha256, long long *size, char *path, size_t pathcap,
                       char *err, size_t errlen);
/* 0 if device_id has a deployment of that artifact that it may see (its
   wave is open), STORE_REFUSED otherwise. */
int store_artifact_allowed(store *s, const char *sha256, const char *device_id, char *err, size_t errlen);

/* ---- deployments and staged rollouts ---- */
typedef enum { STORE_DEP_PROFILE, STORE_DEP_SOFTWARE, STORE_DEP_CERT } store_dep_type;
const char *store_dep_type_name(store_dep_type t);
int store_dep_type_parse(const char *name, store_dep_type *t);

typedef struct {
    long long id;
    char group[STORE_ID_MAX];
    store_dep_type type;
    long long version;             /* profile: the group's profile version; software: = id */
    char software_version[64];     /* software only */
    char artifact[65];             /* software only: sha256 of the file */
    long long size;                /* software only */
    int percent;                   /* first wave: percent of the group's devices, 1..100 */
    int max_fail_permille;         /* halt when failures > this / 1000 x wave size */
    int window_start, window_end;  /* maintenance window, minutes after 00:00 UTC; -1 none */
    char state[8];                 /* active | halted | done */
    int wave;                      /* 1: the first wave only; 2: every device */
    long long created;
    /* per-device counts */
    int n_devices, n_first_wave, n_pending, n_proceeding, n_success, n_failure;
    /* per-device status, filled by store_deployment_for_device */
    char dev_status[12];
} store_deployment;

/* Creates a deployment for every enrolled device of d->group (in: group, type,
   percent, max_fail_permille, window_*, and for software software_version,
   artifact), first wave = the first ceil(percent % of n) devices by id. A
   profile deployment also publishes the group's template (version bump,
   snapshot). One transaction. Out: d filled (id, version, counts). */
int store_deployment_create(store *s, store_deployment *d, char *err, size_t errlen);
/* All deployments, newest first, with their counts. */
int store_deployment_list(store *s, store_deployment **list, size_t *n, char *err, size_t errlen);
/* The deployments device_id still has to carry out (active, its wave open,
   its status pending or proceeding), by id. */
int store_device_open_deployments(store *s, const char *device_id, store_deployment **list, size_t *n,
                                  char *err, size_t errlen);
/* One deployment as device_id sees it (its wave open): STORE_NOTFOUND if it
   has none of that id. *payload (profile snapshot, malloc'd) may be NULL. */
int store_deployment_for_device(store *s, long long id, const char *device_id, store_deployment *d,
                                char **payload, char *err, size_t errlen);
/* Feedback of device_id (result: proceeding | success | failure). success and
   failure close it for the device; then, in the same transaction, the
   rollout rules: halted when failures exceed the maximum share times the
   devices of the current wave (first wave: n_first_wave, second: n_devices);
   the second wave opens when every first-wave device
   succeeded; done when every device reported. success of a cert deployment
   only if a certificate was issued to the device since the deployment was
   made (else STORE_REFUSED, nothing changed). */
int store_deployment_feedback(store *s, long long id, const char *device_id, const char *result,
                              const char *details, long long now, char *err, size_t errlen);

/* ---- certificates (day 1..N: renewal and revocation; schema migration 3) ----
   Every certificate issued is recorded (serial as lowercase hex, its device, not_after); the
   device row keeps the newest one. A certificate is revoked with a time and a CRLReason code. */

/* Is serial_hex a certificate of device_id, neither it nor the device revoked, not expired at now?
   0 yes; STORE_REFUSED (or STORE_NOTFOUND) with the reason. */
int store_cert_ok(store *s, const char *device_id, const char *serial_hex, long long now, char *err, size_t errlen);
/* Why store_cert_ok refused, for the answer's failInfo: is serial_hex a certificate of device_id
   that is revoked, or whose device is? 1 yes; 0 no (unknown device or certificate, another
   device's, not enrolled, expired); -1 the database failed (err). */
int store_cert_revoked(store *s, const char *device_id, const char *serial_hex, char *err, size_t errlen);
/* KUR: a new certificate replaces old_serial_hex as the device's current one (the old one stays
   valid until it expires). Refused unless old is a good certificate of the enrolled device. */
int store_renewed(store *s, const char *device_id, const char *old_serial_hex, const char *serial_hex,
                  long long not_after, long long now, char *err, size_t errlen);
/* RR: the device revokes one of its certificates. When none of its certificates is left valid,
   the device becomes revoked too. STORE_REFUSED if it is not its certificate or already revoked. */
int store_cert_revoke(store *s, const char *device_id, const char *serial_hex, int crl_reason, long long now,
                      char *err, size_t errlen);
typedef struct {
    char serial[80];               /* lowercase hex */
    char device[STORE_ID_MAX];
    long long not_after, revoked_at;
    int reason;
} store_revoked;
/* The revoked certificates not yet expired at now (what the CRL lists), *list malloc'd. */
int store_revoked_list(store *s, long long now, store_revoked **list, size_t *n, char *err, size_t errlen);

/* ---- groups and profile templates ---- */
/* Creates or replaces the template (JSON text); the published profile is
   unchanged until store_group_publish. */
int store_group_put(store *s, const char *group, const char *template_json, char *err, size_t errlen);
/* Copies the template to the published profile and bumps the version (in SQL:
   several instances may publish at once). */
int store_group_publish(store *s, const char *group, long long *version, char *err, size_t errlen);
/* The published template (malloc'd) and its version; STORE_NOTFOUND if the
   group is unknown or nothing was published. */
int store_group_published(store *s, const char *group, char **template_json, long long *version,
                          char *err, size_t errlen);
/* The profile the day-0 route gives device_id of group: the newest profile
   deployment of the group that is not halted and that the device may see
   (its wave is open and it did not report failure; a device outside the
   deployment once the second wave is open); without any profile deployment
   the group's published profile (a database from before schema 2). */
int store_device_profile(store *s, const char *group, const char *device_id, char **template_json,
                         long long *version, char *err, size_t errlen);
typedef struct {
    char name[STORE_ID_MAX];
    long long version;             /* published version, 0 none */
} store_group;
int store_group_list(store *s, store_group **list, size_t *n, char *err, size_t errlen);

#endif
