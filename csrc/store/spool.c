/* Durable spool: SQLite storage of encoded orders (see spool.h for the
 * contract) — the store: its schema, statements and operations. Its
 * connections and their fork safety are spool_conn.c, the checkpointer
 * spool_ckpt.c (both share spool_db.h). No Lua here: the binding is
 * l_spool.c, and the delivery thread calls this API directly. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>

#include "spool_db.h"
#include "amend.h"
#include "clock.h"
#include "hmac.h"
#include "json_walk.h"
#include "ledger.h"
#include "sqlfile.h"

/* "Free" = no live lease: never claimed, released, or its lease ran out. */
#define FREE_AT(p) "(claimed_until IS NULL OR claimed_until <= " p ")"
#define DEAD_COLS                                                                                  \
    "id, ref, body, created_at, failed_at, attempts, kind, status, code, message, channel, op"
/* A row that must wait: a cancel behind any earlier row of its refCode,
 * a create behind an earlier cancel (o: the candidate). */
#define WAITS_BEHIND_EARLIER                                                                       \
    "EXISTS (SELECT 1 FROM orders e WHERE e.ref = o.ref AND e.id < o.id"                           \
    " AND (o.op = 1 OR e.op = 1))"

/* Requeue and dead sums take ?1 = id, or ?1 = NULL for every dead letter. */
#define DEAD_ONE_OR_ALL "(?1 IS NULL OR id = ?1)"

static const char *const SQL[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_BEGIN_READ] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_TOTALS] = "SELECT n, bytes FROM totals WHERE one = 1",
    [ST_INSERT] = "INSERT INTO orders(id, ref, body, bytes, created_at, attempts, next_at, channel,"
                  " op) VALUES ((SELECT seq + 1 FROM totals WHERE one = 1), ?1, ?2, ?3, ?4, 0, ?4,"
                  " ?5, ?6)",
    [ST_MIN_CREATED] = "SELECT min(created_at) FROM orders",
    [ST_EXPIRE_COPY] = "INSERT INTO dead(" DEAD_COLS ")"
                       " SELECT id, ref, body, created_at, ?2, attempts, 'expired', NULL, NULL,"
                       " ?3 || coalesce('; last error: ' || last_error, ''), channel, op"
                       " FROM orders WHERE created_at < ?1 AND " FREE_AT("?2"),
    [ST_EXPIRE_DEL] = "DELETE FROM orders WHERE created_at < ?1 AND " FREE_AT("?2"),
    [ST_OLDEST_FREE] =
        "SELECT id, bytes FROM orders WHERE " FREE_AT("?1") " ORDER BY created_at, id LIMIT 1",
    [ST_MOVE_COPY] =
        "INSERT INTO dead(" DEAD_COLS ")"
        " SELECT id, ref, body, created_at, ?2, attempts + ?3, ?4, ?5, ?6, ?7, channel, op"
        " FROM orders WHERE id = ?1 AND (?8 IS NULL OR claimed_by = ?8)",
    [ST_MOVE_DEL] = "DELETE FROM orders WHERE id = ?1 AND (?2 IS NULL OR claimed_by = ?2)",
    [ST_CLAIM] =
        "SELECT id, ref, body, bytes, attempts, created_at, next_at, channel, op"
        " FROM orders o WHERE next_at <= ?1 AND " FREE_AT("?1") " AND NOT " WAITS_BEHIND_EARLIER
                                                                " ORDER BY next_at, id LIMIT ?2",
    [ST_CLAIM_MARK] = "UPDATE orders SET claimed_by = ?2, claimed_until = ?3 WHERE id = ?1",
    [ST_ACK] = "DELETE FROM orders WHERE id = ?1 AND claimed_by = ?2",
    [ST_RETRY] = "UPDATE orders SET attempts = attempts + 1, next_at = ?3, last_error = ?4,"
                 " claimed_by = NULL, claimed_until = NULL WHERE id = ?1 AND claimed_by = ?2",
    [ST_RELEASE] = "UPDATE orders SET claimed_by = NULL, claimed_until = NULL"
                   " WHERE id = ?1 AND claimed_by = ?2",
    [ST_OWNER] = "SELECT claimed_by FROM orders WHERE id = ?1",
    [ST_DEAD_SUM] = "SELECT count(*), total(length(body)) FROM dead WHERE " DEAD_ONE_OR_ALL,
    [ST_REQUEUE_COPY] = "INSERT INTO orders(id, ref, body, bytes, created_at, attempts, next_at,"
                        " channel, op) SELECT id, ref, body, length(body), ?2, 0, ?2, channel, op"
                        " FROM dead WHERE " DEAD_ONE_OR_ALL " ORDER BY id",
    [ST_REQUEUE_DEL] = "DELETE FROM dead WHERE " DEAD_ONE_OR_ALL,
    [ST_PURGE_DEAD] = "DELETE FROM dead WHERE failed_at < ?1",
    [ST_PURGE_QUEUED] = "DELETE FROM orders WHERE created_at < ?1 AND " FREE_AT("?2"),
    [ST_WAITING] = "SELECT count(*) FROM orders WHERE next_at > ?1",
    [ST_LEASED] = "SELECT count(*), total(next_at <= ?1) FROM orders"
                  " WHERE claimed_by IS NOT NULL AND claimed_until > ?1",
    [ST_DEAD_COUNT] = "SELECT count(*) FROM dead",
    [ST_LIST_QUEUED] = "SELECT id, ref, CASE WHEN ?4 THEN body END, bytes, created_at, attempts,"
                       " next_at, claimed_by, claimed_until, last_error, channel, op"
                       " FROM orders WHERE id > ?1 ORDER BY id LIMIT ?2 OFFSET ?3",
    [ST_LIST_DEAD] = "SELECT id, ref, CASE WHEN ?4 THEN body END, length(body), created_at,"
                     " attempts, failed_at, kind, status, code, message, channel, op"
                     " FROM dead WHERE id > ?1 ORDER BY id LIMIT ?2 OFFSET ?3",
    [ST_NEXT_DUE] = "SELECT next_at FROM orders WHERE " FREE_AT("?1") " ORDER BY next_at LIMIT 1",
    /* what the ledger needs of a row: the one this handle holds, or any */
    [ST_HELD_ROW] = "SELECT ref, body, channel, op FROM orders WHERE id = ?1 AND claimed_by = ?2",
    [ST_ANY_ROW] = "SELECT ref, body, channel, op FROM orders WHERE id = ?1",
    [ST_EXPIRING] = "SELECT ref, body, channel, op FROM orders"
                    " WHERE created_at < ?1 AND " FREE_AT("?2"),
    /* cancel_queued: creates (op 0, or 2: an amend's) of a refCode in
     * flight, and the free ones */
    [ST_REF_FLIGHT] = "SELECT count(*) FROM orders WHERE ref = ?1 AND op <> 1"
                      " AND claimed_by IS NOT NULL AND claimed_until > ?2",
    [ST_REF_FREE] =
        "SELECT ref, body, channel, op FROM orders WHERE ref = ?1 AND op <> 1 AND " FREE_AT("?2"),
    [ST_REF_DROP] = "DELETE FROM orders WHERE ref = ?1 AND op <> 1 AND " FREE_AT("?2"),
    /* purge by customer: every create's body is read in C */
    [ST_CUSTOMERS] = "SELECT id, body, " FREE_AT("?1") " FROM orders WHERE op <> 1",
    [ST_DEAD_CUSTOMERS] = "SELECT id, body, 1 FROM dead WHERE op <> 1",
    [ST_DROP_ONE] = "DELETE FROM orders WHERE id = ?1 AND " FREE_AT("?2"),
    [ST_DROP_DEAD] = "DELETE FROM dead WHERE id = ?1",
    /* due_now: the free rows waiting for a later attempt become due; the
     * attempts and the last error stay as they are */
    [ST_DUE_NOW] = "UPDATE orders SET next_at = ?1 WHERE next_at > ?1 AND " FREE_AT("?1"),
    /* the amend creates behind cancel row ?1: those of its refCode after
     * it with no later cancel between (none when ?1 is not a cancel) */
    [ST_AMEND_DEPS] = "SELECT id, ref, attempts, created_at, channel, op FROM orders o"
                      " WHERE op = 2 AND id > ?1"
                      " AND ref = (SELECT ref FROM orders WHERE id = ?1 AND op = 1)"
                      " AND NOT EXISTS (SELECT 1 FROM orders e WHERE e.ref = o.ref AND e.op = 1"
                      " AND e.id > ?1 AND e.id < o.id) ORDER BY id",
};

/* Row fields, listed per statement in column order (read_row). */
enum {
    F_END,
    F_ID,
    F_REF,
    F_BODY,
    F_BYTES,
    F_CREATED,
    F_ATTEMPTS,
    F_NEXT_AT,
    F_CLAIMED_BY,
    F_CLAIMED_UNTIL,
    F_LAST_ERROR,
    F_FAILED_AT,
    F_KIND,
    F_STATUS,
    F_CODE,
    F_MESSAGE,
    F_CHANNEL,
    F_OP
};
static const unsigned char CLAIM_FIELDS[] = {F_ID,      F_REF,     F_BODY,    F_BYTES, F_ATTEMPTS,
                                             F_CREATED, F_NEXT_AT, F_CHANNEL, F_OP,    F_END};
static const unsigned char QUEUED_FIELDS[] = {
    F_ID,         F_REF,           F_BODY,       F_BYTES,   F_CREATED, F_ATTEMPTS, F_NEXT_AT,
    F_CLAIMED_BY, F_CLAIMED_UNTIL, F_LAST_ERROR, F_CHANNEL, F_OP,      F_END};
static const unsigned char DEP_FIELDS[] = {F_ID,      F_REF, F_ATTEMPTS, F_CREATED,
                                           F_CHANNEL, F_OP,  F_END};
static const unsigned char DEAD_FIELDS[] = {F_ID,       F_REF,       F_BODY, F_BYTES,  F_CREATED,
                                            F_ATTEMPTS, F_FAILED_AT, F_KIND, F_STATUS, F_CODE,
                                            F_MESSAGE,  F_CHANNEL,   F_OP,   F_END};

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
    case OO_SPOOL_FOREIGN: return "foreign";
    default: return "storage";
    }
}

/* ------------------------------------------------------------------ */
/* Statements                                                          */

/* The spool's statements (SQL[]) on connection d; see sqlfile.h for fmt. */
#define exec(d, i, ...) oo_sql_exec(&(d)->c, (d)->st, SQL, (i), __VA_ARGS__)
#define query(d, i, out, ...) oo_sql_query(&(d)->c, (d)->st, SQL, (i), (out), __VA_ARGS__)
#define query_scalar(d, i, v, ...) oo_sql_scalar_of(&(d)->c, (d)->st, SQL, (i), (v), __VA_ARGS__)
#define finish oo_sql_finish
typedef oo_sql_scalar scalar;

static void rollback(spool_db *d) {
    if (!sqlite3_get_autocommit(d->c.db) && exec(d, ST_ROLLBACK, "") != SQLITE_OK)
        oo_sql_rollback(&d->c);
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
        case F_OP: w->op = sqlite3_column_int(st, c); break;
        }
    }
    return oom ? -1 : 0;
}

static int cmp_row_id(const void *a, const void *b) {
    long long x = ((const oo_spool_row *)a)->id, y = ((const oo_spool_row *)b)->id;
    return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------------ */
/* The clock                                                           */

double oo_spool_now(void) { return oo_wall_now(); }

/* ------------------------------------------------------------------ */
/* Calls and transactions                                              */

/* How a call runs: TX_ONE one statement on its own, TX_WRITE a BEGIN
 * IMMEDIATE transaction, both on the shared connection; TX_READ one
 * snapshot and TX_READ_ONE one statement, both on the handle's reader. */
enum { TX_ONE, TX_WRITE, TX_READ, TX_READ_ONE };
typedef int (*tx_body)(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err);

/* Every call: a live handle in the process that opened it, the
 * connection's lock for the whole call, then `body` (in a transaction for
 * TX_WRITE and TX_READ). body returns an OO_SPOOL code (SQLite failures
 * through db_fail); anything but OK rolls back. */
static int transact(oo_spool *s, const char *what, int tx, tx_body body, void *ctx,
                    oo_spool_err *err) {
    spool_db *d;
    int rc, code, begin = tx == TX_WRITE ? ST_BEGIN : tx == TX_READ ? ST_BEGIN_READ : -1;
    if (!s || !s->d || !s->d->c.db) return misuse(err, what, "handle is closed");
    if ((code = oo_spool_check_process(s, what, err)) != OO_SPOOL_OK) return code;
    oo_sql_gate_enter();
    d = tx == TX_READ || tx == TX_READ_ONE ? oo_spool_reader(s) : s->d;
    pthread_mutex_lock(&d->mu);
    d->c.what = what;
    /* ids the ledger memoised belong to one transaction */
    d->memo.scope = 0;
    d->memo.nlabel = d->memo.next = 0;
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
    if (code == OO_SPOOL_OK && d == s->d && tx != TX_READ && tx != TX_READ_ONE)
        oo_spool_want_checkpoint(d);
    pthread_mutex_unlock(&d->mu);
    oo_sql_gate_leave();
    return code;
}

/* ------------------------------------------------------------------ */
/* Shared steps (inside a transaction, lock held)                      */

/* ---- The ledger in the spool's file (d->ledger set: oo_spool_set_ledger) ---- */

/* Records the current row of q (ref, body, channel, op) in the ledger: a
 * create's outcome, the ack of a cancel row as cancelled; a dead cancel
 * row changes nothing (the order stays as it was). */
static int note_current(spool_db *d, sqlite3_stmt *q, int outcome, double now, oo_spool_err *err) {
    size_t rlen, blen, clen;
    const char *ref = oo_sql_column_text(q, 0, &rlen);
    const char *body = oo_sql_column_text(q, 1, &blen);
    const char *chan = oo_sql_column_text(q, 2, &clen);
    if (sqlite3_column_int(q, 3) == OO_SPOOL_OP_CANCEL) {
        if (outcome == OO_LEDGER_DEAD) return OO_SPOOL_OK;
        outcome = OO_LEDGER_CANCELLED;
    }
    return oo_ledger_note(&d->c, d->lst, d->ledger, &d->memo, chan, clen, ref, rlen, body, blen,
                          outcome, now, err);
}

/* Records row `id` (held by owner, or any row when owner is NULL); a row
 * not found is not recorded (*noted stays). */
static int note_row(spool_db *d, long long id, const char *owner, int outcome, double now,
                    long long *noted, oo_spool_err *err) {
    sqlite3_stmt *q;
    int rc, code;
    if (!d->ledger) return OO_SPOOL_OK;
    rc = owner ? query(d, ST_HELD_ROW, &q, "is", id, owner) : query(d, ST_ANY_ROW, &q, "i", id);
    if (rc == SQLITE_DONE) return OO_SPOOL_OK;
    if (rc != SQLITE_ROW) return db_fail(d, err, rc);
    code = note_current(d, q, outcome, now, err);
    finish(q);
    if (code == OO_SPOOL_OK && noted) (*noted)++;
    return code;
}

/* Records every row statement `which` finds (two double arguments). */
static int note_rows(spool_db *d, int which, double a, double b, int outcome, double now,
                     oo_spool_err *err) {
    sqlite3_stmt *q;
    long long n = 0;
    int rc, code = OO_SPOOL_OK;
    if (!d->ledger) return OO_SPOOL_OK;
    for (rc = query(d, which, &q, "dd", a, b); rc == SQLITE_ROW && code == OO_SPOOL_OK;
         rc = sqlite3_step(q), n++)
        code = note_current(d, q, outcome, now, err);
    if (code == OO_SPOOL_OK && rc != SQLITE_ROW && rc != SQLITE_DONE) code = db_fail(d, err, rc);
    if (q) finish(q);
    if (code == OO_SPOOL_OK)
        code = oo_ledger_note_done(&d->c, d->lst, d->ledger, &d->ledger_since, n, now, err);
    return code;
}

/* max_age: moves unclaimed rows older than now - max_age to dead letters.
 * Costs one index probe when nothing is old enough. */
static int expire(oo_spool *s, double now, oo_spool_err *err) {
    spool_db *d = s->d;
    double cutoff;
    char msg[96];
    scalar oldest;
    int rc, code;
    if (!(s->opts.max_age > 0)) return OO_SPOOL_OK;
    cutoff = now - s->opts.max_age;
    if ((rc = query_scalar(d, ST_MIN_CREATED, &oldest, "")) != SQLITE_OK)
        return db_fail(d, err, rc);
    if (!oldest.found || !(oldest.x < cutoff)) return OO_SPOOL_OK;
    if ((code = note_rows(d, ST_EXPIRING, cutoff, now, OO_LEDGER_DEAD, now, err)) != OO_SPOOL_OK)
        return code;
    snprintf(msg, sizeof msg, "queued longer than max_age %g s", s->opts.max_age);
    if ((rc = exec(d, ST_EXPIRE_COPY, "dds", cutoff, now, msg)) == SQLITE_OK)
        rc = exec(d, ST_EXPIRE_DEL, "dd", cutoff, now);
    return rc == SQLITE_OK ? OO_SPOOL_OK : db_fail(d, err, rc);
}

/* Copies one row to dead letters and deletes it. owner NULL = any holder.
 * *moved = 0 when the row is absent or held by someone else. */
static int move_to_dead(spool_db *d, long long id, const char *owner, double now, int attempts_add,
                        const oo_spool_failure *f, int *moved) {
    int rc;
    *moved = 0;
    rc = exec(d, ST_MOVE_COPY, "idisosss", id, now, attempts_add, f->kind ? f->kind : "failed",
              f->status, f->code, f->message, owner);
    if (rc != SQLITE_OK || sqlite3_changes(d->c.db) == 0) return rc;
    if ((rc = exec(d, ST_MOVE_DEL, "is", id, owner)) == SQLITE_OK) *moved = 1;
    return rc;
}

static int collect_rows(spool_db *d, sqlite3_stmt *st, int rc, const unsigned char *fields,
                        oo_spool_rows *out, oo_spool_err *err);

/* The dead letter's fields, copied into the row reported to the caller
 * (left NULL without memory: the dead letter itself is written). */
static void row_failure(oo_spool_row *w, const oo_spool_failure *f) {
    w->kind = strdup(f->kind ? f->kind : "failed");
    w->code = f->code ? strdup(f->code) : NULL;
    w->message = f->message ? strdup(f->message) : NULL;
    w->status = f->status;
}

/* Cancel row `id` ends dead (f): the amend creates put behind it end dead
 * with it, never posted (a dead ledger row each, which never replaces an
 * acknowledged one). Called before the cancel leaves `orders`. They are
 * appended to out (NULL: not wanted). */
static int kill_deps(spool_db *d, long long id, const oo_spool_failure *f, double now,
                     oo_spool_rows *out, oo_spool_err *err) {
    oo_spool_rows mine = {NULL, 0, 0};
    oo_spool_rows *rows = out ? out : &mine;
    oo_spool_failure df = *f;
    sqlite3_stmt *q;
    char msg[sizeof err->message];
    size_t i, first = rows->n;
    int code, moved, rc = query(d, ST_AMEND_DEPS, &q, "i", id);
    if ((code = collect_rows(d, q, rc, DEP_FIELDS, rows, err)) != OO_SPOOL_OK) goto done;
    snprintf(msg, sizeof msg, OO_AMEND_FAILED "%s", f->message ? f->message : "given up");
    df.message = msg;
    for (i = first; i < rows->n && code == OO_SPOOL_OK; i++) {
        code = note_row(d, rows->v[i].id, NULL, OO_LEDGER_DEAD, now, NULL, err);
        if (code == OO_SPOOL_OK &&
            (rc = move_to_dead(d, rows->v[i].id, NULL, now, 0, &df, &moved)) != SQLITE_OK)
            code = db_fail(d, err, rc);
        if (out) row_failure(&rows->v[i], &df);
    }
done:
    oo_spool_rows_free(&mine);
    return code;
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
                               " (on_full=drop_oldest: every queued order is being delivered)",
                               err);
        snprintf(msg, sizeof msg, "dropped to make room for newer orders (on_full=drop_oldest, %s)",
                 s->opts.max_orders > 0 && totals.a + n > s->opts.max_orders ? "max_orders"
                                                                             : "max_bytes");
        if ((rc = note_row(d, oldest.a, NULL, OO_LEDGER_DEAD, now, NULL, err)) != OO_SPOOL_OK)
            return rc;
        if ((rc = kill_deps(d, oldest.a, &f, now, NULL, err)) != OO_SPOOL_OK) return rc;
        if ((rc = move_to_dead(d, oldest.a, NULL, now, 0, &f, &moved)) != SQLITE_OK)
            return db_fail(d, err, rc);
        /* the totals again: an amend's new version may have gone with it */
        if ((rc = query_scalar(d, ST_TOTALS, &totals, "")) != SQLITE_OK) return db_fail(d, err, rc);
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
                       d->path, d->c.what, id);
    if (!holder[0])
        return set_err(err, OO_SPOOL_LEASE, 0, NULL,
                       "spool %s: %s of order %lld refused: it is not claimed (lease released)",
                       d->path, d->c.what, id);
    return set_err(err, OO_SPOOL_LEASE, 0, NULL,
                   "spool %s: %s of order %lld refused: it is claimed by %s, not by this"
                   " handle (%s); our lease expired",
                   d->path, d->c.what, id, holder, s->owner);
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
    if ((code = expire(s, c->now, err)) != OO_SPOOL_OK) return code;
    if ((code = make_room(s, (long long)c->n, c->add, c->now, err)) != OO_SPOOL_OK) return code;
    for (i = 0; i < c->n; i++) {
        const oo_spool_item *it = &c->items[i];
        rc = exec(d, ST_INSERT, "tbidti", it->ref, it->ref_len, it->body, it->body_len,
                  (long long)it->body_len, c->now, it->channel, it->channel_len, (long long)it->op);
        if (rc != SQLITE_OK) return db_fail(d, err, rc);
        if (c->ids) c->ids[i] = (long long)sqlite3_last_insert_rowid(d->c.db);
    }
    return OO_SPOOL_OK;
}

/* Is items[i] (an amend's new version) right after the cancel of its
 * refCode? Both in one put: one transaction, so a kill -9 never leaves one
 * without the other. */
static int amend_follows_cancel(const oo_spool_item *items, size_t i) {
    const oo_spool_item *c = i > 0 ? &items[i - 1] : NULL;
    return c && c->op == OO_SPOOL_OP_CANCEL && items[i].ref && c->ref_len == items[i].ref_len &&
           memcmp(c->ref, items[i].ref, c->ref_len) == 0;
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
        if (items[i].op == OO_SPOOL_OP_CANCEL) {
            if (!items[i].ref || items[i].ref_len == 0)
                return set_err(err, OO_SPOOL_MISUSE, 0, NULL,
                               "spool put: cancel %zu has no refCode", i + 1);
        } else if (items[i].op == OO_SPOOL_OP_AMEND && !amend_follows_cancel(items, i)) {
            return set_err(err, OO_SPOOL_MISUSE, 0, NULL,
                           "spool put: amend %zu must follow the cancel of its refCode in the"
                           " same put",
                           i + 1);
        } else if (items[i].op != OO_SPOOL_OP_CREATE && items[i].op != OO_SPOOL_OP_AMEND) {
            return set_err(err, OO_SPOOL_MISUSE, 0, NULL, "spool put: order %zu: unknown op %d",
                           i + 1, items[i].op);
        } else if (!items[i].body || items[i].body_len == 0) {
            return set_err(err, OO_SPOOL_MISUSE, 0, NULL, "spool put: order %zu has an empty body",
                           i + 1);
        }
        if (o->max_bytes > 0 && (long long)items[i].body_len > o->max_bytes)
            return set_err(
                err, OO_SPOOL_FULL, 0, "max_bytes",
                "spool %s: order of %zu bytes is larger than max_bytes %lld; order refused", path,
                items[i].body_len, o->max_bytes);
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

int oo_spool_put_many(oo_spool *s, const oo_spool_item *items, size_t n, double now, long long *ids,
                      oo_spool_err *err) {
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

int oo_spool_put(oo_spool *s, const char *body, size_t body_len, const char *ref, size_t ref_len,
                 double now, long long *id, oo_spool_err *err) {
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
    if ((code = expire(s, c->now, err)) != OO_SPOOL_OK) return code;
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
    const int *outcomes; /* ack: each id's ledger outcome (NULL: all sent) */
    size_t n;
    double next_at, now;
    const char *text;
    size_t missed; /* ids not held by us */
    long long first_missed;
} owned_ctx;

/* An ack writes the ledger row (when the ledger is on) before the delete:
 * both in this transaction, so a kill -9 leaves them consistent. */
static int ack_notes(oo_spool *s, spool_db *d, owned_ctx *c, size_t i, long long *noted,
                     oo_spool_err *err) {
    int outcome = c->outcomes ? c->outcomes[i] : OO_LEDGER_SENT;
    if (c->which != ST_ACK || !d->ledger) return OO_SPOOL_OK;
    return note_row(d, c->ids[i], s->owner, outcome, c->now, noted, err);
}

static int owned_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    owned_ctx *c = (owned_ctx *)ctx;
    size_t i;
    long long noted = 0;
    int rc, code;
    for (i = 0; i < c->n; i++) {
        if ((code = ack_notes(s, d, c, i, &noted, err)) != OO_SPOOL_OK) return code;
        rc = c->which == ST_RETRY
                 ? exec(d, ST_RETRY, "isds", c->ids[i], s->owner, c->next_at, c->text)
                 : exec(d, c->which, "is", c->ids[i], s->owner);
        if (rc != SQLITE_OK) return db_fail(d, err, rc);
        if (sqlite3_changes(d->c.db) == 0 && c->missed++ == 0) c->first_missed = c->ids[i];
    }
    if (noted && (code = oo_ledger_note_done(&d->c, d->lst, d->ledger, &d->ledger_since, noted,
                                             c->now, err)) != OO_SPOOL_OK)
        return code;
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

static int owned_write(oo_spool *s, owned_ctx *c, const char *what, oo_spool_err *err) {
    int code, one;
    if (c->n == 0) return OO_SPOOL_OK;
    /* one statement commits on its own; a batch, or an ack with its ledger
     * row, is one transaction (d->ledger is read under the lock: TX_WRITE
     * whenever it may be set) */
    one = c->n == 1 && !(c->which == ST_ACK && __atomic_load_n(&s->d->ledger_on, __ATOMIC_ACQUIRE));
    code = transact(s, what, one ? TX_ONE : TX_WRITE, owned_body, c, err);
    return code == OO_SPOOL_OK && c->missed ? OO_SPOOL_LEASE : code;
}

static int owned(oo_spool *s, int which, const long long *ids, const int *outcomes, size_t n,
                 double next_at, const char *text, const char *what, oo_spool_err *err) {
    owned_ctx c;
    memset(&c, 0, sizeof c);
    c.which = which;
    c.ids = ids;
    c.outcomes = outcomes;
    c.n = n;
    c.next_at = next_at;
    c.now = oo_wall_now();
    c.text = text;
    return owned_write(s, &c, what, err);
}

int oo_spool_ack(oo_spool *s, long long id, oo_spool_err *err) {
    return owned(s, ST_ACK, &id, NULL, 1, 0, NULL, "ack", err);
}

int oo_spool_ack_many(oo_spool *s, const long long *ids, size_t n, oo_spool_err *err) {
    return oo_spool_ack_outcomes(s, ids, NULL, n, oo_wall_now(), err);
}

int oo_spool_ack_outcomes(oo_spool *s, const long long *ids, const int *outcomes, size_t n,
                          double now, oo_spool_err *err) {
    owned_ctx c;
    size_t i;
    if (n > 0 && !ids) return misuse(err, "ack_many", "ids is NULL");
    for (i = 0; outcomes && i < n; i++)
        if (outcomes[i] != OO_LEDGER_SENT && outcomes[i] != OO_LEDGER_WARNED)
            return misuse(err, "ack_many", "an ack's outcome is sent or warned");
    memset(&c, 0, sizeof c);
    c.which = ST_ACK;
    c.ids = ids;
    c.outcomes = outcomes;
    c.n = n;
    c.now = now;
    return owned_write(s, &c, "ack", err);
}

int oo_spool_release(oo_spool *s, long long id, oo_spool_err *err) {
    return owned(s, ST_RELEASE, &id, NULL, 1, 0, NULL, "release", err);
}

int oo_spool_retry(oo_spool *s, long long id, double next_at, const char *err_text,
                   oo_spool_err *err) {
    return owned(s, ST_RETRY, &id, NULL, 1, next_at, err_text, "retry", err);
}

typedef struct kill_ctx {
    long long id;
    const oo_spool_failure *f;
    double now;
    oo_spool_rows *deps;
} kill_ctx;

static int kill_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    kill_ctx *c = (kill_ctx *)ctx;
    int moved = 0, rc = note_row(d, c->id, s->owner, OO_LEDGER_DEAD, c->now, NULL, err);
    if (rc != OO_SPOOL_OK) return rc;
    if ((rc = kill_deps(d, c->id, c->f, c->now, c->deps, err)) != OO_SPOOL_OK) return rc;
    rc = move_to_dead(d, c->id, s->owner, c->now, 1, c->f, &moved);
    if (rc != SQLITE_OK) return db_fail(d, err, rc);
    return moved ? OO_SPOOL_OK : lease_err(s, c->id, err);
}

int oo_spool_kill_deps(oo_spool *s, long long id, const oo_spool_failure *f, double now,
                       oo_spool_rows *deps, oo_spool_err *err) {
    oo_spool_failure none;
    kill_ctx c;
    int code;
    if (!f) {
        memset(&none, 0, sizeof none);
        f = &none;
    }
    oo_spool_rows_free(deps);
    c.id = id;
    c.f = f;
    c.now = now;
    c.deps = deps;
    code = transact(s, "kill", TX_WRITE, kill_body, &c, err);
    if (code != OO_SPOOL_OK) oo_spool_rows_free(deps); /* rolled back: none ended */
    return code;
}

int oo_spool_kill(oo_spool *s, long long id, const oo_spool_failure *f, double now,
                  oo_spool_err *err) {
    return oo_spool_kill_deps(s, id, f, now, NULL, err);
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
    if ((rc = query_scalar(d, ST_WAITING, &v, "d", c->now)) != SQLITE_OK)
        return db_fail(d, err, rc);
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
    int rc = query(d, o->dead ? ST_LIST_DEAD : ST_LIST_QUEUED, &st, "iiio", o->after_id, o->limit,
                   o->offset, o->with_body ? 1 : 0);
    return collect_rows(d, st, rc, o->dead ? DEAD_FIELDS : QUEUED_FIELDS, c->out, err);
}

int oo_spool_list(oo_spool *s, const oo_spool_list_opts *o, oo_spool_rows *out, oo_spool_err *err) {
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
    if ((rc = query_scalar(d, ST_DEAD_SUM, &dead, "I", c->id)) != SQLITE_OK)
        return db_fail(d, err, rc);
    if (dead.a == 0) return OO_SPOOL_OK;
    if ((rc = query_scalar(d, ST_TOTALS, &totals, "")) != SQLITE_OK) return db_fail(d, err, rc);
    if ((code = over_bounds(s, &totals, dead.a, dead.b, "requeue refused", "", err)) != OO_SPOOL_OK)
        return code;
    if ((rc = exec(d, ST_REQUEUE_COPY, "Id", c->id, c->now)) != SQLITE_OK)
        return db_fail(d, err, rc);
    *c->n = sqlite3_changes(d->c.db);
    if ((rc = exec(d, ST_REQUEUE_DEL, "I", c->id)) != SQLITE_OK) return db_fail(d, err, rc);
    return OO_SPOOL_OK;
}

int oo_spool_requeue_dead(oo_spool *s, long long id, double now, long long *n, oo_spool_err *err) {
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
        *c->n += sqlite3_changes(d->c.db);
    }
    if (c->which & OO_SPOOL_PURGE_QUEUED) {
        if ((rc = exec(d, ST_PURGE_QUEUED, "dd", c->cutoff, c->now)) != SQLITE_OK)
            return db_fail(d, err, rc);
        *c->n += sqlite3_changes(d->c.db);
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

typedef struct due_ctx {
    double now;
    long long *moved, *waiting;
} due_ctx;

static int due_now_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    due_ctx *c = (due_ctx *)ctx;
    scalar left;
    int rc;
    (void)s;
    if ((rc = exec(d, ST_DUE_NOW, "d", c->now)) != SQLITE_OK) return db_fail(d, err, rc);
    *c->moved = sqlite3_changes(d->c.db);
    /* what still waits is under another handle's live lease */
    if ((rc = query_scalar(d, ST_WAITING, &left, "d", c->now)) != SQLITE_OK)
        return db_fail(d, err, rc);
    *c->waiting = left.a;
    return OO_SPOOL_OK;
}

int oo_spool_due_now(oo_spool *s, double now, long long *moved, long long *waiting,
                     oo_spool_err *err) {
    due_ctx c;
    int code;
    *moved = *waiting = 0;
    c.now = now;
    c.moved = moved;
    c.waiting = waiting;
    code = transact(s, "due_now", TX_WRITE, due_now_body, &c, err);
    if (code != OO_SPOOL_OK) *moved = *waiting = 0;
    return code;
}

/* ------------------------------------------------------------------ */
/* The ledger's hooks                                                  */

typedef struct run_ctx {
    oo_spool_fn fn;
    void *ctx;
} run_ctx;

static int run_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    run_ctx *r = (run_ctx *)ctx;
    (void)s;
    return r->fn(&d->c, d->lst, r->ctx, err);
}

int oo_spool_run(oo_spool *s, const char *what, int write, oo_spool_fn fn, void *ctx,
                 oo_spool_err *err) {
    run_ctx r;
    r.fn = fn;
    r.ctx = ctx;
    return transact(s, what, write ? TX_WRITE : TX_READ, run_body, &r, err);
}

int oo_spool_set_ledger(oo_spool *s, const oo_ledger_cfg *cfg, oo_spool_err *err) {
    oo_ledger_cfg *copy;
    spool_db *d;
    if (!s || !s->d || !s->d->c.db) return misuse(err, "ledger", "handle is closed");
    d = s->d;
    if (!(copy = (oo_ledger_cfg *)malloc(sizeof *copy))) return nomem(d, err);
    *copy = *cfg;
    pthread_mutex_lock(&d->mu);
    free(d->ledger);
    d->ledger = copy;
    __atomic_store_n(&d->ledger_on, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&d->mu);
    return OO_SPOOL_OK;
}

/* ------------------------------------------------------------------ */
/* Cancels and erasure                                                 */

typedef struct cancel_ctx {
    const char *ref, *channel;
    size_t ref_len, channel_len;
    double now;
    oo_spool_cancelled *out;
} cancel_ctx;

static int cancel_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    cancel_ctx *c = (cancel_ctx *)ctx;
    sqlite3_stmt *q;
    scalar v;
    int rc, code = OO_SPOOL_OK, outcome = 0;
    (void)s;
    if ((rc = query_scalar(d, ST_REF_FLIGHT, &v, "td", c->ref, c->ref_len, c->now)) != SQLITE_OK)
        return db_fail(d, err, rc);
    c->out->in_flight = v.a;
    if (d->ledger &&
        (code = oo_ledger_outcome_at(&d->c, d->lst, d->ledger, c->channel, c->channel_len, c->ref,
                                     c->ref_len, &outcome, err)) != OO_SPOOL_OK)
        return code;
    c->out->seen = outcome == OO_LEDGER_SENT || outcome == OO_LEDGER_WARNED;
    /* never delivered, nothing in flight: removed here is cancelled for good */
    if (d->ledger && !c->out->seen && c->out->in_flight == 0) {
        for (rc = query(d, ST_REF_FREE, &q, "td", c->ref, c->ref_len, c->now);
             rc == SQLITE_ROW && code == OO_SPOOL_OK; rc = sqlite3_step(q))
            code = note_current(d, q, OO_LEDGER_CANCELLED, c->now, err);
        if (code == OO_SPOOL_OK && rc != SQLITE_ROW && rc != SQLITE_DONE)
            code = db_fail(d, err, rc);
        if (q) finish(q);
        if (code != OO_SPOOL_OK) return code;
    }
    if ((rc = exec(d, ST_REF_DROP, "td", c->ref, c->ref_len, c->now)) != SQLITE_OK)
        return db_fail(d, err, rc);
    c->out->removed = sqlite3_changes(d->c.db);
    return OO_SPOOL_OK;
}

int oo_spool_cancel_queued(oo_spool *s, const char *ref, size_t ref_len, const char *channel,
                           size_t channel_len, double now, oo_spool_cancelled *out,
                           oo_spool_err *err) {
    cancel_ctx c;
    memset(out, 0, sizeof *out);
    if (!ref || ref_len == 0) return misuse(err, "cancel_queued", "a refCode is required");
    c.ref = ref;
    c.ref_len = ref_len;
    c.channel = channel;
    c.channel_len = channel ? channel_len : 0;
    c.now = now;
    c.out = out;
    return transact(s, "cancel_queued", TX_WRITE, cancel_body, &c, err);
}

/* Is this body one of the customer's (user.email, normalised, or user.id)? */
static int body_of_customer(const char *body, size_t len, const char *email, size_t email_len,
                            const char *uid, size_t uid_len) {
    oo_json_pick k[2];
    char text[OO_EMAIL_MAX + 1], norm[OO_EMAIL_MAX + 1], why[8];
    size_t n;
    int m;
    memset(k, 0, sizeof k);
    k[0].path[0] = k[1].path[0] = "user";
    k[0].path[1] = "email";
    k[1].path[1] = "id";
    if (!oo_json_pick_values(body, len, k, 2)) return 0;
    if (uid && k[1].type == 's' && k[1].raw_len >= uid_len) {
        char *buf = (char *)malloc(k[1].raw_len + 1);
        int same = buf && (n = oo_json_pick_text(&k[1], buf, k[1].raw_len)) == uid_len &&
                   memcmp(buf, uid, uid_len) == 0;
        free(buf);
        if (same) return 1;
    }
    if (!email || k[0].type != 's' || k[0].raw_len > 6 * OO_EMAIL_MAX) return 0;
    n = oo_json_pick_text(&k[0], text, OO_EMAIL_MAX);
    m = oo_email_normalise(text, n, 0, norm, why, sizeof why);
    return m >= 0 && (size_t)m == email_len && memcmp(norm, email, email_len) == 0;
}

typedef struct purge_ctx {
    const char *email, *uid;
    size_t email_len, uid_len;
    double now;
    oo_spool_purged *out;
    long long *ids;
    size_t nids, cap;
} purge_ctx;

/* Collects the ids of the customer's rows that statement `which` lists
 * (id, body, free); the ones in flight are only counted. */
static int find_customer(spool_db *d, int which, purge_ctx *c, oo_spool_err *err) {
    sqlite3_stmt *q;
    int rc;
    c->nids = 0;
    for (rc = query(d, which, &q, "d", c->now); rc == SQLITE_ROW; rc = sqlite3_step(q)) {
        size_t len;
        const char *body = oo_sql_column_text(q, 1, &len);
        if (!body || !body_of_customer(body, len, c->email, c->email_len, c->uid, c->uid_len))
            continue;
        if (!sqlite3_column_int(q, 2)) {
            c->out->in_flight++;
            continue;
        }
        if (c->nids == c->cap) {
            size_t cap = c->cap ? 2 * c->cap : 64;
            long long *v = (long long *)realloc(c->ids, cap * sizeof *v);
            if (!v) {
                finish(q);
                return nomem(d, err);
            }
            c->ids = v;
            c->cap = cap;
        }
        c->ids[c->nids++] = sqlite3_column_int64(q, 0);
    }
    if (q) finish(q);
    return rc == SQLITE_DONE ? OO_SPOOL_OK : db_fail(d, err, rc);
}

static int purge_customer_body(oo_spool *s, spool_db *d, void *ctx, oo_spool_err *err) {
    purge_ctx *c = (purge_ctx *)ctx;
    size_t i;
    int rc, code, pass;
    (void)s;
    for (pass = 0; pass < 2; pass++) {
        if ((code = find_customer(d, pass ? ST_DEAD_CUSTOMERS : ST_CUSTOMERS, c, err)) !=
            OO_SPOOL_OK)
            return code;
        for (i = 0; i < c->nids; i++) {
            rc = pass ? exec(d, ST_DROP_DEAD, "i", c->ids[i])
                      : exec(d, ST_DROP_ONE, "id", c->ids[i], c->now);
            if (rc != SQLITE_OK) return db_fail(d, err, rc);
            if (pass) c->out->dead += sqlite3_changes(d->c.db);
            else c->out->queued += sqlite3_changes(d->c.db);
        }
    }
    return OO_SPOOL_OK;
}

int oo_spool_purge_customer(oo_spool *s, const char *email, size_t email_len, const char *user_id,
                            size_t id_len, double now, oo_spool_purged *out, oo_spool_err *err) {
    purge_ctx c;
    char norm[OO_EMAIL_MAX + 1], why[96];
    int n = 0, code;
    memset(out, 0, sizeof *out);
    memset(&c, 0, sizeof c);
    if (!email && !user_id) return misuse(err, "purge_customer", "give an e-mail or a user id");
    if (user_id && id_len == 0) return misuse(err, "purge_customer", "the user id is empty");
    /* an e-mail that is not an address is in no body (the encoder checks them) */
    if (email && (n = oo_email_normalise(email, email_len, 0, norm, why, sizeof why)) < 0) {
        email = NULL;
        if (!user_id) return OO_SPOOL_OK;
    }
    c.email = email ? norm : NULL;
    c.email_len = (size_t)n;
    c.uid = user_id;
    c.uid_len = id_len;
    c.now = now;
    c.out = out;
    code = transact(s, "purge_customer", TX_WRITE, purge_customer_body, &c, err);
    free(c.ids);
    if (code != OO_SPOOL_OK) memset(out, 0, sizeof *out);
    return code;
}
