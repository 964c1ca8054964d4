/* Durable spool: SQLite storage of encoded orders (see spool.h for the
 * contract). No Lua here: the binding is l_spool.c, and the delivery
 * thread calls this API directly. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>

#include "spool.h"
#include "clock.h"
#include "spool_wal.h"

/* ------------------------------------------------------------------ */
/* Schema                                                              */

/* `totals` is kept by triggers so the bounds check on every put is O(1),
 * whichever path (ours, or an operator's sqlite3 shell) changes `orders`.
 * It also holds `seq`, the last id handed out: ids are never reused, so an
 * order keeps one id for life (queue → dead → queue) and a log line naming
 * an id stays unambiguous. (Version 1 used AUTOINCREMENT for that, which
 * writes one more page, sqlite_sequence, on every put.) */
/* The live leases, for stats() without a scan of the queue (a put, which
 * leaves claimed_by NULL, does not touch it). */
#define ORDERS_LEASED_INDEX                                                                \
    "CREATE INDEX orders_leased ON orders(claimed_until) WHERE claimed_by IS NOT NULL;"

#define ORDERS_INS_TRIGGER                                                                 \
    "CREATE TRIGGER orders_ins AFTER INSERT ON orders BEGIN"                               \
    " UPDATE totals SET n = n + 1, bytes = bytes + NEW.bytes, seq = max(seq, NEW.id)"      \
    " WHERE one = 1; END;"

static const char SCHEMA_SQL[] =
    "CREATE TABLE orders("
    " id INTEGER PRIMARY KEY, ref TEXT, body BLOB NOT NULL,"
    " bytes INT NOT NULL, created_at REAL NOT NULL, attempts INT NOT NULL DEFAULT 0,"
    " next_at REAL NOT NULL, claimed_by TEXT, claimed_until REAL, last_error TEXT,"
    " channel TEXT);"
    "CREATE INDEX orders_next_at ON orders(next_at);"
    "CREATE INDEX orders_created_at ON orders(created_at);"
    ORDERS_LEASED_INDEX
    "CREATE TABLE dead("
    " id INTEGER PRIMARY KEY, ref TEXT, body BLOB NOT NULL, created_at REAL,"
    " failed_at REAL NOT NULL, attempts INT NOT NULL, kind TEXT NOT NULL,"
    " status INT, code TEXT, message TEXT, channel TEXT);"
    "CREATE INDEX dead_failed_at ON dead(failed_at);"
    "CREATE TABLE totals(one INTEGER PRIMARY KEY CHECK (one = 1),"
    " n INT NOT NULL, bytes INT NOT NULL, seq INT NOT NULL DEFAULT 0);"
    "INSERT INTO totals VALUES (1, 0, 0, 0);"
    ORDERS_INS_TRIGGER
    "CREATE TRIGGER orders_del AFTER DELETE ON orders BEGIN"
    " UPDATE totals SET n = n - 1, bytes = bytes - OLD.bytes WHERE one = 1; END;";

/* Version 1 → 2: channels, and ids from totals.seq. ADD COLUMN appends, so
 * a migrated file has the same column order as a new one. */
static const char MIGRATE_V1_SQL[] =
    "ALTER TABLE orders ADD COLUMN channel TEXT;"
    "ALTER TABLE dead ADD COLUMN channel TEXT;"
    "ALTER TABLE totals ADD COLUMN seq INT NOT NULL DEFAULT 0;"
    "UPDATE totals SET seq = max("
    " (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'orders'),"
    " (SELECT coalesce(max(id), 0) FROM orders), (SELECT coalesce(max(id), 0) FROM dead));"
    "DROP TRIGGER orders_ins;" ORDERS_INS_TRIGGER ORDERS_LEASED_INDEX;

/* What a file holds, read in one snapshot before anything is written. */
static const char INSPECT_SQL[] =
    "SELECT (SELECT application_id FROM pragma_application_id),"
    " (SELECT user_version FROM pragma_user_version),"
    " (SELECT count(*) FROM sqlite_master),"
    " (SELECT count(*) FROM sqlite_master WHERE type = 'table'"
    "  AND name IN ('orders', 'dead', 'totals'))";

/* "Free" = no live lease: never claimed, released, or its lease ran out. */
#define FREE_AT(p) "(claimed_until IS NULL OR claimed_until <= " p ")"
#define DEAD_COLS \
    "id, ref, body, created_at, failed_at, attempts, kind, status, code, message, channel"

enum {
    ST_BEGIN, ST_BEGIN_READ, ST_COMMIT, ST_ROLLBACK,
    ST_TOTALS, ST_INSERT, ST_MIN_CREATED, ST_EXPIRE_COPY, ST_EXPIRE_DEL,
    ST_OLDEST_FREE, ST_MOVE_COPY, ST_MOVE_DEL, ST_CLAIM, ST_CLAIM_MARK, ST_ACK, ST_RETRY,
    ST_RELEASE, ST_OWNER, ST_DEAD_SUM, ST_REQUEUE_COPY, ST_REQUEUE_DEL,
    ST_PURGE_DEAD, ST_PURGE_QUEUED, ST_WAITING, ST_LEASED, ST_DEAD_COUNT, ST_LIST_QUEUED,
    ST_LIST_DEAD, ST_NEXT_DUE,
    ST_COUNT
};

/* Requeue and dead sums take ?1 = id, or ?1 = NULL for every dead letter. */
#define DEAD_ONE_OR_ALL "(?1 IS NULL OR id = ?1)"

static const char *const SQL[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_BEGIN_READ] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_TOTALS] = "SELECT n, bytes FROM totals WHERE one = 1",
    [ST_INSERT] = "INSERT INTO orders(id, ref, body, bytes, created_at, attempts, next_at, channel)"
                  " VALUES ((SELECT seq + 1 FROM totals WHERE one = 1), ?1, ?2, ?3, ?4, 0, ?4, ?5)",
    [ST_MIN_CREATED] = "SELECT min(created_at) FROM orders",
    [ST_EXPIRE_COPY] = "INSERT INTO dead(" DEAD_COLS ")"
                       " SELECT id, ref, body, created_at, ?2, attempts, 'expired', NULL, NULL,"
                       " ?3 || coalesce('; last error: ' || last_error, ''), channel"
                       " FROM orders WHERE created_at < ?1 AND " FREE_AT("?2"),
    [ST_EXPIRE_DEL] = "DELETE FROM orders WHERE created_at < ?1 AND " FREE_AT("?2"),
    [ST_OLDEST_FREE] = "SELECT id, bytes FROM orders WHERE " FREE_AT("?1")
                       " ORDER BY created_at, id LIMIT 1",
    [ST_MOVE_COPY] = "INSERT INTO dead(" DEAD_COLS ")"
                     " SELECT id, ref, body, created_at, ?2, attempts + ?3, ?4, ?5, ?6, ?7, channel"
                     " FROM orders WHERE id = ?1 AND (?8 IS NULL OR claimed_by = ?8)",
    [ST_MOVE_DEL] = "DELETE FROM orders WHERE id = ?1 AND (?2 IS NULL OR claimed_by = ?2)",
    [ST_CLAIM] = "SELECT id, ref, body, bytes, attempts, created_at, next_at, channel FROM orders"
                 " WHERE next_at <= ?1 AND " FREE_AT("?1") " ORDER BY next_at, id LIMIT ?2",
    [ST_CLAIM_MARK] = "UPDATE orders SET claimed_by = ?2, claimed_until = ?3 WHERE id = ?1",
    [ST_ACK] = "DELETE FROM orders WHERE id = ?1 AND claimed_by = ?2",
    [ST_RETRY] = "UPDATE orders SET attempts = attempts + 1, next_at = ?3, last_error = ?4,"
                 " claimed_by = NULL, claimed_until = NULL WHERE id = ?1 AND claimed_by = ?2",
    [ST_RELEASE] = "UPDATE orders SET claimed_by = NULL, claimed_until = NULL"
                   " WHERE id = ?1 AND claimed_by = ?2",
    [ST_OWNER] = "SELECT claimed_by FROM orders WHERE id = ?1",
    [ST_DEAD_SUM] = "SELECT count(*), total(length(body)) FROM dead WHERE " DEAD_ONE_OR_ALL,
    [ST_REQUEUE_COPY] = "INSERT INTO orders(id, ref, body, bytes, created_at, attempts, next_at,"
                        " channel) SELECT id, ref, body, length(body), ?2, 0, ?2, channel"
                        " FROM dead WHERE " DEAD_ONE_OR_ALL " ORDER BY id",
    [ST_REQUEUE_DEL] = "DELETE FROM dead WHERE " DEAD_ONE_OR_ALL,
    [ST_PURGE_DEAD] = "DELETE FROM dead WHERE failed_at < ?1",
    [ST_PURGE_QUEUED] = "DELETE FROM orders WHERE created_at < ?1 AND " FREE_AT("?2"),
    [ST_WAITING] = "SELECT count(*) FROM orders WHERE next_at > ?1",
    [ST_LEASED] = "SELECT count(*), total(next_at <= ?1) FROM orders"
                  " WHERE claimed_by IS NOT NULL AND claimed_until > ?1",
    [ST_DEAD_COUNT] = "SELECT count(*) FROM dead",
    [ST_LIST_QUEUED] = "SELECT id, ref, CASE WHEN ?4 THEN body END, bytes, created_at, attempts,"
                       " next_at, claimed_by, claimed_until, last_error, channel"
                       " FROM orders WHERE id > ?1 ORDER BY id LIMIT ?2 OFFSET ?3",
    [ST_LIST_DEAD] = "SELECT id, ref, CASE WHEN ?4 THEN body END, length(body), created_at,"
                     " attempts, failed_at, kind, status, code, message, channel"
                     " FROM dead WHERE id > ?1 ORDER BY id LIMIT ?2 OFFSET ?3",
    [ST_NEXT_DUE] = "SELECT next_at FROM orders WHERE " FREE_AT("?1") " ORDER BY next_at LIMIT 1",
};

/* Row fields, listed per statement in column order (read_row). */
enum {
    F_END, F_ID, F_REF, F_BODY, F_BYTES, F_CREATED, F_ATTEMPTS, F_NEXT_AT, F_CLAIMED_BY,
    F_CLAIMED_UNTIL, F_LAST_ERROR, F_FAILED_AT, F_KIND, F_STATUS, F_CODE, F_MESSAGE, F_CHANNEL
};
static const unsigned char CLAIM_FIELDS[] = {F_ID, F_REF, F_BODY, F_BYTES, F_ATTEMPTS,
                                             F_CREATED, F_NEXT_AT, F_CHANNEL, F_END};
static const unsigned char QUEUED_FIELDS[] = {F_ID, F_REF, F_BODY, F_BYTES, F_CREATED, F_ATTEMPTS,
                                              F_NEXT_AT, F_CLAIMED_BY, F_CLAIMED_UNTIL,
                                              F_LAST_ERROR, F_CHANNEL, F_END};
static const unsigned char DEAD_FIELDS[] = {F_ID, F_REF, F_BODY, F_BYTES, F_CREATED, F_ATTEMPTS,
                                            F_FAILED_AT, F_KIND, F_STATUS, F_CODE, F_MESSAGE,
                                            F_CHANNEL, F_END};

/* New files only (a WAL database keeps the page size it was made with). */
#define PAGE_SIZE 2048
/* Checkpoints (see checkpointer()): copy the WAL back every CKPT_BYTES
 * written to it, and start it over once it holds WAL_RESTART_BYTES; a WAL
 * file left larger than that is cut back to it (journal_size_limit), so the
 * -wal file stays within a few MiB however many orders pass (spool.md:
 * bench/spool_wal.lua). */
#define CKPT_BYTES (1024 * 1024)
#define WAL_RESTART_BYTES (4 * 1024 * 1024)
/* Purge/requeue "everything": a cutoff no stored time reaches. */
#define FAR_FUTURE 1e300

/* One SQLite connection, shared by a handle and the handles reopened from
 * it. `mu` is held for a whole call (one transaction). */
typedef struct spool_db {
    sqlite3 *db;
    pthread_mutex_t mu;
    sqlite3_stmt *st[ST_COUNT]; /* prepared on first use, kept until close */
    const char *what;           /* the call in progress, for messages */
    int refs;                   /* handles on this connection (under mu) */
    pid_t pid;
    unsigned fork_gen;          /* fork_gen when opened */
    double busy_timeout;
    int sync_full;
    double busy_deadline;       /* of the lock wait in progress (monotonic) */
    int page_size;
    int wal_frames;             /* WAL size after the last commit (wal hook) */
    int ckpt_frames;            /* of those, copied back by the last checkpoint */
    /* the checkpoint thread (started on first need) and its connection */
    pthread_t ckpt_thread;
    pthread_cond_t ckpt_cv;     /* with mu: a checkpoint is wanted, or stop */
    int ckpt_state;             /* CKPT_* */
    int ckpt_wanted, ckpt_stop;
    sqlite3 *ckpt_db;
    char path[];                /* as given to open */
} spool_db;

enum { CKPT_NONE, CKPT_RUNNING, CKPT_INLINE /* no thread: the writer does it */ };

struct oo_spool {
    spool_db *d;          /* the connection for writes, shared with reopened handles */
    spool_db *r;          /* this handle's own connection for reads (opened on first read) */
    int r_failed;         /* it could not be opened: reads use d */
    pthread_mutex_t r_mu; /* guards opening r */
    oo_spool_opts opts;
    char owner[48];
};

/* ------------------------------------------------------------------ */
/* Errors                                                              */

const char *oo_spool_kind(int code) {
    switch (code) {
    case OO_SPOOL_OK: return "ok";
    case OO_SPOOL_FULL: return "full";
    case OO_SPOOL_BUSY: return "busy";
    case OO_SPOOL_LEASE: return "lease";
    case OO_SPOOL_MISUSE: return "misuse";
    case OO_SPOOL_FOREIGN: return "foreign";
    default: return "storage";
    }
}

static int set_err(oo_spool_err *err, int code, int sqlite_code, const char *bound,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int set_err(oo_spool_err *err, int code, int sqlite_code, const char *bound,
                   const char *fmt, ...) {
    if (err) {
        va_list ap;
        err->code = code;
        err->sqlite_code = sqlite_code;
        err->bound = bound;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Plain words before SQLite's own for the failures an operator must act on. */
static const char *rc_words(int rc) {
    switch (rc & 0xff) {
    case SQLITE_FULL: return "disk full (or max_file_bytes reached): ";
    case SQLITE_IOERR: return "I/O error: ";
    case SQLITE_CORRUPT: return "the file is damaged: ";
    case SQLITE_READONLY: return "cannot write: ";
    default: return "";
    }
}

/* A failed SQLite call. Must run before anything else touches the
 * connection (a rollback would overwrite sqlite3_errmsg). */
static int db_fail(spool_db *d, oo_spool_err *err, int rc) {
    const char *msg = d->db ? sqlite3_errmsg(d->db) : sqlite3_errstr(rc);
    int prim = rc & 0xff;
    if (prim == SQLITE_BUSY || prim == SQLITE_LOCKED)
        return set_err(err, OO_SPOOL_BUSY, rc, NULL,
                       "spool %s: %s: %s (still locked after busy_timeout %g s)", d->path,
                       d->what, msg, d->busy_timeout);
    return set_err(err, OO_SPOOL_STORAGE, rc, NULL, "spool %s: %s: %s%s", d->path, d->what,
                   rc_words(rc), msg);
}

static int nomem(spool_db *d, oo_spool_err *err) {
    return set_err(err, OO_SPOOL_STORAGE, SQLITE_NOMEM, NULL, "spool %s: %s: out of memory",
                   d->path, d->what);
}

static int misuse(oo_spool_err *err, const char *what, const char *why) {
    return set_err(err, OO_SPOOL_MISUSE, 0, NULL, "spool %s: %s", what, why);
}

/* ------------------------------------------------------------------ */
/* Statements                                                          */

static sqlite3_stmt *stmt(spool_db *d, int i, int *rc) {
    if (!d->st[i]) {
        *rc = sqlite3_prepare_v3(d->db, SQL[i], -1, SQLITE_PREPARE_PERSISTENT, &d->st[i], NULL);
        if (*rc != SQLITE_OK) {
            d->st[i] = NULL;
            return NULL;
        }
    }
    return d->st[i];
}

/* Binds the arguments `fmt` describes, one letter each:
 *   i long long   I long long, 0 = NULL   d double   o int, 0 = NULL
 *   s const char * (NUL-terminated; NULL = NULL)
 *   t const char *, size_t (text; NULL = NULL)   b const void *, size_t (blob)
 * Pointers are bound SQLITE_STATIC: finish() clears them after the step. */
static void bind_args(sqlite3_stmt *st, const char *fmt, va_list ap) {
    int i;
    for (i = 1; *fmt; fmt++, i++) {
        switch (*fmt) {
        case 'i': sqlite3_bind_int64(st, i, (sqlite3_int64)va_arg(ap, long long)); break;
        case 'I': {
            long long v = va_arg(ap, long long);
            if (v) sqlite3_bind_int64(st, i, (sqlite3_int64)v);
            else sqlite3_bind_null(st, i);
            break;
        }
        case 'd': sqlite3_bind_double(st, i, va_arg(ap, double)); break;
        case 'o': {
            int v = va_arg(ap, int);
            if (v) sqlite3_bind_int(st, i, v);
            else sqlite3_bind_null(st, i);
            break;
        }
        case 's': {
            const char *p = va_arg(ap, const char *);
            if (p) sqlite3_bind_text(st, i, p, -1, SQLITE_STATIC);
            else sqlite3_bind_null(st, i);
            break;
        }
        case 't': {
            const char *p = va_arg(ap, const char *);
            size_t n = va_arg(ap, size_t);
            if (p) sqlite3_bind_text64(st, i, p, (sqlite3_uint64)n, SQLITE_STATIC, SQLITE_UTF8);
            else sqlite3_bind_null(st, i);
            break;
        }
        case 'b': {
            const void *p = va_arg(ap, const void *);
            size_t n = va_arg(ap, size_t);
            sqlite3_bind_blob64(st, i, p, (sqlite3_uint64)n, SQLITE_STATIC);
            break;
        }
        }
    }
}

static void finish(sqlite3_stmt *st) {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Prepares statement i, binds ap and steps once. */
static int step_first(spool_db *d, int i, sqlite3_stmt **out, const char *fmt, va_list ap) {
    int rc;
    *out = stmt(d, i, &rc);
    if (!*out) return rc;
    bind_args(*out, fmt, ap);
    return sqlite3_step(*out);
}

/* Starts statement i with its arguments: SQLITE_ROW (*out is on the first
 * row; step on, then finish(*out)), SQLITE_DONE (already finished) or an
 * error (finished). */
static int query(spool_db *d, int i, sqlite3_stmt **out, const char *fmt, ...) {
    int rc;
    va_list ap;
    va_start(ap, fmt);
    rc = step_first(d, i, out, fmt, ap);
    va_end(ap);
    if (*out && rc != SQLITE_ROW) finish(*out);
    return rc;
}

/* Runs statement i to completion: SQLITE_OK or the error. */
static int exec(spool_db *d, int i, const char *fmt, ...) {
    int rc;
    va_list ap;
    sqlite3_stmt *st;
    va_start(ap, fmt);
    rc = step_first(d, i, &st, fmt, ap);
    va_end(ap);
    if (!st) return rc;
    while (rc == SQLITE_ROW) rc = sqlite3_step(st);
    finish(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* The one-row queries: up to two integers (a, b) or a real (x) from
 * column 0, found = whether there was a row and column 0 was not NULL. */
typedef struct scalar {
    long long a, b;
    double x;
    int found;
} scalar;

static int query_scalar(spool_db *d, int i, scalar *v, const char *fmt, ...) {
    int rc;
    va_list ap;
    sqlite3_stmt *st;
    memset(v, 0, sizeof *v);
    va_start(ap, fmt);
    rc = step_first(d, i, &st, fmt, ap);
    va_end(ap);
    if (!st) return rc;
    if (rc == SQLITE_ROW) {
        v->found = sqlite3_column_type(st, 0) != SQLITE_NULL;
        v->a = sqlite3_column_int64(st, 0);
        v->x = sqlite3_column_double(st, 0);
        if (sqlite3_column_count(st) > 1) v->b = sqlite3_column_int64(st, 1);
    }
    finish(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static void rollback(spool_db *d) {
    if (!sqlite3_get_autocommit(d->db) && exec(d, ST_ROLLBACK, "") != SQLITE_OK)
        sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
}

/* ------------------------------------------------------------------ */
/* Rows                                                                */

void oo_spool_rows_free(oo_spool_rows *r) {
    size_t i;
    if (!r) return;
    for (i = 0; i < r->n; i++) {
        oo_spool_row *w = &r->v[i];
        free(w->ref);
        free(w->body);
        free(w->channel);
        free(w->claimed_by);
        free(w->last_error);
        free(w->kind);
        free(w->code);
        free(w->message);
    }
    free(r->v);
    r->v = NULL;
    r->n = r->cap = 0;
}

static oo_spool_row *rows_push(oo_spool_rows *r) {
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        oo_spool_row *v = (oo_spool_row *)realloc(r->v, cap * sizeof *v);
        if (!v) return NULL;
        r->v = v;
        r->cap = cap;
    }
    memset(&r->v[r->n], 0, sizeof r->v[0]);
    return &r->v[r->n++];
}

/* Heap copy of a text/blob column (NUL added); NULL for SQL NULL.
 * *oom is set when a non-NULL value could not be copied. */
static char *dup_col(sqlite3_stmt *st, int i, size_t *len, int *oom) {
    const void *p;
    int n;
    char *out;
    size_t ignored;
    if (!len) len = &ignored;
    *len = 0;
    if (sqlite3_column_type(st, i) == SQLITE_NULL) return NULL;
    p = sqlite3_column_blob(st, i);
    n = sqlite3_column_bytes(st, i);
    out = (char *)malloc((size_t)n + 1);
    if (!out) {
        *oom = 1;
        return NULL;
    }
    if (n > 0) memcpy(out, p, (size_t)n);
    out[n] = '\0';
    *len = (size_t)n;
    return out;
}

/* Appends the current row of st to out, its columns being `fields`.
 * Returns 0, or -1 when out of memory (the row may be partly filled). */
static int read_row(sqlite3_stmt *st, const unsigned char *fields, oo_spool_rows *out) {
    oo_spool_row *w = rows_push(out);
    int c, oom = 0;
    if (!w) return -1;
    for (c = 0; fields[c] != F_END; c++) {
        switch (fields[c]) {
        case F_ID: w->id = sqlite3_column_int64(st, c); break;
        case F_REF: w->ref = dup_col(st, c, &w->ref_len, &oom); break;
        case F_BODY: w->body = dup_col(st, c, &w->body_len, &oom); break;
        case F_BYTES: w->bytes = sqlite3_column_int64(st, c); break;
        case F_CREATED: w->created_at = sqlite3_column_double(st, c); break;
        case F_ATTEMPTS: w->attempts = sqlite3_column_int64(st, c); break;
        case F_NEXT_AT: w->next_at = sqlite3_column_double(st, c); break;
        case F_CLAIMED_BY: w->claimed_by = dup_col(st, c, NULL, &oom); break;
        case F_CLAIMED_UNTIL: w->claimed_until = sqlite3_column_double(st, c); break;
        case F_LAST_ERROR: w->last_error = dup_col(st, c, NULL, &oom); break;
        case F_FAILED_AT: w->failed_at = sqlite3_column_double(st, c); break;
        case F_KIND: w->kind = dup_col(st, c, NULL, &oom); break;
        case F_STATUS: w->status = sqlite3_column_int(st, c); break;
        case F_CODE: w->code = dup_col(st, c, NULL, &oom); break;
        case F_MESSAGE: w->message = dup_col(st, c, NULL, &oom); break;
        case F_CHANNEL: w->channel = dup_col(st, c, &w->channel_len, &oom); break;
        }
    }
    return oom ? -1 : 0;
}

static int cmp_row_id(const void *a, const void *b) {
    long long x = ((const oo_spool_row *)a)->id, y = ((const oo_spool_row *)b)->id;
    return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------------ */
/* Fork safety                                                         */

/* A fork while another thread (a delivery thread, a checkpointer) is
 * inside SQLite, holding its allocator's, VFS's or PRNG's mutex, leaves the
 * child a mutex no one will unlock: the child's first SQLite call hangs. So
 * every SQLite call of a spool runs inside the gate, and fork (the
 * pthread_atfork prepare handler) closes it and waits until no thread is
 * inside. Order: the gate before a connection's lock, never inside one;
 * never entered twice by one thread. */
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_inside, gate_closed;

/* Counts forks (in the child), so a call can tell it is in another
 * process than the handle's without a getpid() system call each time. */
static volatile unsigned fork_gen;

static void gate_enter(void) {
    pthread_mutex_lock(&gate_mu);
    while (gate_closed) pthread_cond_wait(&gate_cv, &gate_mu);
    gate_inside++;
    pthread_mutex_unlock(&gate_mu);
}

static void gate_leave(void) {
    pthread_mutex_lock(&gate_mu);
    if (--gate_inside == 0 && gate_closed) pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

/* Returns holding gate_mu, the gate closed and empty, until the fork is done. */
static void before_fork(void) {
    pthread_mutex_lock(&gate_mu);
    gate_closed = 1;
    while (gate_inside > 0) pthread_cond_wait(&gate_cv, &gate_mu);
}

static void after_fork_in_parent(void) {
    gate_closed = 0;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

/* The child's only thread is the forking one: the gate starts afresh
 * (its waiters were other threads, gone with the fork). */
static void after_fork_in_child(void) {
    pthread_mutex_init(&gate_mu, NULL);
    pthread_cond_init(&gate_cv, NULL);
    gate_inside = gate_closed = 0;
    fork_gen++;
}

static void watch_forks(void) { pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child); }

/* ------------------------------------------------------------------ */
/* Clocks, waits, checkpoints                                          */

void oo_spool_opts_init(oo_spool_opts *o) {
    memset(o, 0, sizeof *o);
    o->busy_timeout = 5.0;
    o->sync = OO_SPOOL_SYNC_NORMAL;
    o->on_full = OO_SPOOL_REFUSE;
}

double oo_spool_now(void) { return oo_wall_now(); }

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_for(double seconds) {
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
}

/* Another process holds the lock: poll in short, growing sleeps (50 µs to
 * 2 ms) until busy_timeout. SQLite's own handler sleeps 1 ms at the first
 * retry and up to 100 ms later, far longer than a spool transaction holds
 * the lock. */
static int on_busy(void *arg, int n) {
    spool_db *d = (spool_db *)arg;
    double now = mono_now(), pause = 50e-6 * (double)(1 << (n < 6 ? n : 6));
    if (n == 0) d->busy_deadline = now + d->busy_timeout;
    if (now >= d->busy_deadline) return 0;
    if (pause > 2e-3) pause = 2e-3;
    if (pause > d->busy_deadline - now) pause = d->busy_deadline - now;
    sleep_for(pause);
    return 1;
}

/* Replaces SQLite's autocheckpoint: only notes the WAL's size. */
static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int frames) {
    (void)db;
    (void)name;
    ((spool_db *)arg)->wal_frames = frames;
    return SQLITE_OK;
}

/* SQLite may be built to read "file:..." as a URI whatever the open flags
 * say (Debian's is): such a relative name gets "./" in front. */
static char *sqlite_name(const char *path) {
    size_t n = strlen(path);
    int dot = strncasecmp(path, "file:", 5) == 0;
    char *out = (char *)malloc(n + 3);
    if (out) snprintf(out, n + 3, "%s%s", dot ? "./" : "", path);
    return out;
}

/* Checkpoints. SQLite's own would run inside the put that crosses its
 * threshold, with two fsyncs (WAL, then database) under synchronous=NORMAL:
 * tens of milliseconds on a busy disk, in the caller's put. Instead a
 * thread per connection (started when first needed) copies the WAL back
 * on its own connection, without the connection lock, so puts and claims
 * go on meanwhile. Starting the WAL over needs every frame copied before
 * the next write begins, which never happens while writes keep coming: so
 * once the WAL holds WAL_RESTART_BYTES the thread copies the remaining tail
 * holding the lock, and the next write starts the WAL from the top. */

static int ckpt_open(spool_db *d) {
    char *name = sqlite_name(d->path);
    int rc;
    if (!name) return SQLITE_NOMEM;
    rc = sqlite3_open_v2(name, &d->ckpt_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                         oo_spool_vfs());
    free(name);
    if (rc == SQLITE_OK) {
        /* a checkpoint syncs as its connection's synchronous says */
        rc = sqlite3_exec(d->ckpt_db, d->sync_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                          NULL, NULL, NULL);
        sqlite3_busy_timeout(d->ckpt_db, (int)(d->busy_timeout * 1000.0 + 0.5));
        sqlite3_db_config(d->ckpt_db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
        sqlite3_wal_autocheckpoint(d->ckpt_db, 0);
    }
    /* a connection finds the WAL at its first read */
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(d->ckpt_db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_close_v2(d->ckpt_db);
        d->ckpt_db = NULL;
    }
    return rc;
}

/* One passive checkpoint on db (a failure surfaces in the next write). */
static void ckpt_pass(sqlite3 *db) {
    sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
}

static void *checkpointer(void *arg) {
    spool_db *d = (spool_db *)arg;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        int restart;
        while (!d->ckpt_wanted && !d->ckpt_stop) pthread_cond_wait(&d->ckpt_cv, &d->mu);
        if (d->ckpt_stop) break;
        d->ckpt_wanted = 0;
        pthread_mutex_unlock(&d->mu);
        gate_enter(); /* before the lock, as every call */
        ckpt_pass(d->ckpt_db);
        pthread_mutex_lock(&d->mu);
        restart = (long long)d->wal_frames * d->page_size >= WAL_RESTART_BYTES;
        if (restart && !d->ckpt_stop) ckpt_pass(d->ckpt_db);
        pthread_mutex_unlock(&d->mu);
        gate_leave();
        pthread_mutex_lock(&d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* The thread, or CKPT_INLINE when it cannot be had. It blocks every
 * signal: they stay with the host's threads (nginx's, for one). */
static void ckpt_start(spool_db *d) {
    sigset_t all, old;
    d->ckpt_state = CKPT_INLINE;
    if (ckpt_open(d) != SQLITE_OK || pthread_cond_init(&d->ckpt_cv, NULL) != 0) return;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (pthread_create(&d->ckpt_thread, NULL, checkpointer, d) == 0) d->ckpt_state = CKPT_RUNNING;
    else pthread_cond_destroy(&d->ckpt_cv);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* After a write (lock held): wants a checkpoint once CKPT_BYTES more went
 * to the WAL. A failure to checkpoint surfaces in the next write. */
static void want_checkpoint(spool_db *d) {
    if (d->wal_frames < d->ckpt_frames) d->ckpt_frames = 0; /* the WAL started over */
    if ((long long)(d->wal_frames - d->ckpt_frames) * d->page_size < CKPT_BYTES) return;
    if (d->ckpt_state == CKPT_NONE) ckpt_start(d);
    /* what is in the WAL now will be copied: the next want is CKPT_BYTES on */
    d->ckpt_frames = d->wal_frames;
    if (d->ckpt_state == CKPT_RUNNING) {
        d->ckpt_wanted = 1;
        pthread_cond_signal(&d->ckpt_cv);
    } else {
        ckpt_pass(d->db); /* no thread: here, between transactions */
    }
}

/* Stops the thread. Outside the gate: the thread may be waiting at it. */
static void ckpt_halt(spool_db *d) {
    if (d->ckpt_state == CKPT_RUNNING) {
        pthread_mutex_lock(&d->mu);
        d->ckpt_stop = 1;
        pthread_cond_signal(&d->ckpt_cv);
        pthread_mutex_unlock(&d->mu);
        pthread_join(d->ckpt_thread, NULL);
        pthread_cond_destroy(&d->ckpt_cv);
        d->ckpt_state = CKPT_INLINE;
    }
}

/* ------------------------------------------------------------------ */
/* Calls and transactions                                              */

static int other_process(const spool_db *d) {
    return d->fork_gen != fork_gen || d->pid != getpid();
}

/* How a call runs: TX_ONE one statement on its own, TX_WRITE a BEGIN
 * IMMEDIATE transaction, both on the shared connection; TX_READ one
 * snapshot and TX_READ_ONE one statement, both on the handle's reader. */
enum { TX_ONE, TX_WRITE, TX_READ, TX_READ_ONE };
typedef int (*tx_body)(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err);

static spool_db *reader(oo_spool *s);

/* Every call: a live handle in the process that opened it, the
 * connection's lock for the whole call, then `body` (in a transaction for
 * TX_WRITE and TX_READ). body returns an OO_SPOOL code (SQLite failures
 * through db_fail); anything but OK rolls back. */
static int transact(oo_spool *s, const char *what, int tx, tx_body body, void *ctx,
                    oo_spool_err *err) {
    spool_db *d;
    int rc, code, begin = tx == TX_WRITE ? ST_BEGIN : tx == TX_READ ? ST_BEGIN_READ : -1;
    if (!s || !s->d || !s->d->db) return misuse(err, what, "handle is closed");
    if (s->d->fork_gen != fork_gen)
        return set_err(err, OO_SPOOL_MISUSE, 0, NULL,
                       "spool %s: %s: handle was opened by process %ld, used in process %ld"
                       " (open the spool after fork)",
                       s->d->path, what, (long)s->d->pid, (long)getpid());
    gate_enter();
    d = tx == TX_READ || tx == TX_READ_ONE ? reader(s) : s->d;
    pthread_mutex_lock(&d->mu);
    d->what = what;
    if (begin >= 0 && (rc = exec(d, begin, "")) != SQLITE_OK) {
        code = db_fail(d, err, rc);
    } else {
        code = body(s, d, ctx, err);
        if (begin >= 0) {
            if (code == OO_SPOOL_OK && (rc = exec(d, ST_COMMIT, "")) != SQLITE_OK)
                code = db_fail(d, err, rc);
            if (code != OO_SPOOL_OK) rollback(d);
        }
    }
    if (code == OO_SPOOL_OK && d == s->d && tx != TX_READ && tx != TX_READ_ONE) want_checkpoint(d);
    pthread_mutex_unlock(&d->mu);
    gate_leave();
    return code;
}

/* ------------------------------------------------------------------ */
/* Open / close                                                        */

const char *oo_spool_path(const oo_spool *s) { return s->d->path; }
const char *oo_spool_owner(const oo_spool *s) { return s->owner; }
const oo_spool_opts *oo_spool_get_opts(const oo_spool *s) { return &s->opts; }

/* Runs a one-off query and reads n integers from its first row (left 0
 * when there is none). */
static int row_ints(spool_db *d, const char *sql, long long *v, int n) {
    sqlite3_stmt *st;
    int i, rc = sqlite3_prepare_v2(d->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) return rc;
    rc = sqlite3_step(st);
    for (i = 0; i < n; i++) v[i] = rc == SQLITE_ROW ? sqlite3_column_int64(st, i) : 0;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* What the database is to us. */
enum { DB_EMPTY, DB_READY, DB_V1, DB_NEWER, DB_FOREIGN };

static int classify(spool_db *d, int *state, long long *version, oo_spool_err *err) {
    long long v[4]; /* INSPECT_SQL's columns */
    long long app, objects, ours;
    int rc = row_ints(d, INSPECT_SQL, v, 4);
    if (rc != SQLITE_OK) return rc;
    app = v[0];
    *version = v[1];
    objects = v[2];
    ours = v[3];
    if (app == OO_SPOOL_APP_ID)
        *state = *version > OO_SPOOL_SCHEMA_VERSION ? DB_NEWER
               : *version == OO_SPOOL_SCHEMA_VERSION ? DB_READY
               : *version == 1 && ours == 3        ? DB_V1
                                                   : DB_FOREIGN;
    else if (app == 0 && objects == 0)
        *state = DB_EMPTY; /* new, or another process is creating it */
    else if (app == 0 && *version == 1 && ours == 3)
        *state = DB_V1; /* made by version 1, before application_id */
    else
        *state = DB_FOREIGN;
    if (*state == DB_NEWER)
        set_err(err, OO_SPOOL_FOREIGN, 0, NULL,
                "spool %s: written by a newer version of this library (schema version %lld;"
                " this one reads up to %d); nothing was written to it",
                d->path, *version, OO_SPOOL_SCHEMA_VERSION);
    else if (*state == DB_FOREIGN && app != 0 && app != OO_SPOOL_APP_ID)
        set_err(err, OO_SPOOL_FOREIGN, 0, NULL,
                "spool %s: not a spool file: an SQLite database of another application"
                " (application_id 0x%08llx); nothing was written to it",
                d->path, (unsigned long long)app & 0xffffffffULL);
    else if (*state == DB_FOREIGN)
        set_err(err, OO_SPOOL_FOREIGN, 0, NULL,
                "spool %s: not a spool file: an SQLite database without the spool's tables"
                " (user_version %lld); nothing was written to it",
                d->path, *version);
    return SQLITE_OK;
}

/* Creates or migrates the schema under the write lock, looking again
 * first: concurrent first opens serialize here and all but one find the
 * work done. */
static int upgrade_schema(spool_db *d, oo_spool_err *err) {
    char stamp[96];
    long long version = 0;
    int state = DB_FOREIGN, rc, code = OO_SPOOL_OK;
    snprintf(stamp, sizeof stamp, "PRAGMA application_id = %d; PRAGMA user_version = %d;",
             OO_SPOOL_APP_ID, OO_SPOOL_SCHEMA_VERSION);
    if ((rc = sqlite3_exec(d->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK)
        return db_fail(d, err, rc);
    rc = classify(d, &state, &version, err);
    if (rc == SQLITE_OK && state == DB_EMPTY) rc = sqlite3_exec(d->db, SCHEMA_SQL, NULL, NULL, NULL);
    if (rc == SQLITE_OK && state == DB_V1) rc = sqlite3_exec(d->db, MIGRATE_V1_SQL, NULL, NULL, NULL);
    if (rc == SQLITE_OK && (state == DB_EMPTY || state == DB_V1))
        rc = sqlite3_exec(d->db, stamp, NULL, NULL, NULL);
    if (rc == SQLITE_OK && (state == DB_NEWER || state == DB_FOREIGN)) code = OO_SPOOL_FOREIGN;
    if (rc == SQLITE_OK && code == OO_SPOOL_OK) rc = sqlite3_exec(d->db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) code = db_fail(d, err, rc);
    if (code != OO_SPOOL_OK) rollback(d);
    return code;
}

/* Switching a database to WAL takes an exclusive lock that SQLite does not
 * wait for (no busy handler on that path): retry within busy_timeout. */
static int set_wal(spool_db *d, oo_spool_err *err) {
    double deadline = mono_now() + d->busy_timeout;
    char mode[16] = "";
    sqlite3_stmt *st;
    int rc;
    for (;;) {
        if ((rc = sqlite3_prepare_v2(d->db, "PRAGMA journal_mode=WAL", -1, &st, NULL)) != SQLITE_OK)
            return db_fail(d, err, rc);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            snprintf(mode, sizeof mode, "%s", (const char *)sqlite3_column_text(st, 0));
        if (rc != SQLITE_BUSY) break;
        sqlite3_finalize(st);
        if (mono_now() >= deadline) return db_fail(d, err, rc);
        sleep_for(0.01);
    }
    if (rc != SQLITE_ROW) {
        rc = db_fail(d, err, rc);
        sqlite3_finalize(st);
        return rc;
    }
    sqlite3_finalize(st);
    if (strcmp(mode, "wal") != 0)
        return set_err(err, OO_SPOOL_STORAGE, 0, NULL,
                       "spool %s: open: could not switch to WAL mode (journal mode is '%s')",
                       d->path, mode);
    return OO_SPOOL_OK;
}

/* Per-connection settings (none of them writes to the file). */
static int set_pragmas(spool_db *d, const oo_spool_opts *o, oo_spool_err *err) {
    char sql[160];
    long long page = 0, pages = 0;
    int rc;
    snprintf(sql, sizeof sql, "PRAGMA synchronous=%s; PRAGMA journal_size_limit=%d;",
             o->sync == OO_SPOOL_SYNC_FULL ? "FULL" : "NORMAL", WAL_RESTART_BYTES);
    rc = sqlite3_exec(d->db, sql, NULL, NULL, NULL);
    if (rc == SQLITE_OK && (rc = row_ints(d, "PRAGMA page_size", &page, 1)) == SQLITE_OK)
        d->page_size = page > 0 ? (int)page : PAGE_SIZE;
    if (rc == SQLITE_OK && o->max_file_bytes > 0) {
        pages = o->max_file_bytes / page;
        snprintf(sql, sizeof sql, "PRAGMA max_page_count=%lld", pages > 1 ? pages : 1);
        rc = row_ints(d, sql, &pages, 1);
    }
    if (rc != SQLITE_OK) return db_fail(d, err, rc);
    sqlite3_wal_hook(d->db, on_wal_commit, d);
    return OO_SPOOL_OK;
}

/* Creates the file 0600 (whatever the umask, never through a symlink)
 * unless it exists: SQLite then gives the -wal and -shm files the same mode.
 * An existing path must be a regular file (through a symlink is fine, a
 * dangling symlink is refused rather than have SQLite create its target). */
static int create_private(const char *path, oo_spool_err *err) {
    struct stat st;
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0) {
        int bad = fchmod(fd, 0600) != 0;
        int e = errno;
        close(fd);
        if (!bad) return OO_SPOOL_OK;
        unlink(path);
        return set_err(err, OO_SPOOL_STORAGE, 0, NULL, "spool %s: cannot make the file private: %s",
                       path, strerror(e));
    }
    if (errno != EEXIST)
        return set_err(err, OO_SPOOL_STORAGE, 0, NULL, "spool %s: cannot create the file: %s", path,
                       strerror(errno));
    if (stat(path, &st) != 0)
        return set_err(err, OO_SPOOL_STORAGE, 0, NULL, "spool %s: %s", path,
                       errno == ENOENT ? "is a symbolic link to a missing file (refusing to"
                                         " create its target)"
                                       : strerror(errno));
    if (!S_ISREG(st.st_mode))
        return set_err(err, OO_SPOOL_STORAGE, 0, NULL, "spool %s: is a %s, not a file", path,
                       S_ISDIR(st.st_mode) ? "directory" : "special file");
    return OO_SPOOL_OK;
}

static unsigned long be32(const unsigned char *p) {
    return (unsigned long)p[0] << 24 | (unsigned long)p[1] << 16 | (unsigned long)p[2] << 8 | p[3];
}

/* Refuses, from its first 100 bytes and before SQLite opens it, a file
 * that cannot be ours: not SQLite, another application's id, or not in WAL
 * mode (a spool is from its first page on). The rest is for classify(). */
static int sniff(const char *path, oo_spool_err *err) {
    unsigned char h[100];
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    unsigned long app;
    if (fd < 0)
        return set_err(err, OO_SPOOL_STORAGE, 0, NULL, "spool %s: cannot open the file: %s", path,
                       strerror(errno));
    n = pread(fd, h, sizeof h, 0);
    close(fd);
    if (n == 0) return OO_SPOOL_OK;
    if (n < (ssize_t)sizeof h || memcmp(h, "SQLite format 3", 16) != 0)
        return set_err(err, OO_SPOOL_FOREIGN, 0, NULL,
                       "spool %s: not a spool file: not an SQLite database; nothing was written"
                       " to it",
                       path);
    app = be32(h + 68);
    if (app != 0 && app != OO_SPOOL_APP_ID)
        return set_err(err, OO_SPOOL_FOREIGN, 0, NULL,
                       "spool %s: not a spool file: an SQLite database of another application"
                       " (application_id 0x%08lx); nothing was written to it",
                       path, app);
    if (h[18] != 2 || h[19] != 2)
        return set_err(err, OO_SPOOL_FOREIGN, 0, NULL,
                       "spool %s: not a spool file: an SQLite database in rollback-journal mode"
                       " (a spool is always in WAL mode); nothing was written to it",
                       path);
    return OO_SPOOL_OK;
}

/* Closes a connection whose checkpoint thread is halted (inside the gate). */
static void db_free(spool_db *d) {
    int i;
    if (d->ckpt_db) sqlite3_close_v2(d->ckpt_db);
    if (d->db) {
        for (i = 0; i < ST_COUNT; i++) sqlite3_finalize(d->st[i]);
        sqlite3_close_v2(d->db);
    }
    pthread_mutex_destroy(&d->mu);
    free(d);
}

/* Opens SQLite on the file and makes it a usable spool, refusing one that
 * is not ours before any write. */
static int db_connect(spool_db *d, const oo_spool_opts *o, oo_spool_err *err) {
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, rc, code, state = DB_FOREIGN;
    long long version = 0;
    char *name;
#ifdef SQLITE_OPEN_EXRESCODE
    flags |= SQLITE_OPEN_EXRESCODE;
#endif
    if ((code = create_private(d->path, err)) != OO_SPOOL_OK) return code;
    if ((code = sniff(d->path, err)) != OO_SPOOL_OK) return code;
    if (!(name = sqlite_name(d->path))) return nomem(d, err);
    rc = sqlite3_open_v2(name, &d->db, flags, oo_spool_vfs());
    free(name);
    if (rc != SQLITE_OK) return db_fail(d, err, rc);
    sqlite3_extended_result_codes(d->db, 1);
    if (sqlite3_db_readonly(d->db, "main") == 1)
        return set_err(err, OO_SPOOL_STORAGE, SQLITE_READONLY, NULL,
                       "spool %s: open: the file is read-only", d->path);
    sqlite3_busy_handler(d->db, on_busy, d);
    /* until the file is known to be ours, closing must not write to it */
    sqlite3_db_config(d->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
    if ((rc = classify(d, &state, &version, err)) != SQLITE_OK) return db_fail(d, err, rc);
    if (state == DB_NEWER || state == DB_FOREIGN) return OO_SPOOL_FOREIGN;
    if (state == DB_EMPTY) {
        char sql[48];
        snprintf(sql, sizeof sql, "PRAGMA page_size=%d", PAGE_SIZE);
        if ((rc = sqlite3_exec(d->db, sql, NULL, NULL, NULL)) != SQLITE_OK) return db_fail(d, err, rc);
    }
    if ((code = set_wal(d, err)) != OO_SPOOL_OK) return code;
    if ((code = set_pragmas(d, o, err)) != OO_SPOOL_OK) return code;
    if (state != DB_READY && (code = upgrade_schema(d, err)) != OO_SPOOL_OK) return code;
    sqlite3_db_config(d->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, NULL);
    return OO_SPOOL_OK;
}

static pthread_once_t fork_watch = PTHREAD_ONCE_INIT;

/* A connection's state before it is connected (refs 1). */
static spool_db *db_new(const char *path, const oo_spool_opts *o) {
    size_t plen = strlen(path);
    spool_db *d = (spool_db *)calloc(1, sizeof *d + plen + 1);
    if (!d) return NULL;
    if (pthread_mutex_init(&d->mu, NULL) != 0) {
        free(d);
        return NULL;
    }
    memcpy(d->path, path, plen + 1);
    pthread_once(&fork_watch, watch_forks);
    d->pid = getpid();
    d->fork_gen = fork_gen;
    d->busy_timeout = o->busy_timeout;
    d->sync_full = o->sync == OO_SPOOL_SYNC_FULL;
    d->refs = 1;
    d->what = "open";
    return d;
}

/* Drops one reference; the last closes. A copy inherited through fork is
 * abandoned (a small leak): closing it here could checkpoint or unlock
 * state the parent still relies on. */
static void db_release(spool_db *d) {
    int last;
    if (!d || other_process(d)) return;
    pthread_mutex_lock(&d->mu);
    last = --d->refs == 0;
    pthread_mutex_unlock(&d->mu);
    if (!last) return;
    ckpt_halt(d);
    gate_enter();
    db_free(d);
    gate_leave();
}

static oo_spool *handle_new(spool_db *d, const oo_spool_opts *o) {
    unsigned char r[8];
    char *p;
    int i;
    oo_spool *s = (oo_spool *)calloc(1, sizeof *s);
    if (!s) return NULL;
    if (pthread_mutex_init(&s->r_mu, NULL) != 0) {
        free(s);
        return NULL;
    }
    s->d = d;
    s->opts = *o;
    /* SQLite's PRNG is seeded from the OS; the pid keeps forked copies apart. */
    sqlite3_randomness((int)sizeof r, r);
    p = s->owner + snprintf(s->owner, sizeof s->owner, "%ld:", (long)d->pid);
    for (i = 0; i < 8; i++) p += sprintf(p, "%02x", r[i]);
    return s;
}

/* Reads (stats, list, next_due) run on a connection of the handle's own:
 * a scan of a big queue then never holds up the claims and acks of a
 * delivery thread on the shared connection (a WAL reader does not block
 * the writer). Opened on the first read, for a file already known to be a
 * spool; if it cannot be, reads use the shared connection. */
static spool_db *reader(oo_spool *s) {
    spool_db *r;
    pthread_mutex_lock(&s->r_mu);
    if (!s->r && !s->r_failed && (r = db_new(s->d->path, &s->opts)) != NULL) {
        char *name = sqlite_name(r->path);
        int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
        if (!name || sqlite3_open_v2(name, &r->db, flags, oo_spool_vfs()) != SQLITE_OK) {
            db_free(r);
            r = NULL;
        } else {
            sqlite3_extended_result_codes(r->db, 1);
            sqlite3_busy_handler(r->db, on_busy, r);
            sqlite3_db_config(r->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
        }
        free(name);
        s->r = r;
    }
    if (!s->r) s->r_failed = 1;
    r = s->r ? s->r : s->d;
    pthread_mutex_unlock(&s->r_mu);
    return r;
}

int oo_spool_open(const char *path, const oo_spool_opts *o, oo_spool **out, oo_spool_err *err) {
    spool_db *d;
    oo_spool_opts defaults;
    int code;

    *out = NULL;
    if (!o) {
        oo_spool_opts_init(&defaults);
        o = &defaults;
    }
    if (!path || !*path || strcmp(path, ":memory:") == 0)
        return misuse(err, "open", "a file path is required");
    if (!(o->busy_timeout >= 0 && o->busy_timeout <= 86400) || o->max_orders < 0 ||
        o->max_bytes < 0 || !(o->max_age >= 0) || o->max_file_bytes < 0)
        return misuse(err, "open", "option out of range");
    if (!(d = db_new(path, o)))
        return set_err(err, OO_SPOOL_STORAGE, SQLITE_NOMEM, NULL, "spool %s: out of memory", path);
    gate_enter();
    if ((code = db_connect(d, o, err)) == OO_SPOOL_OK && !(*out = handle_new(d, o)))
        code = nomem(d, err);
    if (code != OO_SPOOL_OK) db_free(d);
    gate_leave();
    return code;
}

int oo_spool_reopen(const oo_spool *s, oo_spool **out, oo_spool_err *err) {
    spool_db *d;
    *out = NULL;
    if (!s || !s->d || !s->d->db) return misuse(err, "reopen", "handle is closed");
    d = s->d;
    if (other_process(d)) return misuse(err, "reopen", "handle was opened by another process");
    gate_enter(); /* handle_new asks SQLite's PRNG */
    pthread_mutex_lock(&d->mu);
    if ((*out = handle_new(d, &s->opts)) != NULL) d->refs++;
    pthread_mutex_unlock(&d->mu);
    gate_leave();
    if (!*out) return set_err(err, OO_SPOOL_STORAGE, SQLITE_NOMEM, NULL, "spool %s: out of memory", d->path);
    return OO_SPOOL_OK;
}

void oo_spool_close(oo_spool *s) {
    if (!s) return;
    db_release(s->r);
    db_release(s->d);
    pthread_mutex_destroy(&s->r_mu);
    free(s);
}

/* ------------------------------------------------------------------ */
/* Shared steps (inside a transaction, lock held)                      */

/* max_age: moves unclaimed rows older than now - max_age to dead letters.
 * Costs one index probe when nothing is old enough. */
static int expire(oo_spool *s, double now) {
    spool_db *d = s->d;
    double cutoff;
    char msg[96];
    scalar oldest;
    int rc;
    if (!(s->opts.max_age > 0)) return SQLITE_OK;
    cutoff = now - s->opts.max_age;
    if ((rc = query_scalar(d, ST_MIN_CREATED, &oldest, "")) != SQLITE_OK) return rc;
    if (!oldest.found || !(oldest.x < cutoff)) return SQLITE_OK;
    snprintf(msg, sizeof msg, "queued longer than max_age %g s", s->opts.max_age);
    if ((rc = exec(d, ST_EXPIRE_COPY, "dds", cutoff, now, msg)) != SQLITE_OK) return rc;
    return exec(d, ST_EXPIRE_DEL, "dd", cutoff, now);
}

/* Copies one row to dead letters and deletes it. owner NULL = any holder.
 * *moved = 0 when the row is absent or held by someone else. */
static int move_to_dead(spool_db *d, long long id, const char *owner, double now,
                        int attempts_add, const oo_spool_failure *f, int *moved) {
    int rc;
    *moved = 0;
    rc = exec(d, ST_MOVE_COPY, "idisosss", id, now, attempts_add, f->kind ? f->kind : "failed",
              f->status, f->code, f->message, owner);
    if (rc != SQLITE_OK || sqlite3_changes(d->db) == 0) return rc;
    if ((rc = exec(d, ST_MOVE_DEL, "is", id, owner)) == SQLITE_OK) *moved = 1;
    return rc;
}

/* Would n more orders of add bytes break a bound? Fills err (FULL) if so. */
static int over_bounds(oo_spool *s, const scalar *totals, long long n, long long add,
                       const char *what, const char *tail, oo_spool_err *err) {
    const oo_spool_opts *o = &s->opts;
    if (o->max_orders > 0 && totals->a + n > o->max_orders)
        return set_err(err, OO_SPOOL_FULL, 0, "max_orders",
                       "spool %s is full: max_orders %lld reached (%lld queued, %lld new); %s%s",
                       s->d->path, o->max_orders, totals->a, n, what, tail);
    if (o->max_bytes > 0 && totals->b + add > o->max_bytes)
        return set_err(err, OO_SPOOL_FULL, 0, "max_bytes",
                       "spool %s is full: max_bytes %lld would be exceeded (%lld bytes queued,"
                       " %lld new); %s%s",
                       s->d->path, o->max_bytes, totals->b, add, what, tail);
    return OO_SPOOL_OK;
}

/* Applies the bounds for n new orders of add bytes: OK, FULL (err filled)
 * when the orders must be refused, or an SQLite failure. */
static int make_room(oo_spool *s, long long n, long long add, double now, oo_spool_err *err) {
    spool_db *d = s->d;
    scalar totals, oldest;
    char msg[160];
    oo_spool_failure f;
    int rc, moved;
    if (s->opts.max_orders <= 0 && s->opts.max_bytes <= 0) return OO_SPOOL_OK;
    if ((rc = query_scalar(d, ST_TOTALS, &totals, "")) != SQLITE_OK) return db_fail(d, err, rc);
    if (over_bounds(s, &totals, n, add, "", "", NULL) == OO_SPOOL_OK) return OO_SPOOL_OK;
    if (s->opts.on_full != OO_SPOOL_DROP_OLDEST)
        return over_bounds(s, &totals, n, add, "order refused", " (on_full=refuse)", err);
    memset(&f, 0, sizeof f);
    f.kind = "dropped";
    f.message = msg;
    while (over_bounds(s, &totals, n, add, "", "", NULL) != OO_SPOOL_OK) {
        if ((rc = query_scalar(d, ST_OLDEST_FREE, &oldest, "d", now)) != SQLITE_OK)
            return db_fail(d, err, rc);
        if (!oldest.found)
            return over_bounds(s, &totals, n, add, "order refused",
                               " (on_full=drop_oldest: every queued order is being delivered)", err);
        snprintf(msg, sizeof msg, "dropped to make room for newer orders (on_full=drop_oldest, %s)",
                 s->opts.max_orders > 0 && totals.a + n > s->opts.max_orders ? "max_orders"
                                                                             : "max_bytes");
        if ((rc = move_to_dead(d, oldest.a, NULL, now, 0, &f, &moved)) != SQLITE_OK)
            return db_fail(d, err, rc);
        totals.a -= 1;
        totals.b -= oldest.b;
    }
    return OO_SPOOL_OK;
}

/* Explains why ack/retry/kill/release found no row held by us. */
static int lease_err(oo_spool *s, long long id, oo_spool_err *err) {
    spool_db *d = s->d;
    sqlite3_stmt *st;
    char holder[64] = "";
    int found = query(d, ST_OWNER, &st, "i", id) == SQLITE_ROW;
    if (found) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(holder, sizeof holder, "%s", t ? (const char *)t : "");
        finish(st);
    }
    if (!found)
        return set_err(err, OO_SPOOL_LEASE, 0, NULL,
                       "spool %s: %s of order %lld refused: it is no longer queued"
                       " (acked, purged or moved to dead letters)",
                       d->path, d->what, id);
    if (!holder[0])
        return set_err(err, OO_SPOOL_LEASE, 0, NULL,
                       "spool %s: %s of order %lld refused: it is not claimed (lease released)",
                       d->path, d->what, id);
    return set_err(err, OO_SPOOL_LEASE, 0, NULL,
                   "spool %s: %s of order %lld refused: it is claimed by %s, not by this"
                   " handle (%s); our lease expired",
                   d->path, d->what, id, holder, s->owner);
}

/* ------------------------------------------------------------------ */
/* Operations                                                          */

typedef struct put_ctx {
    const oo_spool_item *items;
    size_t n;
    long long add;
    double now;
    long long *ids;
} put_ctx;

static int put_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    put_ctx *c = (put_ctx *)ctx;
    size_t i;
    int rc, code;
    if ((rc = expire(s, c->now)) != SQLITE_OK) return db_fail(d, err, rc);
    if ((code = make_room(s, (long long)c->n, c->add, c->now, err)) != OO_SPOOL_OK) return code;
    for (i = 0; i < c->n; i++) {
        const oo_spool_item *it = &c->items[i];
        rc = exec(d, ST_INSERT, "tbidt", it->ref, it->ref_len, it->body, it->body_len,
                  (long long)it->body_len, c->now, it->channel, it->channel_len);
        if (rc != SQLITE_OK) return db_fail(d, err, rc);
        if (c->ids) c->ids[i] = (long long)sqlite3_last_insert_rowid(d->db);
    }
    return OO_SPOOL_OK;
}

/* The checks that need no database: empty bodies and single orders or
 * batches that no amount of room could take. */
static int check_items(oo_spool *s, const oo_spool_item *items, size_t n, long long *add,
                       oo_spool_err *err) {
    const oo_spool_opts *o = &s->opts;
    const char *path = s->d->path;
    size_t i;
    *add = 0;
    for (i = 0; i < n; i++) {
        if (!items[i].body || items[i].body_len == 0)
            return set_err(err, OO_SPOOL_MISUSE, 0, NULL, "spool put: order %zu has an empty body", i + 1);
        if (o->max_bytes > 0 && (long long)items[i].body_len > o->max_bytes)
            return set_err(err, OO_SPOOL_FULL, 0, "max_bytes",
                           "spool %s: order of %zu bytes is larger than max_bytes %lld; order refused",
                           path, items[i].body_len, o->max_bytes);
        *add += (long long)items[i].body_len;
    }
    if (o->max_orders > 0 && (long long)n > o->max_orders)
        return set_err(err, OO_SPOOL_FULL, 0, "max_orders",
                       "spool %s: %zu orders in one put exceed max_orders %lld; orders refused",
                       path, n, o->max_orders);
    if (o->max_bytes > 0 && *add > o->max_bytes)
        return set_err(err, OO_SPOOL_FULL, 0, "max_bytes",
                       "spool %s: %zu orders of %lld bytes in one put exceed max_bytes %lld;"
                       " orders refused",
                       path, n, *add, o->max_bytes);
    return OO_SPOOL_OK;
}

int oo_spool_put_many(oo_spool *s, const oo_spool_item *items, size_t n, double now,
                      long long *ids, oo_spool_err *err) {
    put_ctx c;
    int code;
    if (!s || !s->d) return misuse(err, "put", "handle is closed");
    if ((code = check_items(s, items, n, &c.add, err)) != OO_SPOOL_OK || n == 0) return code;
    c.items = items;
    c.n = n;
    c.now = now;
    c.ids = ids;
    return transact(s, "put", TX_WRITE, put_body, &c, err);
}

int oo_spool_put(oo_spool *s, const char *body, size_t body_len, const char *ref,
                 size_t ref_len, double now, long long *id, oo_spool_err *err) {
    oo_spool_item it;
    memset(&it, 0, sizeof it);
    it.body = body;
    it.body_len = body_len;
    it.ref = ref;
    it.ref_len = ref_len;
    return oo_spool_put_many(s, &it, 1, now, id, err);
}

typedef struct claim_ctx {
    size_t max_n;
    double lease, now;
    oo_spool_rows *out;
} claim_ctx;

/* Steps a query started by query() (rc, its first step) to the end,
 * appending every row: OK, or the failure. Out of memory, it still runs to
 * the end (a RETURNING statement must complete) and then fails. */
static int collect_rows(spool_db *d, sqlite3_stmt *st, int rc, const unsigned char *fields,
                        oo_spool_rows *out, oo_spool_err *err) {
    int code = OO_SPOOL_OK, oom = 0;
    for (; rc == SQLITE_ROW; rc = sqlite3_step(st))
        if (read_row(st, fields, out) != 0) oom = 1;
    if (rc != SQLITE_DONE) code = db_fail(d, err, rc);
    else if (oom) code = nomem(d, err);
    if (st) finish(st);
    return code;
}

static int claim_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    claim_ctx *c = (claim_ctx *)ctx;
    sqlite3_stmt *st;
    size_t i;
    int rc, code;
    long long limit = c->max_n > (size_t)1 << 40 ? (long long)1 << 40 : (long long)c->max_n;
    if ((rc = expire(s, c->now)) != SQLITE_OK) return db_fail(d, err, rc);
    rc = query(d, ST_CLAIM, &st, "di", c->now, limit);
    /* a failure rolls back: nothing stays claimed that the caller did not receive */
    if ((code = collect_rows(d, st, rc, CLAIM_FIELDS, c->out, err)) != OO_SPOOL_OK) return code;
    for (i = 0; i < c->out->n; i++) {
        oo_spool_row *w = &c->out->v[i];
        w->claimed_until = c->now + c->lease;
        rc = exec(d, ST_CLAIM_MARK, "isd", w->id, s->owner, w->claimed_until);
        if (rc != SQLITE_OK) return db_fail(d, err, rc);
    }
    return OO_SPOOL_OK;
}

int oo_spool_claim(oo_spool *s, size_t max_n, double lease, double now, oo_spool_rows *out,
                   oo_spool_err *err) {
    claim_ctx c;
    int code;
    oo_spool_rows_free(out);
    if (max_n == 0 || !(lease > 0)) return misuse(err, "claim", "max_n and lease must be positive");
    c.max_n = max_n;
    c.lease = lease;
    c.now = now;
    c.out = out;
    code = transact(s, "claim", TX_WRITE, claim_body, &c, err);
    if (code != OO_SPOOL_OK) oo_spool_rows_free(out);
    else if (out->n > 1) qsort(out->v, out->n, sizeof out->v[0], cmp_row_id);
    return code;
}

/* ack / release / retry of rows we hold: one UPDATE or DELETE each. */
typedef struct owned_ctx {
    int which;
    const long long *ids;
    size_t n;
    double next_at;
    const char *text;
    size_t missed; /* ids not held by us */
    long long first_missed;
} owned_ctx;

static int owned_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    owned_ctx *c = (owned_ctx *)ctx;
    size_t i;
    int rc;
    for (i = 0; i < c->n; i++) {
        rc = c->which == ST_RETRY ? exec(d, ST_RETRY, "isds", c->ids[i], s->owner, c->next_at, c->text)
                                  : exec(d, c->which, "is", c->ids[i], s->owner);
        if (rc != SQLITE_OK) return db_fail(d, err, rc);
        if (sqlite3_changes(d->db) == 0 && c->missed++ == 0) c->first_missed = c->ids[i];
    }
    if (c->missed == 0) return OO_SPOOL_OK;
    lease_err(s, c->first_missed, err);
    /* one row: nothing changed, the call fails; a batch: the rows we held
     * are acked all the same (committed), and the call reports the rest */
    if (c->n == 1) return OO_SPOOL_LEASE;
    {
        size_t len = strlen(err->message);
        snprintf(err->message + len, sizeof err->message - len, " (%zu of %zu in this batch)",
                 c->missed, c->n);
    }
    return OO_SPOOL_OK;
}

static int owned_write(oo_spool *s, int which, const long long *ids, size_t n, double next_at,
                       const char *text, const char *what, oo_spool_err *err) {
    owned_ctx c;
    int code;
    memset(&c, 0, sizeof c);
    c.which = which;
    c.ids = ids;
    c.n = n;
    c.next_at = next_at;
    c.text = text;
    if (n == 0) return OO_SPOOL_OK;
    /* one statement commits on its own; a batch is one transaction */
    code = transact(s, what, n == 1 ? TX_ONE : TX_WRITE, owned_body, &c, err);
    return code == OO_SPOOL_OK && c.missed ? OO_SPOOL_LEASE : code;
}

int oo_spool_ack(oo_spool *s, long long id, oo_spool_err *err) {
    return owned_write(s, ST_ACK, &id, 1, 0, NULL, "ack", err);
}

int oo_spool_ack_many(oo_spool *s, const long long *ids, size_t n, oo_spool_err *err) {
    if (n > 0 && !ids) return misuse(err, "ack_many", "ids is NULL");
    return owned_write(s, ST_ACK, ids, n, 0, NULL, "ack", err);
}

int oo_spool_release(oo_spool *s, long long id, oo_spool_err *err) {
    return owned_write(s, ST_RELEASE, &id, 1, 0, NULL, "release", err);
}

int oo_spool_retry(oo_spool *s, long long id, double next_at, const char *err_text,
                   oo_spool_err *err) {
    return owned_write(s, ST_RETRY, &id, 1, next_at, err_text, "retry", err);
}

typedef struct kill_ctx {
    long long id;
    const oo_spool_failure *f;
    double now;
} kill_ctx;

static int kill_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    kill_ctx *c = (kill_ctx *)ctx;
    int moved = 0, rc = move_to_dead(d, c->id, s->owner, c->now, 1, c->f, &moved);
    if (rc != SQLITE_OK) return db_fail(d, err, rc);
    return moved ? OO_SPOOL_OK : lease_err(s, c->id, err);
}

int oo_spool_kill(oo_spool *s, long long id, const oo_spool_failure *f, double now,
                  oo_spool_err *err) {
    oo_spool_failure none;
    kill_ctx c;
    if (!f) {
        memset(&none, 0, sizeof none);
        f = &none;
    }
    c.id = id;
    c.f = f;
    c.now = now;
    return transact(s, "kill", TX_WRITE, kill_body, &c, err);
}

typedef struct stats_ctx {
    double now;
    oo_spool_counts *out;
} stats_ctx;

static int stats_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    stats_ctx *c = (stats_ctx *)ctx;
    scalar v;
    int rc;
    if ((rc = query_scalar(d, ST_TOTALS, &v, "")) != SQLITE_OK) return db_fail(d, err, rc);
    c->out->queued = v.a;
    c->out->bytes = v.b;
    /* due = queued - not yet due - leased and due: two index ranges, no scan */
    if ((rc = query_scalar(d, ST_WAITING, &v, "d", c->now)) != SQLITE_OK) return db_fail(d, err, rc);
    c->out->due = c->out->queued - v.a;
    if ((rc = query_scalar(d, ST_LEASED, &v, "d", c->now)) != SQLITE_OK) return db_fail(d, err, rc);
    c->out->claimed = v.a;
    c->out->due -= v.b;
    if (c->out->due < 0) c->out->due = 0;
    if ((rc = query_scalar(d, ST_DEAD_COUNT, &v, "")) != SQLITE_OK) return db_fail(d, err, rc);
    c->out->dead = v.a;
    if ((rc = query_scalar(d, ST_MIN_CREATED, &v, "")) != SQLITE_OK) return db_fail(d, err, rc);
    if (v.found && c->now - v.x > 0) c->out->oldest_age = c->now - v.x;
    return OO_SPOOL_OK;
}

int oo_spool_stats(oo_spool *s, double now, oo_spool_counts *out, oo_spool_err *err) {
    stats_ctx c;
    memset(out, 0, sizeof *out);
    c.now = now;
    c.out = out;
    /* one read transaction: all counts from the same snapshot */
    return transact(s, "stats", TX_READ, stats_body, &c, err);
}

typedef struct next_due_ctx {
    double now, *at;
    int *found;
} next_due_ctx;

static int next_due_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    next_due_ctx *c = (next_due_ctx *)ctx;
    scalar v;
    int rc = query_scalar(d, ST_NEXT_DUE, &v, "d", c->now);
    if (rc != SQLITE_OK) return db_fail(d, err, rc);
    *c->found = v.found;
    *c->at = v.found ? v.x : 0;
    return OO_SPOOL_OK;
}

int oo_spool_next_due(oo_spool *s, double now, double *at, int *found, oo_spool_err *err) {
    next_due_ctx c;
    *found = 0;
    *at = 0;
    c.now = now;
    c.at = at;
    c.found = found;
    return transact(s, "next_due", TX_READ_ONE, next_due_body, &c, err);
}

typedef struct list_ctx {
    const oo_spool_list_opts *o;
    oo_spool_rows *out;
} list_ctx;

static int list_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    list_ctx *c = (list_ctx *)ctx;
    sqlite3_stmt *st;
    const oo_spool_list_opts *o = c->o;
    int rc = query(d, o->dead ? ST_LIST_DEAD : ST_LIST_QUEUED, &st, "iiio", o->after_id,
                   o->limit, o->offset, o->with_body ? 1 : 0);
    return collect_rows(d, st, rc, o->dead ? DEAD_FIELDS : QUEUED_FIELDS, c->out, err);
}

int oo_spool_list(oo_spool *s, const oo_spool_list_opts *o, oo_spool_rows *out,
                  oo_spool_err *err) {
    list_ctx c;
    int code;
    oo_spool_rows_free(out);
    if (o->limit < 1 || o->offset < 0)
        return misuse(err, "list", "limit must be >= 1 and offset >= 0");
    c.o = o;
    c.out = out;
    code = transact(s, "list", TX_READ_ONE, list_body, &c, err);
    if (code != OO_SPOOL_OK) oo_spool_rows_free(out);
    return code;
}

typedef struct count_ctx {
    long long id; /* requeue: 0 = all */
    int which;    /* purge */
    double cutoff, now;
    long long *n;
} count_ctx;

static int requeue_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    count_ctx *c = (count_ctx *)ctx;
    scalar dead, totals;
    int rc, code;
    /* ?1 = the id, NULL (id 0) for every dead letter */
    if ((rc = query_scalar(d, ST_DEAD_SUM, &dead, "I", c->id)) != SQLITE_OK) return db_fail(d, err, rc);
    if (dead.a == 0) return OO_SPOOL_OK;
    if ((rc = query_scalar(d, ST_TOTALS, &totals, "")) != SQLITE_OK) return db_fail(d, err, rc);
    if ((code = over_bounds(s, &totals, dead.a, dead.b, "requeue refused", "", err)) != OO_SPOOL_OK)
        return code;
    if ((rc = exec(d, ST_REQUEUE_COPY, "Id", c->id, c->now)) != SQLITE_OK) return db_fail(d, err, rc);
    *c->n = sqlite3_changes(d->db);
    if ((rc = exec(d, ST_REQUEUE_DEL, "I", c->id)) != SQLITE_OK) return db_fail(d, err, rc);
    return OO_SPOOL_OK;
}

int oo_spool_requeue_dead(oo_spool *s, long long id, double now, long long *n,
                          oo_spool_err *err) {
    count_ctx c;
    int code;
    *n = 0;
    memset(&c, 0, sizeof c);
    c.id = id > 0 ? id : 0;
    c.now = now;
    c.n = n;
    code = transact(s, "requeue_dead", TX_WRITE, requeue_body, &c, err);
    if (code != OO_SPOOL_OK) *n = 0;
    return code;
}

static int purge_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    count_ctx *c = (count_ctx *)ctx;
    int rc;
    if (c->which & OO_SPOOL_PURGE_DEAD) {
        if ((rc = exec(d, ST_PURGE_DEAD, "d", c->cutoff)) != SQLITE_OK) return db_fail(d, err, rc);
        *c->n += sqlite3_changes(d->db);
    }
    if (c->which & OO_SPOOL_PURGE_QUEUED) {
        if ((rc = exec(d, ST_PURGE_QUEUED, "dd", c->cutoff, c->now)) != SQLITE_OK)
            return db_fail(d, err, rc);
        *c->n += sqlite3_changes(d->db);
    }
    return OO_SPOOL_OK;
}

int oo_spool_purge(oo_spool *s, int which, double older_than, double now, long long *n,
                   oo_spool_err *err) {
    count_ctx c;
    int code;
    *n = 0;
    memset(&c, 0, sizeof c);
    c.which = which;
    c.cutoff = older_than < 0 ? FAR_FUTURE : now - older_than;
    c.now = now;
    c.n = n;
    code = transact(s, "purge", TX_WRITE, purge_body, &c, err);
    if (code != OO_SPOOL_OK) *n = 0;
    return code;
}
