/* Durable on-disk spool of encoded orders (SQLite, WAL mode).
 *
 * An order is a request body (the bytes `offline.encode` produced), its
 * refCode and its channel. It is put into `orders`, claimed under a lease by
 * one delivery loop, and leaves only when that loop acks it (the endpoint
 * accepted it) or kills it (a permanent failure: it moves to `dead`, with
 * its error and its channel).
 *
 * The file: created 0600 whatever the umask (SQLite gives the -wal and -shm
 * files the main file's mode), stamped with application_id OO_SPOOL_APP_ID
 * and user_version OO_SPOOL_SCHEMA_VERSION. A file that is not ours (not
 * SQLite, another application's database, a newer schema) is refused with
 * OO_SPOOL_FOREIGN before anything is written to it. A version-1 spool is
 * migrated in place, in one transaction (version 1 → 2: channels; 2 → 3:
 * cancel rows and the ledger's tables, see ledger.h). Paths are plain file names, never
 * SQLite URIs ("file:x" is the file ./file:x).
 *
 * Processes: any number (nginx workers, a CLI, a daemon) may share one file.
 * Writes run in BEGIN IMMEDIATE transactions, waiting up to busy_timeout
 * for another process's lock; a claim stamps rows with this handle's owner
 * token ("pid:random") and a lease end time, so two handles never deliver
 * the same order at the same time. An expired lease (its process died)
 * makes the row claimable again.
 *
 * Threads: oo_spool_reopen() gives a second handle (its own owner token)
 * on the same SQLite connection for writes: the delivery thread and the
 * thread that puts then take turns on one connection under one mutex (each
 * call is one transaction), which costs far less than two connections
 * contending for the file lock. Reads (stats, list, next_due) run on a
 * connection of each handle's own, so they never hold up the other
 * handle's writes. Every handle is safe to share between threads; whoever
 * got a handle closes it (the write connection closes with the last one).
 * A handle must not cross fork(): open the spool in the child (calls from
 * another pid fail with OO_SPOOL_MISUSE).
 *
 * Checkpoints: SQLite's automatic checkpoint would run inside a put (two
 * fsyncs under synchronous=NORMAL). Instead each connection starts a thread
 * (when the WAL first passes 16 MiB) that copies the WAL back on a
 * connection of its own while puts and claims go on, and starts the WAL
 * over once it holds 64 MiB (the only moment it holds the lock).
 *
 * Time: all times are wall-clock seconds since the epoch (REAL), because
 * they are stored and compared across processes and restarts. Every call
 * that needs "now" takes it as an argument (oo_spool_now() for the clock).
 *
 * Durability: synchronous=NORMAL (default) makes a returned put survive a
 * crash or kill -9 of the process; surviving power loss needs
 * OO_SPOOL_SYNC_FULL (an fsync per commit). */
#ifndef OO_SPOOL_H
#define OO_SPOOL_H

#include <stddef.h>

struct lua_State;

#define OO_SPOOL_MT "optimizely.offline.spool"
#define OO_SPOOL_SCHEMA_VERSION 3
#define OO_SPOOL_APP_ID 0x4F4F5350 /* "OOSP" */

#include "store_err.h" /* the result codes and oo_spool_err */

enum { OO_SPOOL_REFUSE = 0, OO_SPOOL_DROP_OLDEST = 1 };
enum { OO_SPOOL_SYNC_NORMAL = 0, OO_SPOOL_SYNC_FULL = 1 };

typedef struct oo_spool_opts {
    double busy_timeout;      /* seconds to wait for a lock (default 5) */
    int sync;                 /* OO_SPOOL_SYNC_NORMAL (default) | OO_SPOOL_SYNC_FULL */
    long long max_orders;     /* queued orders bound; 0 = none */
    long long max_bytes;      /* queued body bytes bound; 0 = none */
    double max_age;           /* seconds a queued order may wait before it expires; 0 = none */
    int on_full;              /* OO_SPOOL_REFUSE (default) | OO_SPOOL_DROP_OLDEST */
    long long max_file_bytes; /* hard cap on the database file (SQLite max_page_count);
                                 past it writes fail like a full disk; 0 = none */
} oo_spool_opts;

typedef struct oo_spool oo_spool;

/* What a row asks of the endpoint: a create (POST of its body) or a
 * cancel (DELETE of its refCode). A cancel is not claimable while an
 * earlier row of its refCode is in the spool (queued or claimed), nor a
 * create while an earlier cancel of its refCode is.
 *
 * An amend is a cancel and the new version (OO_SPOOL_OP_AMEND, a create
 * that depends on that cancel), put in one put_many, the cancel just
 * before it: the new version is claimed only once the cancel was acked,
 * and when the cancel ends dead (a kill, or dropped by on_full) it ends
 * dead too, in the same transaction, never posted (its message
 * OO_AMEND_FAILED, amend.h, then the cancel's). */
enum { OO_SPOOL_OP_CREATE = 0, OO_SPOOL_OP_CANCEL = 1, OO_SPOOL_OP_AMEND = 2 };

/* One row to put. A create needs a non-empty body; a cancel needs a ref
 * (its body is optional: the cancelled order's, for the ledger's report
 * fields). ref and channel may be NULL. */
typedef struct oo_spool_item {
    const char *body;
    size_t body_len;
    const char *ref;
    size_t ref_len;
    const char *channel; /* the order's channel name; NULL: the client's default */
    size_t channel_len;
    int op; /* OO_SPOOL_OP_CREATE (0, the default) | OO_SPOOL_OP_CANCEL | OO_SPOOL_OP_AMEND */
} oo_spool_item;

/* Why an order failed for good (oo_spool_kill). All fields optional:
 * kind defaults to "failed", status 0 = none. */
typedef struct oo_spool_failure {
    const char *kind;
    int status;
    const char *code;
    const char *message;
} oo_spool_failure;

/* A row copied out of the spool; strings are NUL-terminated heap copies
 * (NULL when the column is NULL or was not asked for). */
typedef struct oo_spool_row {
    long long id;
    char *ref;
    size_t ref_len;
    char *body; /* claim: always; list: only with_body */
    size_t body_len;
    long long bytes; /* body length */
    long long attempts;
    double created_at; /* claim and list */
    char *channel;     /* claim and list; NULL: the client's default channel */
    size_t channel_len;
    int op; /* OO_SPOOL_OP_CREATE | OO_SPOOL_OP_CANCEL | OO_SPOOL_OP_AMEND (claim and list) */
    /* queued rows (claim, list of orders) */
    double next_at;
    double claimed_until; /* 0 when unclaimed */
    char *claimed_by;
    char *last_error;
    /* dead letters (list with dead) */
    double failed_at;
    char *kind;
    char *code;
    char *message;
    int status; /* 0 when none */
} oo_spool_row;

typedef struct oo_spool_rows {
    oo_spool_row *v;
    size_t n, cap;
} oo_spool_rows;

typedef struct oo_spool_counts {
    long long queued;  /* rows in orders */
    long long due;     /* of those: next_at <= now and no live lease */
    long long claimed; /* of those: under a live lease */
    long long dead;    /* dead letters */
    long long bytes;   /* queued body bytes */
    double oldest_age; /* now - oldest created_at; 0 when empty */
} oo_spool_counts;

typedef struct oo_spool_list_opts {
    int dead;        /* 1: dead letters, 0: queued orders */
    long long limit; /* rows per call (>= 1) */
    long long offset;
    long long after_id; /* only rows with id > after_id (keyset paging); 0 = from the start */
    int with_body;
} oo_spool_list_opts;

enum { OO_SPOOL_PURGE_DEAD = 1, OO_SPOOL_PURGE_QUEUED = 2 };

void oo_spool_opts_init(oo_spool_opts *o);
double oo_spool_now(void);
/* "ok" | "full" | "busy" | "lease" | "storage" | "misuse" | "foreign" */
const char *oo_spool_kind(int code);

/* Opens (creating the file 0600 and the schema on first use, migrating a
 * version-1 spool). *out is NULL on error. */
int oo_spool_open(const char *path, const oo_spool_opts *o, oo_spool **out, oo_spool_err *err);
/* A second handle on the same connection, with the same options and a new
 * owner token (for another thread). Close it like any handle. */
int oo_spool_reopen(const oo_spool *s, oo_spool **out, oo_spool_err *err);
/* Closes the handle (and the connection with its last handle); NULL is fine. */
void oo_spool_close(oo_spool *s);
const char *oo_spool_path(const oo_spool *s);
/* This handle's lease owner token, "pid:16 hex digits". */
const char *oo_spool_owner(const oo_spool *s);
const oo_spool_opts *oo_spool_get_opts(const oo_spool *s);

/* Stores n orders in one transaction (group commit), all or none; ids[i]
 * receives each new id (ids may be NULL). Expires old rows first (max_age),
 * then applies the bounds: OO_SPOOL_FULL, or with drop_oldest moves the
 * oldest unclaimed rows to dead letters (kind "dropped") to make room. */
int oo_spool_put_many(oo_spool *s, const oo_spool_item *items, size_t n, double now, long long *ids,
                      oo_spool_err *err);
/* One order on the client's default channel. */
int oo_spool_put(oo_spool *s, const char *body, size_t body_len, const char *ref, size_t ref_len,
                 double now, long long *id, oo_spool_err *err);

/* Leases up to max_n due rows (next_at <= now, no live lease) for lease
 * seconds; out's old rows are freed and it receives id, ref, body, bytes,
 * attempts, created_at, next_at, channel and claimed_until for each, in id
 * order (oldest first). */
int oo_spool_claim(oo_spool *s, size_t max_n, double lease, double now, oo_spool_rows *out,
                   oo_spool_err *err);
/* Delivered: deletes the row, only while this handle holds it. */
int oo_spool_ack(oo_spool *s, long long id, oo_spool_err *err);
/* Delivered, n of them in one transaction (the delivery thread batches its
 * acks). Every row this handle holds is deleted; ids it no longer holds are
 * skipped, and then OO_SPOOL_LEASE says how many and names the first (the
 * others are acked all the same). */
int oo_spool_ack_many(oo_spool *s, const long long *ids, size_t n, oo_spool_err *err);
/* Delivered, with each id's outcome for the ledger (OO_LEDGER_SENT or
 * OO_LEDGER_WARNED; outcomes NULL: all sent; the ack of a cancel row is
 * recorded as cancelled). With the ledger on (oo_spool_set_ledger), each
 * ledger row is written in the same transaction as its spool row's delete.
 * Otherwise as oo_spool_ack_many (which is this with outcomes NULL). */
int oo_spool_ack_outcomes(oo_spool *s, const long long *ids, const int *outcomes, size_t n,
                          double now, oo_spool_err *err);
/* Failed, try later: attempts+1, next_at, last_error (may be NULL), lease cleared. */
int oo_spool_retry(oo_spool *s, long long id, double next_at, const char *err_text,
                   oo_spool_err *err);
/* Failed for good: moves the row to dead letters (attempts+1) in one
 * transaction, with a dead ledger row when the ledger is on (never over an
 * acknowledged one; a dead cancel row changes nothing in the ledger). */
int oo_spool_kill(oo_spool *s, long long id, const oo_spool_failure *f, double now,
                  oo_spool_err *err);
/* oo_spool_kill, and when the row is a cancel, the amend's new version put
 * behind it (OO_SPOOL_OP_AMEND) moves to dead letters with it, in the same
 * transaction (kind, status and code the cancel's; message OO_AMEND_FAILED
 * and the cancel's): deps (freed first; may be NULL) receives those dead
 * letters (id, ref, attempts, created_at, channel, op, kind, status, code,
 * message), for the caller to report. */
int oo_spool_kill_deps(oo_spool *s, long long id, const oo_spool_failure *f, double now,
                       oo_spool_rows *deps, oo_spool_err *err);
/* Gives the row back without counting an attempt. */
int oo_spool_release(oo_spool *s, long long id, oo_spool_err *err);

/* Counts, from the totals row and two index ranges (orders not yet due,
 * live leases): no scan of the queue, cheap enough to call often. */
int oo_spool_stats(oo_spool *s, double now, oo_spool_counts *st, oo_spool_err *err);
/* Earliest next_at among unclaimed rows; *found = 0 when there is none. */
int oo_spool_next_due(oo_spool *s, double now, double *at, int *found, oo_spool_err *err);
/* Rows in id order; out's old rows are freed. */
int oo_spool_list(oo_spool *s, const oo_spool_list_opts *o, oo_spool_rows *out, oo_spool_err *err);
/* Dead letters back into the queue (id > 0: that one; id <= 0: all), due now
 * with attempts 0, created_at now (max_age counts from the requeue) and
 * their channel. The bounds refuse it with OO_SPOOL_FULL rather than drop
 * anything. */
int oo_spool_requeue_dead(oo_spool *s, long long id, double now, long long *n, oo_spool_err *err);
/* Deletes dead letters (failed_at) and/or unclaimed queued orders
 * (created_at) older than older_than seconds (< 0: all). */
int oo_spool_purge(oo_spool *s, int which, double older_than, double now, long long *n,
                   oo_spool_err *err);
/* Every queued order waiting for a later attempt (next_at > now) and under
 * no live lease becomes due now, in one UPDATE: its attempts and last error
 * are kept. moved: how many; waiting: those still due later (under another
 * handle's live lease: left alone). */
int oo_spool_due_now(oo_spool *s, double now, long long *moved, long long *waiting,
                     oo_spool_err *err);

void oo_spool_rows_free(oo_spool_rows *r);

/* queue:cancel's step: removes the unclaimed queued creates of a refCode
 * (one transaction). With the ledger on, and when none is in flight and
 * the ledger holds no acknowledged row of it, the removed ones are
 * recorded as cancelled in the same transaction (nothing is left to send).
 * The caller puts a cancel row (OO_SPOOL_OP_CANCEL) when one was in
 * flight, seen, or nothing was removed. */
typedef struct oo_spool_cancelled {
    long long removed;   /* queued creates removed: never delivered */
    long long in_flight; /* creates of that refCode claimed under a live lease */
    int seen;            /* the ledger holds a sent/warned row of it (channel NULL: the default) */
} oo_spool_cancelled;
int oo_spool_cancel_queued(oo_spool *s, const char *ref, size_t ref_len, const char *channel,
                           size_t channel_len, double now, oo_spool_cancelled *out,
                           oo_spool_err *err);

/* Erasure: removes one customer's undelivered orders, the queued (unless
 * in flight: counted) and the dead letters, whose body holds the given
 * user.email (compared normalised: trimmed, ASCII lower-case; an e-mail
 * that is not an address matches nothing) or user.id. */
typedef struct oo_spool_purged {
    long long queued, dead; /* removed */
    long long in_flight;    /* theirs, claimed under a live lease: left (run it again later) */
} oo_spool_purged;
int oo_spool_purge_customer(oo_spool *s, const char *email, size_t email_len, const char *user_id,
                            size_t id_len, double now, oo_spool_purged *out, oo_spool_err *err);

/* ---- The ledger in the spool's file (ledger.c) ---- */
struct oo_ledger_cfg;
struct oo_sql_conn;
struct sqlite3_stmt;
/* From now on, acks, kills, expiries and drops on this connection (every
 * handle reopened from it) write ledger rows under cfg (copied). */
int oo_spool_set_ledger(oo_spool *s, const struct oo_ledger_cfg *cfg, oo_spool_err *err);
/* Runs fn in one of the spool's transactions (write: BEGIN IMMEDIATE on
 * the shared connection; read: a snapshot on the handle's reader), with
 * that connection's ledger statement cache. */
typedef int (*oo_spool_fn)(struct oo_sql_conn *c, struct sqlite3_stmt **st, void *ctx,
                           oo_spool_err *err);
int oo_spool_run(oo_spool *s, const char *what, int write, oo_spool_fn fn, void *ctx,
                 oo_spool_err *err);

/* ---- Lua binding (l_spool.c) ---- */
/* Reads a spool options table (nil = defaults) at idx; raises naming the field. */
void oo_spool_read_opts(struct lua_State *L, int idx, oo_spool_opts *o);
/* The handle inside a spool userdata at idx (raises if not one or closed):
 * the worker's binding reopens it for its own thread. */
oo_spool *oo_spool_check(struct lua_State *L, int idx);
/* Pushes nil, {kind=, message=, retryable=, sqlite_code=?, bound=?} for a
 * runtime failure (returns 2); raises for OO_SPOOL_MISUSE. The ledger's
 * binding reports the same way. */
int oo_spool_push_err(struct lua_State *L, const oo_spool_err *e);
/* core.spool_open, core.spool_now and the spool metatable. */
void oo_spool_register(struct lua_State *L);

#endif
