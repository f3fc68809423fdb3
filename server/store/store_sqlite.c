/* SPDX-License-Identifier: Apache-2.0 */
/* The default store engine: an embedded SQLite file. Several processes may
 * open the same file: writes take the database lock at BEGIN IMMEDIATE and
 * wait for it (busy timeout) rather than fail. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"

typedef struct {
    db base;
    sqlite3 *h;
} db_sqlite;

static int sq_exec(db *d, const char *sql, int n, const char *const *params, db_res *res,
                   char *err, size_t errlen)
{
    sqlite3 *h = ((db_sqlite *)d)->h;
    sqlite3_stmt *st = NULL;
    if (res)
        memset(res, 0, sizeof(*res));
    if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "sqlite: %s", sqlite3_errmsg(h));
        return -1;
    }
    for (int i = 0; i < n; i++) {
        int rc = params[i] ? sqlite3_bind_text(st, i + 1, params[i], -1, SQLITE_TRANSIENT)
                           : sqlite3_bind_null(st, i + 1);
        if (rc != SQLITE_OK) {
            snprintf(err, errlen, "sqlite: binding parameter %d: %s", i + 1, sqlite3_errmsg(h));
            sqlite3_finalize(st);
            return -1;
        }
    }
    int rc, cap = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!res)
            continue;
        int nc = sqlite3_column_count(st);
        res->ncols = nc;
        if ((res->nrows + 1) * nc > cap) {
            cap = (res->nrows + 1) * nc * 2;
            char **c = realloc(res->cells, (size_t)cap * sizeof(char *));
            if (!c) {
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
            res->cells = c;
        }
        for (int i = 0; i < nc; i++) {
            const unsigned char *t = sqlite3_column_text(st, i);
            res->cells[res->nrows * nc + i] = t ? strdup((const char *)t) : NULL;
        }
        res->nrows++;
    }
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "sqlite: %s", sqlite3_errmsg(h));
        goto fail;
    }
    sqlite3_finalize(st);
    return 0;
fail:
    sqlite3_finalize(st);
    if (res)
        db_res_free(res);
    return -1;
}

static int sq_begin(db *d, char *err, size_t errlen)
{
    return sq_exec(d, "BEGIN IMMEDIATE", 0, NULL, NULL, err, errlen);
}

static int sq_migrate_lock(db *d, int lock, char *err, size_t errlen)
{
    (void)d, (void)lock, (void)err, (void)errlen;   /* BEGIN IMMEDIATE serialises */
    return 0;
}

static void sq_close(db *d)
{
    if (!d)
        return;
    sqlite3_close(((db_sqlite *)d)->h);
    free(d);
}

static const db_ops sqlite_ops = {sq_exec, sq_begin, sq_migrate_lock, sq_close, "sqlite"};

int db_sqlite_open(db **out, const char *path, char *err, size_t errlen)
{
    db_sqlite *d = calloc(1, sizeof(*d));
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    d->base.ops = &sqlite_ops;
    if (sqlite3_open_v2(path, &d->h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(err, errlen, "database sqlite:%s: %s", path, d->h ? sqlite3_errmsg(d->h) : "cannot open");
        sq_close(&d->base);
        return -1;
    }
    sqlite3_busy_timeout(d->h, 10000);
    if (sq_exec(&d->base, "PRAGMA foreign_keys = ON", 0, NULL, NULL, err, errlen) < 0 ||
        sq_exec(&d->base, "PRAGMA journal_mode = WAL", 0, NULL, NULL, err, errlen) < 0) {
        sq_close(&d->base);
        return -1;
    }
    *out = &d->base;
    return 0;
}
