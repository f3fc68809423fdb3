/* SPDX-License-Identifier: Apache-2.0 */
/* The PostgreSQL store engine (libpq), for fleets that outgrow one machine:
 * several server instances on one database, each with its own connection
 * and no state of its own. A broken connection is re-established once per
 * statement outside a transaction. */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"

/* Any constant: the key of the advisory lock that serialises migrations. */
#define MIGRATE_LOCK_KEY "7261902214"

typedef struct {
    db base;
    PGconn *c;
    int in_tx;
} db_pg;

/* ?N -> $N (the store writes ?N placeholders for both engines; no SQL
   text of the store has a '?' elsewhere). */
static char *pg_sql(const char *sql)
{
    char *s = strdup(sql);
    if (!s)
        return NULL;
    for (char *p = s; *p; p++)
        if (*p == '?')
            *p = '$';
    return s;
}

static int pg_exec(db *d, const char *sql, int n, const char *const *params, db_res *res,
                   char *err, size_t errlen)
{
    db_pg *p = (db_pg *)d;
    if (res)
        memset(res, 0, sizeof(*res));
    if (PQstatus(p->c) != CONNECTION_OK && !p->in_tx)
        PQreset(p->c);
    char *q = pg_sql(sql);
    if (!q) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    PGresult *r = PQexecParams(p->c, q, n, NULL, params, NULL, NULL, 0);
    free(q);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        const char *m = PQresultErrorMessage(r);
        snprintf(err, errlen, "postgresql: %.*s", (int)strcspn(m && *m ? m : PQerrorMessage(p->c), "\n"),
                 m && *m ? m : PQerrorMessage(p->c));
        PQclear(r);
        return -1;
    }
    if (!strncmp(sql, "BEGIN", 5))
        p->in_tx = 1;
    else if (!strcmp(sql, "COMMIT") || !strcmp(sql, "ROLLBACK"))
        p->in_tx = 0;
    if (res && st == PGRES_TUPLES_OK) {
        res->nrows = PQntuples(r);
        res->ncols = PQnfields(r);
        if (res->nrows && res->ncols) {
            res->cells = calloc((size_t)res->nrows * res->ncols, sizeof(char *));
            if (!res->cells) {
                PQclear(r);
                res->nrows = 0;
                snprintf(err, errlen, "out of memory");
                return -1;
            }
        }
        for (int i = 0; i < res->nrows; i++)
            for (int j = 0; j < res->ncols; j++)
                res->cells[i * res->ncols + j] = PQgetisnull(r, i, j) ? NULL : strdup(PQgetvalue(r, i, j));
    }
    PQclear(r);
    return 0;
}

static int pg_begin(db *d, char *err, size_t errlen)
{
    return pg_exec(d, "BEGIN", 0, NULL, NULL, err, errlen);
}

static int pg_migrate_lock(db *d, int lock, char *err, size_t errlen)
{
    const char *k[] = {MIGRATE_LOCK_KEY};
    return pg_exec(d, lock ? "SELECT pg_advisory_lock(?1::bigint)" : "SELECT pg_advisory_unlock(?1::bigint)",
                   1, k, NULL, err, errlen);
}

static void pg_close(db *d)
{
    if (!d)
        return;
    PQfinish(((db_pg *)d)->c);
    free(d);
}

static const db_ops pg_ops = {pg_exec, pg_begin, pg_migrate_lock, pg_close, "postgresql"};

static void pg_notice(void *arg, const char *msg)
{
    (void)arg, (void)msg;  /* "relation already exists, skipping" and the like */
}

int db_pg_open(db **out, const char *conninfo, char *err, size_t errlen)
{
    db_pg *d = calloc(1, sizeof(*d));
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    d->base.ops = &pg_ops;
    d->c = PQconnectdb(conninfo);
    if (!d->c || PQstatus(d->c) != CONNECTION_OK) {
        const char *m = d->c ? PQerrorMessage(d->c) : "out of memory";
        /* never echo the conninfo: it may hold a password */
        snprintf(err, errlen, "database postgresql: cannot connect: %.*s", (int)strcspn(m, "\n"), m);
        pg_close(&d->base);
        return -1;
    }
    PQsetNoticeProcessor(d->c, pg_notice, NULL);
    *out = &d->base;
    return 0;
}
