/* The spool's file format: its schema and the migrations from each older
 * version (for oo_sql_connect, spool_conn.c), and the default options.
 * The ledger's tables (OO_LEDGER_SCHEMA_SQL) are part of it since
 * version 3. */
#include "spool_db.h"
#include "ledger.h"

#include <string.h>

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
#define ORDERS_LEASED_INDEX                                                                        \
    "CREATE INDEX orders_leased ON orders(claimed_until) WHERE claimed_by IS NOT NULL;"

#define ORDERS_INS_TRIGGER                                                                         \
    "CREATE TRIGGER orders_ins AFTER INSERT ON orders BEGIN"                                       \
    " UPDATE totals SET n = n + 1, bytes = bytes + NEW.bytes, seq = max(seq, NEW.id)"              \
    " WHERE one = 1; END;"

/* A cancel row (op 1, a DELETE of its refCode) waits behind every earlier
 * row of the same refCode, and a create behind an earlier cancel (amend):
 * claim asks the refCode index. */
#define ORDERS_REF_INDEX "CREATE INDEX orders_ref ON orders(ref);"

static const char SCHEMA_SQL[] =
    "CREATE TABLE orders("
    " id INTEGER PRIMARY KEY, ref TEXT, body BLOB NOT NULL,"
    " bytes INT NOT NULL, created_at REAL NOT NULL, attempts INT NOT NULL DEFAULT 0,"
    " next_at REAL NOT NULL, claimed_by TEXT, claimed_until REAL, last_error TEXT,"
    " channel TEXT, op INT NOT NULL DEFAULT 0);"
    "CREATE INDEX orders_next_at ON orders(next_at);"
    "CREATE INDEX orders_created_at ON orders(created_at);" ORDERS_LEASED_INDEX ORDERS_REF_INDEX
    "CREATE TABLE dead("
    " id INTEGER PRIMARY KEY, ref TEXT, body BLOB NOT NULL, created_at REAL,"
    " failed_at REAL NOT NULL, attempts INT NOT NULL, kind TEXT NOT NULL,"
    " status INT, code TEXT, message TEXT, channel TEXT, op INT NOT NULL DEFAULT 0);"
    "CREATE INDEX dead_failed_at ON dead(failed_at);"
    "CREATE TABLE totals(one INTEGER PRIMARY KEY CHECK (one = 1),"
    " n INT NOT NULL, bytes INT NOT NULL, seq INT NOT NULL DEFAULT 0);"
    "INSERT INTO totals VALUES (1, 0, 0, 0);" ORDERS_INS_TRIGGER
    "CREATE TRIGGER orders_del AFTER DELETE ON orders BEGIN"
    " UPDATE totals SET n = n - 1, bytes = bytes - OLD.bytes WHERE one = 1; "
    "END;" OO_LEDGER_SCHEMA_SQL;

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

/* Version 2 → 3: cancel rows (op) and the ledger's tables. */
static const char MIGRATE_V2_SQL[] =
    "ALTER TABLE orders ADD COLUMN op INT NOT NULL DEFAULT 0;"
    "ALTER TABLE dead ADD COLUMN op INT NOT NULL DEFAULT 0;" ORDERS_REF_INDEX OO_LEDGER_SCHEMA_SQL;

/* The spool's file, for oo_sql_connect (spool_conn.c). */
static const char *const MIGRATE[OO_SPOOL_SCHEMA_VERSION] = {
    [1] = MIGRATE_V1_SQL, [2] = MIGRATE_V2_SQL};

const oo_sql_schema oo_spool_schema = {OO_SPOOL_APP_ID,
                                       OO_SPOOL_SCHEMA_VERSION,
                                       "'orders', 'dead', 'totals'",
                                       3,
                                       1,
                                       PAGE_SIZE,
                                       SCHEMA_SQL,
                                       MIGRATE};

void oo_spool_opts_init(oo_spool_opts *o) {
    memset(o, 0, sizeof *o);
    o->busy_timeout = 5.0;
    o->sync = OO_SPOOL_SYNC_NORMAL;
    o->on_full = OO_SPOOL_REFUSE;
}
