/* A private SQLite file: the one way the spool (spool.c) and the ledger
 * (ledger.c) open their databases, and the statement helpers both use.
 *
 * The file rules (oo_sql_open):
 *  - a plain path, never an SQLite URI ("file:x" is the file ./file:x);
 *  - a new file is created 0600 whatever the umask, never through a
 *    symbolic link (SQLite gives the -wal and -shm files the same mode);
 *  - an existing file is opened with O_NOFOLLOW and checked with fstat
 *    before anything reads it, its -wal and -shm with lstat (never opened:
 *    see oo_sql_check_private): a symbolic link or a file another user owns
 *    is refused before anything reads it, and one with any group/other
 *    permission bit before anything is written to it (kind "storage",
 *    naming the file), so a file someone else pre-created in a shared
 *    directory is never adopted; all three are checked again once SQLite
 *    has opened them;
 *  - a file that cannot be ours (not SQLite, another application_id, not
 *    in WAL mode) is refused (kind "foreign") before SQLite opens it;
 *  - a file this process already has open in SQLite is never open()ed and
 *    close()d again to be checked: closing any descriptor of a file drops
 *    the process's POSIX locks on it, SQLite's included.
 *
 * Fork safety (the gate): a fork while another thread is inside SQLite
 * leaves the child a mutex no one unlocks. Every SQLite call of the spool
 * and the ledger runs between oo_sql_gate_enter and oo_sql_gate_leave, and
 * fork waits until no thread is inside. */
#ifndef OO_SQLFILE_H
#define OO_SQLFILE_H

#include <stdarg.h>
#include <stddef.h>
#include <sqlite3.h>

#include "store_err.h" /* oo_spool_err and the OO_SPOOL_* result codes */

/* One connection, as the helpers see it. */
typedef struct oo_sql_conn {
    sqlite3 *db;
    const char *noun;            /* "spool" | "ledger": the first word of messages */
    const char *path;            /* as given to open */
    const char *what;            /* the call in progress */
    double busy_timeout;         /* seconds */
    double busy_deadline;        /* of the lock wait in progress (monotonic) */
    unsigned long long dev, ino; /* the file's identity (oo_sql_open) */
    int tracked;                 /* counted among the files open here */
} oo_sql_conn;

/* The gate (see above). Never entered twice by one thread; entered
 * before any connection's own lock. */
void oo_sql_gate_enter(void);
void oo_sql_gate_leave(void);
/* Counts forks (in the child): a handle from another generation was
 * opened by another process. */
unsigned oo_sql_fork_gen(void);

/* Fills err (when not NULL) and returns code. */
int oo_sql_err(oo_spool_err *err, int code, int sqlite_code, const char *bound, const char *fmt,
               ...) __attribute__((format(printf, 5, 6)));
/* A failed SQLite call rc on c: kind "busy" (lock) or "storage", the
 * message naming the file, the call and SQLite's reason. Must run before
 * anything else touches the connection (a rollback resets the message). */
int oo_sql_fail(oo_sql_conn *c, oo_spool_err *err, int rc);
int oo_sql_nomem(oo_sql_conn *c, oo_spool_err *err);

/* Opens c->path (c->noun, c->path, c->busy_timeout set) under the file
 * rules above, with the spool's VFS, extended result codes, the busy
 * handler, and no checkpoint on close until oo_sql_adopt (the file is not
 * known to be ours yet). app_id: the application_id a file of ours has
 * (0 is accepted too: a file being created). On failure c->db may be open:
 * close it with oo_sql_close. */
int oo_sql_open(oo_sql_conn *c, unsigned long app_id, oo_spool_err *err);
/* A second connection on a file already opened and checked (a reader, a
 * checkpointer): no checks, no busy handler unless busy is set. */
int oo_sql_open_more(const char *path, sqlite3 **db, int busy, oo_sql_conn *c);
/* Checks the -wal and -shm files (and with main_too the file itself)
 * when they exist: regular files of ours, private, not links. */
int oo_sql_check_private(oo_sql_conn *c, int main_too, oo_spool_err *err);
/* The file is ours: closing may checkpoint it again. */
void oo_sql_adopt(oo_sql_conn *c);
/* Switches to WAL, waiting up to busy_timeout for the exclusive lock. */
int oo_sql_set_wal(oo_sql_conn *c, oo_spool_err *err);
/* SQLite's busy handler for c: short growing sleeps up to busy_timeout. */
int oo_sql_on_busy(void *conn, int n);
/* Closes the connection opened by oo_sql_open (the file is no longer
 * counted as open in this process). */
void oo_sql_close(oo_sql_conn *c);

/* A kind of file: what makes one ours, and how to make or migrate one. */
typedef struct oo_sql_schema {
    unsigned long app_id;
    long long version;          /* the current schema version (user_version) */
    const char *tables;         /* SQL list of the tables every version has: "'a', 'b'" */
    int ntables;                /* how many */
    int unstamped_v1;           /* a version-1 file may lack the application_id (the spool's) */
    int page_size;              /* for new files */
    const char *create_sql;     /* the current schema, into an empty file */
    const char *const *migrate; /* migrate[v]: from version v to v + 1 (v = 1 .. version - 1) */
} oo_sql_schema;

/* Opens c->path (oo_sql_open), refuses a file that is not ours or is
 * newer (kind "foreign", nothing written), switches to WAL, and creates or
 * migrates the schema in one transaction (concurrent first opens
 * serialize there). The caller then sets its pragmas and calls oo_sql_adopt. */
int oo_sql_connect(oo_sql_conn *c, const oo_sql_schema *sc, oo_spool_err *err);

/* What a file holds: application_id, user_version,
 * count of schema objects, and how many of `tables` (an SQL list of
 * quoted names, "'a', 'b'") exist. */
typedef struct oo_sql_inspect {
    long long app_id, version, objects, ours;
} oo_sql_inspect;
int oo_sql_inspect_file(oo_sql_conn *c, const char *tables, oo_sql_inspect *out);
/* Runs a one-off query and reads n integers from its first row (0 when
 * there is none). */
int oo_sql_row_ints(oo_sql_conn *c, const char *sql, long long *v, int n);

/* Statements: sql[i] prepared (persistent) into cache[i] on first use.
 * Arguments are described by fmt, one letter each:
 *   i long long   I long long, 0 = NULL   J int has, long long (NULL unless has)
 *   d double   o int, 0 = NULL
 *   s const char * (NUL-terminated; NULL = NULL)
 *   t const char *, size_t (text; NULL = NULL)   b const void *, size_t (blob)
 * Pointers are bound SQLITE_STATIC and cleared once the statement ends. */
sqlite3_stmt *oo_sql_stmt(oo_sql_conn *c, sqlite3_stmt **cache, const char *const *sql, int i,
                          int *rc);
/* Runs statement i to completion: SQLITE_OK or the error. */
int oo_sql_exec(oo_sql_conn *c, sqlite3_stmt **cache, const char *const *sql, int i,
                const char *fmt, ...);
/* Starts statement i: SQLITE_ROW (*out is on the first row: step on, then
 * oo_sql_finish), SQLITE_DONE (finished) or an error (finished). */
int oo_sql_query(oo_sql_conn *c, sqlite3_stmt **cache, const char *const *sql, int i,
                 sqlite3_stmt **out, const char *fmt, ...);
/* One-row queries: integers a, b (columns 0, 1), real x (column 0);
 * found = a row with column 0 not NULL. */
typedef struct oo_sql_scalar {
    long long a, b;
    double x;
    int found;
} oo_sql_scalar;
int oo_sql_scalar_of(oo_sql_conn *c, sqlite3_stmt **cache, const char *const *sql, int i,
                     oo_sql_scalar *v, const char *fmt, ...);
void oo_sql_finish(sqlite3_stmt *st);
/* Rolls back the transaction in progress, if any. */
void oo_sql_rollback(oo_sql_conn *c);
void oo_sql_finalize_all(sqlite3_stmt **cache, int n);

/* A lease or reservation owner token, "pid:16 hex digits" (cap >= 32);
 * inside the gate (it asks SQLite's PRNG). */
void oo_sql_owner_token(char *out, size_t cap);

/* A column's bytes, NUL-terminated (sqlite3_column_text guarantees it). */
const char *oo_sql_column_text(sqlite3_stmt *st, int i, size_t *len);

#endif
