/* Inside the spool (not an API): the connection and handle structures
 * shared by its files — the store (spool.c), the connections and their
 * fork safety (spool_conn.c) and the checkpointer (spool_ckpt.c). */
#ifndef OO_SPOOL_DB_H
#define OO_SPOOL_DB_H

#include <pthread.h>
#include <sys/types.h>
#include <sqlite3.h>

#include "ledger.h"
#include "spool.h"
#include "sqlfile.h"

/* The spool's statements (their SQL is spool.c's SQL[]). */
enum {
    ST_BEGIN,
    ST_BEGIN_READ,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_TOTALS,
    ST_INSERT,
    ST_MIN_CREATED,
    ST_EXPIRE_COPY,
    ST_EXPIRE_DEL,
    ST_OLDEST_FREE,
    ST_MOVE_COPY,
    ST_MOVE_DEL,
    ST_CLAIM,
    ST_CLAIM_MARK,
    ST_ACK,
    ST_RETRY,
    ST_RELEASE,
    ST_OWNER,
    ST_DEAD_SUM,
    ST_REQUEUE_COPY,
    ST_REQUEUE_DEL,
    ST_PURGE_DEAD,
    ST_PURGE_QUEUED,
    ST_WAITING,
    ST_LEASED,
    ST_DEAD_COUNT,
    ST_LIST_QUEUED,
    ST_LIST_DEAD,
    ST_NEXT_DUE,
    ST_HELD_ROW,
    ST_ANY_ROW,
    ST_EXPIRING,
    ST_REF_FLIGHT,
    ST_REF_FREE,
    ST_REF_DROP,
    ST_CUSTOMERS,
    ST_DEAD_CUSTOMERS,
    ST_DROP_ONE,
    ST_DROP_DEAD,
    ST_DUE_NOW,
    ST_AMEND_DEPS,
    ST_COUNT
};

/* New files only (a WAL database keeps the page size it was made with). */
#define PAGE_SIZE 2048
/* Checkpoints (see checkpointer()): copy the WAL back every CKPT_BYTES
 * written to it, and start it over once it holds WAL_RESTART_BYTES; a WAL
 * file left larger than that is cut back to it (journal_size_limit), so the
 * -wal file stays within a few MiB however many orders pass (spool.md:
 * bench/spool_wal.lua). */
#define CKPT_BYTES (1024 * 1024)
#define WAL_RESTART_BYTES (4 * 1024 * 1024)
/* Past this the writer copies the WAL back itself, between transactions:
 * a checkpoint thread starved on a loaded machine must not let it grow. */
#define WAL_HARD_BYTES (8 * 1024 * 1024)

/* One SQLite connection, shared by a handle and the handles reopened from
 * it. `mu` is held for a whole call (one transaction). */
typedef struct spool_db {
    oo_sql_conn c; /* the SQLite connection, its path and the call in progress */
    pthread_mutex_t mu;
    sqlite3_stmt *st[ST_COUNT];              /* prepared on first use, kept until close */
    sqlite3_stmt *lst[OO_LEDGER_STMT_COUNT]; /* the ledger's, on this connection */
    oo_ledger_cfg *ledger;                   /* where acks and kills are recorded; NULL: nowhere */
    long long ledger_since;                  /* ledger rows written since the last prune */
    oo_ledger_memo memo;                     /* the ledger's ids looked up in this transaction */
    int ledger_on;                           /* ledger != NULL, readable without mu (atomic) */
    int refs;                                /* handles on this connection (under mu) */
    pid_t pid;
    unsigned fork_gen; /* oo_sql_fork_gen() when opened */
    int sync_full;
    int page_size;
    int wal_frames;  /* WAL size after the last commit (wal hook) */
    int ckpt_frames; /* of those, copied back by the last checkpoint */
    /* the checkpoint thread (started on first need) and its connection */
    pthread_t ckpt_thread;
    pthread_cond_t ckpt_cv; /* with mu: a checkpoint is wanted, or stop */
    int ckpt_state;         /* CKPT_* */
    int ckpt_wanted, ckpt_stop;
    sqlite3 *ckpt_db;
    char path[]; /* as given to open */
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

#define set_err oo_sql_err
#define db_fail(d, err, rc) oo_sql_fail(&(d)->c, (err), (rc))
#define nomem(d, err) oo_sql_nomem(&(d)->c, (err))

static inline int misuse(oo_spool_err *err, const char *what, const char *why) {
    return set_err(err, OO_SPOOL_MISUSE, 0, NULL, "spool %s: %s", what, why);
}

/* The spool's file (spool.c), for oo_sql_connect. */
extern const oo_sql_schema oo_spool_schema;

/* A handle used in another process than the one that opened it: MISUSE
 * (spool_conn.c). */
int oo_spool_check_process(const oo_spool *s, const char *what, oo_spool_err *err);

/* The handle's connection for reads, opened on first use (spool_conn.c). */
spool_db *oo_spool_reader(oo_spool *s);

/* The checkpointer (spool_ckpt.c): the WAL hook every connection gets, the
 * want after a write (lock held), and the stop before a close. */
int oo_spool_on_wal_commit(void *arg, sqlite3 *db, const char *name, int frames);
void oo_spool_want_checkpoint(spool_db *d);
void oo_spool_ckpt_halt(spool_db *d);

#endif
