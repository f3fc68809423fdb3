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
/* Issue 15 (certificate renewal and revocation): every certificate issued, revoked or not. */
static const char *const migration_2[] = {
    "CREATE TABLE certificates (serial TEXT PRIMARY KEY, device TEXT NOT NULL REFERENCES devices(id),"
    " not_after BIGINT NOT NULL, issued BIGINT NOT NULL, revoked_at BIGINT, reason INTEGER)",
    "CREATE INDEX certificates_device ON certificates (device)",
    "INSERT INTO certificates (serial, device, not_after, issued, revoked_at, reason)"
    " SELECT serial, id, not_after, created, CASE WHEN state = 'revoked' THEN last_contact END,"
    " CASE WHEN state = 'revoked' THEN 1 END FROM devices WHERE serial IS NOT NULL AND serial <> ''",
    NULL,
};
static const char *const *const migrations[] = {migration_1, migration_2};
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
static const char dev_cols[] = "id, grp, state, token, serial, not_after, last_contact, profile_version";

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
}

int store_device_get(store *s, const char *device_id, store_device *d, char *err, size_t errlen)
{
    char sql[160];
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
    char sql[160];
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
    int rc = store_device_get(s, device_id, &d, err, errlen);
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
    int rc = store_device_get(s, device_id, &d, err, errlen);
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

int store_renewed(store *s, const char *device_id, const char *old_serial_hex, const char *serial_hex,
                  long long not_after, long long now, char *err, size_t errlen)
{
    char na[24], ns[24];
    lltoa(not_after, na);
    lltoa(now, ns);
    const char *p[] = {device_id, serial_hex, na, ns};
    if (begin(s, err, errlen) < 0)
        return -1;
    int rc = cert_check(s, device_id, old_serial_hex, now, err, errlen);
    if (rc == 0)
        rc = q(s, "INSERT INTO certificates (serial, device, not_after, issued) VALUES (?2, ?1, ?3, ?4)",
               4, p, NULL, err, errlen);
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
    if (begin(s, err, errlen) < 0)
        return -1;
    int rc = cert_check(s, device_id, serial_hex, now, err, errlen);
    if (rc == 0)
        rc = q(s, "UPDATE certificates SET revoked_at = ?3, reason = ?4 WHERE serial = ?1 AND device = ?2", 4, p,
               NULL, err, errlen);
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
