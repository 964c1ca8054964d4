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
 * migrated in place, in one transaction. Paths are plain file names, never
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
#define OO_SPOOL_SCHEMA_VERSION 2
#define OO_SPOOL_APP_ID 0x4F4F5350 /* "OOSP" */

/* Result codes. Everything but OK fills the caller's oo_spool_err. */
enum {
    OO_SPOOL_OK = 0,
    OO_SPOOL_FULL,    /* a bound (max_orders / max_bytes) refused the orders */
    OO_SPOOL_BUSY,    /* the file stayed locked longer than busy_timeout */
    OO_SPOOL_LEASE,   /* ack/retry/kill/release of a row this handle does not hold */
    OO_SPOOL_STORAGE, /* SQLite failed: I/O, disk full, corrupt file, out of memory */
    OO_SPOOL_MISUSE,  /* bad arguments, closed handle, handle used after fork */
    OO_SPOOL_FOREIGN  /* open: the file is not a spool this version can use; untouched */
};

typedef struct oo_spool_err {
    int code;            /* OO_SPOOL_* */
    int sqlite_code;     /* extended SQLite result code, 0 when not from SQLite */
    const char *bound;   /* "max_orders" | "max_bytes" for OO_SPOOL_FULL, else NULL */
    char message[512];   /* names the spool path and SQLite's message */
} oo_spool_err;

enum { OO_SPOOL_REFUSE = 0, OO_SPOOL_DROP_OLDEST = 1 };
enum { OO_SPOOL_SYNC_NORMAL = 0, OO_SPOOL_SYNC_FULL = 1 };

typedef struct oo_spool_opts {
    double busy_timeout;   /* seconds to wait for a lock (default 5) */
    int sync;              /* OO_SPOOL_SYNC_NORMAL (default) | OO_SPOOL_SYNC_FULL */
    long long max_orders;  /* queued orders bound; 0 = none */
    long long max_bytes;   /* queued body bytes bound; 0 = none */
    double max_age;        /* seconds a queued order may wait before it expires; 0 = none */
    int on_full;           /* OO_SPOOL_REFUSE (default) | OO_SPOOL_DROP_OLDEST */
    long long max_file_bytes; /* hard cap on the database file (SQLite max_page_count);
                                 past it writes fail like a full disk; 0 = none */
} oo_spool_opts;

typedef struct oo_spool oo_spool;

/* One order to put. body must be non-empty; ref and channel may be NULL. */
typedef struct oo_spool_item {
    const char *body;
    size_t body_len;
    const char *ref;
    size_t ref_len;
    const char *channel; /* the order's channel name; NULL: the client's default */
    size_t channel_len;
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
    char *body;          /* claim: always; list: only with_body */
    size_t body_len;
    long long bytes;     /* body length */
    long long attempts;
    double created_at;   /* claim and list */
    char *channel;       /* claim and list; NULL: the client's default channel */
    size_t channel_len;
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
    int status;           /* 0 when none */
} oo_spool_row;

typedef struct oo_spool_rows {
    oo_spool_row *v;
    size_t n, cap;
} oo_spool_rows;

typedef struct oo_spool_counts {
    long long queued;   /* rows in orders */
    long long due;      /* of those: next_at <= now and no live lease */
    long long claimed;  /* of those: under a live lease */
    long long dead;     /* dead letters */
    long long bytes;    /* queued body bytes */
    double oldest_age;  /* now - oldest created_at; 0 when empty */
} oo_spool_counts;

typedef struct oo_spool_list_opts {
    int dead;            /* 1: dead letters, 0: queued orders */
    long long limit;     /* rows per call (>= 1) */
    long long offset;
    long long after_id;  /* only rows with id > after_id (keyset paging); 0 = from the start */
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
int oo_spool_put_many(oo_spool *s, const oo_spool_item *items, size_t n, double now,
                      long long *ids, oo_spool_err *err);
/* One order on the client's default channel. */
int oo_spool_put(oo_spool *s, const char *body, size_t body_len, const char *ref,
                 size_t ref_len, double now, long long *id, oo_spool_err *err);

/* Leases up to max_n due rows (next_at <= now, no live lease) for lease
 * seconds; out's old rows are freed and it receives id, ref, body, bytes,
 * attempts, created_at, next_at, channel and claimed_until for each, in id
 * order (oldest first). */
int oo_spool_claim(oo_spool *s, size_t max_n, double lease, double now,
                   oo_spool_rows *out, oo_spool_err *err);
/* Delivered: deletes the row, only while this handle holds it. */
int oo_spool_ack(oo_spool *s, long long id, oo_spool_err *err);
/* Delivered, n of them in one transaction (the delivery thread batches its
 * acks). Every row this handle holds is deleted; ids it no longer holds are
 * skipped, and then OO_SPOOL_LEASE says how many and names the first (the
 * others are acked all the same). */
int oo_spool_ack_many(oo_spool *s, const long long *ids, size_t n, oo_spool_err *err);
/* Failed, try later: attempts+1, next_at, last_error (may be NULL), lease cleared. */
int oo_spool_retry(oo_spool *s, long long id, double next_at, const char *err_text,
                   oo_spool_err *err);
/* Failed for good: moves the row to dead letters (attempts+1) in one transaction. */
int oo_spool_kill(oo_spool *s, long long id, const oo_spool_failure *f, double now,
                  oo_spool_err *err);
/* Gives the row back without counting an attempt. */
int oo_spool_release(oo_spool *s, long long id, oo_spool_err *err);

/* Counts, from the totals row and two index ranges (orders not yet due,
 * live leases): no scan of the queue, cheap enough to call often. */
int oo_spool_stats(oo_spool *s, double now, oo_spool_counts *st, oo_spool_err *err);
/* Earliest next_at among unclaimed rows; *found = 0 when there is none. */
int oo_spool_next_due(oo_spool *s, double now, double *at, int *found, oo_spool_err *err);
/* Rows in id order; out's old rows are freed. */
int oo_spool_list(oo_spool *s, const oo_spool_list_opts *o, oo_spool_rows *out,
                  oo_spool_err *err);
/* Dead letters back into the queue (id > 0: that one; id <= 0: all), due now
 * with attempts 0, created_at now (max_age counts from the requeue) and
 * their channel. The bounds refuse it with OO_SPOOL_FULL rather than drop
 * anything. */
int oo_spool_requeue_dead(oo_spool *s, long long id, double now, long long *n,
                          oo_spool_err *err);
/* Deletes dead letters (failed_at) and/or unclaimed queued orders
 * (created_at) older than older_than seconds (< 0: all). */
int oo_spool_purge(oo_spool *s, int which, double older_than, double now, long long *n,
                   oo_spool_err *err);

void oo_spool_rows_free(oo_spool_rows *r);

/* ---- Lua binding (l_spool.c) ---- */
/* Reads a spool options table (nil = defaults) at idx; raises naming the field. */
void oo_spool_read_opts(struct lua_State *L, int idx, oo_spool_opts *o);
/* The handle inside a spool userdata at idx (raises if not one or closed):
 * the worker's binding reopens it for its own thread. */
oo_spool *oo_spool_check(struct lua_State *L, int idx);
/* core.spool_open, core.spool_now and the spool metatable. */
void oo_spool_register(struct lua_State *L);

#endif
