/* SPDX-License-Identifier: Apache-2.0 */
/* The engine underneath the store (internal to server/store): SQLite or
 * PostgreSQL run the same SQL text. Placeholders are written ?1, ?2 ...;
 * the PostgreSQL engine turns them into $1, $2. Every value travels as text
 * (NULL for SQL NULL): both engines convert it to the column's type. */
#ifndef M2MVPN_SERVER_DB_H
#define M2MVPN_SERVER_DB_H

#include <stddef.h>

typedef struct db_res {
    int nrows, ncols;
    char **cells;                 /* nrows * ncols, NULL for SQL NULL */
} db_res;

typedef struct db db;
typedef struct db_ops {
    /* Run one statement with n text parameters. res may be NULL (no rows wanted).
       Returns 0, or -1 with a message in err. */
    int (*exec)(db *d, const char *sql, int n, const char *const *params, db_res *res,
                char *err, size_t errlen);
    /* BEGIN for a transaction that will write (SQLite: BEGIN IMMEDIATE). */
    int (*begin)(db *d, char *err, size_t errlen);
    /* Serialise schema migrations across processes (PostgreSQL: advisory lock). */
    int (*migrate_lock)(db *d, int lock, char *err, size_t errlen);
    void (*close)(db *d);
    const char *name;
} db_ops;

struct db {
    const db_ops *ops;
};

int db_sqlite_open(db **out, const char *path, char *err, size_t errlen);
int db_pg_open(db **out, const char *conninfo, char *err, size_t errlen);
void db_res_free(db_res *r);
const char *db_cell(const db_res *r, int row, int col);

#endif
