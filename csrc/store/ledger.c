/* The delivery ledger (see ledger.h for the contract): SQLite storage of
 * what each endpoint acknowledged, in a file of its own or in a spool's.
 * No Lua here: the binding is l_ledger.c. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sqlite3.h>

#include "ledger.h"
#include "clock.h"
#include "sqlfile.h"

/* Seen: acknowledged (sent, warned) or cancelled. */
static int is_seen(int outcome) { return outcome != 0 && outcome != OO_LEDGER_DEAD; }

/* ------------------------------------------------------------------ */
/* Statements                                                          */

enum {
    L_BEGIN,
    L_BEGIN_READ,
    L_COMMIT,
    L_SCOPE_GET,
    L_SCOPE_ADD,
    L_LABEL_GET,
    L_LABEL_ADD,
    L_GET,
    L_PENDING_GET,
    L_PENDING_TAKE,
    L_PENDING_DEL,
    L_PENDING_DROP,
    L_PENDING_STEAL,
    L_UPSERT,
    L_MARK_CANCELLED,
    L_PRUNE,
    L_PRUNE_PENDING,
    L_PRUNED_MARK,
    L_FORGET,
    L_SPAN,
    L_META,
    L_SHOW,
    L_SHOW_PENDING,
    L_PAGE,
    L_SPOOLED,
    L_UPSERT_MANY,
    L_PENDING_DROP_MANY,
    L_COUNT
};
typedef char stmt_count_fits[L_COUNT <= OO_LEDGER_STMT_COUNT ? 1 : -1];

/* Record writes its rows MANY at a time: one statement of MANY rows costs
 * far less than MANY statements of one. */
#define MANY 32
#define P8 "(?,?,?,?,?,?,?,?)"
#define P8x4 P8 "," P8 "," P8 "," P8
#define P8x16 P8x4 "," P8x4 "," P8x4 "," P8x4
/* (scope, ref) IN (VALUES ...) would scan the table: an OR of keys is
 * searched by the primary key, one probe per key */
#define K1 "(scope = ? AND ref = ?)"
#define K4 K1 " OR " K1 " OR " K1 " OR " K1
#define K16 K4 " OR " K4 " OR " K4 " OR " K4
#define UPSERT_SET                                                                                 \
    " ON CONFLICT (scope, ref) DO UPDATE SET"                                                      \
    " fp = excluded.fp, outcome = excluded.outcome, at = excluded.at,"                             \
    " order_at = excluded.order_at, label = excluded.label, total = excluded.total"                \
    " WHERE excluded.outcome <> 3 OR ledger.outcome = 3"

#define ROW_COLS                                                                                   \
    "s.id, s.host, s.site, s.channel, l.ref, l.fp, l.outcome, l.at, l.order_at, b.store,"          \
    " b.currency, l.total"

static const char *const SQL[L_COUNT] = {
    [L_BEGIN] = "BEGIN IMMEDIATE",
    [L_BEGIN_READ] = "BEGIN",
    [L_COMMIT] = "COMMIT",
    [L_SCOPE_GET] = "SELECT id FROM ledger_scope WHERE host = ?1 AND site = ?2 AND channel = ?3",
    [L_SCOPE_ADD] = "INSERT INTO ledger_scope(host, site, channel) VALUES (?1, ?2, ?3)",
    [L_LABEL_GET] = "SELECT id FROM ledger_label WHERE store = ?1 AND currency = ?2",
    [L_LABEL_ADD] = "INSERT INTO ledger_label(store, currency) VALUES (?1, ?2)",
    [L_GET] = "SELECT fp, outcome, at FROM ledger WHERE scope = ?1 AND ref = ?2",
    [L_PENDING_GET] = "SELECT owner, until FROM ledger_pending WHERE scope = ?1 AND ref = ?2",
    [L_PENDING_TAKE] = "INSERT INTO ledger_pending(scope, ref, owner, until) VALUES (?1, ?2, ?3,"
                       " ?4) ON CONFLICT (scope, ref) DO UPDATE SET owner = excluded.owner,"
                       " until = excluded.until WHERE ledger_pending.until <= ?5",
    [L_PENDING_DEL] = "DELETE FROM ledger_pending WHERE scope = ?1 AND ref = ?2 AND owner = ?3",
    [L_PENDING_DROP] = "DELETE FROM ledger_pending WHERE scope = ?1 AND ref = ?2",
    [L_PENDING_STEAL] =
        "UPDATE ledger_pending SET owner = ?3, until = ?4 WHERE scope = ?1 AND ref = ?2",
    /* a dead outcome never overwrites a seen row; anything else overwrites */
    [L_UPSERT] = "INSERT INTO ledger(scope, ref, fp, outcome, at, order_at, label, total)"
                 " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)" UPSERT_SET,
    [L_MARK_CANCELLED] = "UPDATE ledger SET outcome = 4, at = ?3 WHERE scope = ?1 AND ref = ?2",
    [L_PRUNE] = "DELETE FROM ledger WHERE (scope, ref) IN"
                " (SELECT scope, ref FROM ledger WHERE at < ?1 ORDER BY at LIMIT ?2)",
    [L_PRUNE_PENDING] = "DELETE FROM ledger_pending WHERE until < ?1",
    [L_PRUNED_MARK] = "UPDATE ledger_meta SET pruned_before = max(coalesce(pruned_before, ?1), ?1)"
                      " WHERE one = 1",
    [L_FORGET] = "DELETE FROM ledger WHERE at < ?1",
    [L_SPAN] = "SELECT (SELECT min(at) FROM ledger), (SELECT max(at) FROM ledger)",
    [L_META] = "SELECT created, pruned_before FROM ledger_meta WHERE one = 1",
    /* by refCode: a probe per scope (few), not a scan */
    [L_SHOW] = "SELECT " ROW_COLS " FROM ledger_scope s CROSS JOIN ledger l"
               " LEFT JOIN ledger_label b ON b.id = l.label"
               " WHERE l.scope = s.id AND l.ref = ?1 ORDER BY s.id",
    [L_SHOW_PENDING] = "SELECT s.id, s.host, s.site, s.channel, p.ref, p.owner, p.until"
                       " FROM ledger_scope s CROSS JOIN ledger_pending p"
                       " WHERE p.scope = s.id AND p.ref = ?1 ORDER BY s.id",
    [L_PAGE] = "SELECT " ROW_COLS " FROM ledger l CROSS JOIN ledger_scope s"
               " LEFT JOIN ledger_label b ON b.id = l.label"
               " WHERE s.id = l.scope AND (l.scope, l.ref) > (?1, ?2)"
               " ORDER BY l.scope, l.ref LIMIT ?3",
    /* in a spool's file: a create (op 0 or 2) of the refCode still queued there */
    [L_SPOOLED] = "SELECT 1 FROM orders WHERE ref = ?1 AND op <> 1 LIMIT 1",
    /* L_UPSERT and L_PENDING_DROP for MANY rows */
    [L_UPSERT_MANY] = "INSERT INTO ledger(scope, ref, fp, outcome, at, order_at, label, total)"
                      " VALUES " P8x16 "," P8x16 UPSERT_SET,
    [L_PENDING_DROP_MANY] = "DELETE FROM ledger_pending WHERE " K16 " OR " K16,
};

#define lexec(c, st, i, ...) oo_sql_exec((c), (st), SQL, (i), __VA_ARGS__)
#define lquery(c, st, i, out, ...) oo_sql_query((c), (st), SQL, (i), (out), __VA_ARGS__)
#define lscalar(c, st, i, v, ...) oo_sql_scalar_of((c), (st), SQL, (i), (v), __VA_ARGS__)

/* The file's kind, for sqlfile.c. */
static const char *const MIGRATE[OO_LEDGER_SCHEMA_VERSION] = {NULL};
static const oo_sql_schema SCHEMA = {OO_LEDGER_APP_ID,
                                     OO_LEDGER_SCHEMA_VERSION,
                                     "'ledger_scope', 'ledger_label', 'ledger', 'ledger_pending',"
                                     " 'ledger_meta'",
                                     5,
                                     0,
                                     4096,
                                     OO_LEDGER_SCHEMA_SQL,
                                     MIGRATE};

/* ------------------------------------------------------------------ */
/* Rows of the ledger (inside a transaction)                           */

/* The id of (host, site, channel); with add, made when missing, else 0.
 * One host and site per call: the memo keys on the channel. */
static int scope_id(oo_sql_conn *c, sqlite3_stmt **st, oo_ledger_memo *m, const char *host,
                    const char *site, const char *chan, size_t chan_len, int add, long long *id) {
    oo_sql_scalar v;
    int rc;
    if (m && m->scope && m->chan_len == chan_len && memcmp(m->chan, chan, chan_len) == 0) {
        *id = m->scope;
        return SQLITE_OK;
    }
    rc = lscalar(c, st, L_SCOPE_GET, &v, "sst", host, site, chan, chan_len);
    *id = v.found ? v.a : 0;
    if (rc == SQLITE_OK && !v.found && add) {
        rc = lexec(c, st, L_SCOPE_ADD, "sst", host, site, chan, chan_len);
        if (rc == SQLITE_OK) *id = (long long)sqlite3_last_insert_rowid(c->db);
    }
    if (rc == SQLITE_OK && *id && m && chan_len <= sizeof m->chan) {
        memcpy(m->chan, chan, chan_len);
        m->chan_len = chan_len;
        m->scope = *id;
    }
    return rc;
}

/* The memo's slot for the label key, or -1. */
static int memo_label(const oo_ledger_memo *m, const char *key, size_t len) {
    int i;
    for (i = 0; m && i < m->nlabel; i++)
        if (m->label[i].len == len && memcmp(m->label[i].key, key, len) == 0) return i;
    return -1;
}

static void memo_add_label(oo_ledger_memo *m, const char *key, size_t len, long long id) {
    int i;
    if (!m || len > OO_LEDGER_MEMO_KEY) return;
    i = m->nlabel < OO_LEDGER_MEMO_LABELS ? m->nlabel++ : m->next++ % OO_LEDGER_MEMO_LABELS;
    memcpy(m->label[i].key, key, len);
    m->label[i].len = len;
    m->label[i].id = id;
}

/* The label of (store, currency), made when missing; 0 when both are unknown. */
static int label_id(oo_sql_conn *c, sqlite3_stmt **st, oo_ledger_memo *m, const oo_ledger_entry *e,
                    long long *id) {
    oo_sql_scalar v;
    const char *store = e->store ? e->store : "";
    char key[OO_LEDGER_MEMO_KEY];
    size_t klen = 3 + e->store_len;
    int rc, slot;
    *id = 0;
    if (!e->store && !e->currency[0]) return SQLITE_OK;
    if (klen <= sizeof key) {
        memcpy(key, e->currency, 3); /* "" when unknown: its NUL and what follows */
        memcpy(key + 3, store, e->store_len);
        if ((slot = memo_label(m, key, klen)) >= 0) {
            *id = m->label[slot].id;
            return SQLITE_OK;
        }
    }
    rc = lscalar(c, st, L_LABEL_GET, &v, "ts", store, e->store_len, e->currency);
    *id = v.a;
    if (rc == SQLITE_OK && !v.found) {
        rc = lexec(c, st, L_LABEL_ADD, "ts", store, e->store_len, e->currency);
        if (rc == SQLITE_OK) *id = (long long)sqlite3_last_insert_rowid(c->db);
    }
    if (rc == SQLITE_OK && klen <= sizeof key) memo_add_label(m, key, klen, *id);
    return rc;
}

/* Writes the outcome of e under (scope, ref) by the L_UPSERT rule. */
static int put_row(oo_sql_conn *c, sqlite3_stmt **st, oo_ledger_memo *m, long long scope,
                   const char *ref, size_t ref_len, const oo_ledger_entry *e, int with_fp,
                   int outcome, double now) {
    long long label;
    int rc = label_id(c, st, m, e, &label);
    if (rc != SQLITE_OK) return rc;
    return lexec(c, st, L_UPSERT, "itbiiJIJ", scope, ref, ref_len, e->fp,
                 (size_t)(with_fp ? OO_LEDGER_FP_LEN : 0), (long long)outcome, (long long)now,
                 e->has_order_at, e->order_at, label, e->has_total, e->total);
}

/* Cancelled without a body: the existing row keeps its fingerprint and
 * report fields; with none, a row without them. */
static int put_cancelled(oo_sql_conn *c, sqlite3_stmt **st, long long scope, const char *ref,
                         size_t ref_len, double now) {
    oo_ledger_entry none;
    int rc = lexec(c, st, L_MARK_CANCELLED, "itd", scope, ref, ref_len, now);
    if (rc != SQLITE_OK || sqlite3_changes(c->db) > 0) return rc;
    memset(&none, 0, sizeof none);
    return put_row(c, st, NULL, scope, ref, ref_len, &none, 0, OO_LEDGER_CANCELLED, now);
}

/* ?1 of the bounded prune: rows recorded before now - keep days. */
static double cutoff_of(int keep_days, double now) { return now - (double)keep_days * 86400.0; }

/* Deletes up to max rows recorded before cutoff (oldest first) and the
 * expired reservations; notes how far back the ledger still knows. */
static int prune_rows(oo_sql_conn *c, sqlite3_stmt **st, double cutoff, long long max, double now,
                      long long *n) {
    oo_sql_scalar span;
    double horizon = cutoff;
    int rc = lexec(c, st, L_PRUNE, "di", cutoff, max);
    *n = rc == SQLITE_OK ? sqlite3_changes(c->db) : 0;
    if (rc == SQLITE_OK) rc = lexec(c, st, L_PRUNE_PENDING, "d", now);
    if (rc != SQLITE_OK || *n == 0) return rc;
    /* a bounded prune may leave older rows: the ledger knows from the oldest */
    if ((rc = lscalar(c, st, L_SPAN, &span, "")) != SQLITE_OK) return rc;
    if (span.found && (double)span.a < horizon) horizon = (double)span.a;
    return lexec(c, st, L_PRUNED_MARK, "i", (long long)horizon);
}

/* After n rows written: a bounded prune every OO_LEDGER_PRUNE_EVERY. */
static int maybe_prune(oo_sql_conn *c, sqlite3_stmt **st, int keep_days, long long *since,
                       long long n, double now) {
    long long pruned;
    *since += n;
    if (*since < OO_LEDGER_PRUNE_EVERY) return SQLITE_OK;
    *since = 0;
    return prune_rows(c, st, cutoff_of(keep_days, now), 2 * OO_LEDGER_PRUNE_EVERY, now, &pruned);
}

int oo_ledger_note(struct oo_sql_conn *c, struct sqlite3_stmt **st, const oo_ledger_cfg *cfg,
                   oo_ledger_memo *memo, const char *channel, size_t channel_len, const char *ref,
                   size_t ref_len, const char *body, size_t body_len, int outcome, double now,
                   oo_spool_err *err) {
    oo_ledger_entry e;
    long long scope;
    int rc, parsed = body && body_len > 0 &&
                     oo_ledger_entry_from_body(body, body_len, cfg->store_key, &e, NULL, 0) == 0;
    if (parsed) {
        ref = e.ref;
        ref_len = e.ref_len;
    } else {
        memset(&e, 0, sizeof e);
        if (body && body_len > 0) oo_ledger_fingerprint(body, body_len, e.fp);
    }
    if (!channel) {
        channel = cfg->channel;
        channel_len = strlen(channel);
    }
    rc = ref && ref_len
             ? scope_id(c, st, memo, cfg->host, cfg->site, channel, channel_len, 1, &scope)
             : SQLITE_OK;
    if (rc == SQLITE_OK && ref && ref_len) {
        if (outcome == OO_LEDGER_CANCELLED && !parsed)
            rc = put_cancelled(c, st, scope, ref, ref_len, now);
        else rc = put_row(c, st, memo, scope, ref, ref_len, &e, body && body_len > 0, outcome, now);
        /* the order is settled: a reservation of it (the pushing side's) goes */
        if (rc == SQLITE_OK) rc = lexec(c, st, L_PENDING_DROP, "it", scope, ref, ref_len);
    }
    if (parsed) oo_ledger_entry_free(&e);
    return rc == SQLITE_OK ? OO_SPOOL_OK : oo_sql_fail(c, err, rc);
}

int oo_ledger_outcome_at(struct oo_sql_conn *c, struct sqlite3_stmt **st, const oo_ledger_cfg *cfg,
                         const char *channel, size_t channel_len, const char *ref, size_t ref_len,
                         int *outcome, oo_spool_err *err) {
    long long scope;
    int rc;
    *outcome = 0;
    if (!channel) {
        channel = cfg->channel;
        channel_len = strlen(channel);
    }
    rc = scope_id(c, st, NULL, cfg->host, cfg->site, channel, channel_len, 0, &scope);
    if (rc == SQLITE_OK && scope) {
        sqlite3_stmt *q;
        rc = lquery(c, st, L_GET, &q, "it", scope, ref, ref_len);
        if (rc == SQLITE_ROW) {
            *outcome = sqlite3_column_int(q, 1);
            oo_sql_finish(q);
            rc = SQLITE_OK;
        } else if (rc == SQLITE_DONE) {
            rc = SQLITE_OK;
        }
    }
    return rc == SQLITE_OK ? OO_SPOOL_OK : oo_sql_fail(c, err, rc);
}

int oo_ledger_note_done(struct oo_sql_conn *c, struct sqlite3_stmt **st, const oo_ledger_cfg *cfg,
                        long long *since_prune, long long n, double now, oo_spool_err *err) {
    int rc = maybe_prune(c, st, cfg->keep_days, since_prune, n, now);
    return rc == SQLITE_OK ? OO_SPOOL_OK : oo_sql_fail(c, err, rc);
}

/* This process's pid namespace (the inode of /proc/self/ns/pid), 0 when
 * unknown: owner tokens carry it, so a pid is only ever judged in the
 * namespace it belongs to (two containers sharing a ledger file each
 * have their own pid 1). */
static unsigned long long pid_ns(void) {
    struct stat sb;
    return stat("/proc/self/ns/pid", &sb) == 0 ? (unsigned long long)sb.st_ino : 0;
}

/* ------------------------------------------------------------------ */
/* Handles and transactions                                            */

/* A ledger file's own connection. `mu` is held for a whole call. */
typedef struct ledger_db {
    oo_sql_conn c;
    pthread_mutex_t mu;
    sqlite3_stmt *st[OO_LEDGER_STMT_COUNT];
    pid_t pid;
    unsigned fork_gen;
    char path[];
} ledger_db;

struct oo_ledger {
    int refs;            /* owners (oo_ledger_retain); freed when the last one closes */
    ledger_db *db;       /* a ledger file of its own, or NULL */
    oo_ledger_host host; /* else the file it lives in (host.h set: a spool's) */
    oo_ledger_opts opts;
    char store_key[OO_LEDGER_STORE_KEY_MAX + 1];
    long long since_prune; /* rows recorded since the last prune (under the call's lock) */
    char owner[64];        /* "pid:16 hex digits@pid namespace" */
};

typedef int (*ledger_fn)(oo_ledger *l, oo_sql_conn *c, sqlite3_stmt **st, void *ctx,
                         oo_spool_err *err);

enum { RUN_READ, RUN_WRITE };

static int misuse(oo_spool_err *err, const char *what, const char *why) {
    return oo_sql_err(err, OO_SPOOL_MISUSE, 0, NULL, "ledger %s: %s", what, why);
}

/* A call on a ledger file: its lock, then fn in one transaction (BEGIN
 * IMMEDIATE for writes, a snapshot for reads); anything but OK rolls back. */
static int run_own(oo_ledger *l, const char *what, int write, ledger_fn fn, void *ctx,
                   oo_spool_err *err) {
    ledger_db *d = l->db;
    int rc, code;
    if (d->fork_gen != oo_sql_fork_gen())
        return oo_sql_err(err, OO_SPOOL_MISUSE, 0, NULL,
                          "ledger %s: %s: handle was opened by process %ld, used in process %ld"
                          " (open the ledger after fork)",
                          d->path, what, (long)d->pid, (long)getpid());
    oo_sql_gate_enter();
    pthread_mutex_lock(&d->mu);
    d->c.what = what;
    if ((rc = lexec(&d->c, d->st, write ? L_BEGIN : L_BEGIN_READ, "")) != SQLITE_OK) {
        code = oo_sql_fail(&d->c, err, rc);
    } else {
        code = fn(l, &d->c, d->st, ctx, err);
        if (code == OO_SPOOL_OK && (rc = lexec(&d->c, d->st, L_COMMIT, "")) != SQLITE_OK)
            code = oo_sql_fail(&d->c, err, rc);
        if (code != OO_SPOOL_OK) oo_sql_rollback(&d->c);
    }
    pthread_mutex_unlock(&d->mu);
    oo_sql_gate_leave();
    return code;
}

/* In a host's file: the call runs as one of the host's transactions. */
typedef struct host_call {
    oo_ledger *l;
    ledger_fn fn;
    void *ctx;
} host_call;

static int host_step(struct oo_sql_conn *c, struct sqlite3_stmt **st, void *ctx,
                     oo_spool_err *err) {
    host_call *k = (host_call *)ctx;
    const char *noun = c->noun;
    int code;
    c->noun = "ledger in spool";
    code = k->fn(k->l, c, st, k->ctx, err);
    c->noun = noun;
    return code;
}

static int run(oo_ledger *l, const char *what, int write, ledger_fn fn, void *ctx,
               oo_spool_err *err) {
    host_call k;
    if (!l || (!l->db && !l->host.h)) return misuse(err, what, "handle is closed");
    if (l->db) return run_own(l, what, write, fn, ctx, err);
    k.l = l;
    k.fn = fn;
    k.ctx = ctx;
    return l->host.run(l->host.h, what, write, host_step, &k, err);
}

void oo_ledger_opts_init(oo_ledger_opts *o) {
    memset(o, 0, sizeof *o);
    o->busy_timeout = 5.0;
    o->keep_days = OO_LEDGER_KEEP_DAYS;
}

int oo_ledger_opts_check(const oo_ledger_opts *o, oo_spool_err *err) {
    if (!(o->busy_timeout >= 0 && o->busy_timeout <= 86400) || o->keep_days < 1 ||
        o->keep_days > 36500)
        return misuse(err, "open", "option out of range");
    if (o->store_key && (!*o->store_key || strlen(o->store_key) > OO_LEDGER_STORE_KEY_MAX))
        return misuse(err, "open", "store_key must be 1 to 256 bytes");
    return OO_SPOOL_OK;
}

static oo_ledger *handle_new(const oo_ledger_opts *o) {
    oo_ledger *l = (oo_ledger *)calloc(1, sizeof *l);
    if (!l) return NULL;
    l->refs = 1;
    l->opts = *o;
    snprintf(l->store_key, sizeof l->store_key, "%s", o->store_key ? o->store_key : "store");
    l->opts.store_key = l->store_key;
    oo_sql_owner_token(l->owner, sizeof l->owner);
    {
        unsigned long long ns = pid_ns();
        size_t at = strlen(l->owner);
        if (ns) snprintf(l->owner + at, sizeof l->owner - at, "@%llu", ns);
    }
    return l;
}

static void db_free(ledger_db *d) {
    oo_sql_finalize_all(d->st, OO_LEDGER_STMT_COUNT);
    oo_sql_close(&d->c);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

static ledger_db *db_new(const char *path, const oo_ledger_opts *o) {
    size_t plen = strlen(path);
    ledger_db *d = (ledger_db *)calloc(1, sizeof *d + plen + 1);
    if (!d) return NULL;
    if (pthread_mutex_init(&d->mu, NULL) != 0) {
        free(d);
        return NULL;
    }
    memcpy(d->path, path, plen + 1);
    d->c.noun = "ledger";
    d->c.path = d->path;
    d->c.what = "open";
    d->c.busy_timeout = o->busy_timeout;
    d->pid = getpid();
    d->fork_gen = oo_sql_fork_gen();
    return d;
}

/* Per-connection settings: synchronous=NORMAL (a commit survives a crash
 * of the process), SQLite's own checkpoints, 8 MiB of page cache (the
 * interior pages of a ten-million-row ledger; the leaves come from the
 * OS's cache: no mmap, whose pages would count in the process's RSS). */
static int set_pragmas(ledger_db *d, oo_spool_err *err) {
    int rc = sqlite3_exec(d->c.db, "PRAGMA synchronous=NORMAL; PRAGMA cache_size=-8192", NULL, NULL,
                          NULL);
    return rc == SQLITE_OK ? OO_SPOOL_OK : oo_sql_fail(&d->c, err, rc);
}

int oo_ledger_open(const char *path, const oo_ledger_opts *o, oo_ledger **out, oo_spool_err *err) {
    oo_ledger_opts defaults;
    ledger_db *d;
    int code;
    long long pruned;
    *out = NULL;
    if (!o) {
        oo_ledger_opts_init(&defaults);
        o = &defaults;
    }
    if (!path || !*path || strcmp(path, ":memory:") == 0)
        return misuse(err, "open", "a file path is required");
    if ((code = oo_ledger_opts_check(o, err)) != OO_SPOOL_OK) return code;
    if (!(d = db_new(path, o)))
        return oo_sql_err(err, OO_SPOOL_STORAGE, SQLITE_NOMEM, 0, "ledger %s: out of memory", path);
    oo_sql_gate_enter();
    code = oo_sql_connect(&d->c, &SCHEMA, err);
    if (code == OO_SPOOL_OK && (code = set_pragmas(d, err)) == OO_SPOOL_OK) oo_sql_adopt(&d->c);
    if (code == OO_SPOOL_OK && !(*out = handle_new(o))) code = oo_sql_nomem(&d->c, err);
    if (code != OO_SPOOL_OK) db_free(d);
    oo_sql_gate_leave();
    if (code != OO_SPOOL_OK) return code;
    (*out)->db = d;
    /* the old rows go as it goes; a busy file is no reason to fail here */
    oo_ledger_prune(*out, oo_wall_now(), 10 * OO_LEDGER_PRUNE_EVERY, &pruned, NULL);
    return OO_SPOOL_OK;
}

int oo_ledger_hosted(const oo_ledger_host *host, const oo_ledger_opts *o, oo_ledger **out,
                     oo_spool_err *err) {
    oo_ledger_opts defaults;
    int code;
    long long pruned;
    *out = NULL;
    if (!o) {
        oo_ledger_opts_init(&defaults);
        o = &defaults;
    }
    if (!host || !host->h || !host->run || !host->path || !host->close)
        return misuse(err, "hosted", "a host with its handle, run, path and close is required");
    if ((code = oo_ledger_opts_check(o, err)) != OO_SPOOL_OK) return code;
    if (!(*out = handle_new(o)))
        return oo_sql_err(err, OO_SPOOL_STORAGE, SQLITE_NOMEM, 0, "ledger: out of memory");
    (*out)->host = *host;
    oo_ledger_prune(*out, oo_wall_now(), 10 * OO_LEDGER_PRUNE_EVERY, &pruned, NULL);
    return OO_SPOOL_OK;
}

oo_ledger *oo_ledger_retain(oo_ledger *l) {
    __atomic_add_fetch(&l->refs, 1, __ATOMIC_SEQ_CST);
    return l;
}

void oo_ledger_close(oo_ledger *l) {
    if (!l || __atomic_sub_fetch(&l->refs, 1, __ATOMIC_SEQ_CST) > 0) return;
    if (l->host.h) l->host.close(l->host.h);
    if (l->db && l->db->fork_gen == oo_sql_fork_gen()) {
        oo_sql_gate_enter();
        db_free(l->db);
        oo_sql_gate_leave();
    }
    free(l);
}

const char *oo_ledger_path(const oo_ledger *l) {
    return l->db ? l->db->path : l->host.path(l->host.h);
}
const char *oo_ledger_owner(const oo_ledger *l) { return l->owner; }
int oo_ledger_in_spool(const oo_ledger *l) { return l->host.h != NULL; }
const char *oo_ledger_store_key(const oo_ledger *l) { return l->store_key; }

/* ------------------------------------------------------------------ */
/* check / reserve / record / release                                  */

typedef struct batch {
    const oo_ledger_scope *sc;
    oo_ledger_item *items;
    size_t n;
    double lease, now;
    int add;         /* make missing scopes (writes) */
    int action;      /* B_CHECK, B_RESERVE, B_RECORD, B_RELEASE */
    size_t chan_len; /* of the scope's channel */
    oo_ledger_memo memo;
} batch;

enum { B_CHECK, B_RESERVE, B_RECORD, B_RELEASE };

/* Item i's key: its scope id (0: not in the ledger yet) and refCode, and
 * its entry when it has a body (parsed here unless the caller gave it:
 * `borrowed`; else free it). */
typedef struct item_key {
    long long scope;
    const char *ref;
    size_t ref_len;
    oo_ledger_entry e;
    int has_entry, borrowed;
} item_key;

static int key_of(oo_ledger *l, oo_sql_conn *c, sqlite3_stmt **st, batch *b, size_t i, item_key *k,
                  oo_spool_err *err) {
    oo_ledger_item *it = &b->items[i];
    char why[128];
    const char *chan = it->channel ? it->channel : b->sc->channel;
    size_t chan_len = it->channel ? it->channel_len : b->chan_len;
    int rc;
    memset(k, 0, sizeof *k);
    if (it->entry) {
        k->e = *it->entry;
        k->has_entry = k->borrowed = 1;
    } else if (it->body) {
        if (oo_ledger_entry_from_body(it->body, it->body_len, l->store_key, &k->e, why,
                                      sizeof why) != 0)
            return oo_sql_err(err, OO_SPOOL_MISUSE, 0, NULL, "ledger: list[%zu].body: %s", i + 1,
                              why);
        k->has_entry = 1;
    }
    k->ref = it->ref ? it->ref : k->e.ref;
    k->ref_len = it->ref ? it->ref_len : k->e.ref_len;
    if (!k->ref || !k->ref_len)
        return oo_sql_err(err, OO_SPOOL_MISUSE, 0, NULL, "ledger: list[%zu] needs a body or a ref",
                          i + 1);
    rc = scope_id(c, st, &b->memo, b->sc->host, b->sc->site, chan, chan_len, b->add, &k->scope);
    return rc == SQLITE_OK ? OO_SPOOL_OK : oo_sql_fail(c, err, rc);
}

/* Is the key seen (same, changed, seen)? it->state stays unknown if not. */
static int look_row(oo_sql_conn *c, sqlite3_stmt **st, const item_key *k, oo_ledger_item *it) {
    sqlite3_stmt *q;
    int rc;
    it->state = OO_LEDGER_UNKNOWN;
    it->prev_outcome = 0;
    it->prev_at = 0;
    it->until = 0;
    it->mine = 0;
    if (!k->scope) return SQLITE_OK;
    rc = lquery(c, st, L_GET, &q, "it", k->scope, k->ref, k->ref_len);
    if (rc == SQLITE_ROW) {
        int outcome = sqlite3_column_int(q, 1);
        if (is_seen(outcome)) {
            const void *fp = sqlite3_column_blob(q, 0);
            int same = sqlite3_column_bytes(q, 0) == OO_LEDGER_FP_LEN && fp &&
                       memcmp(fp, k->e.fp, OO_LEDGER_FP_LEN) == 0;
            it->state = !k->has_entry ? OO_LEDGER_SEEN : same ? OO_LEDGER_SAME : OO_LEDGER_CHANGED;
            it->prev_outcome = outcome;
            it->prev_at = sqlite3_column_int64(q, 2);
        }
        oo_sql_finish(q);
        return SQLITE_OK;
    }
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Did the process that took a reservation end (a kill -9, a crash)? Only
 * when its token ("pid:hex@ns") names our pid namespace and no process has
 * that pid now; anything else (another namespace, an older token, a pid
 * reused since) counts as alive, and the lease decides. */
static int owner_gone(const char *owner, const char *mine) {
    char *end;
    const char *at;
    long pid;
    unsigned long long ns;
    if (!owner || strcmp(owner, mine) == 0) return 0;
    pid = strtol(owner, &end, 10);
    if (end == owner || *end != ':' || pid <= 0 || pid == (long)getpid()) return 0;
    if (!(at = strchr(end, '@'))) return 0;
    ns = strtoull(at + 1, NULL, 10);
    if (!ns || ns != pid_ns()) return 0;
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* Is the key reserved by a live handle (this one or another)? it->state
 * becomes in flight if so. A reservation whose process is gone is not
 * (*stale, when given, says so: reserve takes it over). */
static int look_pending(oo_ledger *l, oo_sql_conn *c, sqlite3_stmt **st, const item_key *k,
                        oo_ledger_item *it, double now, int *stale) {
    sqlite3_stmt *q;
    int rc;
    if (stale) *stale = 0;
    if (!k->scope) return SQLITE_OK;
    rc = lquery(c, st, L_PENDING_GET, &q, "it", k->scope, k->ref, k->ref_len);
    if (rc == SQLITE_ROW) {
        double until = sqlite3_column_double(q, 1);
        const char *owner = (const char *)sqlite3_column_text(q, 0);
        if (until > now && owner_gone(owner, l->owner)) {
            if (stale) *stale = 1;
        } else if (until > now) {
            it->state = OO_LEDGER_IN_FLIGHT;
            it->until = until;
            it->mine = owner && strcmp(owner, l->owner) == 0;
        }
        oo_sql_finish(q);
        return SQLITE_OK;
    }
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* In a spool's file, a create (op 0, or 2: an amend's new version) of the
 * key's refCode still queued there is in flight whoever reserved it: its
 * reservation may be a dead process's (a queue killed before it
 * delivered), but the row will be delivered by the queue that takes it
 * over, so the order must not be queued again. */
static int look_spooled(oo_sql_conn *c, sqlite3_stmt **st, const item_key *k, oo_ledger_item *it) {
    sqlite3_stmt *q;
    int rc = lquery(c, st, L_SPOOLED, &q, "t", k->ref, k->ref_len);
    if (rc == SQLITE_ROW) {
        it->state = OO_LEDGER_IN_FLIGHT;
        it->until = 0;
        it->mine = 0;
        oo_sql_finish(q);
        return SQLITE_OK;
    }
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* An order sent before with these same bytes, found by the refCode the
 * caller knows (it->hint) and the body's fingerprint, without reading the
 * body: a row's fingerprint is of a body `record` read in full, so equal
 * bytes are that body, and the answer is the one the full read would give
 * (same). *hit says so; else the item goes the usual way (key_of). */
static int probe_same(oo_sql_conn *c, sqlite3_stmt **st, batch *b, oo_ledger_item *it, int *hit) {
    unsigned char fp[OO_LEDGER_FP_LEN];
    const char *chan = it->channel ? it->channel : b->sc->channel;
    size_t chan_len = it->channel ? it->channel_len : b->chan_len;
    long long scope;
    sqlite3_stmt *q;
    int rc;
    *hit = 0;
    rc = scope_id(c, st, &b->memo, b->sc->host, b->sc->site, chan, chan_len, 0, &scope);
    if (rc != SQLITE_OK || !scope) return rc;
    rc = lquery(c, st, L_GET, &q, "it", scope, it->hint, it->hint_len);
    if (rc != SQLITE_ROW) return rc == SQLITE_DONE ? SQLITE_OK : rc;
    if (is_seen(sqlite3_column_int(q, 1)) && sqlite3_column_bytes(q, 0) == OO_LEDGER_FP_LEN) {
        oo_ledger_fingerprint(it->body, it->body_len, fp);
        if (memcmp(sqlite3_column_blob(q, 0), fp, OO_LEDGER_FP_LEN) == 0) {
            *hit = 1;
            it->state = OO_LEDGER_SAME;
            it->prev_outcome = sqlite3_column_int(q, 1);
            it->prev_at = sqlite3_column_int64(q, 2);
            it->until = 0;
            it->mine = 0;
            it->reserved = 0;
        }
    }
    oo_sql_finish(q);
    return SQLITE_OK;
}

/* May the item be answered by probe_same? Not when forced (reserved even
 * when seen), nor with a ref or entry of its own (those say its key). */
static int probe_fits(const batch *b, const oo_ledger_item *it) {
    return (b->action == B_RESERVE || b->action == B_CHECK) && it->hint && it->hint_len &&
           it->body && !it->ref && !it->entry && !it->force;
}

/* One item of a batch, by action (record: record_step). */
static int batch_item(oo_ledger *l, oo_sql_conn *c, sqlite3_stmt **st, batch *b, size_t i,
                      item_key *k) {
    oo_ledger_item *it = &b->items[i];
    int rc = SQLITE_OK;
    switch (b->action) {
    case B_CHECK:
        if ((rc = look_row(c, st, k, it)) != SQLITE_OK || it->state != OO_LEDGER_UNKNOWN) return rc;
        return look_pending(l, c, st, k, it, b->now, NULL);
    case B_RESERVE:
        it->reserved = 0;
        if ((rc = look_row(c, st, k, it)) != SQLITE_OK) return rc;
        if (it->state != OO_LEDGER_UNKNOWN && !it->force) return rc;
        if (!it->force && l->host.h && (rc = look_spooled(c, st, k, it)) != SQLITE_OK) return rc;
        if (it->state == OO_LEDGER_IN_FLIGHT) return rc;
        /* taken unless a live reservation holds it (then say whose) */
        rc = lexec(c, st, L_PENDING_TAKE, "itsdd", k->scope, k->ref, k->ref_len, l->owner,
                   b->now + b->lease, b->now);
        if (rc != SQLITE_OK) return rc;
        if (sqlite3_changes(c->db) == 0) { /* held: by whom? */
            int stale;
            if ((rc = look_pending(l, c, st, k, it, b->now, &stale)) != SQLITE_OK || !stale)
                return rc;
            /* its process is gone: the order is ours to send */
            rc = lexec(c, st, L_PENDING_STEAL, "itsd", k->scope, k->ref, k->ref_len, l->owner,
                       b->now + b->lease);
            if (rc != SQLITE_OK) return rc;
        }
        it->reserved = 1;
        if (it->state == OO_LEDGER_UNKNOWN) it->state = OO_LEDGER_RESERVED;
        return rc;
    default: return lexec(c, st, L_PENDING_DEL, "its", k->scope, k->ref, k->ref_len, l->owner);
    }
}

/* Record's rows waiting to be written MANY at a time: their keys (the
 * entries freed once written), outcomes and labels. */
typedef struct many {
    item_key k[MANY];
    int outcome[MANY];
    long long label[MANY];
    int n;
} many;

static void many_free(many *m) {
    int i;
    for (i = 0; i < m->n; i++)
        if (m->k[i].has_entry && !m->k[i].borrowed) oo_ledger_entry_free(&m->k[i].e);
    m->n = 0;
}

static int step_done(sqlite3_stmt *q) {
    int rc = sqlite3_step(q);
    oo_sql_finish(q);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Writes the MANY rows waiting (the L_UPSERT rule) and drops their
 * reservations, whoever took them: two statements. */
static int many_write(oo_sql_conn *c, sqlite3_stmt **st, many *m, double now) {
    sqlite3_stmt *q;
    int i, p = 1, rc;
    if (!(q = oo_sql_stmt(c, st, SQL, L_UPSERT_MANY, &rc))) return rc;
    for (i = 0; i < MANY; i++) {
        const item_key *k = &m->k[i];
        sqlite3_bind_int64(q, p++, k->scope);
        sqlite3_bind_text64(q, p++, k->ref, k->ref_len, SQLITE_STATIC, SQLITE_UTF8);
        sqlite3_bind_blob(q, p++, k->e.fp, OO_LEDGER_FP_LEN, SQLITE_STATIC);
        sqlite3_bind_int64(q, p++, m->outcome[i]);
        sqlite3_bind_int64(q, p++, (sqlite3_int64)now);
        if (k->e.has_order_at) sqlite3_bind_int64(q, p, k->e.order_at);
        if (m->label[i]) sqlite3_bind_int64(q, p + 1, m->label[i]);
        if (k->e.has_total) sqlite3_bind_int64(q, p + 2, k->e.total);
        p += 3; /* unbound: NULL */
    }
    if ((rc = step_done(q)) != SQLITE_OK) return rc;
    if (!(q = oo_sql_stmt(c, st, SQL, L_PENDING_DROP_MANY, &rc))) return rc;
    for (i = 0, p = 1; i < MANY; i++) {
        sqlite3_bind_int64(q, p++, m->k[i].scope);
        sqlite3_bind_text64(q, p++, m->k[i].ref, m->k[i].ref_len, SQLITE_STATIC, SQLITE_UTF8);
    }
    return step_done(q);
}

/* Writes the rows waiting in m one at a time (fewer than MANY). */
static int many_write_each(oo_sql_conn *c, sqlite3_stmt **st, many *m, double now) {
    int i, rc = SQLITE_OK;
    for (i = 0; i < m->n && rc == SQLITE_OK; i++) {
        const item_key *k = &m->k[i];
        rc = lexec(c, st, L_UPSERT, "itbiiJIJ", k->scope, k->ref, k->ref_len, k->e.fp,
                   (size_t)OO_LEDGER_FP_LEN, (long long)m->outcome[i], (long long)now,
                   k->e.has_order_at, k->e.order_at, m->label[i], k->e.has_total, k->e.total);
        if (rc == SQLITE_OK) rc = lexec(c, st, L_PENDING_DROP, "it", k->scope, k->ref, k->ref_len);
    }
    return rc;
}

/* Record's item i, its key in m's next slot: a row waits in m (written
 * once MANY wait); a cancel without a body is written now, after the rows
 * waiting (in order). The reservation goes with the record, whoever took
 * it. */
static int record_item(oo_sql_conn *c, sqlite3_stmt **st, batch *b, size_t i, many *m) {
    item_key one = m->k[m->n];
    int rc;
    if (one.has_entry || b->items[i].outcome != OO_LEDGER_CANCELLED) {
        rc = label_id(c, st, &b->memo, &one.e, &m->label[m->n]);
        m->outcome[m->n++] = b->items[i].outcome;
        if (m->n < MANY) return rc;
        if (rc == SQLITE_OK) rc = many_write(c, st, m, b->now);
        many_free(m);
        return rc;
    }
    rc = many_write_each(c, st, m, b->now);
    many_free(m);
    if (rc == SQLITE_OK) rc = put_cancelled(c, st, one.scope, one.ref, one.ref_len, b->now);
    if (rc == SQLITE_OK) rc = lexec(c, st, L_PENDING_DROP, "it", one.scope, one.ref, one.ref_len);
    return rc;
}

static int record_step(oo_ledger *l, oo_sql_conn *c, sqlite3_stmt **st, batch *b,
                       oo_spool_err *err) {
    many m;
    size_t i;
    int code = OO_SPOOL_OK, rc = SQLITE_OK;
    m.n = 0;
    for (i = 0; i < b->n && code == OO_SPOOL_OK; i++) {
        item_key *k = &m.k[m.n];
        if ((code = key_of(l, c, st, b, i, k, err)) != OO_SPOOL_OK) {
            if (k->has_entry && !k->borrowed) oo_ledger_entry_free(&k->e);
        } else if ((rc = record_item(c, st, b, i, &m)) != SQLITE_OK) {
            code = oo_sql_fail(c, err, rc);
        }
    }
    if (code == OO_SPOOL_OK && (rc = many_write_each(c, st, &m, b->now)) != SQLITE_OK)
        code = oo_sql_fail(c, err, rc);
    many_free(&m);
    return code;
}

static int batch_step(oo_ledger *l, oo_sql_conn *c, sqlite3_stmt **st, void *ctx,
                      oo_spool_err *err) {
    batch *b = (batch *)ctx;
    size_t i;
    int code = OO_SPOOL_OK, rc;
    if (b->action == B_RECORD) code = record_step(l, c, st, b, err);
    for (i = 0; b->action != B_RECORD && i < b->n && code == OO_SPOOL_OK; i++) {
        item_key k;
        int hit = 0;
        if (probe_fits(b, &b->items[i])) {
            if ((rc = probe_same(c, st, b, &b->items[i], &hit)) != SQLITE_OK)
                code = oo_sql_fail(c, err, rc);
            if (hit || code != OO_SPOOL_OK) continue;
        }
        code = key_of(l, c, st, b, i, &k, err);
        if (code == OO_SPOOL_OK && (rc = batch_item(l, c, st, b, i, &k)) != SQLITE_OK)
            code = oo_sql_fail(c, err, rc);
        if (k.has_entry && !k.borrowed) oo_ledger_entry_free(&k.e);
    }
    if (code == OO_SPOOL_OK && b->action == B_RECORD &&
        (rc = maybe_prune(c, st, l->opts.keep_days, &l->since_prune, (long long)b->n, b->now)) !=
            SQLITE_OK)
        code = oo_sql_fail(c, err, rc);
    return code;
}

static int run_batch(oo_ledger *l, const char *what, int action, const oo_ledger_scope *sc,
                     oo_ledger_item *items, size_t n, double lease, double now, oo_spool_err *err) {
    batch b;
    size_t i;
    if (!sc || !sc->host || !sc->site || !sc->channel || !*sc->host || !*sc->site || !*sc->channel)
        return misuse(err, what, "the scope needs host, site and channel");
    for (i = 0; action == B_RECORD && i < n; i++)
        if (!oo_ledger_outcome_name(items[i].outcome))
            return oo_sql_err(err, OO_SPOOL_MISUSE, 0, NULL,
                              "ledger record: list[%zu] has no outcome", i + 1);
    if (n == 0) return OO_SPOOL_OK;
    memset(&b, 0, sizeof b);
    b.sc = sc;
    b.items = items;
    b.n = n;
    b.lease = lease;
    b.now = now;
    b.action = action;
    b.add = action != B_CHECK;
    b.chan_len = strlen(sc->channel);
    return run(l, what, action == B_CHECK ? RUN_READ : RUN_WRITE, batch_step, &b, err);
}

int oo_ledger_check(oo_ledger *l, const oo_ledger_scope *sc, oo_ledger_item *items, size_t n,
                    double now, oo_spool_err *err) {
    return run_batch(l, "check", B_CHECK, sc, items, n, 0, now, err);
}

int oo_ledger_reserve(oo_ledger *l, const oo_ledger_scope *sc, oo_ledger_item *items, size_t n,
                      double lease, double now, oo_spool_err *err) {
    if (!(lease > 0)) return misuse(err, "reserve", "lease must be positive");
    return run_batch(l, "reserve", B_RESERVE, sc, items, n, lease, now, err);
}

int oo_ledger_record(oo_ledger *l, const oo_ledger_scope *sc, oo_ledger_item *items, size_t n,
                     double now, oo_spool_err *err) {
    return run_batch(l, "record", B_RECORD, sc, items, n, 0, now, err);
}

int oo_ledger_release(oo_ledger *l, const oo_ledger_scope *sc, oo_ledger_item *items, size_t n,
                      oo_spool_err *err) {
    return run_batch(l, "release", B_RELEASE, sc, items, n, 0, 0, err);
}

/* ------------------------------------------------------------------ */
/* Rows out: show, export pages                                        */

void oo_ledger_rows_free(oo_ledger_rows *r) {
    size_t i;
    if (!r) return;
    for (i = 0; i < r->n; i++) {
        oo_ledger_row *w = &r->v[i];
        free(w->host);
        free(w->site);
        free(w->channel);
        free(w->ref);
        free(w->store);
        free(w->owner);
    }
    free(r->v);
    r->v = NULL;
    r->n = r->cap = 0;
}

static oo_ledger_row *rows_push(oo_ledger_rows *r) {
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        oo_ledger_row *v = (oo_ledger_row *)realloc(r->v, cap * sizeof *v);
        if (!v) return NULL;
        r->v = v;
        r->cap = cap;
    }
    memset(&r->v[r->n], 0, sizeof r->v[0]);
    return &r->v[r->n++];
}

/* A text column as a heap string (NULL for SQL NULL); *oom on failure. */
static char *dup_text(sqlite3_stmt *q, int i, size_t *len, int *oom) {
    size_t n;
    const char *p = oo_sql_column_text(q, i, &n);
    char *out;
    if (len) *len = n;
    if (!p) return NULL;
    if (!(out = (char *)malloc(n + 1))) {
        *oom = 1;
        return NULL;
    }
    memcpy(out, p, n + 1);
    return out;
}

/* Appends the current row (ROW_COLS, or the pending columns). 0, or -1
 * out of memory. */
static int read_row(sqlite3_stmt *q, int pending, oo_ledger_rows *out) {
    oo_ledger_row *w = rows_push(out);
    int oom = 0;
    if (!w) return -1;
    w->scope_id = sqlite3_column_int64(q, 0);
    w->host = dup_text(q, 1, NULL, &oom);
    w->site = dup_text(q, 2, NULL, &oom);
    w->channel = dup_text(q, 3, NULL, &oom);
    w->ref = dup_text(q, 4, &w->ref_len, &oom);
    if (pending) {
        w->owner = dup_text(q, 5, NULL, &oom);
        w->until = sqlite3_column_double(q, 6);
        return oom ? -1 : 0;
    }
    if (sqlite3_column_bytes(q, 5) == OO_LEDGER_FP_LEN)
        memcpy(w->fp, sqlite3_column_blob(q, 5), OO_LEDGER_FP_LEN);
    w->outcome = sqlite3_column_int(q, 6);
    w->at = sqlite3_column_int64(q, 7);
    w->has_order_at = sqlite3_column_type(q, 8) != SQLITE_NULL;
    w->order_at = sqlite3_column_int64(q, 8);
    w->store = dup_text(q, 9, NULL, &oom);
    if (w->store && !w->store[0]) { /* the label's "no store" */
        free(w->store);
        w->store = NULL;
    }
    if (sqlite3_column_bytes(q, 10) == 3) memcpy(w->currency, sqlite3_column_text(q, 10), 3);
    w->has_total = sqlite3_column_type(q, 11) != SQLITE_NULL;
    w->total = sqlite3_column_int64(q, 11);
    return oom ? -1 : 0;
}

/* Steps a started query (rc: its first step) to the end, appending rows. */
static int collect(oo_sql_conn *c, sqlite3_stmt *q, int rc, int pending, oo_ledger_rows *out,
                   oo_spool_err *err) {
    int oom = 0;
    for (; rc == SQLITE_ROW; rc = sqlite3_step(q))
        if (read_row(q, pending, out) != 0) oom = 1;
    if (q) oo_sql_finish(q);
    if (rc != SQLITE_DONE) return oo_sql_fail(c, err, rc);
    return oom ? oo_sql_nomem(c, err) : OO_SPOOL_OK;
}

typedef struct rows_ctx {
    const char *ref;
    size_t ref_len;
    long long after_scope, limit;
    oo_ledger_rows *out;
} rows_ctx;

static int show_step(oo_ledger *l, oo_sql_conn *c, sqlite3_stmt **st, void *ctx,
                     oo_spool_err *err) {
    rows_ctx *r = (rows_ctx *)ctx;
    sqlite3_stmt *q;
    int rc = lquery(c, st, L_SHOW, &q, "t", r->ref, r->ref_len), code;
    if ((code = collect(c, q, rc, 0, r->out, err)) != OO_SPOOL_OK) return code;
    rc = lquery(c, st, L_SHOW_PENDING, &q, "t", r->ref, r->ref_len);
    return collect(c, q, rc, 1, r->out, err);
}

int oo_ledger_show(oo_ledger *l, const char *ref, size_t ref_len, oo_ledger_rows *out,
                   oo_spool_err *err) {
    rows_ctx r;
    int code;
    oo_ledger_rows_free(out);
    memset(&r, 0, sizeof r);
    r.ref = ref;
    r.ref_len = ref_len;
    r.out = out;
    code = run(l, "show", RUN_READ, show_step, &r, err);
    if (code != OO_SPOOL_OK) oo_ledger_rows_free(out);
    return code;
}

static int page_step(oo_ledger *l, oo_sql_conn *c, sqlite3_stmt **st, void *ctx,
                     oo_spool_err *err) {
    rows_ctx *r = (rows_ctx *)ctx;
    sqlite3_stmt *q;
    int rc = lquery(c, st, L_PAGE, &q, "iti", r->after_scope, r->ref ? r->ref : "", r->ref_len,
                    r->limit);
    return collect(c, q, rc, 0, r->out, err);
}

int oo_ledger_page(oo_ledger *l, long long after_scope, const char *after_ref, size_t after_len,
                   long long limit, oo_ledger_rows *out, oo_spool_err *err) {
    rows_ctx r;
    int code;
    oo_ledger_rows_free(out);
    if (limit < 1) return misuse(err, "export", "limit must be >= 1");
    memset(&r, 0, sizeof r);
    r.ref = after_ref;
    r.ref_len = after_ref ? after_len : 0;
    r.after_scope = after_ref ? after_scope : 0;
    r.limit = limit;
    r.out = out;
    code = run(l, "export", RUN_READ, page_step, &r, err);
    if (code != OO_SPOOL_OK) oo_ledger_rows_free(out);
    return code;
}

/* ------------------------------------------------------------------ */
/* Retention                                                           */

typedef struct count_ctx {
    double cutoff, now;
    long long max, *n;
} count_ctx;

static int forget_step(oo_ledger *l, oo_sql_conn *c, sqlite3_stmt **st, void *ctx,
                       oo_spool_err *err) {
    count_ctx *k = (count_ctx *)ctx;
    int rc = lexec(c, st, L_FORGET, "d", k->cutoff);
    *k->n = rc == SQLITE_OK ? sqlite3_changes(c->db) : 0;
    if (rc == SQLITE_OK) rc = lexec(c, st, L_PRUNED_MARK, "i", (long long)k->cutoff);
    return rc == SQLITE_OK ? OO_SPOOL_OK : oo_sql_fail(c, err, rc);
}

int oo_ledger_forget(oo_ledger *l, double before, long long *n, oo_spool_err *err) {
    count_ctx k;
    *n = 0;
    k.cutoff = before;
    k.n = n;
    return run(l, "forget", RUN_WRITE, forget_step, &k, err);
}

static int prune_step(oo_ledger *l, oo_sql_conn *c, sqlite3_stmt **st, void *ctx,
                      oo_spool_err *err) {
    count_ctx *k = (count_ctx *)ctx;
    int rc = prune_rows(c, st, k->cutoff, k->max, k->now, k->n);
    return rc == SQLITE_OK ? OO_SPOOL_OK : oo_sql_fail(c, err, rc);
}

int oo_ledger_prune(oo_ledger *l, double now, long long max, long long *n, oo_spool_err *err) {
    count_ctx k;
    *n = 0;
    k.cutoff = cutoff_of(l->opts.keep_days, now);
    k.now = now;
    k.max = max > 0 ? max : -1; /* LIMIT -1: no limit */
    k.n = n;
    return run(l, "prune", RUN_WRITE, prune_step, &k, err);
}

static int span_step(oo_ledger *l, oo_sql_conn *c, sqlite3_stmt **st, void *ctx,
                     oo_spool_err *err) {
    oo_ledger_span *s = (oo_ledger_span *)ctx;
    oo_sql_scalar v;
    sqlite3_stmt *q;
    int rc = lscalar(c, st, L_SPAN, &v, "");
    if (rc != SQLITE_OK) return oo_sql_fail(c, err, rc);
    s->has_rows = v.found;
    s->rows_oldest = v.a;
    s->rows_newest = v.b;
    rc = lquery(c, st, L_META, &q, "");
    if (rc == SQLITE_ROW) {
        s->created = sqlite3_column_int64(q, 0);
        s->has_pruned = sqlite3_column_type(q, 1) != SQLITE_NULL;
        s->pruned_before = sqlite3_column_int64(q, 1);
        oo_sql_finish(q);
        return OO_SPOOL_OK;
    }
    return rc == SQLITE_DONE ? OO_SPOOL_OK : oo_sql_fail(c, err, rc);
}

int oo_ledger_span_of(oo_ledger *l, oo_ledger_span *out, oo_spool_err *err) {
    memset(out, 0, sizeof *out);
    return run(l, "span", RUN_READ, span_step, out, err);
}

/* ------------------------------------------------------------------ */
/* Reports                                                             */

void oo_ledger_groups_free(oo_ledger_groups *g) {
    size_t i;
    if (!g) return;
    for (i = 0; i < g->n; i++) {
        free(g->v[i].store);
        free(g->v[i].channel);
    }
    free(g->v);
    g->v = NULL;
    g->n = g->cap = 0;
}

static long long floor_div(long long a, long long b) {
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* The report is one scan of the ledger, aggregated here in a hash table
 * keyed by (local day, label, scope): no sort of the rows, so it costs
 * the same per row whatever the size. The labels and scopes (small
 * tables) then give the store, currency and channel, and the partial
 * groups are merged by the keys the caller asked for and sorted. */
#define NO_DAY LLONG_MIN

typedef struct part {
    long long day, label, scope;
    long long orders[OO_LEDGER_OUTCOMES + 1], minor[OO_LEDGER_OUTCOMES + 1];
    int used;
} part;

typedef struct parts {
    part *v;
    size_t cap, n; /* cap: a power of two */
} parts;

static size_t part_hash(long long day, long long label, long long scope, size_t cap) {
    unsigned long long h = (unsigned long long)day * 0x9E3779B97F4A7C15ULL;
    h ^= (unsigned long long)label * 0xC2B2AE3D27D4EB4FULL;
    h ^= (unsigned long long)scope * 0x165667B19E3779F9ULL;
    return (size_t)(h ^ (h >> 29)) & (cap - 1);
}

static part *part_slot(parts *p, long long day, long long label, long long scope) {
    size_t i = part_hash(day, label, scope, p->cap);
    while (p->v[i].used &&
           !(p->v[i].day == day && p->v[i].label == label && p->v[i].scope == scope))
        i = (i + 1) & (p->cap - 1);
    return &p->v[i];
}

/* The group of (day, label, scope), made when new; NULL out of memory. */
static part *part_of(parts *p, long long day, long long label, long long scope) {
    part *w;
    if (2 * (p->n + 1) > p->cap) {
        parts bigger;
        size_t i;
        bigger.cap = p->cap ? 2 * p->cap : 256;
        bigger.n = p->n;
        if (!(bigger.v = (part *)calloc(bigger.cap, sizeof *bigger.v))) return NULL;
        for (i = 0; i < p->cap; i++)
            if (p->v[i].used)
                *part_slot(&bigger, p->v[i].day, p->v[i].label, p->v[i].scope) = p->v[i];
        free(p->v);
        *p = bigger;
    }
    w = part_slot(p, day, label, scope);
    if (!w->used) {
        w->used = 1;
        w->day = day;
        w->label = label;
        w->scope = scope;
        p->n++;
    }
    return w;
}

/* The local day of instant t, with the last offset remembered per hour
 * (offsets change on the hour or half hour at most once in a while). */
typedef struct day_of_ctx {
    const oo_ledger_report_opts *o;
    long long hour;
    long off;
} day_of_ctx;

static long long local_day(day_of_ctx *d, long long t) {
    long long hour = floor_div(t, 900); /* quarter hours: offsets of :30 and :45 exist */
    if (!d->o->offset) return floor_div(t, 86400);
    if (hour != d->hour) {
        d->off = d->o->offset(d->o->offset_ctx, t);
        d->hour = hour;
    }
    return floor_div(t + d->off, 86400);
}

typedef struct report_ctx {
    const oo_ledger_report_opts *o;
    oo_ledger_groups *out;
    parts p;
    char **stores, **channels, (*currencies)[4]; /* by label id, by scope id */
    long long nlabels, nscopes;
} report_ctx;

static const char *const REPORT_SCAN = "SELECT order_at, label, scope, outcome, total FROM ledger"
                                       " WHERE ?1 IS NULL OR (order_at >= ?1 AND order_at < ?2)";

/* Adds the current row of the scan to its part; 0, or -1 out of memory. */
static int add_row(report_ctx *r, day_of_ctx *dc, sqlite3_stmt *q) {
    const oo_ledger_report_opts *o = r->o;
    int has_day = sqlite3_column_type(q, 0) != SQLITE_NULL;
    int outcome = sqlite3_column_int(q, 3);
    long long day = has_day ? local_day(dc, sqlite3_column_int64(q, 0)) : NO_DAY;
    part *w;
    if ((o->has_from && (!has_day || day < o->from_day)) ||
        (o->has_to && (!has_day || day > o->to_day)) || outcome < 1 || outcome > OO_LEDGER_OUTCOMES)
        return 0;
    w = part_of(&r->p, (o->by & OO_LEDGER_BY_DAY) ? day : NO_DAY, sqlite3_column_int64(q, 1),
                (o->by & OO_LEDGER_BY_CHANNEL) ? sqlite3_column_int64(q, 2) : 0);
    if (!w) return -1;
    w->orders[outcome]++;
    w->minor[outcome] += sqlite3_column_int64(q, 4);
    return 0;
}

static int scan(oo_sql_conn *c, report_ctx *r, oo_spool_err *err) {
    const oo_ledger_report_opts *o = r->o;
    day_of_ctx dc;
    sqlite3_stmt *q;
    int rc, oom = 0;
    if ((rc = sqlite3_prepare_v2(c->db, REPORT_SCAN, -1, &q, NULL)) != SQLITE_OK)
        return oo_sql_fail(c, err, rc);
    if (o->has_from || o->has_to) { /* a day is within 26 hours of its UTC day */
        sqlite3_bind_int64(q, 1, o->has_from ? o->from_day * 86400 - 26 * 3600 : LLONG_MIN);
        sqlite3_bind_int64(q, 2, o->has_to ? (o->to_day + 1) * 86400 + 26 * 3600 : LLONG_MAX);
    }
    dc.o = o;
    dc.hour = LLONG_MIN;
    dc.off = 0;
    while (!oom && (rc = sqlite3_step(q)) == SQLITE_ROW) oom = add_row(r, &dc, q) != 0;
    sqlite3_finalize(q);
    if (oom) return oo_sql_nomem(c, err);
    return rc == SQLITE_DONE ? OO_SPOOL_OK : oo_sql_fail(c, err, rc);
}

/* The labels' stores and currencies, the scopes' channels, by id. */
static int load_names(oo_sql_conn *c, report_ctx *r, oo_spool_err *err) {
    static const char *const sql[2] = {"SELECT id, store, currency FROM ledger_label",
                                       "SELECT id, channel, NULL FROM ledger_scope"};
    int k, rc = SQLITE_OK, oom = 0;
    long long max[2];
    if ((rc = oo_sql_row_ints(c,
                              "SELECT (SELECT max(id) FROM ledger_label),"
                              " (SELECT max(id) FROM ledger_scope)",
                              max, 2)) != SQLITE_OK)
        return oo_sql_fail(c, err, rc);
    r->nlabels = max[0] + 1;
    r->nscopes = max[1] + 1;
    r->stores = (char **)calloc((size_t)r->nlabels, sizeof *r->stores);
    r->currencies = (char(*)[4])calloc((size_t)r->nlabels, sizeof *r->currencies);
    r->channels = (char **)calloc((size_t)r->nscopes, sizeof *r->channels);
    if (!r->stores || !r->currencies || !r->channels) return oo_sql_nomem(c, err);
    for (k = 0; k < 2 && rc == SQLITE_OK; k++) {
        sqlite3_stmt *q;
        if ((rc = sqlite3_prepare_v2(c->db, sql[k], -1, &q, NULL)) != SQLITE_OK) break;
        while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
            long long id = sqlite3_column_int64(q, 0);
            if (id < 0 || id >= (k ? r->nscopes : r->nlabels)) continue;
            if (k) r->channels[id] = dup_text(q, 1, NULL, &oom);
            else r->stores[id] = dup_text(q, 1, NULL, &oom);
            if (!k && sqlite3_column_bytes(q, 2) == 3)
                memcpy(r->currencies[id], sqlite3_column_text(q, 2), 3);
        }
        sqlite3_finalize(q);
        if (rc == SQLITE_DONE) rc = SQLITE_OK;
    }
    if (rc != SQLITE_OK) return oo_sql_fail(c, err, rc);
    return oom ? oo_sql_nomem(c, err) : OO_SPOOL_OK;
}

static int report_step(oo_ledger *l, oo_sql_conn *c, sqlite3_stmt **st, void *ctx,
                       oo_spool_err *err) {
    report_ctx *r = (report_ctx *)ctx;
    int code = scan(c, r, err);
    (void)l;
    (void)st;
    return code == OO_SPOOL_OK ? load_names(c, r, err) : code;
}

/* A part's final keys (NULL: not a key, or none). */
static const char *store_of(const report_ctx *r, const part *w) {
    const char *s;
    if (!(r->o->by & OO_LEDGER_BY_STORE) || w->label <= 0 || w->label >= r->nlabels) return NULL;
    s = r->stores[w->label];
    return s && s[0] ? s : NULL;
}

static const char *currency_of(const report_ctx *r, const part *w) {
    return w->label > 0 && w->label < r->nlabels ? r->currencies[w->label] : "";
}

static const char *channel_of(const report_ctx *r, const part *w) {
    if (!(r->o->by & OO_LEDGER_BY_CHANNEL) || w->scope <= 0 || w->scope >= r->nscopes) return NULL;
    return r->channels[w->scope];
}

static int cmp_text(const char *a, const char *b) {
    if (!a || !b) return !a ? (b ? -1 : 0) : 1;
    return strcmp(a, b);
}

/* Orders parts by their final keys: day, store, channel, currency. */
static int cmp_keys(const report_ctx *r, const part *a, const part *b) {
    int c;
    if (a->day != b->day) return a->day < b->day ? -1 : 1;
    if ((c = cmp_text(store_of(r, a), store_of(r, b))) != 0) return c;
    if ((c = cmp_text(channel_of(r, a), channel_of(r, b))) != 0) return c;
    return strcmp(currency_of(r, a), currency_of(r, b));
}

/* qsort has no context argument: the report being sorted, under sort_mu. */
static pthread_mutex_t sort_mu = PTHREAD_MUTEX_INITIALIZER;
static const report_ctx *sort_ctx;

static int cmp_parts(const void *x, const void *y) {
    return cmp_keys(sort_ctx, (const part *)x, (const part *)y);
}

/* A new group for part w; -1 out of memory. */
static int new_group(report_ctx *r, const part *w) {
    oo_ledger_group *o = &r->out->v[r->out->n++];
    const char *store = store_of(r, w), *channel = channel_of(r, w);
    o->has_day = w->day != NO_DAY;
    o->day = o->has_day ? w->day : 0;
    memcpy(o->currency, currency_of(r, w), 4);
    if (store && !(o->store = strdup(store))) return -1;
    if (channel && !(o->channel = strdup(channel))) return -1;
    return 0;
}

/* The parts, packed, sorted by the final keys and merged into groups. */
static int make_groups(report_ctx *r) {
    oo_ledger_groups *g = r->out;
    size_t i, n = 0;
    int k;
    for (i = 0; i < r->p.cap; i++)
        if (r->p.v[i].used) r->p.v[n++] = r->p.v[i];
    pthread_mutex_lock(&sort_mu);
    sort_ctx = r;
    qsort(r->p.v, n, sizeof *r->p.v, cmp_parts);
    pthread_mutex_unlock(&sort_mu);
    if (n && !(g->v = (oo_ledger_group *)calloc(n, sizeof *g->v))) return -1;
    g->cap = n;
    for (i = 0; i < n; i++) {
        const part *w = &r->p.v[i];
        oo_ledger_group *o;
        if ((i == 0 || cmp_keys(r, w - 1, w) != 0) && new_group(r, w) != 0) return -1;
        o = &g->v[g->n - 1];
        for (k = 1; k <= OO_LEDGER_OUTCOMES; k++) {
            o->orders[k] += w->orders[k];
            o->minor[k] += w->minor[k];
        }
    }
    return 0;
}

static void report_free(report_ctx *r) {
    long long i;
    for (i = 0; r->stores && i < r->nlabels; i++) free(r->stores[i]);
    for (i = 0; r->channels && i < r->nscopes; i++) free(r->channels[i]);
    free(r->stores);
    free(r->channels);
    free(r->currencies);
    free(r->p.v);
}

int oo_ledger_report(oo_ledger *l, const oo_ledger_report_opts *o, oo_ledger_groups *out,
                     oo_spool_err *err) {
    report_ctx r;
    int code;
    oo_ledger_groups_free(out);
    memset(&r, 0, sizeof r);
    r.o = o;
    r.out = out;
    code = run(l, "report", RUN_READ, report_step, &r, err);
    if (code == OO_SPOOL_OK && make_groups(&r) != 0)
        code = oo_sql_err(err, OO_SPOOL_STORAGE, SQLITE_NOMEM, NULL,
                          "ledger %s: report: out of memory", oo_ledger_path(l));
    report_free(&r);
    if (code != OO_SPOOL_OK) oo_ledger_groups_free(out);
    return code;
}
