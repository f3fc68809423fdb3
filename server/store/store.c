/* SPDX-License-Identifier: Apache-2.0 */
/* The store's logic, once for both engines (db.h): migrations, token
 * binding, approval states, groups. Parameterised SQL only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db.h"
#include "store.h"

struct store {
    db *d;
};

/* ---- versioned migrations: append, never edit an applied one ---- */
static const char *const migration_1[] = {
    "CREATE TABLE groups (name TEXT PRIMARY KEY, template TEXT NOT NULL, published TEXT,"
    " version BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE tokens (id TEXT PRIMARY KEY, grp TEXT NOT NULL REFERENCES groups(name),"
    " expires BIGINT NOT NULL, auto_approve INTEGER NOT NULL, state TEXT NOT NULL,"
    " device TEXT, created BIGINT NOT NULL)",
    "CREATE TABLE devices (id TEXT PRIMARY KEY, grp TEXT NOT NULL REFERENCES groups(name),"
    " state TEXT NOT NULL, token TEXT NOT NULL REFERENCES tokens(id), serial TEXT,"
    " not_after BIGINT NOT NULL DEFAULT 0, last_contact BIGINT NOT NULL DEFAULT 0,"
    " profile_version BIGINT NOT NULL DEFAULT 0, created BIGINT NOT NULL)",
    "CREATE INDEX devices_grp ON devices (grp)",
    NULL,
};
/* day 1..N: the state devices report, artifacts, deployments and their
   per-device status. Ids from the counters table (same SQL on both engines,
   the row lock serialises instances). */
static const char *const migration_2[] = {
    "ALTER TABLE devices ADD COLUMN tunnel TEXT",
    "ALTER TABLE devices ADD COLUMN software_version TEXT",
    "ALTER TABLE devices ADD COLUMN cert_not_after BIGINT NOT NULL DEFAULT 0",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "INSERT INTO counters (name, value) VALUES ('deployment', 0)",
    "CREATE TABLE artifacts (sha256 TEXT PRIMARY KEY, size BIGINT NOT NULL, path TEXT NOT NULL,"
    " created BIGINT NOT NULL)",
    "CREATE TABLE deployments (id BIGINT PRIMARY KEY, grp TEXT NOT NULL REFERENCES groups(name),"
    " type TEXT NOT NULL, version BIGINT NOT NULL, payload TEXT, software_version TEXT,"
    " artifact TEXT REFERENCES artifacts(sha256), percent INTEGER NOT NULL,"
    " max_fail_permille INTEGER NOT NULL, window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,"
    " state TEXT NOT NULL, wave INTEGER NOT NULL, created BIGINT NOT NULL)",
    "CREATE TABLE deployment_devices (deployment BIGINT NOT NULL REFERENCES deployments(id),"
    " device TEXT NOT NULL REFERENCES devices(id), wave INTEGER NOT NULL, status TEXT NOT NULL,"
    " details TEXT, created BIGINT NOT NULL, updated BIGINT NOT NULL, PRIMARY KEY (deployment, device))",
    "CREATE INDEX deployment_devices_device ON deployment_devices (device, status)",
    NULL,
};
/* Issue 15 (certificate renewal and revocation): every certificate issued, revoked or not. */
static const char *const migration_3[] = {
    "CREATE TABLE certificates (serial TEXT PRIMARY KEY, device TEXT NOT NULL REFERENCES devices(id),"
    " not_after BIGINT NOT NULL, issued BIGINT NOT NULL, revoked_at BIGINT, reason INTEGER)",
    "CREATE INDEX certificates_device ON certificates (device)",
    "INSERT INTO certificates (serial, device, not_after, issued, revoked_at, reason)"
    " SELECT serial, id, not_after, created, CASE WHEN state = 'revoked' THEN last_contact END,"
    " CASE WHEN state = 'revoked' THEN 1 END FROM devices WHERE serial IS NOT NULL AND serial <> ''",
    NULL,
};
static const char *const *const migrations[] = {migration_1, migration_2, migration_3};
#define N_MIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))
_Static_assert(N_MIGRATIONS == STORE_SCHEMA_VERSION, "STORE_SCHEMA_VERSION = the number of migrations");

void db_res_free(db_res *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->nrows * r->ncols; i++)
        free(r->cells[i]);
    free(r->cells);
    memset(r, 0, sizeof(*r));
}

const char *db_cell(const db_res *r, int row, int col)
{
    return r->cells[row * r->ncols + col];
}

static int q(store *s, const char *sql, int n, const char *const *p, db_res *res, char *err, size_t errlen)
{
    return s->d->ops->exec(s->d, sql, n, p, res, err, errlen);
}

static int begin(store *s, char *err, size_t errlen)
{
    return s->d->ops->begin(s->d, err, errlen);
}

static int commit(store *s, char *err, size_t errlen)
{
    return q(s, "COMMIT", 0, NULL, NULL, err, errlen);
}

static void rollback(store *s)
{
    char e[8];
    q(s, "ROLLBACK", 0, NULL, NULL, e, sizeof(e));
}

/* Ends a transaction: commit if rc is 0, else roll back; returns rc (or -1). */
static int finish(store *s, int rc, char *err, size_t errlen)
{
    if (rc == 0)
        return commit(s, err, errlen) < 0 ? -1 : 0;
    rollback(s);
    return rc;
}

static void lltoa(long long v, char buf[24])
{
    snprintf(buf, 24, "%lld", v);
}

static long long atoll0(const char *s)
{
    return s ? strtoll(s, NULL, 10) : 0;
}

static void copy(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

static int migrate(store *s, char *err, size_t errlen)
{
    if (s->d->ops->migrate_lock(s->d, 1, err, errlen) < 0)
        return -1;
    int rc = q(s, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                  " applied BIGINT NOT NULL)", 0, NULL, NULL, err, errlen);
    int have = 0;
    if (rc == 0)
        rc = store_schema_version(s, &have, err, errlen);
    if (rc == 0 && have > N_MIGRATIONS) {
        snprintf(err, errlen, "database schema version %d is newer than this server's (%d): upgrade the server",
                 have, N_MIGRATIONS);
        rc = -1;
    }
    for (int v = have + 1; rc == 0 && v <= N_MIGRATIONS; v++) {
        char vs[24], now[24];
        lltoa(v, vs);
        lltoa((long long)time(NULL), now);
        const char *p[] = {vs, now};
        db_res r;
        if ((rc = begin(s, err, errlen)) < 0)
            break;
        rc = q(s, "SELECT version FROM schema_version WHERE version = ?1", 1, p, &r, err, errlen);
        int done = rc == 0 && r.nrows > 0;
        db_res_free(&r);
        for (int i = 0; rc == 0 && !done && migrations[v - 1][i]; i++)
            rc = q(s, migrations[v - 1][i], 0, NULL, NULL, err, errlen);
        if (rc == 0 && !done)
            rc = q(s, "INSERT INTO schema_version (version, applied) VALUES (?1, ?2)", 2, p, NULL, err, errlen);
        if (rc < 0 && strlen(err) + 32 < errlen) {
            char m[256];
            snprintf(m, sizeof(m), "%s", err);
            snprintf(err, errlen, "schema migration %d: %s", v, m);
        }
        rc = finish(s, rc, err, errlen);
    }
    char e2[64];
    s->d->ops->migrate_lock(s->d, 0, e2, sizeof(e2));
    return rc;
}

int store_open(store **out, const char *database, char *err, size_t errlen)
{
    store *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc;
    if (!strncmp(database, "sqlite:", 7)) {
        if (!database[7]) {
            snprintf(err, errlen, "database \"sqlite:\" names no file");
            free(s);
            return -1;
        }
        rc = db_sqlite_open(&s->d, database + 7, err, errlen);
    } else if (!strncmp(database, "postgresql://", 13) || !strncmp(database, "postgres://", 11) ||
               strchr(database, '=')) {
        rc = db_pg_open(&s->d, database, err, errlen);
    } else {
        snprintf(err, errlen, "database: expected \"sqlite:PATH\" or a PostgreSQL conninfo (postgresql://...)");
        free(s);
        return -1;
    }
    if (rc < 0) {
        free(s);
        return -1;
    }
    if (migrate(s, err, errlen) < 0) {
        store_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

void store_close(store *s)
{
    if (!s)
        return;
    if (s->d)
        s->d->ops->close(s->d);
    free(s);
}

const char *store_engine(const store *s)
{
    return s->d->ops->name;
}

int store_schema_version(store *s, int *version, char *err, size_t errlen)
{
    db_res r;
    if (q(s, "SELECT MAX(version) FROM schema_version", 0, NULL, &r, err, errlen) < 0)
        return -1;
    *version = r.nrows ? (int)atoll0(db_cell(&r, 0, 0)) : 0;
    db_res_free(&r);
    return 0;
}

int store_valid_name(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n >= STORE_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* ---- name tables ---- */
static const char *const token_states[] = {"unused", "bound", "used", "revoked"};
static const char *const device_states[] = {"pending", "approved", "enrolled", "rejected", "revoked"};

const char *store_token_state_name(store_token_state st)
{
    return (unsigned)st < 4 ? token_states[st] : "?";
}

const char *store_device_state_name(store_device_state st)
{
    return (unsigned)st < 5 ? device_states[st] : "?";
}

static int parse_state(const char *const *names, int n, const char *s)
{
    for (int i = 0; s && i < n; i++)
        if (!strcmp(names[i], s))
            return i;
    return -1;
}

/* ---- tokens ---- */
int store_token_create(store *s, const char *const *ids, size_t n, const char *group, long long expires,
                       int auto_approve, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++)
        if (!store_valid_name(ids[i]) || !store_valid_name(group)) {
            snprintf(err, errlen, "token id and group: 1 to 63 characters of A-Z a-z 0-9 . _ -");
            return STORE_REFUSED;
        }
    char exp[24], now[24];
    lltoa(expires, exp);
    lltoa((long long)time(NULL), now);
    db_res r;
    if (begin(s, err, errlen) < 0)
        return -1;
    int rc = q(s, "SELECT name FROM groups WHERE name = ?1", 1, &group, &r, err, errlen);
    if (rc == 0 && r.nrows == 0) {
        snprintf(err, errlen, "no group %s: create it first", group);
        rc = STORE_NOTFOUND;
    }
    if (rc == 0)
        db_res_free(&r);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const char *p[] = {ids[i], group, exp, auto_approve ? "1" : "0", now};
        rc = q(s, "INSERT INTO tokens (id, grp, expires, auto_approve, state, device, created)"
                  " VALUES (?1, ?2, ?3, ?4, 'unused', NULL, ?5)", 5, p, NULL, err, errlen);
    }
    return finish(s, rc, err, errlen);
}

static int token_row(store *s, const char *id, store_token *t, char *err, size_t errlen)
{
    const char *p[] = {id};
    db_res r;
    if (q(s, "SELECT id, grp, expires, auto_approve, state, device FROM tokens WHERE id = ?1",
          1, p, &r, err, errlen) < 0)
        return -1;
    if (r.nrows == 0) {
        db_res_free(&r);
        snprintf(err, errlen, "unknown enrolment token");
        return STORE_NOTFOUND;
    }
    memset(t, 0, sizeof(*t));
    copy(t->id, sizeof(t->id), db_cell(&r, 0, 0));
    copy(t->group, sizeof(t->group), db_cell(&r, 0, 1));
    t->expires = atoll0(db_cell(&r, 0, 2));
    t->auto_approve = atoll0(db_cell(&r, 0, 3)) != 0;
    int st = parse_state(token_states, 4, db_cell(&r, 0, 4));
    t->state = st < 0 ? STORE_TOKEN_REVOKED : (store_token_state)st;
    copy(t->device, sizeof(t->device), db_cell(&r, 0, 5));
    db_res_free(&r);
    return 0;
}

int store_token_get(store *s, const char *id, store_token *t, char *err, size_t errlen)
{
    return token_row(s, id, t, err, errlen);
}

int store_token_usable(store *s, const char *id, long long now, char *err, size_t errlen)
{
    store_token t;
    int rc = token_row(s, id, &t, err, errlen);
    if (rc)
        return rc;
    if (t.state == STORE_TOKEN_REVOKED) {
        snprintf(err, errlen, "enrolment token revoked");
        return STORE_REFUSED;
    }
    if (t.state == STORE_TOKEN_UNUSED && now >= t.expires) {
        snprintf(err, errlen, "enrolment token expired");
        return STORE_REFUSED;
    }
    return 0;
}

/* ---- devices ---- */
static const char dev_cols[] = "id, grp, state, token, serial, not_after, last_contact, profile_version,"
                               " tunnel, software_version, cert_not_after";

static void device_from(const db_res *r, int i, store_device *d)
{
    memset(d, 0, sizeof(*d));
    copy(d->id, sizeof(d->id), db_cell(r, i, 0));
    copy(d->cn, sizeof(d->cn), db_cell(r, i, 0));
    copy(d->group, sizeof(d->group), db_cell(r, i, 1));
    int st = parse_state(device_states, 5, db_cell(r, i, 2));
    d->state = st < 0 ? STORE_DEV_REVOKED : (store_device_state)st;
    copy(d->token, sizeof(d->token), db_cell(r, i, 3));
    copy(d->serial, sizeof(d->serial), db_cell(r, i, 4));
    d->not_after = atoll0(db_cell(r, i, 5));
    d->last_contact = atoll0(db_cell(r, i, 6));
    d->profile_version = atoll0(db_cell(r, i, 7));
    copy(d->tunnel, sizeof(d->tunnel), db_cell(r, i, 8));
    copy(d->software_version, sizeof(d->software_version), db_cell(r, i, 9));
    d->cert_not_after = atoll0(db_cell(r, i, 10));
}

int store_device_get(store *s, const char *device_id, store_device *d, char *err, size_t errlen)
{
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT %s FROM devices WHERE id = ?1", dev_cols);
    const char *p[] = {device_id};
    db_res r;
    if (q(s, sql, 1, p, &r, err, errlen) < 0)
        return -1;
    int rc = 0;
    if (r.nrows == 0) {
        snprintf(err, errlen, "no device %s", device_id);
        rc = STORE_NOTFOUND;
    } else {
        device_from(&r, 0, d);
    }
    db_res_free(&r);
    return rc;
}

int store_device_list(store *s, store_device **list, size_t *n, char *err, size_t errlen)
{
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT %s FROM devices ORDER BY id", dev_cols);
    db_res r;
    if (q(s, sql, 0, NULL, &r, err, errlen) < 0)
        return -1;
    *list = calloc(r.nrows ? (size_t)r.nrows : 1, sizeof(store_device));
    if (!*list) {
        db_res_free(&r);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < r.nrows; i++)
        device_from(&r, i, &(*list)[i]);
    *n = (size_t)r.nrows;
    db_res_free(&r);
    return 0;
}

int store_enrol(store *s, const char *token_id, const char *device_id, long long now,
                store_device_state *state, char *err, size_t errlen)
{
    if (!store_valid_name(device_id)) {
        snprintf(err, errlen, "invalid device id");
        return STORE_REFUSED;
    }
    const char *tp[] = {token_id};
    if (begin(s, err, errlen) < 0)
        return -1;
    /* Take the token row's write lock first (PostgreSQL: row lock; SQLite:
       BEGIN IMMEDIATE already holds the database): two IRs with one token
       cannot both bind it. */
    int rc = q(s, "UPDATE tokens SET state = state WHERE id = ?1", 1, tp, NULL, err, errlen);
    store_token t;
    if (rc == 0)
        rc = token_row(s, token_id, &t, err, errlen);
    store_device d;
    if (rc == 0 && t.state == STORE_TOKEN_REVOKED) {
        snprintf(err, errlen, "enrolment token revoked");
        rc = STORE_REFUSED;
    } else if (rc == 0 && t.state != STORE_TOKEN_UNUSED) {
        if (strcmp(t.device, device_id)) {
            snprintf(err, errlen, "enrolment token already used");
            rc = STORE_REFUSED;
        } else if ((rc = store_device_get(s, device_id, &d, err, errlen)) == 0) {
            *state = d.state;
            /* asking again for a certificate (an answer lost): not once one of the device's
               certificates is revoked, or the revoked key would get a new, unlisted one */
            db_res r;
            if (d.state == STORE_DEV_ENROLLED &&
                (rc = q(s, "SELECT COUNT(*) FROM certificates WHERE device = ?1 AND revoked_at IS NOT NULL", 1,
                        &device_id, &r, err, errlen)) == 0) {
                if (atoll0(db_cell(&r, 0, 0)) > 0) {
                    snprintf(err, errlen, "enrolment token already used (a certificate of device %s is revoked)",
                             device_id);
                    rc = STORE_REFUSED;
                }
                db_res_free(&r);
            }
        }
    } else if (rc == 0 && now >= t.expires) {
        snprintf(err, errlen, "enrolment token expired");
        rc = STORE_REFUSED;
    } else if (rc == 0) {
        rc = store_device_get(s, device_id, &d, err, errlen);
        if (rc == 0) {
            snprintf(err, errlen, "this key is already enrolled with another token (device %s)", device_id);
            rc = STORE_REFUSED;
        } else if (rc == STORE_NOTFOUND) {
            char ns[24];
            lltoa(now, ns);
            *state = t.auto_approve ? STORE_DEV_APPROVED : STORE_DEV_PENDING;
            const char *p[] = {device_id, t.group, store_device_state_name(*state), token_id, ns};
            rc = q(s, "INSERT INTO devices (id, grp, state, token, created, last_contact)"
                      " VALUES (?1, ?2, ?3, ?4, ?5, ?5)", 5, p, NULL, err, errlen);
            if (rc == 0)
                rc = q(s, "UPDATE tokens SET state = 'bound', device = ?2 WHERE id = ?1", 2,
                       (const char *const[]){token_id, device_id}, NULL, err, errlen);
        }
    }
    return finish(s, rc, err, errlen);
}

/* Takes the device row's write lock at the start of a transaction (PostgreSQL: row lock, held
   to the end; SQLite: BEGIN IMMEDIATE already holds the database), so that the checks that
   follow read the state a concurrent revocation, approval or renewal committed, not an older one. */
static int lock_device(store *s, const char *device_id, char *err, size_t errlen)
{
    return q(s, "UPDATE devices SET state = state WHERE id = ?1", 1, &device_id, NULL, err, errlen);
}

int store_issued(store *s, const char *token_id, const char *device_id, const char *serial_hex,
                 long long not_after, long long now, char *err, size_t errlen)
{
    char na[24], ns[24];
    lltoa(not_after, na);
    lltoa(now, ns);
    const char *p[] = {device_id, serial_hex, na, ns};
    if (begin(s, err, errlen) < 0)
        return -1;
    store_device d;
    int rc = lock_device(s, device_id, err, errlen);
    if (rc == 0)
        rc = store_device_get(s, device_id, &d, err, errlen);
    if (rc == 0 && (strcmp(d.token, token_id) ||
                    (d.state != STORE_DEV_APPROVED && d.state != STORE_DEV_ENROLLED))) {
        snprintf(err, errlen, "device %s is %s: no certificate may be recorded", device_id,
                 store_device_state_name(d.state));
        rc = STORE_REFUSED;
    }
    if (rc == 0)
        rc = q(s, "UPDATE devices SET state = 'enrolled', serial = ?2, not_after = ?3, last_contact = ?4"
                  " WHERE id = ?1", 4, p, NULL, err, errlen);
    if (rc == 0)
        rc = q(s, "INSERT INTO certificates (serial, device, not_after, issued) VALUES (?2, ?1, ?3, ?4)",
               4, p, NULL, err, errlen);
    if (rc == 0)
        rc = q(s, "UPDATE tokens SET state = 'used' WHERE id = ?1 AND device = ?2", 2,
               (const char *const[]){token_id, device_id}, NULL, err, errlen);
    return finish(s, rc, err, errlen);
}

int store_device_act(store *s, const char *device_id, store_action act, char *err, size_t errlen)
{
    static const char *const verbs[] = {"approved", "rejected", "revoked"};
    const char *p[] = {device_id, NULL};
    if (begin(s, err, errlen) < 0)
        return -1;
    store_device d;
    int rc = lock_device(s, device_id, err, errlen);
    if (rc == 0)
        rc = store_device_get(s, device_id, &d, err, errlen);
    store_device_state to = STORE_DEV_REVOKED;
    if (rc == 0) {
        int ok;
        switch (act) {
        case STORE_ACT_APPROVE:
            ok = d.state == STORE_DEV_PENDING;
            to = STORE_DEV_APPROVED;
            break;
        case STORE_ACT_REJECT:
            ok = d.state == STORE_DEV_PENDING || d.state == STORE_DEV_APPROVED;
            to = STORE_DEV_REJECTED;
            break;
        default:
            ok = d.state != STORE_DEV_REVOKED;
            to = STORE_DEV_REVOKED;
            break;
        }
        if (!ok) {
            snprintf(err, errlen, "device %s is %s: it cannot be %s", device_id,
                     store_device_state_name(d.state), verbs[act]);
            rc = STORE_REFUSED;
        }
    }
    p[1] = store_device_state_name(to);
    if (rc == 0)
        rc = q(s, "UPDATE devices SET state = ?2 WHERE id = ?1", 2, p, NULL, err, errlen);
    if (rc == 0 && to == STORE_DEV_REVOKED)
        rc = q(s, "UPDATE tokens SET state = 'revoked' WHERE device = ?1", 1, p, NULL, err, errlen);
    if (rc == 0 && to == STORE_DEV_REVOKED) {
        char ns[24];
        lltoa((long long)time(NULL), ns);
        rc = q(s, "UPDATE certificates SET revoked_at = ?2, reason = 1"
                  " WHERE device = ?1 AND revoked_at IS NULL AND not_after > ?2", 2,
               (const char *const[]){device_id, ns}, NULL, err, errlen);
    }
    return finish(s, rc, err, errlen);
}

int store_device_contact(store *s, const char *device_id, long long now, long long profile_version,
                         char *err, size_t errlen)
{
    char ns[24], pv[24];
    lltoa(now, ns);
    lltoa(profile_version, pv);
    const char *p[] = {device_id, ns, pv};
    if (profile_version > 0)
        return q(s, "UPDATE devices SET last_contact = ?2, profile_version = ?3 WHERE id = ?1",
                 3, p, NULL, err, errlen);
    return q(s, "UPDATE devices SET last_contact = ?2 WHERE id = ?1", 2, p, NULL, err, errlen);
}

/* ---- certificates ---- */

/* Within a transaction or not: the checks of store_cert_ok. */
static int cert_check(store *s, const char *device_id, const char *serial_hex, long long now, char *err,
                      size_t errlen)
{
    store_device d;
    int rc = store_device_get(s, device_id, &d, err, errlen);
    if (rc)
        return rc;
    if (d.state != STORE_DEV_ENROLLED) {
        snprintf(err, errlen, "device %s is %s", device_id, store_device_state_name(d.state));
        return STORE_REFUSED;
    }
    const char *p[] = {serial_hex, device_id};
    db_res r;
    if (q(s, "SELECT not_after, revoked_at FROM certificates WHERE serial = ?1 AND device = ?2", 2, p, &r, err,
          errlen) < 0)
        return -1;
    if (r.nrows == 0) {
        snprintf(err, errlen, "certificate %s is not one of device %s", serial_hex, device_id);
        rc = STORE_REFUSED;
    } else if (db_cell(&r, 0, 1)) {
        snprintf(err, errlen, "certificate %s of device %s is revoked", serial_hex, device_id);
        rc = STORE_REFUSED;
    } else if (atoll0(db_cell(&r, 0, 0)) <= now) {
        snprintf(err, errlen, "certificate %s of device %s has expired", serial_hex, device_id);
        rc = STORE_REFUSED;
    }
    db_res_free(&r);
    return rc;
}

int store_cert_ok(store *s, const char *device_id, const char *serial_hex, long long now, char *err, size_t errlen)
{
    return cert_check(s, device_id, serial_hex, now, err, errlen);
}

int store_cert_revoked(store *s, const char *device_id, const char *serial_hex, char *err, size_t errlen)
{
    store_device d;
    int rc = store_device_get(s, device_id, &d, err, errlen);
    if (rc < 0)
        return -1;
    const char *p[] = {serial_hex, device_id};
    db_res r;
    if (q(s, "SELECT revoked_at FROM certificates WHERE serial = ?1 AND device = ?2", 2, p, &r, err, errlen) < 0)
        return -1;
    int revoked = r.nrows > 0 && (db_cell(&r, 0, 0) || (rc == 0 && d.state == STORE_DEV_REVOKED));
    db_res_free(&r);
    return revoked;
}

/* Opens a transaction holding the device's lock, then runs the checks of store_cert_ok on the
   certificate serial_hex. Returns 0 with the transaction open, or the error with it already ended. */
static int begin_cert_checked(store *s, const char *device_id, const char *serial_hex, long long now, char *err,
                              size_t errlen)
{
    if (begin(s, err, errlen) < 0)
        return -1;
    int rc = lock_device(s, device_id, err, errlen);
    if (rc == 0)
        rc = cert_check(s, device_id, serial_hex, now, err, errlen);
    return rc ? finish(s, rc, err, errlen) : 0;
}

int store_renewed(store *s, const char *device_id, const char *old_serial_hex, const char *serial_hex,
                  long long not_after, long long now, char *err, size_t errlen)
{
    char na[24], ns[24];
    lltoa(not_after, na);
    lltoa(now, ns);
    const char *p[] = {device_id, serial_hex, na, ns};
    int rc = begin_cert_checked(s, device_id, old_serial_hex, now, err, errlen);
    if (rc)
        return rc;
    rc = q(s, "INSERT INTO certificates (serial, device, not_after, issued) VALUES (?2, ?1, ?3, ?4)", 4, p,
           NULL, err, errlen);
    if (rc == 0)
        rc = q(s, "UPDATE devices SET serial = ?2, not_after = ?3, last_contact = ?4 WHERE id = ?1", 4, p, NULL,
               err, errlen);
    return finish(s, rc, err, errlen);
}

int store_cert_revoke(store *s, const char *device_id, const char *serial_hex, int crl_reason, long long now,
                      char *err, size_t errlen)
{
    char ns[24], rs[24];
    lltoa(now, ns);
    lltoa(crl_reason, rs);
    const char *p[] = {serial_hex, device_id, ns, rs};
    int rc = begin_cert_checked(s, device_id, serial_hex, now, err, errlen);
    if (rc)
        return rc;
    rc = q(s, "UPDATE certificates SET revoked_at = ?3, reason = ?4 WHERE serial = ?1 AND device = ?2", 4, p, NULL,
           err, errlen);
    db_res r;
    /* (PostgreSQL wants every parameter used: each statement gets its own list) */
    const char *dn[] = {device_id, ns};
    if (rc == 0)
        rc = q(s, "SELECT COUNT(*) FROM certificates WHERE device = ?1 AND revoked_at IS NULL AND not_after > ?2",
               2, dn, &r, err, errlen);
    if (rc == 0) {
        long long left = atoll0(db_cell(&r, 0, 0));
        db_res_free(&r);
        if (left == 0) {
            rc = q(s, "UPDATE devices SET state = 'revoked' WHERE id = ?1", 1, dn, NULL, err, errlen);
            if (rc == 0)
                rc = q(s, "UPDATE tokens SET state = 'revoked' WHERE device = ?1", 1, dn, NULL, err, errlen);
        }
    }
    return finish(s, rc, err, errlen);
}

int store_revoked_list(store *s, long long now, store_revoked **list, size_t *n, char *err, size_t errlen)
{
    char ns[24];
    lltoa(now, ns);
    const char *p[] = {ns};
    db_res r;
    if (q(s, "SELECT serial, device, not_after, revoked_at, reason FROM certificates"
             " WHERE revoked_at IS NOT NULL AND not_after > ?1 ORDER BY serial", 1, p, &r, err, errlen) < 0)
        return -1;
    *list = calloc(r.nrows ? (size_t)r.nrows : 1, sizeof(store_revoked));
    if (!*list) {
        db_res_free(&r);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < r.nrows; i++) {
        store_revoked *e = &(*list)[i];
        copy(e->serial, sizeof(e->serial), db_cell(&r, i, 0));
        copy(e->device, sizeof(e->device), db_cell(&r, i, 1));
        e->not_after = atoll0(db_cell(&r, i, 2));
        e->revoked_at = atoll0(db_cell(&r, i, 3));
        e->reason = (int)atoll0(db_cell(&r, i, 4));
    }
    *n = (size_t)r.nrows;
    db_res_free(&r);
    return 0;
}

/* ---- groups ---- */
int store_group_put(store *s, const char *group, const char *template_json, char *err, size_t errlen)
{
    if (!store_valid_name(group)) {
        snprintf(err, errlen, "group name: 1 to 63 characters of A-Z a-z 0-9 . _ -");
        return STORE_REFUSED;
    }
    const char *p[] = {group, template_json};
    if (begin(s, err, errlen) < 0)
        return -1;
    int rc = q(s, "INSERT INTO groups (name, template, published, version) VALUES (?1, ?2, NULL, 0)"
                  " ON CONFLICT (name) DO UPDATE SET template = excluded.template", 2, p, NULL, err, errlen);
    return finish(s, rc, err, errlen);
}

int store_group_publish(store *s, const char *group, long long *version, char *err, size_t errlen)
{
    const char *p[] = {group};
    db_res r;
    if (begin(s, err, errlen) < 0)
        return -1;
    int rc = q(s, "UPDATE groups SET published = template, version = version + 1 WHERE name = ?1",
               1, p, NULL, err, errlen);
    if (rc == 0)
        rc = q(s, "SELECT version FROM groups WHERE name = ?1", 1, p, &r, err, errlen);
    if (rc == 0) {
        if (r.nrows == 0) {
            snprintf(err, errlen, "no group %s", group);
            rc = STORE_NOTFOUND;
        } else {
            *version = atoll0(db_cell(&r, 0, 0));
        }
        db_res_free(&r);
    }
    return finish(s, rc, err, errlen);
}

int store_group_published(store *s, const char *group, char **template_json, long long *version,
                          char *err, size_t errlen)
{
    const char *p[] = {group};
    db_res r;
    if (q(s, "SELECT published, version FROM groups WHERE name = ?1", 1, p, &r, err, errlen) < 0)
        return -1;
    int rc = 0;
    if (r.nrows == 0 || !db_cell(&r, 0, 0)) {
        snprintf(err, errlen, "no profile published for group %s", group);
        rc = STORE_NOTFOUND;
    } else {
        *template_json = strdup(db_cell(&r, 0, 0));
        *version = atoll0(db_cell(&r, 0, 1));
        if (!*template_json) {
            snprintf(err, errlen, "out of memory");
            rc = -1;
        }
    }
    db_res_free(&r);
    return rc;
}

int store_group_list(store *s, store_group **list, size_t *n, char *err, size_t errlen)
{
    db_res r;
    if (q(s, "SELECT name, version FROM groups ORDER BY name", 0, NULL, &r, err, errlen) < 0)
        return -1;
    *list = calloc(r.nrows ? (size_t)r.nrows : 1, sizeof(store_group));
    if (!*list) {
        db_res_free(&r);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < r.nrows; i++) {
        copy((*list)[i].name, sizeof((*list)[i].name), db_cell(&r, i, 0));
        (*list)[i].version = atoll0(db_cell(&r, i, 1));
    }
    *n = (size_t)r.nrows;
    db_res_free(&r);
    return 0;
}

/* ---- day 1..N: reported state, artifacts, deployments ---- */
int store_device_report(store *s, const char *device_id, long long now, const char *tunnel,
                        long long profile_version, const char *software_version, long long cert_not_after,
                        char *err, size_t errlen)
{
    char ns[24], pv[24], cn[24];
    lltoa(now, ns);
    lltoa(profile_version, pv);
    lltoa(cert_not_after, cn);
    const char *p[] = {device_id, ns, tunnel, profile_version >= 0 ? pv : NULL, software_version,
                       cert_not_after >= 0 ? cn : NULL};
    return q(s, "UPDATE devices SET last_contact = ?2, tunnel = COALESCE(?3, tunnel),"
                " profile_version = COALESCE(CAST(?4 AS BIGINT), profile_version),"
                " software_version = COALESCE(?5, software_version),"
                " cert_not_after = COALESCE(CAST(?6 AS BIGINT), cert_not_after) WHERE id = ?1",
             6, p, NULL, err, errlen);
}

int store_artifact_put(store *s, const char *sha256, long long size, const char *path, char *err, size_t errlen)
{
    char sz[24], ns[24];
    lltoa(size, sz);
    lltoa((long long)time(NULL), ns);
    const char *p[] = {sha256, sz, path, ns};
    if (begin(s, err, errlen) < 0)
        return -1;
    int rc = q(s, "INSERT INTO artifacts (sha256, size, path, created) VALUES (?1, ?2, ?3, ?4)"
                  " ON CONFLICT (sha256) DO NOTHING", 4, p, NULL, err, errlen);
    return finish(s, rc, err, errlen);
}

int store_artifact_get(store *s, const char *sha256, long long *size, char *path, size_t pathcap,
                       char *err, size_t errlen)
{
    db_res r;
    if (q(s, "SELECT size, path FROM artifacts WHERE sha256 = ?1", 1, &sha256, &r, err, errlen) < 0)
        return -1;
    int rc = 0;
    if (r.nrows == 0) {
        snprintf(err, errlen, "no artifact %.64s", sha256);
        rc = STORE_NOTFOUND;
    } else {
        *size = atoll0(db_cell(&r, 0, 0));
        copy(path, pathcap, db_cell(&r, 0, 1));
    }
    db_res_free(&r);
    return rc;
}

int store_artifact_allowed(store *s, const char *sha256, const char *device_id, char *err, size_t errlen)
{
    const char *p[] = {sha256, device_id};
    db_res r;
    if (q(s, "SELECT d.id FROM deployments d JOIN deployment_devices x ON x.deployment = d.id"
             " WHERE d.artifact = ?1 AND x.device = ?2 AND x.wave <= d.wave", 2, p, &r, err, errlen) < 0)
        return -1;
    int rc = r.nrows > 0 ? 0 : STORE_REFUSED;
    if (rc)
        snprintf(err, errlen, "device %s has no deployment of artifact %.64s", device_id, sha256);
    db_res_free(&r);
    return rc;
}

static const char *const dep_types[] = {"profile", "software", "cert"};

const char *store_dep_type_name(store_dep_type t)
{
    return (unsigned)t < 3 ? dep_types[t] : "?";
}

int store_dep_type_parse(const char *name, store_dep_type *t)
{
    int i = parse_state(dep_types, 3, name);
    if (i < 0)
        return -1;
    *t = (store_dep_type)i;
    return 0;
}

/* columns of a deployment with its per-device counts */
#define DEP_SELECT                                                                                              \
    "SELECT d.id, d.grp, d.type, d.version, d.software_version, d.artifact, d.percent, d.max_fail_permille,"   \
    " d.window_start, d.window_end, d.state, d.wave, d.created,"                                               \
    " (SELECT COUNT(*) FROM deployment_devices x WHERE x.deployment = d.id),"                                 \
    " (SELECT COUNT(*) FROM deployment_devices x WHERE x.deployment = d.id AND x.wave = 1),"                  \
    " (SELECT COUNT(*) FROM deployment_devices x WHERE x.deployment = d.id AND x.status = 'pending'),"        \
    " (SELECT COUNT(*) FROM deployment_devices x WHERE x.deployment = d.id AND x.status = 'proceeding'),"     \
    " (SELECT COUNT(*) FROM deployment_devices x WHERE x.deployment = d.id AND x.status = 'success'),"        \
    " (SELECT COUNT(*) FROM deployment_devices x WHERE x.deployment = d.id AND x.status = 'failure'),"        \
    " (SELECT a.size FROM artifacts a WHERE a.sha256 = d.artifact)"

static void dep_from(const db_res *r, int i, store_deployment *d)
{
    memset(d, 0, sizeof(*d));
    d->id = atoll0(db_cell(r, i, 0));
    copy(d->group, sizeof(d->group), db_cell(r, i, 1));
    store_dep_type_parse(db_cell(r, i, 2), &d->type);
    d->version = atoll0(db_cell(r, i, 3));
    copy(d->software_version, sizeof(d->software_version), db_cell(r, i, 4));
    copy(d->artifact, sizeof(d->artifact), db_cell(r, i, 5));
    d->percent = (int)atoll0(db_cell(r, i, 6));
    d->max_fail_permille = (int)atoll0(db_cell(r, i, 7));
    d->window_start = (int)atoll0(db_cell(r, i, 8));
    d->window_end = (int)atoll0(db_cell(r, i, 9));
    copy(d->state, sizeof(d->state), db_cell(r, i, 10));
    d->wave = (int)atoll0(db_cell(r, i, 11));
    d->created = atoll0(db_cell(r, i, 12));
    d->n_devices = (int)atoll0(db_cell(r, i, 13));
    d->n_first_wave = (int)atoll0(db_cell(r, i, 14));
    d->n_pending = (int)atoll0(db_cell(r, i, 15));
    d->n_proceeding = (int)atoll0(db_cell(r, i, 16));
    d->n_success = (int)atoll0(db_cell(r, i, 17));
    d->n_failure = (int)atoll0(db_cell(r, i, 18));
    d->size = atoll0(db_cell(r, i, 19));
}

static int dep_rows(store *s, const char *sql, int n, const char *const *p, store_deployment **list, size_t *cnt,
                    char *err, size_t errlen)
{
    db_res r;
    if (q(s, sql, n, p, &r, err, errlen) < 0)
        return -1;
    *list = calloc(r.nrows ? (size_t)r.nrows : 1, sizeof(store_deployment));
    if (!*list) {
        db_res_free(&r);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < r.nrows; i++) {
        dep_from(&r, i, &(*list)[i]);
        if (r.ncols > 20)
            copy((*list)[i].dev_status, sizeof((*list)[i].dev_status), db_cell(&r, i, 20));
    }
    *cnt = (size_t)r.nrows;
    db_res_free(&r);
    return 0;
}

int store_deployment_create(store *s, store_deployment *d, char *err, size_t errlen)
{
    if (d->percent < 1 || d->percent > 100 || d->max_fail_permille < 0 || d->max_fail_permille > 1000) {
        snprintf(err, errlen, "percent: 1 to 100; max failures: 0 to 1");
        return STORE_REFUSED;
    }
    if (d->type == STORE_DEP_SOFTWARE && (!d->software_version[0] || strlen(d->artifact) != 64)) {
        snprintf(err, errlen, "a software deployment needs a version and an uploaded artifact");
        return STORE_REFUSED;
    }
    const char *g[] = {d->group};
    db_res r;
    if (begin(s, err, errlen) < 0)
        return -1;
    int rc = q(s, "SELECT name FROM groups WHERE name = ?1", 1, g, &r, err, errlen);
    if (rc == 0) {
        if (r.nrows == 0) {
            snprintf(err, errlen, "no group %s", d->group);
            rc = STORE_NOTFOUND;
        }
        db_res_free(&r);
    }
    if (rc == 0 && d->type == STORE_DEP_SOFTWARE) {
        const char *a[] = {d->artifact};
        rc = q(s, "SELECT sha256 FROM artifacts WHERE sha256 = ?1", 1, a, &r, err, errlen);
        if (rc == 0) {
            if (r.nrows == 0) {
                snprintf(err, errlen, "no artifact %s: upload it first", d->artifact);
                rc = STORE_NOTFOUND;
            }
            db_res_free(&r);
        }
    }
    long long id = 0, version = 0;
    char *payload = NULL;
    if (rc == 0)
        rc = q(s, "UPDATE counters SET value = value + 1 WHERE name = 'deployment'", 0, NULL, NULL, err, errlen);
    if (rc == 0 && (rc = q(s, "SELECT value FROM counters WHERE name = 'deployment'", 0, NULL, &r, err,
                           errlen)) == 0) {
        id = r.nrows ? atoll0(db_cell(&r, 0, 0)) : 0;
        db_res_free(&r);
    }
    if (rc == 0 && d->type == STORE_DEP_PROFILE) {
        rc = q(s, "UPDATE groups SET published = template, version = version + 1 WHERE name = ?1", 1, g, NULL,
               err, errlen);
        if (rc == 0 && (rc = q(s, "SELECT version, published FROM groups WHERE name = ?1", 1, g, &r, err,
                               errlen)) == 0) {
            version = atoll0(db_cell(&r, 0, 0));
            payload = strdup(db_cell(&r, 0, 1) ? db_cell(&r, 0, 1) : "");
            db_res_free(&r);
            if (!payload) {
                snprintf(err, errlen, "out of memory");
                rc = -1;
            }
        }
    } else {
        version = id;
    }
    /* the group's enrolled devices, by id: the first ceil(n * percent / 100) are the first wave */
    if (rc == 0)
        rc = q(s, "SELECT id FROM devices WHERE grp = ?1 AND state = 'enrolled' ORDER BY id", 1, g, &r, err,
               errlen);
    if (rc == 0) {
        int n = r.nrows, first = (n * d->percent + 99) / 100;
        char ids[24], vs[24], pc[24], mf[24], ws[24], we[24], ns[24];
        lltoa(id, ids);
        lltoa(version, vs);
        lltoa(d->percent, pc);
        lltoa(d->max_fail_permille, mf);
        lltoa(d->window_start, ws);
        lltoa(d->window_end, we);
        lltoa((long long)time(NULL), ns);
        int sw = d->type == STORE_DEP_SOFTWARE;
        const char *p[] = {ids, d->group, store_dep_type_name(d->type), vs, payload, sw ? d->software_version : NULL,
                           sw ? d->artifact : NULL, pc, mf, ws, we, n == 0 ? "done" : "active",
                           first == n ? "2" : "1", ns};
        rc = q(s, "INSERT INTO deployments (id, grp, type, version, payload, software_version, artifact, percent,"
                  " max_fail_permille, window_start, window_end, state, wave, created)"
                  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)", 14, p, NULL, err, errlen);
        for (int i = 0; rc == 0 && i < n; i++) {
            const char *x[] = {ids, db_cell(&r, i, 0), i < first ? "1" : "2", ns};
            rc = q(s, "INSERT INTO deployment_devices (deployment, device, wave, status, details, created, updated)"
                      " VALUES (?1, ?2, ?3, 'pending', NULL, ?4, ?4)", 4, x, NULL, err, errlen);
        }
        db_res_free(&r);
    }
    free(payload);
    if (rc == 0) {
        char ids[24];
        lltoa(id, ids);
        const char *p[] = {ids};
        store_deployment *l = NULL;
        size_t n = 0;
        rc = dep_rows(s, DEP_SELECT " FROM deployments d WHERE d.id = ?1", 1, p, &l, &n, err, errlen);
        if (rc == 0 && n == 1)
            *d = l[0];
        free(l);
    }
    return finish(s, rc, err, errlen);
}

int store_deployment_list(store *s, store_deployment **list, size_t *n, char *err, size_t errlen)
{
    return dep_rows(s, DEP_SELECT " FROM deployments d ORDER BY d.id DESC", 0, NULL, list, n, err, errlen);
}

int store_device_open_deployments(store *s, const char *device_id, store_deployment **list, size_t *n,
                                  char *err, size_t errlen)
{
    return dep_rows(s, DEP_SELECT ", y.status FROM deployments d JOIN deployment_devices y ON y.deployment = d.id"
                          " WHERE y.device = ?1 AND d.state = 'active' AND y.wave <= d.wave"
                          " AND y.status IN ('pending', 'proceeding') ORDER BY d.id",
                    1, &device_id, list, n, err, errlen);
}

int store_deployment_for_device(store *s, long long id, const char *device_id, store_deployment *d,
                                char **payload, char *err, size_t errlen)
{
    char ids[24];
    lltoa(id, ids);
    const char *p[] = {ids, device_id};
    store_deployment *l = NULL;
    size_t n = 0;
    int rc = dep_rows(s, DEP_SELECT ", y.status, d.payload FROM deployments d JOIN deployment_devices y"
                                    " ON y.deployment = d.id WHERE d.id = ?1 AND y.device = ?2 AND y.wave <= d.wave",
                      2, p, &l, &n, err, errlen);
    if (rc == 0 && n == 0) {
        snprintf(err, errlen, "no deployment %lld for device %s", id, device_id);
        rc = STORE_NOTFOUND;
    }
    if (rc == 0)
        *d = l[0];
    free(l);
    if (rc == 0 && payload) {
        db_res r;
        *payload = NULL;
        rc = q(s, "SELECT payload FROM deployments WHERE id = ?1", 1, p, &r, err, errlen);
        if (rc == 0) {
            if (r.nrows && db_cell(&r, 0, 0) && !(*payload = strdup(db_cell(&r, 0, 0)))) {
                snprintf(err, errlen, "out of memory");
                rc = -1;
            }
            db_res_free(&r);
        }
    }
    return rc;
}

int store_deployment_feedback(store *s, long long id, const char *device_id, const char *result,
                              const char *details, long long now, char *err, size_t errlen)
{
    if (!result || (strcmp(result, "success") && strcmp(result, "failure") && strcmp(result, "proceeding"))) {
        snprintf(err, errlen, "result: success, failure or proceeding");
        return STORE_REFUSED;
    }
    char ids[24], ns[24];
    lltoa(id, ids);
    lltoa(now, ns);
    if (begin(s, err, errlen) < 0)
        return -1;
    /* lock the deployment row first: concurrent feedback serialises on it */
    int rc = q(s, "UPDATE deployments SET state = state WHERE id = ?1", 1, (const char *const[]){ids}, NULL, err,
               errlen);
    store_deployment d;
    if (rc == 0)
        rc = store_deployment_for_device(s, id, device_id, &d, NULL, err, errlen);
    if (rc == 0 && strcmp(d.dev_status, "pending") && strcmp(d.dev_status, "proceeding")) {
        snprintf(err, errlen, "deployment %lld is already closed for device %s (%s)", id, device_id, d.dev_status);
        rc = STORE_REFUSED;
    }
    if (rc == 0 && d.type == STORE_DEP_CERT && !strcmp(result, "success")) {
        /* a renewal the server did not see is not one: success only with a
           certificate issued to the device since the deployment was made
           (whole seconds: one issued in the second it was made counts) */
        db_res r;
        rc = q(s, "SELECT COUNT(*) FROM certificates c, deployments x WHERE x.id = ?1 AND c.device = ?2"
                  " AND c.issued >= x.created", 2, (const char *const[]){ids, device_id}, &r, err, errlen);
        if (rc == 0) {
            if (atoll0(db_cell(&r, 0, 0)) == 0) {
                snprintf(err, errlen, "deployment %lld: no certificate was issued to device %s since the "
                         "deployment was made: success refused", id, device_id);
                rc = STORE_REFUSED;
            }
            db_res_free(&r);
        }
    }
    if (rc == 0)
        rc = q(s, "UPDATE deployment_devices SET status = ?3, details = ?4, updated = ?5"
                  " WHERE deployment = ?1 AND device = ?2", 5,
               (const char *const[]){ids, device_id, result, details, ns}, NULL, err, errlen);
    if (rc == 0 && strcmp(result, "proceeding")) {
        store_deployment *l = NULL;
        size_t n = 0;
        rc = dep_rows(s, DEP_SELECT " FROM deployments d WHERE d.id = ?1", 1, (const char *const[]){ids}, &l, &n,
                      err, errlen);
        if (rc == 0 && n == 1 && !strcmp(l[0].state, "active")) {
            store_deployment *x = &l[0];
            /* the share counts against the devices of the current wave (the
               first wave, then every device), not the reports so far: one
               early failure must not halt a rollout to many devices */
            long long wave_size = x->wave == 1 ? x->n_first_wave : x->n_devices;
            const char *state = NULL, *wave = NULL;
            if ((long long)x->n_failure * 1000 > (long long)x->max_fail_permille * wave_size)
                state = "halted";
            else if (x->n_pending + x->n_proceeding == 0 && x->wave == 2)
                state = "done";
            else if (x->wave == 1) {
                db_res r;
                rc = q(s, "SELECT COUNT(*) FROM deployment_devices WHERE deployment = ?1 AND wave = 1"
                          " AND status <> 'success'", 1, (const char *const[]){ids}, &r, err, errlen);
                if (rc == 0) {
                    if (atoll0(db_cell(&r, 0, 0)) == 0)
                        wave = "2";
                    db_res_free(&r);
                }
            }
            if (rc == 0 && state)
                rc = q(s, "UPDATE deployments SET state = ?2 WHERE id = ?1", 2, (const char *const[]){ids, state},
                       NULL, err, errlen);
            if (rc == 0 && wave)
                rc = q(s, "UPDATE deployments SET wave = 2 WHERE id = ?1", 1, (const char *const[]){ids}, NULL,
                       err, errlen);
        }
        free(l);
    }
    return finish(s, rc, err, errlen);
}

int store_device_profile(store *s, const char *group, const char *device_id, char **template_json,
                         long long *version, char *err, size_t errlen)
{
    const char *p[] = {group, device_id};
    db_res r;
    if (q(s, "SELECT d.version, d.payload FROM deployments d LEFT JOIN deployment_devices y"
             " ON y.deployment = d.id AND y.device = ?2"
             " WHERE d.grp = ?1 AND d.type = 'profile' AND d.state <> 'halted' AND d.payload IS NOT NULL"
             " AND ((y.device IS NOT NULL AND y.wave <= d.wave AND y.status <> 'failure')"
             " OR (y.device IS NULL AND d.wave = 2))"
             " ORDER BY d.id DESC LIMIT 1", 2, p, &r, err, errlen) < 0)
        return -1;
    if (r.nrows == 1) {
        *version = atoll0(db_cell(&r, 0, 0));
        *template_json = strdup(db_cell(&r, 0, 1));
        db_res_free(&r);
        if (!*template_json) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        return 0;
    }
    db_res_free(&r);
    if (q(s, "SELECT id FROM deployments WHERE grp = ?1 AND type = 'profile' LIMIT 1", 1, p, &r, err, errlen) < 0)
        return -1;
    int any = r.nrows > 0;
    db_res_free(&r);
    if (!any)
        return store_group_published(s, group, template_json, version, err, errlen);
    snprintf(err, errlen, "no profile published for group %s", group);
    return STORE_NOTFOUND;
}
