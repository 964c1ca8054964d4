/* The store's result codes and its one error record, shared by the
 * spool (spool.h), the ledger (ledger.h) and their SQLite layer
 * (sqlfile.h): each of them reports through it, none through another's
 * header. */
#ifndef OO_STORE_ERR_H
#define OO_STORE_ERR_H

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
    int code;          /* OO_SPOOL_* */
    int sqlite_code;   /* extended SQLite result code, 0 when not from SQLite */
    const char *bound; /* "max_orders" | "max_bytes" for OO_SPOOL_FULL, else NULL */
    char message[512]; /* names the spool path and SQLite's message */
} oo_spool_err;

#endif
