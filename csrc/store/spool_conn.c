/* The spool's connections (spool_db.h): open, reopen and close, the
 * connection shared by a handle and the handles reopened from it, each
 * handle's reader, and fork safety — a handle refuses to be used in
 * another process than the one that opened it, and a copy inherited
 * through fork is abandoned, never closed (SQLite's own gate is
 * sqlfile.c's). */
#define _POSIX_C_SOURCE 200809L
#include "spool_db.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int other_process(const spool_db *d) {
    return d->fork_gen != oo_sql_fork_gen() || d->pid != getpid();
}

int oo_spool_check_process(const oo_spool *s, const char *what, oo_spool_err *err) {
    if (s->d->fork_gen == oo_sql_fork_gen()) return OO_SPOOL_OK;
    return set_err(err, OO_SPOOL_MISUSE, 0, NULL,
                   "spool %s: %s: handle was opened by process %ld, used in process %ld"
                   " (open the spool after fork)",
                   s->d->path, what, (long)s->d->pid, (long)getpid());
}

const char *oo_spool_path(const oo_spool *s) { return s->d->path; }
const char *oo_spool_owner(const oo_spool *s) { return s->owner; }
const oo_spool_opts *oo_spool_get_opts(const oo_spool *s) { return &s->opts; }

/* Per-connection settings (none of them writes to the file). */
static int set_pragmas(spool_db *d, const oo_spool_opts *o, oo_spool_err *err) {
    char sql[160];
    long long page = 0, pages = 0;
    int rc;
    snprintf(sql, sizeof sql, "PRAGMA synchronous=%s; PRAGMA journal_size_limit=%d;",
             o->sync == OO_SPOOL_SYNC_FULL ? "FULL" : "NORMAL", WAL_RESTART_BYTES);
    rc = sqlite3_exec(d->c.db, sql, NULL, NULL, NULL);
    if (rc == SQLITE_OK && (rc = oo_sql_row_ints(&d->c, "PRAGMA page_size", &page, 1)) == SQLITE_OK)
        d->page_size = page > 0 ? (int)page : PAGE_SIZE;
    if (rc == SQLITE_OK && o->max_file_bytes > 0) {
        pages = o->max_file_bytes / page;
        snprintf(sql, sizeof sql, "PRAGMA max_page_count=%lld", pages > 1 ? pages : 1);
        rc = oo_sql_row_ints(&d->c, sql, &pages, 1);
    }
    if (rc != SQLITE_OK) return db_fail(d, err, rc);
    sqlite3_wal_hook(d->c.db, oo_spool_on_wal_commit, d);
    return OO_SPOOL_OK;
}

/* Closes a connection whose checkpoint thread is halted (inside the gate). */
static void db_free(spool_db *d) {
    int i;
    if (d->ckpt_db) sqlite3_close_v2(d->ckpt_db);
    if (d->c.db) {
        for (i = 0; i < ST_COUNT; i++) sqlite3_finalize(d->st[i]);
        oo_sql_finalize_all(d->lst, OO_LEDGER_STMT_COUNT);
    }
    oo_sql_close(&d->c);
    pthread_mutex_destroy(&d->mu);
    free(d->ledger);
    free(d);
}

/* Opens SQLite on the file and makes it a usable spool, refusing one that
 * is not ours before any write. */
static int db_connect(spool_db *d, const oo_spool_opts *o, oo_spool_err *err) {
    int code = oo_sql_connect(&d->c, &oo_spool_schema, err);
    if (code == OO_SPOOL_OK) code = set_pragmas(d, o, err);
    if (code == OO_SPOOL_OK) oo_sql_adopt(&d->c);
    return code;
}

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
    d->c.noun = "spool";
    d->c.path = d->path;
    d->c.what = "open";
    d->c.busy_timeout = o->busy_timeout;
    d->pid = getpid();
    d->fork_gen = oo_sql_fork_gen();
    d->sync_full = o->sync == OO_SPOOL_SYNC_FULL;
    d->refs = 1;
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
    oo_spool_ckpt_halt(d);
    oo_sql_gate_enter();
    db_free(d);
    oo_sql_gate_leave();
}

static oo_spool *handle_new(spool_db *d, const oo_spool_opts *o) {
    oo_spool *s = (oo_spool *)calloc(1, sizeof *s);
    if (!s) return NULL;
    if (pthread_mutex_init(&s->r_mu, NULL) != 0) {
        free(s);
        return NULL;
    }
    s->d = d;
    s->opts = *o;
    oo_sql_owner_token(s->owner, sizeof s->owner);
    return s;
}

/* Reads (stats, list, next_due) run on a connection of the handle's own:
 * a scan of a big queue then never holds up the claims and acks of a
 * delivery thread on the shared connection (a WAL reader does not block
 * the writer). Opened on the first read, for a file already known to be a
 * spool; if it cannot be, reads use the shared connection. */
spool_db *oo_spool_reader(oo_spool *s) {
    spool_db *r;
    pthread_mutex_lock(&s->r_mu);
    if (!s->r && !s->r_failed && (r = db_new(s->d->path, &s->opts)) != NULL) {
        if (oo_sql_open_more(r->path, &r->c.db, 1, &r->c) != SQLITE_OK) {
            db_free(r);
            r = NULL;
        }
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
    oo_sql_gate_enter();
    if ((code = db_connect(d, o, err)) == OO_SPOOL_OK && !(*out = handle_new(d, o)))
        code = nomem(d, err);
    if (code != OO_SPOOL_OK) db_free(d);
    oo_sql_gate_leave();
    return code;
}

int oo_spool_reopen(const oo_spool *s, oo_spool **out, oo_spool_err *err) {
    spool_db *d;
    *out = NULL;
    if (!s || !s->d || !s->d->c.db) return misuse(err, "reopen", "handle is closed");
    d = s->d;
    if (other_process(d)) return misuse(err, "reopen", "handle was opened by another process");
    oo_sql_gate_enter(); /* handle_new asks SQLite's PRNG */
    pthread_mutex_lock(&d->mu);
    if ((*out = handle_new(d, &s->opts)) != NULL) d->refs++;
    pthread_mutex_unlock(&d->mu);
    oo_sql_gate_leave();
    if (!*out)
        return set_err(err, OO_SPOOL_STORAGE, SQLITE_NOMEM, NULL, "spool %s: out of memory",
                       d->path);
    return OO_SPOOL_OK;
}

void oo_spool_close(oo_spool *s) {
    if (!s) return;
    db_release(s->r);
    db_release(s->d);
    pthread_mutex_destroy(&s->r_mu);
    free(s);
}
