/* SPDX-License-Identifier: Apache-2.0 */
/* The management server's store (server/store): migrations, enrolment
 * token binding, approval states, groups. Runs on a fresh SQLite file per
 * test; with M2MVPN_TEST_DATABASE set (a PostgreSQL conninfo, as
 * tests/mgmt/test_postgres.py does) the same checks run on that database,
 * with names unique to the run. */
#include <check.h>
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

static store *open_fresh(void)
{
    char db[128];
    if (pg())
        snprintf(db, sizeof(db), "%s", pg());
    else
        snprintf(db, sizeof(db), "sqlite:%s/s%d.db", dir, ++counter);
    store *s = NULL;
    ck_assert_msg(store_open(&s, db, err, sizeof(err)) == 0, "store_open: %s", err);
    return s;
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
    snprintf(b, 40, "%x%05lx%02x", (unsigned)getpid(), (long)time(NULL) % 0x100000, ++counter & 0xff);
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
    ck_assert_int_eq(store_renewed(s, a, s2, s3, now + 86400, now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_int_eq(store_cert_revoke(s, a, s2, 5, now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_int_eq(store_cert_revoke(s, a, sb, 5, now, err, sizeof(err)), STORE_REFUSED);
    ck_assert_int_eq(store_device_get(s, a, &d, err, sizeof(err)), 0);
    ck_assert_int_eq(d.state, STORE_DEV_ENROLLED);

    /* admin revoke: every unexpired certificate, keyCompromise; the other device untouched */
    ck_assert_int_eq(store_device_act(s, a, STORE_ACT_REVOKE, err, sizeof(err)), 0);
    ck_assert(listed(s, now, s1, &reason));
    ck_assert_int_eq(reason, 1);
    ck_assert(listed(s, now, s2, &reason));
    ck_assert_int_eq(reason, 5);   /* revoked before: its first reason stays */
    ck_assert(!listed(s, now, sb, &reason));
    ck_assert_int_eq(store_cert_ok(s, a, s1, now, err, sizeof(err)), STORE_REFUSED);
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
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
