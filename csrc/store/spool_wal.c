/* A thin SQLite VFS for the spool: the system's default VFS, except that
 * what SQLite writes to a -wal file is gathered and handed down in one
 * write per transaction.
 *
 * Why: SQLite writes every WAL frame as two writes (a 24-byte header, then
 * the page), so a one-order put of four pages costs eight write system
 * calls, and frames that straddle page-cache pages make the kernel zero
 * memory for each partial write. Gathered, a put is one contiguous write.
 *
 * Why it is safe: bytes are only delayed, never reordered or dropped.
 * Pending bytes are written before anything that could observe them: the
 * commit frame (whose header carries a non-zero database size) ends the
 * gathering, and so do any read, sync, truncate, size query, file control
 * and close, a write that is not contiguous, and a full buffer. SQLite
 * publishes frames to other connections (the wal-index) only after its
 * write of the commit frame returns, by which time they are in the file.
 * A write error surfaces from the call that flushed, as it would have
 * from the original write. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sqlite3.h>

#include "spool_wal.h"

/* Flush past this many pending bytes. It must stay below 128 KiB: the unix
 * VFS's write masks the length of one write to 17 bits (seekAndWriteFd's
 * `nBuf &= 0x1ffff`), so a longer write ends short and is reported as
 * SQLITE_FULL ("disk full") — a put_many of ~100 KB failed so. */
#define GATHER_MAX (64 * 1024)
#define FRAME_HEADER 24

typedef struct gather_file {
    sqlite3_file base;  /* pMethods = &gather_io */
    sqlite3_file *real; /* the default VFS's file, allocated after this struct */
    unsigned char *buf; /* pending bytes, for file offset `off` onwards */
    size_t len, cap;
    sqlite3_int64 off;
    int commit; /* the frame being gathered is a commit frame */
} gather_file;

static sqlite3_vfs *real_vfs;
static sqlite3_vfs gather_vfs;
static sqlite3_io_methods gather_io;

static int flush(gather_file *g) {
    int rc;
    if (g->len == 0) return SQLITE_OK;
    rc = g->real->pMethods->xWrite(g->real, g->buf, (int)g->len, g->off);
    g->len = 0;
    g->commit = 0;
    return rc;
}

static int g_write(sqlite3_file *f, const void *p, int amt, sqlite3_int64 off) {
    gather_file *g = (gather_file *)f;
    int rc;
    size_t n = (size_t)amt;
    if (g->len > 0 && off != g->off + (sqlite3_int64)g->len && (rc = flush(g)) != SQLITE_OK)
        return rc;
    if (g->len + n > g->cap) {
        size_t cap = g->cap ? g->cap : 16 * 1024;
        unsigned char *nb;
        while (cap < g->len + n) cap *= 2;
        if (g->len + n > GATHER_MAX || !(nb = (unsigned char *)realloc(g->buf, cap))) {
            /* too big to gather (or no memory): write through, in order */
            if ((rc = flush(g)) != SQLITE_OK) return rc;
            return g->real->pMethods->xWrite(g->real, p, amt, off);
        }
        g->buf = nb;
        g->cap = cap;
    }
    if (g->len == 0) g->off = off;
    memcpy(g->buf + g->len, p, n);
    g->len += n;
    /* a frame header: bytes 4..7 are the database size after a commit, else 0 */
    if (amt == FRAME_HEADER) {
        const unsigned char *h = (const unsigned char *)p;
        g->commit = (h[4] | h[5] | h[6] | h[7]) != 0;
        return SQLITE_OK;
    }
    /* the page after a commit frame's header ends the transaction's writes */
    return g->commit ? flush(g) : SQLITE_OK;
}

static int g_close(sqlite3_file *f) {
    gather_file *g = (gather_file *)f;
    int rc = flush(g), rc2 = g->real->pMethods->xClose(g->real);
    free(g->buf);
    g->buf = NULL;
    g->cap = 0;
    return rc != SQLITE_OK ? rc : rc2;
}

/* The other methods flush first where the pending bytes could matter, then
 * pass the call down. */
#define REAL(f) (((gather_file *)(f))->real)
#define FLUSHED(f, call)                                                                           \
    do {                                                                                           \
        int rc_ = flush((gather_file *)(f));                                                       \
        return rc_ != SQLITE_OK ? rc_ : (call);                                                    \
    } while (0)

static int g_read(sqlite3_file *f, void *p, int amt, sqlite3_int64 off) {
    FLUSHED(f, REAL(f)->pMethods->xRead(REAL(f), p, amt, off));
}
static int g_truncate(sqlite3_file *f, sqlite3_int64 size) {
    FLUSHED(f, REAL(f)->pMethods->xTruncate(REAL(f), size));
}
static int g_sync(sqlite3_file *f, int flags) {
    FLUSHED(f, REAL(f)->pMethods->xSync(REAL(f), flags));
}
static int g_file_size(sqlite3_file *f, sqlite3_int64 *size) {
    FLUSHED(f, REAL(f)->pMethods->xFileSize(REAL(f), size));
}
static int g_file_control(sqlite3_file *f, int op, void *arg) {
    FLUSHED(f, REAL(f)->pMethods->xFileControl(REAL(f), op, arg));
}
static int g_lock(sqlite3_file *f, int lock) { return REAL(f)->pMethods->xLock(REAL(f), lock); }
static int g_unlock(sqlite3_file *f, int lock) { return REAL(f)->pMethods->xUnlock(REAL(f), lock); }
static int g_check_lock(sqlite3_file *f, int *out) {
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int g_sector_size(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int g_device(sqlite3_file *f) { return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f)); }
static int g_shm_map(sqlite3_file *f, int pg, int sz, int extend, void volatile **pp) {
    return REAL(f)->pMethods->xShmMap(REAL(f), pg, sz, extend, pp);
}
static int g_shm_lock(sqlite3_file *f, int ofst, int n, int flags) {
    return REAL(f)->pMethods->xShmLock(REAL(f), ofst, n, flags);
}
static void g_shm_barrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
/* (a WAL file is never memory-mapped: these two are for completeness) */
static int g_shm_unmap(sqlite3_file *f, int del) {
    return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}
static int g_fetch(sqlite3_file *f, sqlite3_int64 off, int amt, void **pp) {
    *pp = NULL;
    if (REAL(f)->pMethods->iVersion < 3) return SQLITE_OK;
    FLUSHED(f, REAL(f)->pMethods->xFetch(REAL(f), off, amt, pp));
}
static int g_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p) {
    return REAL(f)->pMethods->iVersion < 3 ? SQLITE_OK
                                           : REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

/* WAL files are wrapped; every other file is the default VFS's own, built
 * in place at the start of the (larger) space SQLite gave us. */
static int g_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out_flags) {
    gather_file *g = (gather_file *)f;
    int rc;
    if (!(flags & SQLITE_OPEN_WAL)) return real_vfs->xOpen(real_vfs, name, f, flags, out_flags);
    memset(g, 0, sizeof *g);
    g->real = (sqlite3_file *)(void *)(g + 1);
    rc = real_vfs->xOpen(real_vfs, name, g->real, flags, out_flags);
    /* SQLite closes a file only when pMethods is set: only a real open file */
    g->base.pMethods = g->real->pMethods ? &gather_io : NULL;
    return rc;
}

/* The rest of the VFS is the default one's. */
static int v_delete(sqlite3_vfs *v, const char *name, int sync_dir) {
    return real_vfs->xDelete(real_vfs, name, sync_dir);
}
static int v_access(sqlite3_vfs *v, const char *name, int flags, int *out) {
    return real_vfs->xAccess(real_vfs, name, flags, out);
}
static int v_full_pathname(sqlite3_vfs *v, const char *name, int n, char *out) {
    return real_vfs->xFullPathname(real_vfs, name, n, out);
}
static void *v_dl_open(sqlite3_vfs *v, const char *name) {
    return real_vfs->xDlOpen(real_vfs, name);
}
static void v_dl_error(sqlite3_vfs *v, int n, char *out) { real_vfs->xDlError(real_vfs, n, out); }
static void (*v_dl_sym(sqlite3_vfs *v, void *h, const char *sym))(void) {
    return real_vfs->xDlSym(real_vfs, h, sym);
}
static void v_dl_close(sqlite3_vfs *v, void *h) { real_vfs->xDlClose(real_vfs, h); }
static int v_randomness(sqlite3_vfs *v, int n, char *out) {
    return real_vfs->xRandomness(real_vfs, n, out);
}
static int v_sleep(sqlite3_vfs *v, int us) { return real_vfs->xSleep(real_vfs, us); }
static int v_current_time(sqlite3_vfs *v, double *out) {
    return real_vfs->xCurrentTime(real_vfs, out);
}
static int v_last_error(sqlite3_vfs *v, int n, char *out) {
    return real_vfs->xGetLastError(real_vfs, n, out);
}
static int v_current_time64(sqlite3_vfs *v, sqlite3_int64 *out) {
    return real_vfs->xCurrentTimeInt64(real_vfs, out);
}

static int registered = SQLITE_ERROR;

static void register_once(void) {
    real_vfs = sqlite3_vfs_find(NULL);
    if (!real_vfs || real_vfs->iVersion < 2) return;
    gather_io.iVersion = 3;
    gather_io.xClose = g_close;
    gather_io.xRead = g_read;
    gather_io.xWrite = g_write;
    gather_io.xTruncate = g_truncate;
    gather_io.xSync = g_sync;
    gather_io.xFileSize = g_file_size;
    gather_io.xLock = g_lock;
    gather_io.xUnlock = g_unlock;
    gather_io.xCheckReservedLock = g_check_lock;
    gather_io.xFileControl = g_file_control;
    gather_io.xSectorSize = g_sector_size;
    gather_io.xDeviceCharacteristics = g_device;
    gather_io.xShmMap = g_shm_map;
    gather_io.xShmLock = g_shm_lock;
    gather_io.xShmBarrier = g_shm_barrier;
    gather_io.xShmUnmap = g_shm_unmap;
    gather_io.xFetch = g_fetch;
    gather_io.xUnfetch = g_unfetch;
    gather_vfs.iVersion = 2;
    gather_vfs.szOsFile = (int)sizeof(gather_file) + real_vfs->szOsFile;
    gather_vfs.mxPathname = real_vfs->mxPathname;
    gather_vfs.zName = OO_SPOOL_VFS;
    gather_vfs.xOpen = g_open;
    gather_vfs.xDelete = v_delete;
    gather_vfs.xAccess = v_access;
    gather_vfs.xFullPathname = v_full_pathname;
    gather_vfs.xDlOpen = v_dl_open;
    gather_vfs.xDlError = v_dl_error;
    gather_vfs.xDlSym = v_dl_sym;
    gather_vfs.xDlClose = v_dl_close;
    gather_vfs.xRandomness = v_randomness;
    gather_vfs.xSleep = v_sleep;
    gather_vfs.xCurrentTime = v_current_time;
    gather_vfs.xGetLastError = v_last_error;
    gather_vfs.xCurrentTimeInt64 = v_current_time64;
    registered = sqlite3_vfs_register(&gather_vfs, 0);
}

const char *oo_spool_vfs(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_once);
    return registered == SQLITE_OK ? OO_SPOOL_VFS : NULL;
}
