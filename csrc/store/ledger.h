/* The delivery ledger: what each endpoint acknowledged, so a later run
 * never sends an acknowledged order twice (SQLite; no Lua here, the
 * binding is l_ledger.c).
 *
 * Key: (endpoint host, site, channel) — a small `ledger_scope` table —
 * and the order's refCode. Value: the fingerprint (SHA-256 of the exact
 * body bytes), the outcome (sent, warned, dead, cancelled), the time it
 * was recorded (wall seconds), and for reports the order's time (epoch
 * seconds of orderDate), store, currency (one `ledger_label` row per pair)
 * and total in minor units. No personal data: never the e-mail, the user
 * id or the body.
 *
 * "Seen" rows are the acknowledged ones (sent, warned) and cancelled: a
 * lookup answers unknown, same fingerprint or changed. A dead row never
 * blocks a send and a later outcome overwrites it; a dead outcome never
 * overwrites a seen row.
 *
 * Two processes may share one ledger: reserve() takes, in one write
 * transaction, a batch of orders that are neither seen nor in flight
 * elsewhere, leaving a `ledger_pending` row per order (this handle's
 * owner token, a lease end); a live pending row of any owner answers "in
 * flight". record() writes the outcomes and drops the reservations;
 * release() drops them unsent. A reservation whose process died (a kill
 * -9, a crash) counts as gone at once when that process was in our pid
 * namespace (the token says which: the pid is looked up), else when its
 * lease runs out; the next run may then send that order again.
 *
 * Storage: a file of its own (application_id OO_LEDGER_APP_ID, the
 * spool's file rules: sqlfile.h), or the tables inside a spool's file,
 * where an ack writes its ledger row in the same transaction as the
 * spool row's delete (spool.c, through oo_ledger_note).
 *
 * Retention: rows recorded more than keep days ago are pruned as it goes
 * (a bounded DELETE by the time index on open and every
 * OO_LEDGER_PRUNE_EVERY rows written); span() says how far back the
 * ledger knows. */
#ifndef OO_LEDGER_H
#define OO_LEDGER_H

#include <stddef.h>

#include "store_err.h" /* oo_spool_err, the OO_SPOOL_* result codes */

#define OO_LEDGER_APP_ID 0x4F4F4C47 /* "OOLG" */
#define OO_LEDGER_SCHEMA_VERSION 1
#define OO_LEDGER_FP_LEN 32
#define OO_LEDGER_KEEP_DAYS 200
#define OO_LEDGER_PRUNE_EVERY 1000
#define OO_LEDGER_STORE_KEY_MAX 256
/* Statements a connection caches for the ledger (spool.c keeps an array). */
#define OO_LEDGER_STMT_COUNT 27

/* The ledger's tables, created in a ledger file and in a spool's. */
#define OO_LEDGER_SCHEMA_SQL                                                                       \
    "CREATE TABLE ledger_scope(id INTEGER PRIMARY KEY, host TEXT NOT NULL, site TEXT NOT NULL,"    \
    " channel TEXT NOT NULL, UNIQUE (host, site, channel));"                                       \
    "CREATE TABLE ledger_label(id INTEGER PRIMARY KEY, store TEXT NOT NULL,"                       \
    " currency TEXT NOT NULL, UNIQUE (store, currency));"                                          \
    "CREATE TABLE ledger(scope INTEGER NOT NULL, ref TEXT NOT NULL, fp BLOB NOT NULL,"             \
    " outcome INTEGER NOT NULL, at INTEGER NOT NULL, order_at INTEGER, label INTEGER,"             \
    " total INTEGER, PRIMARY KEY (scope, ref)) WITHOUT ROWID;"                                     \
    "CREATE INDEX ledger_at ON ledger(at);"                                                        \
    "CREATE TABLE ledger_pending(scope INTEGER NOT NULL, ref TEXT NOT NULL, owner TEXT NOT NULL,"  \
    " until REAL NOT NULL, PRIMARY KEY (scope, ref)) WITHOUT ROWID;"                               \
    "CREATE TABLE ledger_meta(one INTEGER PRIMARY KEY CHECK (one = 1), created INTEGER NOT NULL,"  \
    " pruned_before INTEGER);"                                                                     \
    "INSERT INTO ledger_meta VALUES (1, CAST(strftime('%s', 'now') AS INTEGER), NULL);"

/* Outcomes (stored as these numbers). */
enum { OO_LEDGER_SENT = 1, OO_LEDGER_WARNED, OO_LEDGER_DEAD, OO_LEDGER_CANCELLED };
#define OO_LEDGER_OUTCOMES 4
/* What a lookup or a reservation found. */
enum {
    OO_LEDGER_UNKNOWN = 0, /* not seen (absent, or only dead): check */
    OO_LEDGER_RESERVED,    /* not seen, and now reserved by this handle: reserve */
    OO_LEDGER_SAME,        /* seen with the same fingerprint */
    OO_LEDGER_CHANGED,     /* seen with another fingerprint (prev_* is the earlier version) */
    OO_LEDGER_SEEN,        /* seen; no body was given to compare (check) */
    OO_LEDGER_IN_FLIGHT    /* reserved by a live handle (this one or another) */
};

/* "sent" | "warned" | "dead" | "cancelled", NULL for another number. */
const char *oo_ledger_outcome_name(int outcome);
/* The number of an outcome name, 0 when unknown. */
int oo_ledger_outcome_of(const char *name);

/* ---- An entry: what the ledger keeps of an encoded body ---- */

typedef struct oo_ledger_entry {
    unsigned char fp[OO_LEDGER_FP_LEN];
    const char *ref; /* order.refCode: into the body, or into `own` */
    size_t ref_len;
    long long order_at; /* epoch seconds of order.orderDate */
    int has_order_at;
    char currency[4]; /* order.currency when it is an ISO 4217 code we know, else "" */
    long long total;  /* order.total in the currency's minor units */
    int has_total;
    const char *store; /* order.attributes[store_key] (a string, number or boolean), or NULL */
    size_t store_len;
    char *own; /* unescaped copies, freed by oo_ledger_entry_free */
} oo_ledger_entry;

/* Derives the entry from an encoded order: body[0..len) must be one JSON
 * object (strictly; body[len] must be '\0') with a string order.refCode.
 * store_key NULL = "store". Other fields are taken when present and
 * readable, left unset otherwise. Returns 0, or -1 with the reason in
 * why[cap] (never the body's content). */
int oo_ledger_entry_from_body(const char *body, size_t len, const char *store_key,
                              oo_ledger_entry *e, char *why, size_t cap);
void oo_ledger_entry_free(oo_ledger_entry *e);
/* SHA-256 of the bytes. */
void oo_ledger_fingerprint(const void *p, size_t n, unsigned char out[OO_LEDGER_FP_LEN]);

/* ---- The handle ---- */

typedef struct oo_ledger oo_ledger;

typedef struct oo_ledger_opts {
    double busy_timeout;   /* seconds to wait for another process's lock (default 5) */
    int keep_days;         /* rows older than this are pruned (default 200) */
    const char *store_key; /* order.attributes key of the store (default "store") */
} oo_ledger_opts;

void oo_ledger_opts_init(oo_ledger_opts *o);

/* OK, or OO_SPOOL_MISUSE naming the option out of range. */
int oo_ledger_opts_check(const oo_ledger_opts *o, oo_spool_err *err);

/* A ledger file of its own (created 0600 on first use). */
int oo_ledger_open(const char *path, const oo_ledger_opts *o, oo_ledger **out, oo_spool_err *err);

/* The scope a spool's acks and kills are recorded under. */
typedef struct oo_ledger_cfg {
    char host[256], site[256];
    char channel[64]; /* for orders spooled without a channel (the client's default) */
    char store_key[OO_LEDGER_STORE_KEY_MAX + 1];
    int keep_days;
} oo_ledger_cfg;

struct oo_sql_conn;
struct sqlite3_stmt;

/* One step of a ledger call inside a host's transaction. */
typedef int (*oo_ledger_step)(struct oo_sql_conn *c, struct sqlite3_stmt **st, void *ctx,
                              oo_spool_err *err);

/* Another store's file the ledger lives in (the spool's: spool_ledger.h),
 * seen through its transactions, its path and the close of its handle, so
 * the ledger knows no other store. */
typedef struct oo_ledger_host {
    void *h; /* the host's handle: the ledger's own, closed with it */
    int (*run)(void *h, const char *what, int write, oo_ledger_step step, void *ctx,
               oo_spool_err *err);
    const char *(*path)(const void *h);
    void (*close)(void *h);
} oo_ledger_host;

/* A ledger handle whose calls run as the host's transactions (its schema
 * already made in the host's file). On success the handle owns host->h;
 * on failure the caller still does. */
int oo_ledger_hosted(const oo_ledger_host *host, const oo_ledger_opts *o, oo_ledger **out,
                     oo_spool_err *err);
/* Closes the handle; a handle another part retained (oo_ledger_retain: a
 * queue's thread, a batch's engine) stays usable by it until it closes it
 * too. */
void oo_ledger_close(oo_ledger *l);
/* One more owner of the handle: each oo_ledger_close drops one. */
oo_ledger *oo_ledger_retain(oo_ledger *l);
const char *oo_ledger_path(const oo_ledger *l);
/* This handle's reservation owner token, "pid:16 hex digits@pid
 * namespace" (the namespace part when /proc tells it). */
const char *oo_ledger_owner(const oo_ledger *l);
int oo_ledger_in_spool(const oo_ledger *l);
/* The order.attributes key of the store this handle records under. */
const char *oo_ledger_store_key(const oo_ledger *l);

typedef struct oo_ledger_scope {
    const char *host, *site, *channel; /* NUL-terminated */
} oo_ledger_scope;

/* One order of a batched call. */
typedef struct oo_ledger_item {
    const char *channel; /* NULL: the scope's */
    size_t channel_len;
    const char *ref; /* NULL: the body's order.refCode */
    size_t ref_len;
    const char *body; /* the encoded order (body[body_len] == '\0'), or NULL */
    size_t body_len;
    /* body's entry when the caller derived it already (oo_ledger_entry_from_body
     * with the handle's store key; it points into a copy the caller keeps
     * alive for the call): the ledger then does not parse the body again */
    const oo_ledger_entry *entry;
    /* check, reserve: the body's order.refCode as the caller knows it (or
     * NULL): an order recorded before with these same bytes is then found
     * by it and the body's fingerprint, and its body is not read */
    const char *hint;
    size_t hint_len;
    int outcome; /* record: OO_LEDGER_* */
    int force;   /* reserve: reserve it even when seen (a forced send, an amend) */
    /* filled by check and reserve */
    int state;         /* OO_LEDGER_UNKNOWN ... */
    int reserved;      /* reserve: this handle holds its reservation now (RESERVED, or
                          SAME/CHANGED of a forced item) */
    int prev_outcome;  /* SAME, CHANGED, SEEN: the row's outcome */
    long long prev_at; /* and when it was recorded */
    double until;      /* IN_FLIGHT: the lease end */
    int mine;          /* IN_FLIGHT: reserved by this handle */
} oo_ledger_item;

/* Looks each order up (one read snapshot). */
int oo_ledger_check(oo_ledger *l, const oo_ledger_scope *sc, oo_ledger_item *items, size_t n,
                    double now, oo_spool_err *err);
/* Looks each order up and reserves the ones neither seen nor in flight
 * (a forced item: seen or not, unless in flight) for lease seconds: one
 * write transaction. */
int oo_ledger_reserve(oo_ledger *l, const oo_ledger_scope *sc, oo_ledger_item *items, size_t n,
                      double lease, double now, oo_spool_err *err);
/* Writes each item's outcome (a dead one never overwrites a seen row; a
 * cancelled one without a body marks the existing row) and drops the
 * reservations of them (whichever handle took them: once an outcome is
 * recorded, nothing is in flight any more): one write transaction. */
int oo_ledger_record(oo_ledger *l, const oo_ledger_scope *sc, oo_ledger_item *items, size_t n,
                     double now, oo_spool_err *err);
/* Drops this handle's reservations of the items: one write transaction. */
int oo_ledger_release(oo_ledger *l, const oo_ledger_scope *sc, oo_ledger_item *items, size_t n,
                      oo_spool_err *err);

/* A ledger row (show, export); strings are heap copies. */
typedef struct oo_ledger_row {
    long long scope_id;
    char *host, *site, *channel, *ref, *store, *owner;
    size_t ref_len;
    char currency[4];
    unsigned char fp[OO_LEDGER_FP_LEN];
    int outcome; /* 0: a pending reservation (owner, until) */
    long long at, order_at, total;
    int has_order_at, has_total;
    double until;
} oo_ledger_row;

typedef struct oo_ledger_rows {
    oo_ledger_row *v;
    size_t n, cap;
} oo_ledger_rows;

void oo_ledger_rows_free(oo_ledger_rows *r);
/* Every row of a refCode, across scopes, with the reservations. */
int oo_ledger_show(oo_ledger *l, const char *ref, size_t ref_len, oo_ledger_rows *out,
                   oo_spool_err *err);
/* Up to limit rows after the key (after_scope, after_ref) in key order
 * (after_ref NULL: from the start): export in pages, bounded memory. */
int oo_ledger_page(oo_ledger *l, long long after_scope, const char *after_ref, size_t after_len,
                   long long limit, oo_ledger_rows *out, oo_spool_err *err);
/* Deletes the rows recorded before `before` (epoch seconds); *n = how many. */
int oo_ledger_forget(oo_ledger *l, double before, long long *n, oo_spool_err *err);
/* Prunes up to max rows older than keep days (0 = as many as there are). */
int oo_ledger_prune(oo_ledger *l, double now, long long max, long long *n, oo_spool_err *err);

typedef struct oo_ledger_span {
    long long rows_oldest, rows_newest; /* recorded times of the oldest and newest rows */
    int has_rows;
    long long created;       /* when the ledger was made */
    long long pruned_before; /* rows before it were pruned or forgotten */
    int has_pruned;
} oo_ledger_span;
int oo_ledger_span_of(oo_ledger *l, oo_ledger_span *out, oo_spool_err *err);

/* ---- Reports ---- */

enum {
    OO_LEDGER_BY_DAY = 1,
    OO_LEDGER_BY_STORE = 2,
    OO_LEDGER_BY_CHANNEL = 4,
    OO_LEDGER_BY_CURRENCY = 8
};

typedef struct oo_ledger_report_opts {
    int by; /* OO_LEDGER_BY_* (currency is always a key: totals never mix currencies) */
    int has_from, has_to;
    long long from_day, to_day; /* local days since 1970-01-01, inclusive */
    /* seconds east of UTC at instant t (the report's time zone); NULL: UTC */
    long (*offset)(void *ctx, long long t);
    void *offset_ctx;
} oo_ledger_report_opts;

typedef struct oo_ledger_group {
    long long day; /* local days since 1970-01-01 */
    int has_day;   /* by day, and the order's date is known */
    char *store, *channel;
    char currency[4];
    long long orders[OO_LEDGER_OUTCOMES + 1]; /* by outcome number */
    long long minor[OO_LEDGER_OUTCOMES + 1];  /* totals in minor units */
} oo_ledger_group;

typedef struct oo_ledger_groups {
    oo_ledger_group *v;
    size_t n, cap;
} oo_ledger_groups;

void oo_ledger_groups_free(oo_ledger_groups *g);
/* Orders and exact totals per group, for each outcome, by the order's
 * date in the report's time zone (orders with no readable date fall in a
 * group without a day, and outside any from/to). */
int oo_ledger_report(oo_ledger *l, const oo_ledger_report_opts *o, oo_ledger_groups *out,
                     oo_spool_err *err);

/* ---- For spool.c: inside one of its transactions ---- */

struct oo_sql_conn;
struct sqlite3_stmt;

/* Scope and label ids already looked up in this transaction, so a batch
 * asks their tables once per distinct value. Zero it at the start of each
 * transaction (an id added by one that rolled back is gone with it). */
#define OO_LEDGER_MEMO_LABELS 8
#define OO_LEDGER_MEMO_KEY 68
typedef struct oo_ledger_memo {
    char chan[64];
    size_t chan_len;
    long long scope; /* 0: none yet */
    struct {
        char key[OO_LEDGER_MEMO_KEY]; /* currency (3 bytes) + store */
        size_t len;
        long long id;
    } label[OO_LEDGER_MEMO_LABELS];
    int nlabel, next;
} oo_ledger_memo;

/* Records one spool row's outcome under cfg (its channel NULL = cfg's; its
 * refCode is the body's, else ref). A body that is not an order still
 * records its fingerprint under ref; with neither, nothing is recorded. */
int oo_ledger_note(struct oo_sql_conn *c, struct sqlite3_stmt **st, const oo_ledger_cfg *cfg,
                   oo_ledger_memo *memo, const char *channel, size_t channel_len, const char *ref,
                   size_t ref_len, const char *body, size_t body_len, int outcome, double now,
                   oo_spool_err *err);
/* The outcome of the row of (cfg's host and site, channel (NULL: cfg's),
 * ref); 0 when there is none. */
int oo_ledger_outcome_at(struct oo_sql_conn *c, struct sqlite3_stmt **st, const oo_ledger_cfg *cfg,
                         const char *channel, size_t channel_len, const char *ref, size_t ref_len,
                         int *outcome, oo_spool_err *err);
/* After n rows noted: prunes (bounded) once OO_LEDGER_PRUNE_EVERY rows
 * were noted since the last time (*since_prune counts them). */
int oo_ledger_note_done(struct oo_sql_conn *c, struct sqlite3_stmt **st, const oo_ledger_cfg *cfg,
                        long long *since_prune, long long n, double now, oo_spool_err *err);

/* ---- Lua binding (l_ledger.c) ---- */
struct lua_State;
/* The handle inside a ledger userdata at idx (raises if not one or
 * closed): a queue's thread or a batch's engine retains it. */
oo_ledger *oo_ledger_arg(struct lua_State *L, int idx);
/* The scope table {host=, site=, channel=} at idx (raises naming fn). */
void oo_ledger_scope_read(struct lua_State *L, int idx, const char *fn, oo_ledger_scope *sc);
/* The list at idx (body strings or {body=, ref=, channel=, outcome=,
 * force=} tables) as items, in scratch memory the GC owns (pushed on the
 * stack); record: every item needs an outcome (outcome_default for those
 * naming none). Raises on misuse. */
oo_ledger_item *oo_ledger_items_read(struct lua_State *L, int idx, const char *fn, int record,
                                     int outcome_default, size_t *n);
/* The answers of check or reserve: {state=, outcome=, at=, reserved=,
 * until=, mine=} per item. */
int oo_ledger_answers_push(struct lua_State *L, const oo_ledger_item *items, size_t n);
/* The same, short: true (reserved), the number at (the same bytes, sent,
 * not reserved), else that table. */
int oo_ledger_answers_push_short(struct lua_State *L, const oo_ledger_item *items, size_t n);

#endif
