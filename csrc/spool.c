/* Durable spool: SQLite storage of encoded orders (see spool.h for the
 * contract). The first half is the Lua-free C API used by the delivery
 * worker thread; the second half is the Lua binding. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>

#include "spool.h"

/* ------------------------------------------------------------------ */
/* Schema                                                              */

/* `totals` is kept by triggers so the bounds check on every put is O(1),
 * whichever path (ours, or an operator's sqlite3 shell) changes `orders`.
 * AUTOINCREMENT: ids are never reused, so an order keeps one id for life
 * (queue → dead → queue) and a log line naming an id stays unambiguous. */
static const char SCHEMA_SQL[] =
    "CREATE TABLE orders("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, ref TEXT, body BLOB NOT NULL,"
    " bytes INT NOT NULL, created_at REAL NOT NULL, attempts INT NOT NULL DEFAULT 0,"
    " next_at REAL NOT NULL, claimed_by TEXT, claimed_until REAL, last_error TEXT);"
    "CREATE INDEX orders_next_at ON orders(next_at);"
    "CREATE INDEX orders_created_at ON orders(created_at);"
    "CREATE TABLE dead("
    " id INTEGER PRIMARY KEY, ref TEXT, body BLOB NOT NULL, created_at REAL,"
    " failed_at REAL NOT NULL, attempts INT NOT NULL, kind TEXT NOT NULL,"
    " status INT, code TEXT, message TEXT);"
    "CREATE INDEX dead_failed_at ON dead(failed_at);"
    "CREATE TABLE totals(one INTEGER PRIMARY KEY CHECK (one = 1),"
    " n INT NOT NULL, bytes INT NOT NULL);"
    "INSERT INTO totals VALUES (1, 0, 0);"
    "CREATE TRIGGER orders_ins AFTER INSERT ON orders BEGIN"
    " UPDATE totals SET n = n + 1, bytes = bytes + NEW.bytes WHERE one = 1; END;"
    "CREATE TRIGGER orders_del AFTER DELETE ON orders BEGIN"
    " UPDATE totals SET n = n - 1, bytes = bytes - OLD.bytes WHERE one = 1; END;"
    "PRAGMA user_version = 1;";

/* "Free" = no live lease: never claimed, released, or its lease ran out. */
#define FREE_AT(p) "(claimed_until IS NULL OR claimed_until <= " p ")"
#define DEAD_COLS "id, ref, body, created_at, failed_at, attempts, kind, status, code, message"

enum {
    ST_BEGIN, ST_BEGIN_READ, ST_COMMIT, ST_ROLLBACK,
    ST_TOTALS, ST_INSERT, ST_MIN_CREATED, ST_EXPIRE_COPY, ST_EXPIRE_DEL,
    ST_OLDEST_FREE, ST_MOVE_COPY, ST_MOVE_DEL, ST_CLAIM, ST_ACK, ST_RETRY,
    ST_RELEASE, ST_OWNER, ST_DEAD_SUM_ONE, ST_DEAD_SUM_ALL, ST_REQ_ONE_COPY,
    ST_REQ_ONE_DEL, ST_REQ_ALL_COPY, ST_REQ_ALL_DEL, ST_PURGE_DEAD, ST_PURGE_QUEUED,
    ST_STATS_SCAN, ST_DEAD_COUNT, ST_LIST_QUEUED, ST_LIST_DEAD, ST_NEXT_DUE,
    ST_COUNT
};

static const char *const SQL[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_BEGIN_READ] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_TOTALS] = "SELECT n, bytes FROM totals WHERE one = 1",
    [ST_INSERT] = "INSERT INTO orders(ref, body, bytes, created_at, attempts, next_at)"
                  " VALUES (?1, ?2, ?3, ?4, 0, ?4)",
    [ST_MIN_CREATED] = "SELECT min(created_at) FROM orders",
    [ST_EXPIRE_COPY] = "INSERT INTO dead(" DEAD_COLS ")"
                       " SELECT id, ref, body, created_at, ?2, attempts, 'expired', NULL, NULL,"
                       " ?3 || coalesce('; last error: ' || last_error, '')"
                       " FROM orders WHERE created_at < ?1 AND " FREE_AT("?2"),
    [ST_EXPIRE_DEL] = "DELETE FROM orders WHERE created_at < ?1 AND " FREE_AT("?2"),
    [ST_OLDEST_FREE] = "SELECT id, bytes FROM orders WHERE " FREE_AT("?1")
                       " ORDER BY created_at, id LIMIT 1",
    [ST_MOVE_COPY] = "INSERT INTO dead(" DEAD_COLS ")"
                     " SELECT id, ref, body, created_at, ?2, attempts + ?3, ?4, ?5, ?6, ?7"
                     " FROM orders WHERE id = ?1 AND (?8 IS NULL OR claimed_by = ?8)",
    [ST_MOVE_DEL] = "DELETE FROM orders WHERE id = ?1 AND (?2 IS NULL OR claimed_by = ?2)",
    [ST_CLAIM] = "UPDATE orders SET claimed_by = ?1, claimed_until = ?2 WHERE id IN"
                 " (SELECT id FROM orders WHERE next_at <= ?3 AND " FREE_AT("?3")
                 " ORDER BY next_at, id LIMIT ?4)"
                 " RETURNING id, ref, body, attempts, next_at, created_at",
    [ST_ACK] = "DELETE FROM orders WHERE id = ?1 AND claimed_by = ?2",
    [ST_RETRY] = "UPDATE orders SET attempts = attempts + 1, next_at = ?3, last_error = ?4,"
                 " claimed_by = NULL, claimed_until = NULL WHERE id = ?1 AND claimed_by = ?2",
    [ST_RELEASE] = "UPDATE orders SET claimed_by = NULL, claimed_until = NULL"
                   " WHERE id = ?1 AND claimed_by = ?2",
    [ST_OWNER] = "SELECT claimed_by FROM orders WHERE id = ?1",
    [ST_DEAD_SUM_ONE] = "SELECT count(*), total(length(body)) FROM dead WHERE id = ?1",
    [ST_DEAD_SUM_ALL] = "SELECT count(*), total(length(body)) FROM dead",
    [ST_REQ_ONE_COPY] = "INSERT INTO orders(id, ref, body, bytes, created_at, attempts, next_at)"
                        " SELECT id, ref, body, length(body), ?2, 0, ?2 FROM dead WHERE id = ?1",
    [ST_REQ_ONE_DEL] = "DELETE FROM dead WHERE id = ?1",
    [ST_REQ_ALL_COPY] = "INSERT INTO orders(id, ref, body, bytes, created_at, attempts, next_at)"
                        " SELECT id, ref, body, length(body), ?1, 0, ?1 FROM dead ORDER BY id",
    [ST_REQ_ALL_DEL] = "DELETE FROM dead",
    [ST_PURGE_DEAD] = "DELETE FROM dead WHERE failed_at < ?1",
    [ST_PURGE_QUEUED] = "DELETE FROM orders WHERE created_at < ?1 AND " FREE_AT("?2"),
    [ST_STATS_SCAN] = "SELECT total(next_at <= ?1 AND " FREE_AT("?1") "),"
                      " total(claimed_until > ?1) FROM orders",
    [ST_DEAD_COUNT] = "SELECT count(*) FROM dead",
    [ST_LIST_QUEUED] = "SELECT id, ref, CASE WHEN ?4 THEN body END, bytes, created_at, attempts,"
                       " next_at, claimed_by, claimed_until, last_error"
                       " FROM orders WHERE id > ?1 ORDER BY id LIMIT ?2 OFFSET ?3",
    [ST_LIST_DEAD] = "SELECT id, ref, CASE WHEN ?4 THEN body END, length(body), created_at,"
                     " attempts, failed_at, kind, status, code, message"
                     " FROM dead WHERE id > ?1 ORDER BY id LIMIT ?2 OFFSET ?3",
    [ST_NEXT_DUE] = "SELECT next_at FROM orders WHERE " FREE_AT("?1") " ORDER BY next_at LIMIT 1",
};

struct oo_spool {
    sqlite3 *db;
    pthread_mutex_t mu;
    sqlite3_stmt *st[ST_COUNT]; /* prepared on first use, kept until close */
    oo_spool_opts opts;
    pid_t pid;
    char owner[48];
    char path[]; /* as given to open */
};

/* Purge/requeue "everything": a cutoff no stored time reaches. */
#define FAR_FUTURE 1e300

/* ------------------------------------------------------------------ */
/* Errors                                                              */

const char *oo_spool_kind(int code) {
    switch (code) {
    case OO_SPOOL_OK: return "ok";
    case OO_SPOOL_FULL: return "full";
    case OO_SPOOL_BUSY: return "busy";
    case OO_SPOOL_LEASE: return "lease";
    case OO_SPOOL_MISUSE: return "misuse";
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

/* A failed SQLite call. Must run before anything else touches the
 * connection (a rollback would overwrite sqlite3_errmsg). */
static int db_fail(oo_spool *s, oo_spool_err *err, int rc, const char *what) {
    int prim = rc & 0xff;
    const char *msg = (s && s->db) ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
    const char *path = s ? s->path : "?";
    if (prim == SQLITE_BUSY || prim == SQLITE_LOCKED)
        return set_err(err, OO_SPOOL_BUSY, rc, NULL,
                       "spool %s: %s: %s (still locked after busy_timeout %g s)", path, what,
                       msg, s ? s->opts.busy_timeout : 0.0);
    return set_err(err, OO_SPOOL_STORAGE, rc, NULL, "spool %s: %s: %s", path, what, msg);
}

static int nomem(oo_spool *s, oo_spool_err *err, const char *what) {
    return set_err(err, OO_SPOOL_STORAGE, SQLITE_NOMEM, NULL, "spool %s: %s: out of memory",
                   s->path, what);
}

/* ------------------------------------------------------------------ */
/* Statements and transactions                                         */

static sqlite3_stmt *prep(oo_spool *s, int i, int *rc) {
    if (!s->st[i]) {
        *rc = sqlite3_prepare_v3(s->db, SQL[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL);
        if (*rc != SQLITE_OK) {
            s->st[i] = NULL;
            return NULL;
        }
    }
    return s->st[i];
}

/* Steps a statement that returns no rows, then resets it. SQLITE_OK or the error. */
static int run(sqlite3_stmt *st) {
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int run_plain(oo_spool *s, int i) {
    int rc;
    sqlite3_stmt *st = prep(s, i, &rc);
    return st ? run(st) : rc;
}

static void rollback(oo_spool *s) {
    if (!sqlite3_get_autocommit(s->db)) {
        if (run_plain(s, ST_ROLLBACK) != SQLITE_OK) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    }
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *p, size_t n) {
    if (p) sqlite3_bind_text64(st, i, p, (sqlite3_uint64)n, SQLITE_STATIC, SQLITE_UTF8);
    else sqlite3_bind_null(st, i);
}

static void bind_str(sqlite3_stmt *st, int i, const char *p) {
    if (p) sqlite3_bind_text(st, i, p, -1, SQLITE_STATIC);
    else sqlite3_bind_null(st, i);
}

/* Every call: a live handle in the process that opened it, then the lock. */
static int enter(oo_spool *s, oo_spool_err *err, const char *what) {
    pid_t me;
    if (!s || !s->db) return set_err(err, OO_SPOOL_MISUSE, 0, NULL, "spool %s: handle is closed", what);
    me = getpid();
    if (me != s->pid)
        return set_err(err, OO_SPOOL_MISUSE, 0, NULL,
                       "spool %s: %s: handle was opened by process %ld, used in process %ld"
                       " (open the spool after fork)",
                       s->path, what, (long)s->pid, (long)me);
    pthread_mutex_lock(&s->mu);
    return OO_SPOOL_OK;
}

static void leave(oo_spool *s) {
    pthread_mutex_unlock(&s->mu);
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
    if (sqlite3_column_type(st, i) == SQLITE_NULL) {
        if (len) *len = 0;
        return NULL;
    }
    p = sqlite3_column_blob(st, i);
    n = sqlite3_column_bytes(st, i);
    out = (char *)malloc((size_t)n + 1);
    if (!out) {
        *oom = 1;
        return NULL;
    }
    if (n > 0) memcpy(out, p, (size_t)n);
    out[n] = '\0';
    if (len) *len = (size_t)n;
    return out;
}

static int cmp_row_id(const void *a, const void *b) {
    long long x = ((const oo_spool_row *)a)->id, y = ((const oo_spool_row *)b)->id;
    return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------------ */
/* Open / close                                                        */

void oo_spool_opts_init(oo_spool_opts *o) {
    memset(o, 0, sizeof *o);
    o->busy_timeout = 5.0;
    o->sync = OO_SPOOL_SYNC_NORMAL;
    o->on_full = OO_SPOOL_REFUSE;
}

double oo_spool_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

const char *oo_spool_path(const oo_spool *s) { return s->path; }
const char *oo_spool_owner(const oo_spool *s) { return s->owner; }
const oo_spool_opts *oo_spool_get_opts(const oo_spool *s) { return &s->opts; }

static int exec_sql(oo_spool *s, const char *sql) {
    return sqlite3_exec(s->db, sql, NULL, NULL, NULL);
}

/* Reads a one-value pragma/query as text into buf. */
static int query_text(oo_spool *s, const char *sql, char *buf, size_t n) {
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) return rc;
    rc = sqlite3_step(st);
    buf[0] = '\0';
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(buf, n, "%s", t ? (const char *)t : "");
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

static int user_version(oo_spool *s, long *v) {
    char buf[32];
    int rc = query_text(s, "PRAGMA user_version", buf, sizeof buf);
    if (rc == SQLITE_OK) *v = strtol(buf, NULL, 10);
    return rc;
}

/* Creates the schema once; concurrent first opens serialize on BEGIN IMMEDIATE. */
static int ensure_schema(oo_spool *s, oo_spool_err *err) {
    long v = 0;
    int rc = user_version(s, &v);
    if (rc != SQLITE_OK) return db_fail(s, err, rc, "reading the schema version");
    if (v == OO_SPOOL_SCHEMA_VERSION) return OO_SPOOL_OK;
    if (v == 0) {
        if ((rc = exec_sql(s, "BEGIN IMMEDIATE")) != SQLITE_OK) return db_fail(s, err, rc, "creating the schema");
        rc = user_version(s, &v);
        if (rc == SQLITE_OK && v == 0) rc = exec_sql(s, SCHEMA_SQL);
        if (rc == SQLITE_OK) rc = exec_sql(s, "COMMIT");
        if (rc != SQLITE_OK) {
            int code = db_fail(s, err, rc, "creating the schema");
            rollback(s);
            return code;
        }
        if (v == 0 || v == OO_SPOOL_SCHEMA_VERSION) return OO_SPOOL_OK;
    }
    return set_err(err, OO_SPOOL_STORAGE, 0, NULL,
                   "spool %s: schema version %ld is not %d (a different version of this"
                   " library, or not a spool file)",
                   s->path, v, OO_SPOOL_SCHEMA_VERSION);
}

static void make_owner(oo_spool *s) {
    unsigned char r[8];
    int i;
    char *p;
    /* SQLite's PRNG is seeded from the OS; the pid keeps forked copies apart. */
    sqlite3_randomness((int)sizeof r, r);
    p = s->owner + snprintf(s->owner, sizeof s->owner, "%ld:", (long)s->pid);
    for (i = 0; i < 8; i++) p += sprintf(p, "%02x", r[i]);
}

int oo_spool_open(const char *path, const oo_spool_opts *o, oo_spool **out, oo_spool_err *err) {
    oo_spool *s;
    oo_spool_opts defaults;
    size_t plen;
    int rc, code, flags;
    char mode[32], pragma[96];

    *out = NULL;
    if (!o) {
        oo_spool_opts_init(&defaults);
        o = &defaults;
    }
    if (!path || !*path || strcmp(path, ":memory:") == 0)
        return set_err(err, OO_SPOOL_MISUSE, 0, NULL, "spool open: a file path is required");
    if (!(o->busy_timeout >= 0 && o->busy_timeout <= 86400) || o->max_orders < 0 ||
        o->max_bytes < 0 || !(o->max_age >= 0))
        return set_err(err, OO_SPOOL_MISUSE, 0, NULL, "spool open: option out of range");

    plen = strlen(path);
    s = (oo_spool *)calloc(1, sizeof *s + plen + 1);
    if (!s) return set_err(err, OO_SPOOL_STORAGE, SQLITE_NOMEM, NULL, "spool %s: out of memory", path);
    memcpy(s->path, path, plen + 1);
    s->opts = *o;
    s->pid = getpid();
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        return set_err(err, OO_SPOOL_STORAGE, 0, NULL, "spool %s: cannot create a mutex", path);
    }

    /* NOMUTEX: our own mutex serializes each handle's calls, and it must
     * cover whole transactions, which SQLite's per-call mutex would not. */
    flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
#ifdef SQLITE_OPEN_EXRESCODE
    flags |= SQLITE_OPEN_EXRESCODE;
#endif
    rc = sqlite3_open_v2(path, &s->db, flags, NULL);
    if (rc != SQLITE_OK) {
        code = db_fail(s, err, rc, "open");
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    if (sqlite3_db_readonly(s->db, "main") == 1) {
        code = set_err(err, OO_SPOOL_STORAGE, SQLITE_READONLY, NULL,
                       "spool %s: open: the file is read-only", path);
        goto fail;
    }
    sqlite3_busy_timeout(s->db, (int)(o->busy_timeout * 1000.0 + 0.5));

    /* Switching a new file to WAL takes an exclusive lock that SQLite does
     * not wait for (no busy handler on this path): when several processes
     * create the spool at once, retry within busy_timeout. */
    {
        double deadline = oo_spool_now() + o->busy_timeout;
        while ((rc = query_text(s, "PRAGMA journal_mode=WAL", mode, sizeof mode)) == SQLITE_BUSY &&
               oo_spool_now() < deadline) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (rc != SQLITE_OK) {
        code = db_fail(s, err, rc, "open (setting WAL mode)");
        goto fail;
    }
    if (strcmp(mode, "wal") != 0) {
        code = set_err(err, OO_SPOOL_STORAGE, 0, NULL,
                       "spool %s: open: could not switch to WAL mode (journal mode is '%s')",
                       path, mode);
        goto fail;
    }
    snprintf(pragma, sizeof pragma,
             "PRAGMA synchronous=%s; PRAGMA journal_size_limit=67108864",
             o->sync == OO_SPOOL_SYNC_FULL ? "FULL" : "NORMAL");
    if ((rc = exec_sql(s, pragma)) != SQLITE_OK) {
        code = db_fail(s, err, rc, "open (pragmas)");
        goto fail;
    }
    if ((code = ensure_schema(s, err)) != OO_SPOOL_OK) goto fail;
    make_owner(s);
    *out = s;
    return OO_SPOOL_OK;

fail:
    oo_spool_close(s);
    return code;
}

int oo_spool_reopen(const oo_spool *s, oo_spool **out, oo_spool_err *err) {
    *out = NULL;
    if (!s || !s->db) return set_err(err, OO_SPOOL_MISUSE, 0, NULL, "spool reopen: handle is closed");
    return oo_spool_open(s->path, &s->opts, out, err);
}

void oo_spool_close(oo_spool *s) {
    int i;
    if (!s) return;
    if (s->db) {
        if (s->pid == getpid()) {
            for (i = 0; i < ST_COUNT; i++) sqlite3_finalize(s->st[i]);
            sqlite3_close_v2(s->db);
        }
        /* else: a copy inherited through fork. Closing it here could
         * checkpoint or unlock state the parent still relies on, so the
         * connection is abandoned (a small leak) instead. */
        s->db = NULL;
    }
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* ------------------------------------------------------------------ */
/* Shared steps (called inside a transaction, lock held)               */

/* max_age: moves unclaimed rows older than now - max_age to dead letters.
 * Costs one index probe when nothing is old enough. */
static int expire(oo_spool *s, double now) {
    double cutoff;
    char msg[96];
    int rc;
    sqlite3_stmt *st;
    if (!(s->opts.max_age > 0)) return SQLITE_OK;
    cutoff = now - s->opts.max_age;
    if (!(st = prep(s, ST_MIN_CREATED, &rc))) return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        int old = sqlite3_column_type(st, 0) != SQLITE_NULL && sqlite3_column_double(st, 0) < cutoff;
        sqlite3_reset(st);
        if (!old) return SQLITE_OK;
    } else {
        sqlite3_reset(st);
        return rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    snprintf(msg, sizeof msg, "queued longer than max_age %g s", s->opts.max_age);
    if (!(st = prep(s, ST_EXPIRE_COPY, &rc))) return rc;
    sqlite3_bind_double(st, 1, cutoff);
    sqlite3_bind_double(st, 2, now);
    sqlite3_bind_text(st, 3, msg, -1, SQLITE_STATIC);
    if ((rc = run(st)) != SQLITE_OK) return rc;
    if (!(st = prep(s, ST_EXPIRE_DEL, &rc))) return rc;
    sqlite3_bind_double(st, 1, cutoff);
    sqlite3_bind_double(st, 2, now);
    return run(st);
}

/* Copies one row to dead letters and deletes it. owner NULL = any holder.
 * *moved = 0 when the row is absent or held by someone else. */
static int move_to_dead(oo_spool *s, long long id, const char *owner, double now,
                        int attempts_add, const oo_spool_failure *f, int *moved) {
    int rc;
    sqlite3_stmt *st;
    *moved = 0;
    if (!(st = prep(s, ST_MOVE_COPY, &rc))) return rc;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_double(st, 2, now);
    sqlite3_bind_int(st, 3, attempts_add);
    bind_str(st, 4, f->kind ? f->kind : "failed");
    if (f->status) sqlite3_bind_int(st, 5, f->status);
    else sqlite3_bind_null(st, 5);
    bind_str(st, 6, f->code);
    bind_str(st, 7, f->message);
    bind_str(st, 8, owner);
    if ((rc = run(st)) != SQLITE_OK) return rc;
    if (sqlite3_changes(s->db) == 0) return SQLITE_OK;
    if (!(st = prep(s, ST_MOVE_DEL, &rc))) return rc;
    sqlite3_bind_int64(st, 1, id);
    bind_str(st, 2, owner);
    if ((rc = run(st)) != SQLITE_OK) return rc;
    *moved = 1;
    return SQLITE_OK;
}

static int read_totals(oo_spool *s, long long *n, long long *bytes) {
    int rc;
    sqlite3_stmt *st = prep(s, ST_TOTALS, &rc);
    if (!st) return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *n = sqlite3_column_int64(st, 0);
        *bytes = sqlite3_column_int64(st, 1);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        *n = *bytes = 0;
        rc = SQLITE_OK;
    }
    sqlite3_reset(st);
    return rc;
}

/* Would n more orders of add bytes break a bound? Fills err (FULL) if so. */
static int over_bounds(oo_spool *s, long long cnt, long long bytes, long long n, long long add,
                       const char *what, const char *tail, oo_spool_err *err) {
    const oo_spool_opts *o = &s->opts;
    if (o->max_orders > 0 && cnt + n > o->max_orders)
        return set_err(err, OO_SPOOL_FULL, 0, "max_orders",
                       "spool %s is full: max_orders %lld reached (%lld queued, %lld new); %s%s",
                       s->path, o->max_orders, cnt, n, what, tail);
    if (o->max_bytes > 0 && bytes + add > o->max_bytes)
        return set_err(err, OO_SPOOL_FULL, 0, "max_bytes",
                       "spool %s is full: max_bytes %lld would be exceeded (%lld bytes queued,"
                       " %lld new); %s%s",
                       s->path, o->max_bytes, bytes, add, what, tail);
    return OO_SPOOL_OK;
}

/* Applies the bounds for n new orders of add bytes. Returns an SQLite rc;
 * *code becomes OO_SPOOL_FULL (err filled) when the orders must be refused. */
static int make_room(oo_spool *s, long long n, long long add, double now, int *code,
                     oo_spool_err *err) {
    long long cnt, bytes;
    int rc;
    char msg[160];
    oo_spool_failure f;
    *code = OO_SPOOL_OK;
    if (s->opts.max_orders <= 0 && s->opts.max_bytes <= 0) return SQLITE_OK;
    if ((rc = read_totals(s, &cnt, &bytes)) != SQLITE_OK) return rc;
    if (over_bounds(s, cnt, bytes, n, add, "", "", NULL) == OO_SPOOL_OK) return SQLITE_OK;
    if (s->opts.on_full != OO_SPOOL_DROP_OLDEST) {
        *code = over_bounds(s, cnt, bytes, n, add, "order refused", " (on_full=refuse)", err);
        return SQLITE_OK;
    }
    memset(&f, 0, sizeof f);
    f.kind = "dropped";
    f.message = msg;
    while (over_bounds(s, cnt, bytes, n, add, "", "", NULL) != OO_SPOOL_OK) {
        sqlite3_stmt *st = prep(s, ST_OLDEST_FREE, &rc);
        long long id, b;
        int moved;
        if (!st) return rc;
        sqlite3_bind_double(st, 1, now);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW) {
            sqlite3_reset(st);
            if (rc != SQLITE_DONE) return rc;
            *code = over_bounds(s, cnt, bytes, n, add, "order refused",
                                " (on_full=drop_oldest: every queued order is being delivered)",
                                err);
            return SQLITE_OK;
        }
        id = sqlite3_column_int64(st, 0);
        b = sqlite3_column_int64(st, 1);
        sqlite3_reset(st);
        snprintf(msg, sizeof msg, "dropped to make room for newer orders (on_full=drop_oldest, %s)",
                 s->opts.max_orders > 0 && cnt + n > s->opts.max_orders ? "max_orders" : "max_bytes");
        if ((rc = move_to_dead(s, id, NULL, now, 0, &f, &moved)) != SQLITE_OK) return rc;
        cnt -= 1;
        bytes -= b;
    }
    return SQLITE_OK;
}

/* Explains why ack/retry/kill/release found no row held by us. */
static int lease_err(oo_spool *s, long long id, const char *what, oo_spool_err *err) {
    int rc;
    sqlite3_stmt *st = prep(s, ST_OWNER, &rc);
    char holder[64] = "";
    int found = 0;
    if (st) {
        sqlite3_bind_int64(st, 1, id);
        if (sqlite3_step(st) == SQLITE_ROW) {
            const unsigned char *t = sqlite3_column_text(st, 0);
            found = 1;
            snprintf(holder, sizeof holder, "%s", t ? (const char *)t : "");
        }
        sqlite3_reset(st);
    }
    if (!found)
        return set_err(err, OO_SPOOL_LEASE, 0, NULL,
                       "spool %s: %s of order %lld refused: it is no longer queued"
                       " (acked, purged or moved to dead letters)",
                       s->path, what, id);
    if (!holder[0])
        return set_err(err, OO_SPOOL_LEASE, 0, NULL,
                       "spool %s: %s of order %lld refused: it is not claimed (lease released)",
                       s->path, what, id);
    return set_err(err, OO_SPOOL_LEASE, 0, NULL,
                   "spool %s: %s of order %lld refused: it is claimed by %s, not by this"
                   " handle (%s); our lease expired",
                   s->path, what, id, holder, s->owner);
}

/* ------------------------------------------------------------------ */
/* Operations                                                          */

int oo_spool_put_many(oo_spool *s, const oo_spool_item *items, size_t n, double now,
                      long long *ids, oo_spool_err *err) {
    long long add = 0;
    size_t i;
    int rc, code;
    sqlite3_stmt *st;
    if ((code = enter(s, err, "put")) != OO_SPOOL_OK) return code;
    for (i = 0; i < n; i++) {
        if (!items[i].body || items[i].body_len == 0) {
            leave(s);
            return set_err(err, OO_SPOOL_MISUSE, 0, NULL, "spool put: order %zu has an empty body", i + 1);
        }
        if (s->opts.max_bytes > 0 && (long long)items[i].body_len > s->opts.max_bytes) {
            leave(s);
            return set_err(err, OO_SPOOL_FULL, 0, "max_bytes",
                           "spool %s: order of %zu bytes is larger than max_bytes %lld; order refused",
                           s->path, items[i].body_len, s->opts.max_bytes);
        }
        add += (long long)items[i].body_len;
    }
    if (n == 0) {
        leave(s);
        return OO_SPOOL_OK;
    }
    if (s->opts.max_orders > 0 && (long long)n > s->opts.max_orders) {
        leave(s);
        return set_err(err, OO_SPOOL_FULL, 0, "max_orders",
                       "spool %s: %zu orders in one put exceed max_orders %lld; orders refused",
                       s->path, n, s->opts.max_orders);
    }
    if (s->opts.max_bytes > 0 && add > s->opts.max_bytes) {
        leave(s);
        return set_err(err, OO_SPOOL_FULL, 0, "max_bytes",
                       "spool %s: %zu orders of %lld bytes in one put exceed max_bytes %lld;"
                       " orders refused",
                       s->path, n, add, s->opts.max_bytes);
    }
    if ((rc = run_plain(s, ST_BEGIN)) != SQLITE_OK) goto fail;
    if ((rc = expire(s, now)) != SQLITE_OK) goto fail;
    if ((rc = make_room(s, (long long)n, add, now, &code, err)) != SQLITE_OK) goto fail;
    if (code != OO_SPOOL_OK) {
        rollback(s);
        leave(s);
        return code;
    }
    if (!(st = prep(s, ST_INSERT, &rc))) goto fail;
    for (i = 0; i < n; i++) {
        bind_text_or_null(st, 1, items[i].ref, items[i].ref_len);
        sqlite3_bind_blob64(st, 2, items[i].body, (sqlite3_uint64)items[i].body_len, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)items[i].body_len);
        sqlite3_bind_double(st, 4, now);
        if ((rc = run(st)) != SQLITE_OK) goto fail;
        if (ids) ids[i] = (long long)sqlite3_last_insert_rowid(s->db);
    }
    sqlite3_clear_bindings(st); /* drop pointers into the caller's buffers */
    if ((rc = run_plain(s, ST_COMMIT)) != SQLITE_OK) goto fail;
    leave(s);
    return OO_SPOOL_OK;
fail:
    code = db_fail(s, err, rc, "put");
    if (s->st[ST_INSERT]) sqlite3_clear_bindings(s->st[ST_INSERT]);
    rollback(s);
    leave(s);
    return code;
}

int oo_spool_put(oo_spool *s, const char *body, size_t body_len, const char *ref,
                 size_t ref_len, double now, long long *id, oo_spool_err *err) {
    oo_spool_item it;
    it.body = body;
    it.body_len = body_len;
    it.ref = ref;
    it.ref_len = ref_len;
    return oo_spool_put_many(s, &it, 1, now, id, err);
}

int oo_spool_claim(oo_spool *s, size_t max_n, double lease, double now, oo_spool_rows *out,
                   oo_spool_err *err) {
    int rc, code, oom = 0;
    sqlite3_stmt *st;
    oo_spool_rows_free(out);
    if ((code = enter(s, err, "claim")) != OO_SPOOL_OK) return code;
    if (max_n == 0 || !(lease > 0)) {
        leave(s);
        return set_err(err, OO_SPOOL_MISUSE, 0, NULL, "spool claim: max_n and lease must be positive");
    }
    if ((rc = run_plain(s, ST_BEGIN)) != SQLITE_OK) goto fail;
    if ((rc = expire(s, now)) != SQLITE_OK) goto fail;
    if (!(st = prep(s, ST_CLAIM, &rc))) goto fail;
    sqlite3_bind_text(st, 1, s->owner, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 2, now + lease);
    sqlite3_bind_double(st, 3, now);
    sqlite3_bind_int64(st, 4, max_n > (size_t)1 << 40 ? (sqlite3_int64)1 << 40 : (sqlite3_int64)max_n);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        oo_spool_row *w = rows_push(out);
        if (!w) {
            oom = 1;
            continue; /* keep stepping: RETURNING must run to completion */
        }
        w->id = sqlite3_column_int64(st, 0);
        w->ref = dup_col(st, 1, &w->ref_len, &oom);
        w->body = dup_col(st, 2, &w->body_len, &oom);
        w->bytes = (long long)w->body_len;
        w->attempts = sqlite3_column_int64(st, 3);
        w->next_at = sqlite3_column_double(st, 4);
        w->created_at = sqlite3_column_double(st, 5);
        w->claimed_until = now + lease;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) goto fail;
    if (oom) {
        /* nothing may stay claimed that the caller did not receive */
        rollback(s);
        leave(s);
        oo_spool_rows_free(out);
        return nomem(s, err, "claim");
    }
    if ((rc = run_plain(s, ST_COMMIT)) != SQLITE_OK) goto fail;
    leave(s);
    if (out->n > 1) qsort(out->v, out->n, sizeof out->v[0], cmp_row_id);
    return OO_SPOOL_OK;
fail:
    code = db_fail(s, err, rc, "claim");
    rollback(s);
    leave(s);
    oo_spool_rows_free(out);
    return code;
}

/* ack / release / retry: one UPDATE or DELETE on a row we hold. An
 * autocommit statement starts its own write transaction under the busy
 * handler, so no explicit BEGIN is needed for a single statement. */
static int owned_write(oo_spool *s, int which, long long id, double next_at, const char *text,
                       const char *what, oo_spool_err *err) {
    int rc, code;
    sqlite3_stmt *st;
    if ((code = enter(s, err, what)) != OO_SPOOL_OK) return code;
    if (!(st = prep(s, which, &rc))) goto fail;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, s->owner, -1, SQLITE_STATIC);
    if (which == ST_RETRY) {
        sqlite3_bind_double(st, 3, next_at);
        bind_str(st, 4, text);
    }
    rc = run(st);
    if (which == ST_RETRY) sqlite3_clear_bindings(st);
    if (rc != SQLITE_OK) goto fail;
    code = sqlite3_changes(s->db) == 0 ? lease_err(s, id, what, err) : OO_SPOOL_OK;
    leave(s);
    return code;
fail:
    code = db_fail(s, err, rc, what);
    leave(s);
    return code;
}

int oo_spool_ack(oo_spool *s, long long id, oo_spool_err *err) {
    return owned_write(s, ST_ACK, id, 0, NULL, "ack", err);
}

int oo_spool_release(oo_spool *s, long long id, oo_spool_err *err) {
    return owned_write(s, ST_RELEASE, id, 0, NULL, "release", err);
}

int oo_spool_retry(oo_spool *s, long long id, double next_at, const char *err_text,
                   oo_spool_err *err) {
    return owned_write(s, ST_RETRY, id, next_at, err_text, "retry", err);
}

int oo_spool_kill(oo_spool *s, long long id, const oo_spool_failure *f, double now,
                  oo_spool_err *err) {
    int rc, code, moved = 0;
    oo_spool_failure none;
    if ((code = enter(s, err, "kill")) != OO_SPOOL_OK) return code;
    if (!f) {
        memset(&none, 0, sizeof none);
        f = &none;
    }
    if ((rc = run_plain(s, ST_BEGIN)) != SQLITE_OK) goto fail;
    rc = move_to_dead(s, id, s->owner, now, 1, f, &moved);
    if (s->st[ST_MOVE_COPY]) sqlite3_clear_bindings(s->st[ST_MOVE_COPY]);
    if (rc != SQLITE_OK) goto fail;
    if (!moved) {
        rollback(s);
        code = lease_err(s, id, "kill", err);
        leave(s);
        return code;
    }
    if ((rc = run_plain(s, ST_COMMIT)) != SQLITE_OK) goto fail;
    leave(s);
    return OO_SPOOL_OK;
fail:
    code = db_fail(s, err, rc, "kill");
    rollback(s);
    leave(s);
    return code;
}

static int step_two_ints(sqlite3_stmt *st, long long *a, long long *b) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *a = sqlite3_column_int64(st, 0);
        if (b) *b = sqlite3_column_int64(st, 1);
        rc = SQLITE_OK;
    }
    sqlite3_reset(st);
    return rc;
}

int oo_spool_stats(oo_spool *s, double now, oo_spool_counts *out, oo_spool_err *err) {
    int rc, code;
    sqlite3_stmt *st;
    memset(out, 0, sizeof *out);
    if ((code = enter(s, err, "stats")) != OO_SPOOL_OK) return code;
    /* one read transaction: all counts from the same snapshot */
    if ((rc = run_plain(s, ST_BEGIN_READ)) != SQLITE_OK) goto fail;
    if ((rc = read_totals(s, &out->queued, &out->bytes)) != SQLITE_OK) goto fail;
    if (!(st = prep(s, ST_STATS_SCAN, &rc))) goto fail;
    sqlite3_bind_double(st, 1, now);
    if ((rc = step_two_ints(st, &out->due, &out->claimed)) != SQLITE_OK) goto fail;
    if (!(st = prep(s, ST_DEAD_COUNT, &rc))) goto fail;
    if ((rc = step_two_ints(st, &out->dead, NULL)) != SQLITE_OK) goto fail;
    if (!(st = prep(s, ST_MIN_CREATED, &rc))) goto fail;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if (sqlite3_column_type(st, 0) != SQLITE_NULL) {
            double age = now - sqlite3_column_double(st, 0);
            out->oldest_age = age > 0 ? age : 0;
        }
        rc = SQLITE_OK;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_OK) goto fail;
    if ((rc = run_plain(s, ST_COMMIT)) != SQLITE_OK) goto fail;
    leave(s);
    return OO_SPOOL_OK;
fail:
    code = db_fail(s, err, rc, "stats");
    rollback(s);
    leave(s);
    return code;
}

int oo_spool_next_due(oo_spool *s, double now, double *at, int *found, oo_spool_err *err) {
    int rc, code;
    sqlite3_stmt *st;
    *found = 0;
    *at = 0;
    if ((code = enter(s, err, "next_due")) != OO_SPOOL_OK) return code;
    if (!(st = prep(s, ST_NEXT_DUE, &rc))) goto fail;
    sqlite3_bind_double(st, 1, now);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *at = sqlite3_column_double(st, 0);
        *found = 1;
        rc = SQLITE_DONE;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) goto fail;
    leave(s);
    return OO_SPOOL_OK;
fail:
    code = db_fail(s, err, rc, "next_due");
    leave(s);
    return code;
}

int oo_spool_list(oo_spool *s, const oo_spool_list_opts *o, oo_spool_rows *out,
                  oo_spool_err *err) {
    int rc, code, oom = 0;
    sqlite3_stmt *st;
    oo_spool_rows_free(out);
    if ((code = enter(s, err, "list")) != OO_SPOOL_OK) return code;
    if (o->limit < 1 || o->offset < 0) {
        leave(s);
        return set_err(err, OO_SPOOL_MISUSE, 0, NULL, "spool list: limit must be >= 1 and offset >= 0");
    }
    if (!(st = prep(s, o->dead ? ST_LIST_DEAD : ST_LIST_QUEUED, &rc))) goto fail;
    sqlite3_bind_int64(st, 1, o->after_id);
    sqlite3_bind_int64(st, 2, o->limit);
    sqlite3_bind_int64(st, 3, o->offset);
    sqlite3_bind_int(st, 4, o->with_body ? 1 : 0);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        oo_spool_row *w = rows_push(out);
        if (!w) {
            oom = 1;
            break;
        }
        w->id = sqlite3_column_int64(st, 0);
        w->ref = dup_col(st, 1, &w->ref_len, &oom);
        w->body = dup_col(st, 2, &w->body_len, &oom);
        w->bytes = sqlite3_column_int64(st, 3);
        w->created_at = sqlite3_column_double(st, 4);
        w->attempts = sqlite3_column_int64(st, 5);
        if (o->dead) {
            w->failed_at = sqlite3_column_double(st, 6);
            w->kind = dup_col(st, 7, NULL, &oom);
            w->status = sqlite3_column_int(st, 8);
            w->code = dup_col(st, 9, NULL, &oom);
            w->message = dup_col(st, 10, NULL, &oom);
        } else {
            w->next_at = sqlite3_column_double(st, 6);
            w->claimed_by = dup_col(st, 7, NULL, &oom);
            w->claimed_until = sqlite3_column_double(st, 8);
            w->last_error = dup_col(st, 9, NULL, &oom);
        }
    }
    sqlite3_reset(st);
    if (oom) {
        leave(s);
        oo_spool_rows_free(out);
        return nomem(s, err, "list");
    }
    if (rc != SQLITE_DONE) goto fail;
    leave(s);
    return OO_SPOOL_OK;
fail:
    code = db_fail(s, err, rc, "list");
    leave(s);
    oo_spool_rows_free(out);
    return code;
}

int oo_spool_requeue_dead(oo_spool *s, long long id, double now, long long *n,
                          oo_spool_err *err) {
    int rc, code, all = id <= 0;
    long long cnt, bytes, add_n = 0, add_b = 0;
    sqlite3_stmt *st;
    *n = 0;
    if ((code = enter(s, err, "requeue_dead")) != OO_SPOOL_OK) return code;
    if ((rc = run_plain(s, ST_BEGIN)) != SQLITE_OK) goto fail;
    if (!(st = prep(s, all ? ST_DEAD_SUM_ALL : ST_DEAD_SUM_ONE, &rc))) goto fail;
    if (!all) sqlite3_bind_int64(st, 1, id);
    if ((rc = step_two_ints(st, &add_n, &add_b)) != SQLITE_OK) goto fail;
    if (add_n == 0) {
        rollback(s);
        leave(s);
        return OO_SPOOL_OK;
    }
    if ((rc = read_totals(s, &cnt, &bytes)) != SQLITE_OK) goto fail;
    code = over_bounds(s, cnt, bytes, add_n, add_b, "requeue refused", "", err);
    if (code != OO_SPOOL_OK) {
        rollback(s);
        leave(s);
        return code;
    }
    if (!(st = prep(s, all ? ST_REQ_ALL_COPY : ST_REQ_ONE_COPY, &rc))) goto fail;
    if (all) {
        sqlite3_bind_double(st, 1, now);
    } else {
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_double(st, 2, now);
    }
    if ((rc = run(st)) != SQLITE_OK) goto fail;
    *n = sqlite3_changes(s->db);
    if (!(st = prep(s, all ? ST_REQ_ALL_DEL : ST_REQ_ONE_DEL, &rc))) goto fail;
    if (!all) sqlite3_bind_int64(st, 1, id);
    if ((rc = run(st)) != SQLITE_OK) goto fail;
    if ((rc = run_plain(s, ST_COMMIT)) != SQLITE_OK) goto fail;
    leave(s);
    return OO_SPOOL_OK;
fail:
    *n = 0;
    code = db_fail(s, err, rc, "requeue_dead");
    rollback(s);
    leave(s);
    return code;
}

int oo_spool_purge(oo_spool *s, int which, double older_than, double now, long long *n,
                   oo_spool_err *err) {
    int rc, code;
    double cutoff = older_than < 0 ? FAR_FUTURE : now - older_than;
    sqlite3_stmt *st;
    *n = 0;
    if ((code = enter(s, err, "purge")) != OO_SPOOL_OK) return code;
    if ((rc = run_plain(s, ST_BEGIN)) != SQLITE_OK) goto fail;
    if (which & OO_SPOOL_PURGE_DEAD) {
        if (!(st = prep(s, ST_PURGE_DEAD, &rc))) goto fail;
        sqlite3_bind_double(st, 1, cutoff);
        if ((rc = run(st)) != SQLITE_OK) goto fail;
        *n += sqlite3_changes(s->db);
    }
    if (which & OO_SPOOL_PURGE_QUEUED) {
        if (!(st = prep(s, ST_PURGE_QUEUED, &rc))) goto fail;
        sqlite3_bind_double(st, 1, cutoff);
        sqlite3_bind_double(st, 2, now);
        if ((rc = run(st)) != SQLITE_OK) goto fail;
        *n += sqlite3_changes(s->db);
    }
    if ((rc = run_plain(s, ST_COMMIT)) != SQLITE_OK) goto fail;
    leave(s);
    return OO_SPOOL_OK;
fail:
    *n = 0;
    code = db_fail(s, err, rc, "purge");
    rollback(s);
    leave(s);
    return code;
}

/* ================================================================== */
/* Lua binding                                                         */

#define OO_SPOOL_ROWS_MT "optimizely.offline.spool.rows"

/* luaL_error with printf formats (%lld, %g, %zu), which lua_pushfstring
 * lacks on some Lua versions. */
static int raisef(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int raisef(lua_State *L, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return luaL_error(L, "%s", buf);
}

typedef struct l_spool {
    oo_spool *s; /* NULL once closed */
} l_spool;

oo_spool *oo_spool_check(lua_State *L, int idx) {
    l_spool *b = (l_spool *)luaL_checkudata(L, idx, OO_SPOOL_MT);
    if (!b->s) raisef(L, "spool is closed");
    return b->s;
}

/* Runtime failure → nil, {kind, message, retryable, sqlite_code?, bound?};
 * misuse → raise. */
static int push_err(lua_State *L, const oo_spool_err *e) {
    if (e->code == OO_SPOOL_MISUSE) return raisef(L, "%s", e->message);
    lua_pushnil(L);
    lua_createtable(L, 0, 5);
    lua_pushstring(L, oo_spool_kind(e->code));
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, e->message);
    lua_setfield(L, -2, "message");
    lua_pushboolean(L, e->code == OO_SPOOL_BUSY);
    lua_setfield(L, -2, "retryable");
    if (e->sqlite_code) {
        lua_pushinteger(L, e->sqlite_code);
        lua_setfield(L, -2, "sqlite_code");
    }
    if (e->bound) {
        lua_pushstring(L, e->bound);
        lua_setfield(L, -2, "bound");
    }
    return 2;
}

static int is_finite(lua_Number n) {
    return n == n && n > -1e300 && n < 1e300;
}

/* Optional "now" argument: a finite number, default the wall clock. */
static double opt_now(lua_State *L, int idx, const char *fn) {
    lua_Number n;
    if (lua_isnoneornil(L, idx)) return oo_spool_now();
    if (lua_type(L, idx) != LUA_TNUMBER || !is_finite(n = lua_tonumber(L, idx)))
        raisef(L, "spool:%s: now must be a number (epoch seconds), got %s", fn,
                   luaL_typename(L, idx));
    return (double)lua_tonumber(L, idx);
}

static long long check_id(lua_State *L, int idx, const char *fn) {
    long long id = 0;
    if (lua_type(L, idx) != LUA_TNUMBER || !oo_tointeger(L, idx, &id) || id < 1)
        raisef(L, "spool:%s: id must be a positive integer, got %s", fn,
                   lua_type(L, idx) == LUA_TNUMBER ? lua_tostring(L, idx) : luaL_typename(L, idx));
    return id;
}

static const char *opt_string(lua_State *L, int idx, size_t *len, const char *fn, const char *name) {
    if (lua_isnoneornil(L, idx)) {
        if (len) *len = 0;
        return NULL;
    }
    if (lua_type(L, idx) != LUA_TSTRING)
        raisef(L, "spool:%s: %s must be a string or nil, got %s", fn, name, luaL_typename(L, idx));
    return lua_tolstring(L, idx, len);
}

/* Number field of an options table (at -1): raises naming opts.<key>. */
static lua_Number opt_number(lua_State *L, const char *fn, const char *key, lua_Number lo,
                             int strictly_above) {
    lua_Number v;
    if (lua_type(L, -1) != LUA_TNUMBER)
        raisef(L, "%s: opts.%s must be a number, got %s", fn, key, luaL_typename(L, -1));
    v = lua_tonumber(L, -1);
    if (!is_finite(v) || (strictly_above ? !(v > lo) : !(v >= lo)))
        raisef(L, "%s: opts.%s must be %s %g, got %s", fn, key, strictly_above ? ">" : ">=",
                   (double)lo, lua_tostring(L, -1));
    return v;
}

static long long opt_integer(lua_State *L, const char *fn, const char *key, long long lo) {
    long long v = 0;
    if (lua_type(L, -1) != LUA_TNUMBER || !oo_tointeger(L, -1, &v) || v < lo)
        raisef(L, "%s: opts.%s must be an integer >= %lld, got %s", fn, key, lo,
                   lua_type(L, -1) == LUA_TNUMBER ? lua_tostring(L, -1) : luaL_typename(L, -1));
    return v;
}

static int opt_bool(lua_State *L, const char *fn, const char *key) {
    if (lua_type(L, -1) != LUA_TBOOLEAN)
        raisef(L, "%s: opts.%s must be a boolean, got %s", fn, key, luaL_typename(L, -1));
    return lua_toboolean(L, -1);
}

/* One of the listed words, else a raise naming them. */
static int opt_choice(lua_State *L, const char *fn, const char *key, const char *const *words) {
    const char *v;
    int i;
    if (lua_type(L, -1) == LUA_TSTRING) {
        v = lua_tostring(L, -1);
        for (i = 0; words[i]; i++)
            if (strcmp(v, words[i]) == 0) return i;
    }
    return raisef(L, "%s: opts.%s must be \"%s\" or \"%s\", got %s", fn, key, words[0],
                      words[1], lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1));
}

/* Walks an options table: calls back per key; unknown keys raise. Keys
 * must be strings. The value is at -1 during the callback. */
static void check_table_arg(lua_State *L, int idx, const char *fn) {
    if (!lua_isnoneornil(L, idx) && lua_type(L, idx) != LUA_TTABLE)
        raisef(L, "%s: opts must be a table or nil, got %s", fn, luaL_typename(L, idx));
}

static const char *next_key(lua_State *L, const char *fn) {
    if (lua_type(L, -2) != LUA_TSTRING)
        raisef(L, "%s: opts keys must be strings, got %s", fn, luaL_typename(L, -2));
    return lua_tostring(L, -2);
}

void oo_spool_read_opts(lua_State *L, int idx, oo_spool_opts *o) {
    static const char *const sync_words[] = {"normal", "full", NULL};
    static const char *const full_words[] = {"refuse", "drop_oldest", NULL};
    const char *fn = "spool.open";
    oo_spool_opts_init(o);
    check_table_arg(L, idx, fn);
    if (lua_isnoneornil(L, idx)) return;
    idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k = next_key(L, fn);
        if (strcmp(k, "busy_timeout") == 0) {
            o->busy_timeout = opt_number(L, fn, k, 0, 0);
            if (o->busy_timeout > 86400) raisef(L, "%s: opts.busy_timeout must be <= 86400", fn);
        } else if (strcmp(k, "sync") == 0) {
            o->sync = opt_choice(L, fn, k, sync_words) ? OO_SPOOL_SYNC_FULL : OO_SPOOL_SYNC_NORMAL;
        } else if (strcmp(k, "max_orders") == 0) {
            o->max_orders = opt_integer(L, fn, k, 1);
        } else if (strcmp(k, "max_bytes") == 0) {
            o->max_bytes = opt_integer(L, fn, k, 1);
        } else if (strcmp(k, "max_age") == 0) {
            o->max_age = opt_number(L, fn, k, 0, 1);
        } else if (strcmp(k, "on_full") == 0) {
            o->on_full = opt_choice(L, fn, k, full_words) ? OO_SPOOL_DROP_OLDEST : OO_SPOOL_REFUSE;
        } else {
            raisef(L, "%s: unknown option opts.%s (expected busy_timeout, sync, max_orders,"
                          " max_bytes, max_age, on_full)", fn, k);
        }
        lua_pop(L, 1);
    }
}

/* A userdata box around oo_spool_rows: freed by __gc even if building the
 * Lua result raises (out of memory). */
static oo_spool_rows *new_rows_box(lua_State *L) {
    oo_spool_rows *r = (oo_spool_rows *)lua_newuserdata(L, sizeof *r);
    memset(r, 0, sizeof *r);
    oo_setmetatable(L, OO_SPOOL_ROWS_MT);
    return r;
}

static int l_rows_gc(lua_State *L) {
    oo_spool_rows_free((oo_spool_rows *)luaL_checkudata(L, 1, OO_SPOOL_ROWS_MT));
    return 0;
}

static void set_str(lua_State *L, const char *k, const char *v, size_t len) {
    if (!v) return;
    lua_pushlstring(L, v, len);
    lua_setfield(L, -2, k);
}

static void set_cstr(lua_State *L, const char *k, const char *v) {
    if (v) set_str(L, k, v, strlen(v));
}

static void set_num(lua_State *L, const char *k, double v) {
    lua_pushnumber(L, (lua_Number)v);
    lua_setfield(L, -2, k);
}

static void set_int(lua_State *L, const char *k, long long v) {
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}

/*** core.spool_open(path, opts) → spool | nil, err
 * opts: busy_timeout, sync ("normal"|"full"), max_orders, max_bytes,
 * max_age, on_full ("refuse"|"drop_oldest"). */
static int l_open(lua_State *L) {
    size_t plen;
    const char *path = luaL_checklstring(L, 1, &plen);
    oo_spool_opts o;
    oo_spool_err err;
    l_spool *b;
    if (plen == 0 || strlen(path) != plen) raisef(L, "spool.open: path must be a non-empty string without NUL");
    oo_spool_read_opts(L, 2, &o);
    b = (l_spool *)lua_newuserdata(L, sizeof *b);
    b->s = NULL;
    oo_setmetatable(L, OO_SPOOL_MT);
    if (oo_spool_open(path, &o, &b->s, &err) != OO_SPOOL_OK) return push_err(L, &err);
    return 1;
}

/*** sp:put(body, ref, now) → id | nil, err */
static int l_put(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_item it;
    oo_spool_err err;
    long long id;
    double now;
    if (lua_type(L, 2) != LUA_TSTRING || oo_rawlen(L, 2) == 0)
        raisef(L, "spool:put: body must be a non-empty string, got %s",
                   lua_type(L, 2) == LUA_TSTRING ? "an empty string" : luaL_typename(L, 2));
    it.body = lua_tolstring(L, 2, &it.body_len);
    it.ref = opt_string(L, 3, &it.ref_len, "put", "ref");
    now = opt_now(L, 4, "put");
    if (oo_spool_put_many(s, &it, 1, now, &id, &err) != OO_SPOOL_OK) return push_err(L, &err);
    lua_pushinteger(L, (lua_Integer)id);
    return 1;
}

/*** sp:put_many({ {body=, ref=} | body, ... }, now) → {ids} | nil, err
 * One transaction: all stored or none. */
static int l_put_many(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    size_t n, i;
    oo_spool_item *items;
    long long *ids;
    oo_spool_err err;
    double now;
    if (lua_type(L, 2) != LUA_TTABLE)
        raisef(L, "spool:put_many: list must be a table, got %s", luaL_typename(L, 2));
    now = opt_now(L, 3, "put_many");
    n = (size_t)oo_rawlen(L, 2);
    if (n > 1000000) raisef(L, "spool:put_many: at most 1000000 orders per call");
    /* scratch memory the GC owns, so a raise below leaks nothing */
    items = (oo_spool_item *)lua_newuserdata(L, (n ? n : 1) * (sizeof *items + sizeof *ids));
    ids = (long long *)(void *)(items + (n ? n : 1));
    for (i = 0; i < n; i++) {
        int t;
        lua_rawgeti(L, 2, (int)(i + 1));
        t = lua_type(L, -1);
        items[i].ref = NULL;
        items[i].ref_len = 0;
        if (t == LUA_TSTRING) {
            items[i].body = lua_tolstring(L, -1, &items[i].body_len);
        } else if (t == LUA_TTABLE) {
            lua_pushliteral(L, "body");
            lua_rawget(L, -2);
            if (lua_type(L, -1) != LUA_TSTRING)
                raisef(L, "spool:put_many: list[%d].body must be a string, got %s", (int)(i + 1),
                           luaL_typename(L, -1));
            /* stays alive: the list (argument 2) references the entry, the entry the string */
            items[i].body = lua_tolstring(L, -1, &items[i].body_len);
            lua_pop(L, 1);
            lua_pushliteral(L, "ref");
            lua_rawget(L, -2);
            if (!lua_isnil(L, -1)) {
                if (lua_type(L, -1) != LUA_TSTRING)
                    raisef(L, "spool:put_many: list[%d].ref must be a string or nil, got %s",
                               (int)(i + 1), luaL_typename(L, -1));
                items[i].ref = lua_tolstring(L, -1, &items[i].ref_len);
            }
            lua_pop(L, 1);
        } else {
            raisef(L, "spool:put_many: list[%d] must be a table {body=, ref=} or a string, got %s",
                       (int)(i + 1), luaL_typename(L, -1));
        }
        if (items[i].body_len == 0)
            raisef(L, "spool:put_many: list[%d].body must be a non-empty string", (int)(i + 1));
        lua_pop(L, 1);
    }
    if (oo_spool_put_many(s, items, n, now, ids, &err) != OO_SPOOL_OK) return push_err(L, &err);
    lua_createtable(L, (int)n, 0);
    for (i = 0; i < n; i++) {
        lua_pushinteger(L, (lua_Integer)ids[i]);
        lua_rawseti(L, -2, (int)(i + 1));
    }
    return 1;
}

/*** sp:claim(max_n, lease_seconds, now) → { {id, ref, body, attempts}, ... } | nil, err */
static int l_claim(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    long long max_n = 0;
    lua_Number lease = 0;
    double now;
    oo_spool_rows *rows;
    oo_spool_err err;
    size_t i;
    if (lua_type(L, 2) != LUA_TNUMBER || !oo_tointeger(L, 2, &max_n) || max_n < 1 || max_n > 100000)
        raisef(L, "spool:claim: max_n must be an integer from 1 to 100000");
    if (lua_type(L, 3) != LUA_TNUMBER || !is_finite(lease = lua_tonumber(L, 3)) || !(lease > 0))
        raisef(L, "spool:claim: lease_seconds must be a positive number");
    now = opt_now(L, 4, "claim");
    rows = new_rows_box(L);
    if (oo_spool_claim(s, (size_t)max_n, (double)lease, now, rows, &err) != OO_SPOOL_OK)
        return push_err(L, &err);
    lua_createtable(L, (int)rows->n, 0);
    for (i = 0; i < rows->n; i++) {
        oo_spool_row *w = &rows->v[i];
        lua_createtable(L, 0, 4);
        set_int(L, "id", w->id);
        set_str(L, "ref", w->ref, w->ref_len);
        set_str(L, "body", w->body, w->body_len);
        set_int(L, "attempts", w->attempts);
        lua_rawseti(L, -2, (int)(i + 1));
    }
    oo_spool_rows_free(rows);
    return 1;
}

static int push_ok(lua_State *L, int code, const oo_spool_err *err) {
    if (code != OO_SPOOL_OK) return push_err(L, err);
    lua_pushboolean(L, 1);
    return 1;
}

/*** sp:ack(id) → true | nil, err (kind "lease" unless this handle holds the row) */
static int l_ack(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    return push_ok(L, oo_spool_ack(s, check_id(L, 2, "ack"), &err), &err);
}

/*** sp:release(id) → true | nil, err */
static int l_release(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    return push_ok(L, oo_spool_release(s, check_id(L, 2, "release"), &err), &err);
}

/*** sp:retry(id, next_at, err_text) → true | nil, err */
static int l_retry(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    long long id = check_id(L, 2, "retry");
    lua_Number next_at = 0;
    const char *text;
    if (lua_type(L, 3) != LUA_TNUMBER || !is_finite(next_at = lua_tonumber(L, 3)))
        raisef(L, "spool:retry: next_at must be a number (epoch seconds), got %s", luaL_typename(L, 3));
    text = opt_string(L, 4, NULL, "retry", "err_text");
    return push_ok(L, oo_spool_retry(s, id, (double)next_at, text, &err), &err);
}

/* A string field of the failure table at idx, or NULL. */
static const char *failure_field(lua_State *L, int idx, const char *k) {
    const char *v = NULL;
    lua_getfield(L, idx, k);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            raisef(L, "spool:kill: err.%s must be a string or nil, got %s", k, luaL_typename(L, -1));
        v = lua_tostring(L, -1); /* anchored: the caller's table keeps it */
    }
    lua_pop(L, 1);
    return v;
}

/*** sp:kill(id, err, now) → true | nil, err
 * err: {kind=, status=, code=, message=} (an error object fits) or a message string. */
static int l_kill(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    oo_spool_failure f;
    long long id = check_id(L, 2, "kill");
    double now = opt_now(L, 4, "kill");
    memset(&f, 0, sizeof f);
    if (lua_type(L, 3) == LUA_TSTRING) {
        f.message = lua_tostring(L, 3);
    } else if (lua_type(L, 3) == LUA_TTABLE) {
        long long st = 0;
        f.kind = failure_field(L, 3, "kind");
        f.code = failure_field(L, 3, "code");
        f.message = failure_field(L, 3, "message");
        lua_getfield(L, 3, "status");
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TNUMBER || !oo_tointeger(L, -1, &st) || st < 0 || st > 999)
                raisef(L, "spool:kill: err.status must be an integer HTTP status or nil");
            f.status = (int)st;
        }
        lua_pop(L, 1);
    } else if (!lua_isnoneornil(L, 3)) {
        raisef(L, "spool:kill: err must be a table, a string or nil, got %s", luaL_typename(L, 3));
    }
    return push_ok(L, oo_spool_kill(s, id, &f, now, &err), &err);
}

/*** sp:stats(now) → {queued, due, claimed, dead, bytes, oldest_age} | nil, err */
static int l_stats(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_counts st;
    oo_spool_err err;
    if (oo_spool_stats(s, opt_now(L, 2, "stats"), &st, &err) != OO_SPOOL_OK) return push_err(L, &err);
    lua_createtable(L, 0, 6);
    set_int(L, "queued", st.queued);
    set_int(L, "due", st.due);
    set_int(L, "claimed", st.claimed);
    set_int(L, "dead", st.dead);
    set_int(L, "bytes", st.bytes);
    set_num(L, "oldest_age", st.oldest_age);
    return 1;
}

/*** sp:next_due(now) → epoch seconds of the earliest unclaimed order | false | nil, err */
static int l_next_due(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    double at;
    int found;
    if (oo_spool_next_due(s, opt_now(L, 2, "next_due"), &at, &found, &err) != OO_SPOOL_OK)
        return push_err(L, &err);
    if (found) lua_pushnumber(L, (lua_Number)at);
    else lua_pushboolean(L, 0);
    return 1;
}

/*** sp:list{dead=, limit=100, offset=0, after=id, body=false} → rows | nil, err */
static int l_list(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_list_opts o;
    oo_spool_rows *rows;
    oo_spool_err err;
    const char *fn = "spool:list";
    size_t i;
    memset(&o, 0, sizeof o);
    o.limit = 100;
    check_table_arg(L, 2, fn);
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            const char *k = next_key(L, fn);
            if (strcmp(k, "dead") == 0) o.dead = opt_bool(L, fn, k);
            else if (strcmp(k, "body") == 0) o.with_body = opt_bool(L, fn, k);
            else if (strcmp(k, "limit") == 0) o.limit = opt_integer(L, fn, k, 1);
            else if (strcmp(k, "offset") == 0) o.offset = opt_integer(L, fn, k, 0);
            else if (strcmp(k, "after") == 0) o.after_id = opt_integer(L, fn, k, 0);
            else raisef(L, "%s: unknown option opts.%s (expected dead, limit, offset, after, body)", fn, k);
            lua_pop(L, 1);
        }
    }
    rows = new_rows_box(L);
    if (oo_spool_list(s, &o, rows, &err) != OO_SPOOL_OK) return push_err(L, &err);
    lua_createtable(L, (int)rows->n, 0);
    for (i = 0; i < rows->n; i++) {
        oo_spool_row *w = &rows->v[i];
        lua_createtable(L, 0, 10);
        set_int(L, "id", w->id);
        set_str(L, "ref", w->ref, w->ref_len);
        set_str(L, "body", w->body, w->body_len);
        set_int(L, "bytes", w->bytes);
        set_num(L, "created_at", w->created_at);
        set_int(L, "attempts", w->attempts);
        if (o.dead) {
            set_num(L, "failed_at", w->failed_at);
            set_cstr(L, "kind", w->kind);
            if (w->status) set_int(L, "status", w->status);
            set_cstr(L, "code", w->code);
            set_cstr(L, "message", w->message);
        } else {
            set_num(L, "next_at", w->next_at);
            set_cstr(L, "claimed_by", w->claimed_by);
            if (w->claimed_by) set_num(L, "claimed_until", w->claimed_until);
            set_cstr(L, "last_error", w->last_error);
        }
        lua_rawseti(L, -2, (int)(i + 1));
    }
    oo_spool_rows_free(rows);
    return 1;
}

/*** sp:requeue_dead(id | "all", now) → n | nil, err */
static int l_requeue_dead(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    long long id, n;
    double now;
    if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "all") == 0) id = 0;
    else if (lua_type(L, 2) == LUA_TNUMBER) id = check_id(L, 2, "requeue_dead");
    else id = raisef(L, "spool:requeue_dead: expected an id or \"all\", got %s", luaL_typename(L, 2));
    now = opt_now(L, 3, "requeue_dead");
    if (oo_spool_requeue_dead(s, id, now, &n, &err) != OO_SPOOL_OK) return push_err(L, &err);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/*** sp:purge{dead=true, queued=true, older_than=secs, now=} → n | nil, err */
static int l_purge(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    const char *fn = "spool:purge";
    int which = 0;
    double older = -1, now = 0;
    int have_now = 0;
    long long n;
    if (lua_type(L, 2) != LUA_TTABLE) raisef(L, "%s: opts must be a table {dead=true|queued=true, older_than=}", fn);
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        const char *k = next_key(L, fn);
        if (strcmp(k, "dead") == 0) which |= opt_bool(L, fn, k) ? OO_SPOOL_PURGE_DEAD : 0;
        else if (strcmp(k, "queued") == 0) which |= opt_bool(L, fn, k) ? OO_SPOOL_PURGE_QUEUED : 0;
        else if (strcmp(k, "older_than") == 0) older = opt_number(L, fn, k, 0, 0);
        else if (strcmp(k, "now") == 0) {
            now = opt_number(L, fn, k, -1e300, 0);
            have_now = 1;
        } else raisef(L, "%s: unknown option opts.%s (expected dead, queued, older_than, now)", fn, k);
        lua_pop(L, 1);
    }
    if (!which) raisef(L, "%s: say what to purge: opts.dead = true and/or opts.queued = true", fn);
    if (!have_now) now = oo_spool_now();
    if (oo_spool_purge(s, which, older, now, &n, &err) != OO_SPOOL_OK) return push_err(L, &err);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/*** sp:owner() → this handle's lease token; sp:path() → the file */
static int l_owner(lua_State *L) {
    lua_pushstring(L, oo_spool_owner(oo_spool_check(L, 1)));
    return 1;
}

static int l_path(lua_State *L) {
    lua_pushstring(L, oo_spool_path(oo_spool_check(L, 1)));
    return 1;
}

static int l_close(lua_State *L) {
    l_spool *b = (l_spool *)luaL_checkudata(L, 1, OO_SPOOL_MT);
    oo_spool_close(b->s);
    b->s = NULL;
    return 0;
}

static int l_is_open(lua_State *L) {
    l_spool *b = (l_spool *)luaL_checkudata(L, 1, OO_SPOOL_MT);
    lua_pushboolean(L, b->s != NULL);
    return 1;
}

static int l_tostring(lua_State *L) {
    l_spool *b = (l_spool *)luaL_checkudata(L, 1, OO_SPOOL_MT);
    if (b->s) lua_pushfstring(L, "optimizely.offline.spool (%s)", b->s->path);
    else lua_pushliteral(L, "optimizely.offline.spool (closed)");
    return 1;
}

/*** core.spool_now() → wall-clock epoch seconds (the spool's time base). */
static int l_now(lua_State *L) {
    lua_pushnumber(L, (lua_Number)oo_spool_now());
    return 1;
}

void oo_spool_register(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"put", l_put},
        {"put_many", l_put_many},
        {"claim", l_claim},
        {"ack", l_ack},
        {"retry", l_retry},
        {"kill", l_kill},
        {"release", l_release},
        {"stats", l_stats},
        {"next_due", l_next_due},
        {"list", l_list},
        {"requeue_dead", l_requeue_dead},
        {"purge", l_purge},
        {"owner", l_owner},
        {"path", l_path},
        {"is_open", l_is_open},
        {"close", l_close},
        {NULL, NULL}};
    static const luaL_Reg funcs[] = {
        {"spool_open", l_open},
        {"spool_now", l_now},
        {NULL, NULL}};
    oo_newclass(L, OO_SPOOL_MT, methods, l_close, l_close, l_tostring);
    if (luaL_newmetatable(L, OO_SPOOL_ROWS_MT)) {
        lua_pushcfunction(L, l_rows_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    oo_setfuncs(L, funcs, 0);
}
