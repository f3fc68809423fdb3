/* SPDX-License-Identifier: Apache-2.0 */
/* The management server's store (server/store): migrations, enrolment
 * token binding, approval states, groups. Runs on a fresh SQLite file per
 * test; with M2MVPN_TEST_DATABASE set (a PostgreSQL conninfo, as
 * tests/mgmt/test_postgres.py does) the same checks run on that database,
 * with names unique to the run. */
#include <check.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

static char dir[64];
static char err[512];
static int counter;

static const char *pg(void)
{
    const char *s = getenv("M2MVPN_TEST_DATABASE");
    return s && *s ? s : NULL;
}

static int counter_db;

static store *open_db(int fresh)
{
    char db[128];
    if (fresh && !pg())
        counter_db = ++counter;
    if (pg())
        snprintf(db, sizeof(db), "%s", pg());
    else
        snprintf(db, sizeof(db), "sqlite:%s/s%d.db", dir, counter_db);
    store *s = NULL;
    ck_assert_msg(store_open(&s, db, err, sizeof(err)) == 0, "store_open: %s", err);
    return s;
}

static store *open_fresh(void)
{
    return open_db(1);
}

/* a second connection to the database open_fresh() opened last */
static store *open_fresh_same(void)
{
    return open_db(0);
}

/* A name unique to this run (the PostgreSQL database is shared by the cases). */
static const char *uniq(const char *what)
{
    static char buf[64][STORE_ID_MAX];
    static int i;
    char *b = buf[i++ % 64];
    snprintf(b, STORE_ID_MAX, "%s-%d-%ld-%d", what, (int)getpid(), (long)time(NULL) % 100000, ++counter);
    return b;
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/m2m-store-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(migrations_applied_once)
{
    store *s = open_fresh();
    int v = -1;
    ck_assert_int_eq(store_schema_version(s, &v, err, sizeof(err)), 0);
    ck_assert_int_eq(v, STORE_SCHEMA_VERSION);
    store_close(s);
    if (!pg())
        counter--;          /* the same file again */
    s = open_fresh();       /* idempotent: nothing applied twice, no error */
    ck_assert_int_eq(store_schema_version(s, &v, err, sizeof(err)), 0);
    ck_assert_int_eq(v, STORE_SCHEMA_VERSION);
    /* the tables exist and work */
    const char *g = uniq("g");
    ck_assert_int_eq(store_group_put(s, g, "{}", err, sizeof(err)), 0);
    store_close(s);
}
END_TEST

START_TEST(newer_schema_refused)
{
    if (pg())
        return;  /* SQLite only: the check is engine-neutral code */
    store *s = open_fresh();
    store_close(s);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "sqlite3 %s/s%d.db 'INSERT INTO schema_version VALUES (99, 0)' 2>/dev/null ||"
             " python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"INSERT INTO schema_version VALUES (99, 0)\"); c.commit()' %s/s%d.db",
             dir, counter, dir, counter);
    ck_assert_int_eq(system(cmd), 0);
    char db[128];
    snprintf(db, sizeof(db), "sqlite:%s/s%d.db", dir, counter);
    ck_assert_int_eq(store_open(&s, db, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "newer than this server"), "%s", err);
}
END_TEST

START_TEST(bad_database_string)
{
    store *s = NULL;
    ck_assert_int_eq(store_open(&s, "mysql://x", err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "sqlite:PATH"), "%s", err);
    ck_assert_int_eq(store_open(&s, "sqlite:/nonexistent-dir/x/y.db", err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "sqlite:/nonexistent-dir"), "%s", err);
}
END_TEST

/* A token binds to the first device; the same device may ask again; another is refused. */
START_TEST(token_binds_first_key)
{
    store *s = open_fresh();
    const char *g = uniq("g"), *t = uniq("t"), *a = uniq("dev-a"), *b = uniq("dev-b");
    long long now = time(NULL);
    ck_assert_int_eq(store_group_put(s, g, "{\"version\":1}", err, sizeof(err)), 0);
    ck_assert_int_eq(store_token_create(s, (const char *const[]){t}, 1, g, now + 3600, 0, err, sizeof(err)), 0);
    ck_assert_int_eq(store_token_usable(s, t, now, err, sizeof(err)), 0);
    store_device_state st = -1;
    ck_assert_int_eq(store_enrol(s, t, a, now, &st, err, sizeof(err)), 0);
    ck_assert_int_eq(st, STORE_DEV_PENDING);
    store_token tok;
    ck_assert_int_eq(store_token_get(s, t, &tok, err, sizeof(err)), 0);
    ck_assert_int_eq(tok.state, STORE_TOKEN_BOUND);
    ck_assert_str_eq(tok.device, a);
    /* same device again: still pending, nothing new */
    ck_assert_int_eq(store_enrol(s, t, a, now + 1, &st, err, sizeof(err)), 0);
    ck_assert_int_eq(st, STORE_DEV_PENDING);
    /* another key with the same token */
    ck_assert_int_eq(store_enrol(s, t, b, now + 1, &st, err, sizeof(err)), STORE_REFUSED);
    ck_assert_str_eq(err, "enrolment token already used");
    store_device d;
    ck_assert_int_eq(store_device_get(s, b, &d, err, sizeof(err)), STORE_NOTFOUND);
    ck_assert_int_eq(store_device_get(s, a, &d, err, sizeof(err)), 0);
    ck_assert_str_eq(d.group, g);
    ck_assert_str_eq(d.token, t);
    /* the bound token outlives its expiry for its own device (approval may take long) */
    ck_assert_int_eq(store_token_usable(s, t, now + 7200, err, sizeof(err)), 0);
    ck_assert_int_eq(store_enrol(s, t, a, now + 7200, &st, err, sizeof(err)), 0);
    /* the same key cannot take a second token */
    const char *t2 = uniq("t");
    ck_assert_int_eq(store_token_create(s, (const char *const[]){t2}, 1, g, now + 3600, 0, err, sizeof(err)), 0);
    ck_assert_int_eq(store_enrol(s, t2, a, now, &st, err, sizeof(err)), STORE_REFUSED);
    ck_assert_msg(strstr(err, "already enrolled"), "%s", err);
    ck_assert_int_eq(store_token_get(s, t2, &tok, err, sizeof(err)), 0);
    ck_assert_int_eq(tok.state, STORE_TOKEN_UNUSED);
    store_close(s);
}
END_TEST

START_TEST(token_expired_unknown)
{
    store *s = open_fresh();
    const char *g = uniq("g"), *t = uniq("t"), *a = uniq("dev-a");
    long long now = time(NULL);
    ck_assert_int_eq(store_group_put(s, g, "{}", err, sizeof(err)), 0);
    ck_assert_int_eq(store_token_create(s, (const char *const[]){t}, 1, g, now - 1, 1, err, sizeof(err)), 0);
    ck_assert_int_eq(store_token_usable(s, t, now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_str_eq(err, "enrolment token expired");
    store_device_state st;
    ck_assert_int_eq(store_enrol(s, t, a, now, &st, err, sizeof(err)), STORE_REFUSED);
    ck_assert_str_eq(err, "enrolment token expired");
    store_device d;
    ck_assert_int_eq(store_device_get(s, a, &d, err, sizeof(err)), STORE_NOTFOUND);
    ck_assert_int_eq(store_enrol(s, uniq("nosuch"), a, now, &st, err, sizeof(err)), STORE_NOTFOUND);
    ck_assert_int_eq(store_token_usable(s, uniq("nosuch"), now, err, sizeof(err)), STORE_NOTFOUND);
    /* a token for a group that does not exist */
    ck_assert_int_eq(store_token_create(s, (const char *const[]){uniq("t")}, 1, uniq("nogroup"), now + 60, 0, err, sizeof(err)),
                     STORE_NOTFOUND);
    ck_assert_msg(strstr(err, "create it first"), "%s", err);
    ck_assert_int_eq(store_token_create(s, (const char *const[]){"bad id!"}, 1, g, now + 60, 0, err, sizeof(err)), STORE_REFUSED);
    /* the same id twice: a database error, the first token unchanged */
    const char *t2 = uniq("t");
    ck_assert_int_eq(store_token_create(s, (const char *const[]){t2}, 1, g, now + 60, 0, err, sizeof(err)), 0);
    ck_assert_int_eq(store_token_create(s, (const char *const[]){t2}, 1, g, now + 99, 1, err, sizeof(err)), -1);
    store_token tok;
    ck_assert_int_eq(store_token_get(s, t2, &tok, err, sizeof(err)), 0);
    ck_assert_int_eq(tok.expires, now + 60);
    ck_assert_int_eq(tok.auto_approve, 0);
    /* a batch is all or none: one duplicate id, no token of the batch kept */
    const char *t3 = uniq("t");
    ck_assert_int_eq(store_token_create(s, (const char *const[]){t3, t2}, 2, g, now + 60, 0, err, sizeof(err)), -1);
    ck_assert_int_eq(store_token_get(s, t3, &tok, err, sizeof(err)), STORE_NOTFOUND);
    store_close(s);
}
END_TEST

START_TEST(auto_approve_then_issued)
{
    store *s = open_fresh();
    const char *g = uniq("g"), *t = uniq("t"), *a = uniq("dev-a"), *b = uniq("dev-b");
    long long now = time(NULL);
    ck_assert_int_eq(store_group_put(s, g, "{}", err, sizeof(err)), 0);
    ck_assert_int_eq(store_token_create(s, (const char *const[]){t}, 1, g, now + 60, 1, err, sizeof(err)), 0);
    store_device_state st;
    ck_assert_int_eq(store_enrol(s, t, a, now, &st, err, sizeof(err)), 0);
    ck_assert_int_eq(st, STORE_DEV_APPROVED);
    ck_assert_int_eq(store_issued(s, t, a, "0abc", now + 86400, now, err, sizeof(err)), 0);
    store_device d;
    ck_assert_int_eq(store_device_get(s, a, &d, err, sizeof(err)), 0);
    ck_assert_int_eq(d.state, STORE_DEV_ENROLLED);
    ck_assert_str_eq(d.serial, "0abc");
    ck_assert_int_eq(d.not_after, now + 86400);
    store_token tok;
    ck_assert_int_eq(store_token_get(s, t, &tok, err, sizeof(err)), 0);
    ck_assert_int_eq(tok.state, STORE_TOKEN_USED);
    /* used: the same device may ask again (lost answer), another may not */
    ck_assert_int_eq(store_enrol(s, t, a, now, &st, err, sizeof(err)), 0);
    ck_assert_int_eq(st, STORE_DEV_ENROLLED);
    ck_assert_int_eq(store_enrol(s, t, b, now, &st, err, sizeof(err)), STORE_REFUSED);
    ck_assert_int_eq(store_device_contact(s, a, now + 5, 3, err, sizeof(err)), 0);
    ck_assert_int_eq(store_device_get(s, a, &d, err, sizeof(err)), 0);
    ck_assert_int_eq(d.last_contact, now + 5);
    ck_assert_int_eq(d.profile_version, 3);
    store_close(s);
}
END_TEST

START_TEST(approval_states)
{
    store *s = open_fresh();
    const char *g = uniq("g"), *t = uniq("t"), *a = uniq("dev-a");
    long long now = time(NULL);
    ck_assert_int_eq(store_group_put(s, g, "{}", err, sizeof(err)), 0);
    ck_assert_int_eq(store_token_create(s, (const char *const[]){t}, 1, g, now + 60, 0, err, sizeof(err)), 0);
    store_device_state st;
    ck_assert_int_eq(store_enrol(s, t, a, now, &st, err, sizeof(err)), 0);
    /* pending: no certificate may be recorded */
    ck_assert_int_eq(store_issued(s, t, a, "01", now + 60, now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_int_eq(store_device_act(s, a, STORE_ACT_APPROVE, err, sizeof(err)), 0);
    ck_assert_int_eq(store_enrol(s, t, a, now, &st, err, sizeof(err)), 0);
    ck_assert_int_eq(st, STORE_DEV_APPROVED);
    ck_assert_int_eq(store_device_act(s, a, STORE_ACT_APPROVE, err, sizeof(err)), STORE_REFUSED);
    ck_assert_msg(strstr(err, "is approved: it cannot be approved"), "%s", err);
    ck_assert_int_eq(store_device_act(s, a, STORE_ACT_REJECT, err, sizeof(err)), 0);
    ck_assert_int_eq(store_enrol(s, t, a, now, &st, err, sizeof(err)), 0);
    ck_assert_int_eq(st, STORE_DEV_REJECTED);
    ck_assert_int_eq(store_issued(s, t, a, "01", now + 60, now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_int_eq(store_device_act(s, a, STORE_ACT_APPROVE, err, sizeof(err)), STORE_REFUSED);
    ck_assert_int_eq(store_device_act(s, a, STORE_ACT_REVOKE, err, sizeof(err)), 0);
    ck_assert_int_eq(store_device_act(s, a, STORE_ACT_REVOKE, err, sizeof(err)), STORE_REFUSED);
    ck_assert_int_eq(store_token_usable(s, t, now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_str_eq(err, "enrolment token revoked");
    ck_assert_int_eq(store_device_act(s, uniq("nosuch"), STORE_ACT_APPROVE, err, sizeof(err)), STORE_NOTFOUND);
    store_device *list = NULL;
    size_t n = 0;
    ck_assert_int_eq(store_device_list(s, &list, &n, err, sizeof(err)), 0);
    int found = 0;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(list[i].id, a)) {
            found = 1;
            ck_assert_int_eq(list[i].state, STORE_DEV_REVOKED);
        }
    free(list);
    ck_assert(found);
    store_close(s);
}
END_TEST

START_TEST(groups_publish)
{
    store *s = open_fresh();
    const char *g = uniq("g");
    char *tpl = NULL;
    long long v = -1;
    ck_assert_int_eq(store_group_published(s, g, &tpl, &v, err, sizeof(err)), STORE_NOTFOUND);
    ck_assert_int_eq(store_group_put(s, g, "{\"a\":1}", err, sizeof(err)), 0);
    ck_assert_int_eq(store_group_published(s, g, &tpl, &v, err, sizeof(err)), STORE_NOTFOUND);
    ck_assert_msg(strstr(err, "no profile published for group"), "%s", err);
    ck_assert_int_eq(store_group_publish(s, g, &v, err, sizeof(err)), 0);
    ck_assert_int_eq(v, 1);
    ck_assert_int_eq(store_group_put(s, g, "{\"a\":2}", err, sizeof(err)), 0);
    ck_assert_int_eq(store_group_published(s, g, &tpl, &v, err, sizeof(err)), 0);
    ck_assert_str_eq(tpl, "{\"a\":1}");   /* replaced template not live before publish */
    ck_assert_int_eq(v, 1);
    free(tpl);
    ck_assert_int_eq(store_group_publish(s, g, &v, err, sizeof(err)), 0);
    ck_assert_int_eq(v, 2);
    ck_assert_int_eq(store_group_published(s, g, &tpl, &v, err, sizeof(err)), 0);
    ck_assert_str_eq(tpl, "{\"a\":2}");
    free(tpl);
    ck_assert_int_eq(store_group_publish(s, uniq("nosuch"), &v, err, sizeof(err)), STORE_NOTFOUND);
    ck_assert_int_eq(store_group_put(s, "bad/name", "{}", err, sizeof(err)), STORE_REFUSED);
    store_group *list;
    size_t n;
    ck_assert_int_eq(store_group_list(s, &list, &n, err, sizeof(err)), 0);
    int found = 0;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(list[i].name, g))
            found = list[i].version == 2;
    free(list);
    ck_assert(found);
    store_close(s);
}
END_TEST

/* A serial (hex) unique to this run. */
static const char *userial(void)
{
    static char buf[16][40];
    static int i;
    char *b = buf[i++ % 16];
    snprintf(b, 40, "%x%05lx%02x", (unsigned)getpid(), (long)time(NULL) % 0x100000, (unsigned)++counter);
    return b;
}

static int listed(store *s, long long now, const char *serial, int *reason)
{
    store_revoked *list;
    size_t n;
    ck_assert_int_eq(store_revoked_list(s, now, &list, &n, err, sizeof(err)), 0);
    int found = 0;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(list[i].serial, serial)) {
            found = 1;
            *reason = list[i].reason;
        }
    free(list);
    return found;
}

/* KUR recording, RR and the admin revoke on the certificates table (migration 2). */
START_TEST(certificates_renew_revoke)
{
    store *s = open_fresh();
    const char *g = uniq("g"), *t = uniq("t"), *a = uniq("dev-a"), *b = uniq("dev-b"), *t2 = uniq("t");
    const char *s1 = userial(), *s2 = userial(), *s3 = userial(), *sb = userial();
    long long now = time(NULL);
    int reason = -1;
    store_device_state st;
    ck_assert_int_eq(store_group_put(s, g, "{}", err, sizeof(err)), 0);
    ck_assert_int_eq(store_token_create(s, (const char *const[]){t, t2}, 2, g, now + 60, 1, err, sizeof(err)), 0);
    ck_assert_int_eq(store_enrol(s, t, a, now, &st, err, sizeof(err)), 0);
    ck_assert_int_eq(store_issued(s, t, a, s1, now + 86400, now, err, sizeof(err)), 0);
    ck_assert_int_eq(store_enrol(s, t2, b, now, &st, err, sizeof(err)), 0);
    ck_assert_int_eq(store_issued(s, t2, b, sb, now + 86400, now, err, sizeof(err)), 0);
    ck_assert_int_eq(store_cert_ok(s, a, s1, now, err, sizeof(err)), 0);
    /* another device's certificate, an unknown one, one past its expiry */
    ck_assert_int_eq(store_cert_ok(s, a, sb, now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_msg(strstr(err, "is not one of device"), "%s", err);
    /* refusals that are not revocations (an RR retry must not read them as one) */
    ck_assert_int_eq(store_cert_revoked(s, a, sb, err, sizeof(err)), 0);
    ck_assert_int_eq(store_cert_revoked(s, a, "ffff", err, sizeof(err)), 0);
    ck_assert_int_eq(store_cert_revoked(s, uniq("dev-none"), s1, err, sizeof(err)), 0);
    ck_assert_int_eq(store_cert_revoked(s, a, s1, err, sizeof(err)), 0);
    ck_assert_int_eq(store_cert_ok(s, a, "ffff", now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_int_eq(store_cert_ok(s, a, s1, now + 86400, err, sizeof(err)), STORE_REFUSED);
    ck_assert_msg(strstr(err, "expired"), "%s", err);

    /* renewal: the new one is the device's, the old one stays good */
    ck_assert_int_eq(store_renewed(s, a, s1, s2, now + 2 * 86400, now, err, sizeof(err)), 0);
    store_device d;
    ck_assert_int_eq(store_device_get(s, a, &d, err, sizeof(err)), 0);
    ck_assert_str_eq(d.serial, s2);
    ck_assert_int_eq(d.not_after, now + 2 * 86400);
    ck_assert_int_eq(store_cert_ok(s, a, s1, now, err, sizeof(err)), 0);
    ck_assert_int_eq(store_cert_ok(s, a, s2, now, err, sizeof(err)), 0);
    /* renewing with another device's certificate: refused, nothing recorded */
    ck_assert_int_eq(store_renewed(s, a, sb, s3, now + 86400, now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_int_eq(store_cert_ok(s, a, s3, now, err, sizeof(err)), STORE_REFUSED);

    /* RR of the new one: listed, the device still enrolled (the old one is good) */
    ck_assert_int_eq(store_cert_revoke(s, a, s2, 5, now, err, sizeof(err)), 0);
    ck_assert(listed(s, now, s2, &reason));
    ck_assert_int_eq(reason, 5);
    ck_assert_int_eq(store_cert_ok(s, a, s2, now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_msg(strstr(err, "revoked"), "%s", err);
    ck_assert_int_eq(store_cert_revoked(s, a, s2, err, sizeof(err)), 1);
    ck_assert_int_eq(store_cert_revoked(s, b, s2, err, sizeof(err)), 0); /* not b's */
    ck_assert_int_eq(store_cert_revoked(s, a, s1, err, sizeof(err)), 0);
    ck_assert_int_eq(store_renewed(s, a, s2, s3, now + 86400, now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_int_eq(store_cert_revoke(s, a, s2, 5, now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_int_eq(store_cert_revoke(s, a, sb, 5, now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_int_eq(store_device_get(s, a, &d, err, sizeof(err)), 0);
    ck_assert_int_eq(d.state, STORE_DEV_ENROLLED);

    /* the enrolment token and the first key cannot mint a new certificate once one of the
       device's certificates is revoked (a revoked key would get a fresh, unlisted certificate) */
    ck_assert_int_eq(store_enrol(s, t, a, now, &st, err, sizeof(err)), STORE_REFUSED);
    ck_assert_msg(strstr(err, "revoked"), "%s", err);
    ck_assert_int_eq(store_token_usable(s, t, now, err, sizeof(err)), 0);   /* the device's own token, still */
    /* before any revocation the same key may ask again (its answer was lost) */
    ck_assert_int_eq(store_enrol(s, t2, b, now, &st, err, sizeof(err)), 0);
    ck_assert_int_eq(st, STORE_DEV_ENROLLED);

    /* admin revoke: every unexpired certificate, keyCompromise; the other device untouched */
    ck_assert_int_eq(store_device_act(s, a, STORE_ACT_REVOKE, err, sizeof(err)), 0);
    ck_assert(listed(s, now, s1, &reason));
    ck_assert_int_eq(reason, 1);
    ck_assert(listed(s, now, s2, &reason));
    ck_assert_int_eq(reason, 5);   /* revoked before: its first reason stays */
    ck_assert(!listed(s, now, sb, &reason));
    ck_assert_int_eq(store_cert_ok(s, a, s1, now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_int_eq(store_cert_revoked(s, a, s1, err, sizeof(err)), 1);
    ck_assert_int_eq(store_cert_ok(s, b, sb, now, err, sizeof(err)), 0);
    /* expired certificates drop out of the list */
    ck_assert(!listed(s, now + 3 * 86400, s1, &reason));

    /* RR of a device's only certificate revokes the device */
    ck_assert_int_eq(store_cert_revoke(s, b, sb, 5, now, err, sizeof(err)), 0);
    ck_assert_int_eq(store_device_get(s, b, &d, err, sizeof(err)), 0);
    ck_assert_int_eq(d.state, STORE_DEV_REVOKED);
    store_close(s);
}
END_TEST


/* A revocation by the operator racing a certificate being recorded for the same device (IR
   answered, KUR): another connection revokes the device and holds its transaction open while
   the store records a certificate, then commits. The certificate must not be recorded against
   a revoked device (PostgreSQL reads committed rows: a check before the device row is locked
   sees the state from before the revocation). */
typedef struct {
    int kur;
    store *s;
    const char *tok, *dev, *old, *new_serial;
    long long now;
    int rc;
    char err[512];
} race_arg;

static void *race_record(void *p)
{
    race_arg *a = p;
    a->rc = a->kur ? store_renewed(a->s, a->dev, a->old, a->new_serial, a->now + 86400, a->now, a->err, sizeof(a->err))
                   : store_issued(a->s, a->tok, a->dev, a->new_serial, a->now + 86400, a->now, a->err,
                                  sizeof(a->err));
    return NULL;
}

/* The rival: BEGIN, revoke dev as store_device_act does, hold it; commit on rival_commit(). */
static PGconn *rival_pg;
static sqlite3 *rival_sq;

static void rival_exec(const char *sql)
{
    if (rival_pg) {
        PGresult *r = PQexec(rival_pg, sql);
        ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s: %s", sql, PQerrorMessage(rival_pg));
        PQclear(r);
    } else {
        char *e = NULL;
        ck_assert_msg(sqlite3_exec(rival_sq, sql, NULL, NULL, &e) == SQLITE_OK, "%s: %s", sql, e ? e : "?");
    }
}

static void rival_revoke(const char *dev)
{
    char db[160], sql[512];
    if (pg()) {
        rival_pg = PQconnectdb(pg());
        ck_assert_int_eq(PQstatus(rival_pg), CONNECTION_OK);
    } else {
        snprintf(db, sizeof(db), "%s/s%d.db", dir, counter_db);
        ck_assert_int_eq(sqlite3_open(db, &rival_sq), SQLITE_OK);
    }
    rival_exec(pg() ? "BEGIN" : "BEGIN IMMEDIATE");
    snprintf(sql, sizeof(sql), "UPDATE devices SET state = 'revoked' WHERE id = '%s'", dev);
    rival_exec(sql);
    snprintf(sql, sizeof(sql), "UPDATE certificates SET revoked_at = %lld, reason = 1 WHERE device = '%s'"
             " AND revoked_at IS NULL", (long long)time(NULL), dev);
    rival_exec(sql);
}

static void rival_commit(void)
{
    rival_exec("COMMIT");
    if (rival_pg)
        PQfinish(rival_pg);
    if (rival_sq)
        sqlite3_close(rival_sq);
    rival_pg = NULL;
    rival_sq = NULL;
}

static void race_one(int kur)
{
    store *s = open_fresh(), *s2 = open_fresh_same();
    const char *g = uniq("g"), *t = uniq("t"), *dev = uniq("dev-race");
    const char *s1 = userial(), *s2n = userial();
    long long now = time(NULL);
    store_device_state st;
    ck_assert_int_eq(store_group_put(s, g, "{}", err, sizeof(err)), 0);
    ck_assert_int_eq(store_token_create(s, (const char *const[]){t}, 1, g, now + 60, 1, err, sizeof(err)), 0);
    ck_assert_int_eq(store_enrol(s, t, dev, now, &st, err, sizeof(err)), 0);
    if (kur)
        ck_assert_int_eq(store_issued(s, t, dev, s1, now + 86400, now, err, sizeof(err)), 0);
    rival_revoke(dev);
    race_arg a = {kur, s2, t, dev, s1, s2n, now, -9, ""};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, race_record, &a), 0);
    sleep(2);   /* let it reach the lock; were it later, it would only see the revocation committed */
    rival_commit();
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    store_device d;
    ck_assert_int_eq(store_device_get(s, dev, &d, err, sizeof(err)), 0);
    ck_assert_msg(d.state == STORE_DEV_REVOKED, "%s: a revoked device is %s again", kur ? "kur" : "ir",
                  store_device_state_name(d.state));
    ck_assert_msg(a.rc == STORE_REFUSED, "%s: the certificate was recorded for a revoked device (rc %d %s)",
                  kur ? "kur" : "ir", a.rc, a.err);
    ck_assert_int_eq(store_cert_ok(s, dev, s2n, now, err, sizeof(err)), STORE_REFUSED);
    store_close(s2);
    store_close(s);
}

START_TEST(revoke_races_certificate)
{
    race_one(0);
    race_one(1);
}
END_TEST

/* n enrolled devices in a new group g; ids sorted as the store sorts them */
static void fleet(store *s, const char *g, int n, char ids[][STORE_ID_MAX])
{
    long long now = time(NULL);
    ck_assert_int_eq(store_group_put(s, g, "{\"version\": 1}", err, sizeof(err)), 0);
    for (int i = 0; i < n; i++) {
        const char *t = uniq("t");
        snprintf(ids[i], STORE_ID_MAX, "%s-%02d", g, i);
        store_device_state st;
        ck_assert_int_eq(store_token_create(s, (const char *const[]){t}, 1, g, now + 60, 1, err, sizeof(err)), 0);
        ck_assert_int_eq(store_enrol(s, t, ids[i], now, &st, err, sizeof(err)), 0);
        ck_assert_int_eq(store_issued(s, t, ids[i], userial(), now + 86400, now, err, sizeof(err)), 0);   /* serials are unique */
    }
}

static int is_open(store *s, const char *dev, long long id)
{
    store_deployment *l;
    size_t n;
    ck_assert_int_eq(store_device_open_deployments(s, dev, &l, &n, err, sizeof(err)), 0);
    int found = 0;
    for (size_t i = 0; i < n; i++)
        found |= l[i].id == id;
    free(l);
    return found;
}

static store_deployment dep_new(store *s, const char *g, int percent, int permille)
{
    store_deployment d;
    memset(&d, 0, sizeof(d));
    snprintf(d.group, sizeof(d.group), "%s", g);
    d.type = STORE_DEP_PROFILE;
    d.percent = percent;
    d.max_fail_permille = permille;
    d.window_start = d.window_end = -1;
    ck_assert_msg(store_deployment_create(s, &d, err, sizeof(err)) == 0, "%s", err);
    return d;
}

START_TEST(rollout_rules)
{
    store *s = open_fresh();
    const char *g = uniq("roll");
    char ids[10][STORE_ID_MAX];
    fleet(s, g, 10, ids);
    long long now = time(NULL);
    /* 30 %: the first three devices only; one failure > 0.2 x 3 (the wave) halts */
    store_deployment d = dep_new(s, g, 30, 200);
    ck_assert_int_eq(d.n_devices, 10);
    ck_assert_int_eq(d.n_first_wave, 3);
    ck_assert_int_eq(d.version, 1);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(is_open(s, ids[i], d.id), i < 3);
    ck_assert_int_eq(store_deployment_for_device(s, d.id, ids[5], &d, NULL, err, sizeof(err)), STORE_NOTFOUND);
    ck_assert_int_eq(store_deployment_feedback(s, d.id, ids[5], "success", NULL, now, err, sizeof(err)),
                     STORE_NOTFOUND);
    ck_assert_int_eq(store_deployment_feedback(s, d.id, ids[0], "success", "ok", now, err, sizeof(err)), 0);
    ck_assert_int_eq(store_deployment_feedback(s, d.id, ids[0], "failure", "x", now, err, sizeof(err)),
                     STORE_REFUSED);
    ck_assert_int_eq(store_deployment_feedback(s, d.id, ids[1], "failure", "x", now, err, sizeof(err)), 0);
    store_deployment *l;
    size_t n;
    ck_assert_int_eq(store_deployment_list(s, &l, &n, err, sizeof(err)), 0);
    ck_assert_uint_ge(n, 1);
    int seen = 0;
    for (size_t i = 0; i < n; i++)
        if (l[i].id == d.id) {
            seen = 1;
            ck_assert_str_eq(l[i].state, "halted");
            ck_assert_int_eq(l[i].n_failure, 1);
        }
    free(l);
    ck_assert(seen);
    for (int i = 0; i < 10; i++)
        ck_assert(!is_open(s, ids[i], d.id));
    char *tpl = NULL;
    long long v = 0;
    ck_assert_int_eq(store_device_profile(s, g, ids[2], &tpl, &v, err, sizeof(err)), STORE_NOTFOUND);

    /* every first-wave success opens the rest; all reported -> done */
    store_deployment e = dep_new(s, g, 30, 200);
    ck_assert_int_eq(e.version, 2);
    ck_assert_int_gt(e.id, d.id);
    for (int i = 0; i < 3; i++) {
        ck_assert(!is_open(s, ids[9], e.id));
        ck_assert_int_eq(store_deployment_feedback(s, e.id, ids[i], "success", NULL, now, err, sizeof(err)), 0);
    }
    ck_assert_int_eq(store_device_profile(s, g, ids[0], &tpl, &v, err, sizeof(err)), 0);
    ck_assert_int_eq(v, 2);
    free(tpl);
    for (int i = 3; i < 10; i++) {
        ck_assert(is_open(s, ids[i], e.id));
        ck_assert_int_eq(store_deployment_feedback(s, e.id, ids[i], i == 9 ? "failure" : "success", NULL, now, err,
                                                   sizeof(err)), 0);
    }
    ck_assert_int_eq(store_deployment_for_device(s, e.id, ids[9], &e, NULL, err, sizeof(err)), 0);
    ck_assert_str_eq(e.state, "done");
    ck_assert_str_eq(e.dev_status, "failure");
    ck_assert_int_eq(store_device_profile(s, g, ids[8], &tpl, &v, err, sizeof(err)), 0);
    ck_assert_int_eq(v, 2);
    free(tpl);
    /* the device that failed with version 2 is not handed it again by the day-0 route */
    ck_assert_int_eq(store_device_profile(s, g, ids[9], &tpl, &v, err, sizeof(err)), STORE_NOTFOUND);

    /* a wave of 10 at 0.2: the first report being a failure does not halt
       (1 <= 2 of the wave, not 1 of 1 report), nor a second; a third does */
    store_deployment f = dep_new(s, g, 100, 200);
    ck_assert_int_eq(f.n_first_wave, 10);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(store_deployment_feedback(s, f.id, ids[i], "failure", "x", now, err, sizeof(err)), 0);
        ck_assert_int_eq(store_deployment_for_device(s, f.id, ids[9], &f, NULL, err, sizeof(err)), 0);
        ck_assert_str_eq(f.state, i < 2 ? "active" : "halted");
        ck_assert_int_eq(is_open(s, ids[9], f.id), i < 2);
    }
    store_close(s);
}
END_TEST

/* A cert deployment's success counts only with a certificate issued to the
 * device since the deployment was made: a device's word alone (a renewal
 * mark written by someone else) does not close it. */
START_TEST(cert_deployment_needs_a_new_certificate)
{
    store *s = open_fresh();
    const char *g = uniq("certdep"), *t = uniq("t"), *dev = uniq("dev-c"), *s1 = userial(), *s2 = userial();
    long long now = time(NULL);
    store_device_state st;
    ck_assert_int_eq(store_group_put(s, g, "{\"version\": 1}", err, sizeof(err)), 0);
    ck_assert_int_eq(store_token_create(s, (const char *const[]){t}, 1, g, now + 60, 1, err, sizeof(err)), 0);
    ck_assert_int_eq(store_enrol(s, t, dev, now - 100, &st, err, sizeof(err)), 0);
    ck_assert_int_eq(store_issued(s, t, dev, s1, now + 86400, now - 100, err, sizeof(err)), 0);
    store_deployment d;
    memset(&d, 0, sizeof(d));
    snprintf(d.group, sizeof(d.group), "%s", g);
    d.type = STORE_DEP_CERT;
    d.percent = 100;
    d.max_fail_permille = 1000;
    d.window_start = d.window_end = -1;
    ck_assert_msg(store_deployment_create(s, &d, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(store_deployment_feedback(s, d.id, dev, "success", "renewed", now, err, sizeof(err)),
                     STORE_REFUSED);
    ck_assert_msg(strstr(err, "no certificate was issued"), "%s", err);
    ck_assert(is_open(s, dev, d.id)); /* nothing changed */
    /* the renewal the server made: now it is a success */
    ck_assert_int_eq(store_renewed(s, dev, s1, s2, now + 2 * 86400, time(NULL), err, sizeof(err)), 0);
    ck_assert_msg(store_deployment_feedback(s, d.id, dev, "success", "renewed", now, err, sizeof(err)) == 0, "%s",
                  err);
    ck_assert(!is_open(s, dev, d.id));
    store_close(s);
}
END_TEST

START_TEST(report_and_artifacts)
{
    store *s = open_fresh();
    const char *g = uniq("sw");
    char ids[2][STORE_ID_MAX];
    fleet(s, g, 2, ids);
    long long now = time(NULL);
    ck_assert_int_eq(store_device_report(s, ids[0], now, "up", 4, "1.2.3", 1900000000, err, sizeof(err)), 0);
    ck_assert_int_eq(store_device_report(s, ids[0], now + 1, NULL, -1, NULL, -1, err, sizeof(err)), 0);
    store_device dv;
    ck_assert_int_eq(store_device_get(s, ids[0], &dv, err, sizeof(err)), 0);
    ck_assert_str_eq(dv.tunnel, "up");
    ck_assert_str_eq(dv.software_version, "1.2.3");
    ck_assert_int_eq(dv.profile_version, 4);
    ck_assert_int_eq(dv.cert_not_after, 1900000000);
    ck_assert_int_eq(dv.last_contact, now + 1);

    char sha[65];
    snprintf(sha, sizeof(sha), "%064x", (unsigned)counter);
    store_deployment d;
    memset(&d, 0, sizeof(d));
    snprintf(d.group, sizeof(d.group), "%s", g);
    d.type = STORE_DEP_SOFTWARE;
    d.percent = 50;
    d.max_fail_permille = 200;
    d.window_start = d.window_end = -1;
    snprintf(d.software_version, sizeof(d.software_version), "2.0");
    snprintf(d.artifact, sizeof(d.artifact), "%s", sha);
    ck_assert_int_eq(store_deployment_create(s, &d, err, sizeof(err)), STORE_NOTFOUND);   /* not uploaded */
    ck_assert_int_eq(store_artifact_put(s, sha, 123, "/nowhere", err, sizeof(err)), 0);
    ck_assert_int_eq(store_deployment_create(s, &d, err, sizeof(err)), 0);
    ck_assert_int_eq(d.size, 123);
    ck_assert_int_eq(d.version, d.id);
    ck_assert_int_eq(store_artifact_allowed(s, sha, ids[0], err, sizeof(err)), 0);
    ck_assert_int_eq(store_artifact_allowed(s, sha, ids[1], err, sizeof(err)), STORE_REFUSED);   /* wave 2 */
    store_close(s);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("store");
    TCase *tc = tcase_create("store");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, migrations_applied_once);
    tcase_add_test(tc, newer_schema_refused);
    tcase_add_test(tc, bad_database_string);
    tcase_add_test(tc, token_binds_first_key);
    tcase_add_test(tc, token_expired_unknown);
    tcase_add_test(tc, auto_approve_then_issued);
    tcase_add_test(tc, approval_states);
    tcase_add_test(tc, groups_publish);
    tcase_add_test(tc, certificates_renew_revoke);
    tcase_add_test(tc, rollout_rules);
    tcase_add_test(tc, cert_deployment_needs_a_new_certificate);
    tcase_add_test(tc, report_and_artifacts);
    tcase_add_test(tc, revoke_races_certificate);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
