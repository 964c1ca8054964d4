/* A private SQLite file (see sqlfile.h): the file rules, the fork gate,
 * errors that name the file, and the statement helpers the spool and the
 * ledger share. No Lua here. */
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

#include "sqlfile.h"
#include "clock.h"
#include "spool_wal.h"

/* ------------------------------------------------------------------ */
/* The gate                                                            */

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_inside, gate_closed;
static volatile unsigned fork_gen;
static pthread_once_t fork_watch = PTHREAD_ONCE_INIT;

/* Returns holding gate_mu, the gate closed and empty, until the fork is done. */
static void before_fork(void) {
    pthread_mutex_lock(&gate_mu);
    gate_closed = 1;
    while (gate_inside > 0) pthread_cond_wait(&gate_cv, &gate_mu);
}

static void after_fork_in_parent(void) {
    gate_closed = 0;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

/* The child's only thread is the forking one: the gate starts afresh
 * (its waiters were other threads, gone with the fork). */
static void after_fork_in_child(void) {
    pthread_mutex_init(&gate_mu, NULL);
    pthread_cond_init(&gate_cv, NULL);
    gate_inside = gate_closed = 0;
    fork_gen++;
}

static void watch_forks(void) {
    pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
}

unsigned oo_sql_fork_gen(void) {
    pthread_once(&fork_watch, watch_forks);
    return fork_gen;
}

void oo_sql_gate_enter(void) {
    pthread_once(&fork_watch, watch_forks);
    pthread_mutex_lock(&gate_mu);
    while (gate_closed) pthread_cond_wait(&gate_cv, &gate_mu);
    gate_inside++;
    pthread_mutex_unlock(&gate_mu);
}

void oo_sql_gate_leave(void) {
    pthread_mutex_lock(&gate_mu);
    if (--gate_inside == 0 && gate_closed) pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

/* ------------------------------------------------------------------ */
/* Errors                                                              */

int oo_sql_err(oo_spool_err *err, int code, int sqlite_code, const char *bound, const char *fmt,
               ...) {
    if (err) {
        va_list ap;
        err->code = code;
        err->sqlite_code = sqlite_code;
        err->bound = bound;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Plain words before SQLite's own for the failures an operator must act on. */
static const char *rc_words(int rc) {
    switch (rc & 0xff) {
    case SQLITE_FULL: return "disk full (or max_file_bytes reached): ";
    case SQLITE_IOERR: return "I/O error: ";
    case SQLITE_CORRUPT: return "the file is damaged: ";
    case SQLITE_NOTADB: return "not a database: ";
    case SQLITE_READONLY: return "cannot write: ";
    case SQLITE_CANTOPEN: return "cannot open: ";
    default: return "";
    }
}

int oo_sql_fail(oo_sql_conn *c, oo_spool_err *err, int rc) {
    const char *msg = c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc);
    int prim = rc & 0xff;
    if (prim == SQLITE_BUSY || prim == SQLITE_LOCKED)
        return oo_sql_err(err, OO_SPOOL_BUSY, rc, NULL,
                          "%s %s: %s: %s (still locked after busy_timeout %g s)", c->noun, c->path,
                          c->what, msg, c->busy_timeout);
    return oo_sql_err(err, OO_SPOOL_STORAGE, rc, NULL, "%s %s: %s: %s%s", c->noun, c->path, c->what,
                      rc_words(rc), msg);
}

int oo_sql_nomem(oo_sql_conn *c, oo_spool_err *err) {
    return oo_sql_err(err, OO_SPOOL_STORAGE, SQLITE_NOMEM, NULL, "%s %s: %s: out of memory",
                      c->noun, c->path, c->what);
}

/* ------------------------------------------------------------------ */
/* The file rules                                                      */

static int fs_err(oo_sql_conn *c, oo_spool_err *err, const char *fmt, const char *file,
                  const char *why) {
    char what[600];
    snprintf(what, sizeof what, fmt, file, why);
    return oo_sql_err(err, OO_SPOOL_STORAGE, 0, NULL, "%s %s: %s", c->noun, c->path, what);
}

/* `file` (the database or a sidecar), as fstat or lstat saw it: a regular
 * file this process's user owns (checked before anything reads it), and,
 * unless mode_later, with no group or other permission bit. */
static int check_stat(oo_sql_conn *c, const struct stat *st, const char *file, int mode_later,
                      oo_spool_err *err) {
    char why[160];
    if (S_ISLNK(st->st_mode))
        return fs_err(c, err, "%s %s", file,
                      "is a symbolic link (never opened through one: give the file's own path)");
    if (!S_ISREG(st->st_mode))
        return fs_err(c, err, "%s is a %s, not a file", file,
                      S_ISDIR(st->st_mode) ? "directory" : "special file");
    if (st->st_uid != geteuid()) {
        snprintf(why, sizeof why,
                 "it belongs to another user (uid %ld, this process runs as uid %ld)",
                 (long)st->st_uid, (long)geteuid());
        return fs_err(c, err,
                      "refusing %s: %s; a file someone else created is never adopted (remove it,"
                      " or run as its owner)",
                      file, why);
    }
    if ((st->st_mode & 077) && !mode_later) {
        snprintf(why, sizeof why, "its mode %04o lets other users read or write it",
                 (unsigned)(st->st_mode & 07777));
        return fs_err(c, err, "refusing %s: %s (it must be 0600: chmod 600 it if it is yours)",
                      file, why);
    }
    return OO_SPOOL_OK;
}

/* Opens an existing `file` without following a link, for checking. */
static int open_existing(oo_sql_conn *c, const char *file, int *fd, oo_spool_err *err) {
    struct stat st;
    *fd = open(file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (*fd >= 0) return OO_SPOOL_OK;
    if (errno == ELOOP && stat(file, &st) != 0 && errno == ENOENT)
        return fs_err(c, err, "%s %s", file,
                      "is a symbolic link to a missing file (refusing to create its target)");
    if (errno == ELOOP)
        return fs_err(c, err, "%s %s", file,
                      "is a symbolic link (never opened through one: give the file's own path)");
    return fs_err(c, err, "cannot open %s: %s", file, strerror(errno));
}

static unsigned long be32(const unsigned char *p) {
    return (unsigned long)p[0] << 24 | (unsigned long)p[1] << 16 | (unsigned long)p[2] << 8 | p[3];
}

/* Refuses, from its first 100 bytes and before SQLite opens it, a file
 * that cannot be ours: not SQLite, another application's id, or not in WAL
 * mode (ours are from their first page on). */
static int sniff(oo_sql_conn *c, int fd, unsigned long app_id, oo_spool_err *err) {
    unsigned char h[100];
    ssize_t n = pread(fd, h, sizeof h, 0);
    unsigned long app;
    if (n == 0) return OO_SPOOL_OK;
    if (n < (ssize_t)sizeof h || memcmp(h, "SQLite format 3", 16) != 0)
        return oo_sql_err(err, OO_SPOOL_FOREIGN, 0, NULL,
                          "%s %s: not a %s file: not an SQLite database; nothing was written to it",
                          c->noun, c->path, c->noun);
    app = be32(h + 68);
    if (app != 0 && app != app_id)
        return oo_sql_err(err, OO_SPOOL_FOREIGN, 0, NULL,
                          "%s %s: not a %s file: an SQLite database of another application"
                          " (application_id 0x%08lx); nothing was written to it",
                          c->noun, c->path, c->noun, app);
    if (h[18] != 2 || h[19] != 2)
        return oo_sql_err(err, OO_SPOOL_FOREIGN, 0, NULL,
                          "%s %s: not a %s file: an SQLite database in rollback-journal mode"
                          " (a %s is always in WAL mode); nothing was written to it",
                          c->noun, c->path, c->noun, c->noun);
    return OO_SPOOL_OK;
}

/* Files this process has open in SQLite, by device and inode. Opening one
 * of them again must not open() and close() it: closing any descriptor of
 * a file drops every POSIX lock the process holds on it, SQLite's
 * included, and another process could then take the file for unused and
 * start its WAL over under our first connection. Such a file was checked
 * when it was first opened, and is still open here. */
typedef struct open_file {
    unsigned long long dev, ino;
    int refs;
} open_file;

static pthread_mutex_t files_mu = PTHREAD_MUTEX_INITIALIZER;
static open_file *files;
static size_t nfiles, files_cap;

static open_file *find_file(unsigned long long dev, unsigned long long ino) {
    size_t i;
    for (i = 0; i < nfiles; i++)
        if (files[i].dev == dev && files[i].ino == ino) return &files[i];
    return NULL;
}

static int is_open_here(const struct stat *st) {
    int found;
    pthread_mutex_lock(&files_mu);
    found = find_file((unsigned long long)st->st_dev, (unsigned long long)st->st_ino) != NULL;
    pthread_mutex_unlock(&files_mu);
    return found;
}

/* Notes c's file as open here (0), or -1 out of memory. */
static int track(oo_sql_conn *c) {
    open_file *f;
    int rc = 0;
    pthread_mutex_lock(&files_mu);
    if ((f = find_file(c->dev, c->ino)) != NULL) {
        f->refs++;
    } else if (nfiles == files_cap &&
               !(f = (open_file *)realloc(files, (files_cap ? 2 * files_cap : 8) * sizeof *f))) {
        rc = -1;
    } else {
        if (nfiles == files_cap) {
            files = f;
            files_cap = files_cap ? 2 * files_cap : 8;
        }
        files[nfiles].dev = c->dev;
        files[nfiles].ino = c->ino;
        files[nfiles++].refs = 1;
    }
    pthread_mutex_unlock(&files_mu);
    c->tracked = rc == 0;
    return rc;
}

static void untrack(oo_sql_conn *c) {
    open_file *f;
    if (!c->tracked) return;
    pthread_mutex_lock(&files_mu);
    if ((f = find_file(c->dev, c->ino)) != NULL && --f->refs == 0) *f = files[--nfiles];
    pthread_mutex_unlock(&files_mu);
    c->tracked = 0;
}

static void note_identity(oo_sql_conn *c, const struct stat *st) {
    c->dev = (unsigned long long)st->st_dev;
    c->ino = (unsigned long long)st->st_ino;
}

/* An existing file: not a link, this user's (checked before anything
 * reads it), and, unless this process has it open already, SQLite in WAL
 * mode with our application_id or none (read through the descriptor that
 * was checked). Whether it is private is checked once SQLite has said
 * whether it is ours at all (oo_sql_connect). */
static int check_existing(oo_sql_conn *c, unsigned long app_id, oo_spool_err *err) {
    struct stat st, fst;
    int fd, code;
    if (lstat(c->path, &st) != 0)
        return fs_err(c, err, "cannot stat %s: %s", c->path, strerror(errno));
    if (S_ISLNK(st.st_mode)) return open_existing(c, c->path, &fd, err); /* says which link */
    if ((code = check_stat(c, &st, c->path, 1, err)) != OO_SPOOL_OK) return code;
    note_identity(c, &st);
    if (is_open_here(&st)) return OO_SPOOL_OK;
    if ((code = open_existing(c, c->path, &fd, err)) != OO_SPOOL_OK) return code;
    if (fstat(fd, &fst) != 0) code = fs_err(c, err, "cannot stat %s: %s", c->path, strerror(errno));
    else if (fst.st_dev != st.st_dev || fst.st_ino != st.st_ino)
        code = fs_err(c, err, "%s %s", c->path, "was replaced while it was being opened");
    else code = check_stat(c, &fst, c->path, 1, err);
    if (code == OO_SPOOL_OK) code = sniff(c, fd, app_id, err);
    close(fd);
    return code;
}

/* Creates the file 0600 unless it exists (then check_existing). */
static int prepare_main(oo_sql_conn *c, unsigned long app_id, oo_spool_err *err) {
    struct stat st;
    int fd = open(c->path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0) {
        int bad = fchmod(fd, 0600) != 0 || fstat(fd, &st) != 0, e = errno;
        close(fd);
        if (!bad) {
            note_identity(c, &st);
            return OO_SPOOL_OK;
        }
        unlink(c->path);
        return fs_err(c, err, "%s%s", "cannot make the file private: ", strerror(e));
    }
    if (errno != EEXIST) return fs_err(c, err, "%s%s", "cannot create the file: ", strerror(errno));
    return check_existing(c, app_id, err);
}

/* Never opens them: closing a descriptor of a file drops every POSIX lock
 * this process holds on it, SQLite's included (the -shm's above all). */
int oo_sql_check_private(oo_sql_conn *c, int main_too, oo_spool_err *err) {
    static const char *const suffix[] = {"", "-wal", "-shm"};
    size_t n = strlen(c->path) + 8;
    char *file = (char *)malloc(n);
    struct stat st;
    int i, code = OO_SPOOL_OK;
    if (!file) return oo_sql_nomem(c, err);
    for (i = main_too ? 0 : 1; i < 3 && code == OO_SPOOL_OK; i++) {
        snprintf(file, n, "%s%s", c->path, suffix[i]);
        if (lstat(file, &st) == 0) code = check_stat(c, &st, file, 0, err);
        else if (errno != ENOENT)
            code = fs_err(c, err, "cannot stat %s: %s", file, strerror(errno));
    }
    free(file);
    return code;
}

/* SQLite may be built to read "file:..." as a URI whatever the open flags
 * say (Debian's is): such a relative name gets "./" in front. */
static char *sqlite_name(const char *path) {
    size_t n = strlen(path);
    int dot = strncasecmp(path, "file:", 5) == 0;
    char *out = (char *)malloc(n + 3);
    if (out) snprintf(out, n + 3, "%s%s", dot ? "./" : "", path);
    return out;
}

static void sleep_for(double seconds) {
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
}

/* Another process holds the lock: poll in short, growing sleeps (50 µs to
 * 2 ms) until busy_timeout. SQLite's own handler sleeps 1 ms at the first
 * retry and up to 100 ms later, far longer than our transactions hold it. */
int oo_sql_on_busy(void *arg, int n) {
    oo_sql_conn *c = (oo_sql_conn *)arg;
    double now = oo_mono_now(), pause = 50e-6 * (double)(1 << (n < 6 ? n : 6));
    if (n == 0) c->busy_deadline = now + c->busy_timeout;
    if (now >= c->busy_deadline) return 0;
    if (pause > 2e-3) pause = 2e-3;
    if (pause > c->busy_deadline - now) pause = c->busy_deadline - now;
    sleep_for(pause);
    return 1;
}

int oo_sql_open_more(const char *path, sqlite3 **db, int busy, oo_sql_conn *c) {
    char *name = sqlite_name(path);
    int rc;
    *db = NULL;
    if (!name) return SQLITE_NOMEM;
    rc = sqlite3_open_v2(name, db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, oo_spool_vfs());
    free(name);
    if (rc != SQLITE_OK) {
        sqlite3_close_v2(*db);
        *db = NULL;
        return rc;
    }
    sqlite3_extended_result_codes(*db, 1);
    if (busy) sqlite3_busy_handler(*db, oo_sql_on_busy, c);
    sqlite3_db_config(*db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
    return SQLITE_OK;
}

int oo_sql_open(oo_sql_conn *c, unsigned long app_id, oo_spool_err *err) {
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, rc, code;
    char *name;
#ifdef SQLITE_OPEN_EXRESCODE
    flags |= SQLITE_OPEN_EXRESCODE;
#endif
    if ((code = prepare_main(c, app_id, err)) != OO_SPOOL_OK) return code;
    if ((code = oo_sql_check_private(c, 0, err)) != OO_SPOOL_OK) return code;
    if (!(name = sqlite_name(c->path))) return oo_sql_nomem(c, err);
    rc = sqlite3_open_v2(name, &c->db, flags, oo_spool_vfs());
    free(name);
    if (rc != SQLITE_OK) return oo_sql_fail(c, err, rc);
    if (track(c) != 0) return oo_sql_nomem(c, err);
    sqlite3_extended_result_codes(c->db, 1);
    /* until the file is known to be ours, closing must not write to it */
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
    if (sqlite3_db_readonly(c->db, "main") == 1)
        return oo_sql_err(err, OO_SPOOL_STORAGE, SQLITE_READONLY, NULL,
                          "%s %s: open: the file is read-only", c->noun, c->path);
    sqlite3_busy_handler(c->db, oo_sql_on_busy, c);
    return OO_SPOOL_OK;
}

void oo_sql_adopt(oo_sql_conn *c) {
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, NULL);
}

void oo_sql_close(oo_sql_conn *c) {
    if (c->db) sqlite3_close_v2(c->db);
    c->db = NULL;
    untrack(c);
}

/* Switching a database to WAL takes an exclusive lock that SQLite does not
 * wait for (no busy handler on that path): retry within busy_timeout. */
int oo_sql_set_wal(oo_sql_conn *c, oo_spool_err *err) {
    double deadline = oo_mono_now() + c->busy_timeout;
    char mode[16] = "";
    sqlite3_stmt *st;
    int rc;
    for (;;) {
        if ((rc = sqlite3_prepare_v2(c->db, "PRAGMA journal_mode=WAL", -1, &st, NULL)) != SQLITE_OK)
            return oo_sql_fail(c, err, rc);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            snprintf(mode, sizeof mode, "%s", (const char *)sqlite3_column_text(st, 0));
        if (rc != SQLITE_BUSY) break;
        sqlite3_finalize(st);
        if (oo_mono_now() >= deadline) return oo_sql_fail(c, err, rc);
        sleep_for(0.01);
    }
    if (rc != SQLITE_ROW) {
        rc = oo_sql_fail(c, err, rc);
        sqlite3_finalize(st);
        return rc;
    }
    sqlite3_finalize(st);
    if (strcmp(mode, "wal") != 0)
        return oo_sql_err(err, OO_SPOOL_STORAGE, 0, NULL,
                          "%s %s: open: could not switch to WAL mode (journal mode is '%s')",
                          c->noun, c->path, mode);
    return OO_SPOOL_OK;
}

int oo_sql_row_ints(oo_sql_conn *c, const char *sql, long long *v, int n) {
    sqlite3_stmt *st;
    int i, rc = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) return rc;
    rc = sqlite3_step(st);
    for (i = 0; i < n; i++) v[i] = rc == SQLITE_ROW ? sqlite3_column_int64(st, i) : 0;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

int oo_sql_inspect_file(oo_sql_conn *c, const char *tables, oo_sql_inspect *out) {
    char sql[512];
    long long v[4];
    int rc;
    snprintf(sql, sizeof sql,
             "SELECT (SELECT application_id FROM pragma_application_id),"
             " (SELECT user_version FROM pragma_user_version),"
             " (SELECT count(*) FROM sqlite_master),"
             " (SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (%s))",
             tables);
    rc = oo_sql_row_ints(c, sql, v, 4);
    out->app_id = v[0];
    out->version = v[1];
    out->objects = v[2];
    out->ours = v[3];
    return rc;
}

/* ------------------------------------------------------------------ */
/* Schemas                                                             */

/* What the database is to us. */
enum { DB_EMPTY, DB_READY, DB_OLDER, DB_NEWER, DB_FOREIGN };

static int classify(oo_sql_conn *c, const oo_sql_schema *sc, int *state, long long *version,
                    oo_spool_err *err) {
    oo_sql_inspect in;
    long long app;
    int rc = oo_sql_inspect_file(c, sc->tables, &in), all = in.ours == sc->ntables;
    if (rc != SQLITE_OK) return rc;
    app = in.app_id & 0xffffffffLL;
    *version = in.version;
    if (app == (long long)sc->app_id)
        *state = in.version > sc->version    ? DB_NEWER
                 : in.version == sc->version ? DB_READY
                 : in.version >= 1 && all    ? DB_OLDER
                                             : DB_FOREIGN;
    else if (app == 0 && in.objects == 0)
        *state = DB_EMPTY; /* new, or another process is creating it */
    else if (app == 0 && sc->unstamped_v1 && in.version == 1 && all)
        *state = DB_OLDER; /* made by version 1, before application_id */
    else *state = DB_FOREIGN;
    if (*state == DB_NEWER)
        oo_sql_err(err, OO_SPOOL_FOREIGN, 0, NULL,
                   "%s %s: written by a newer version of this library (schema version %lld;"
                   " this one reads up to %lld); nothing was written to it",
                   c->noun, c->path, in.version, sc->version);
    else if (*state == DB_FOREIGN && app != 0 && app != (long long)sc->app_id)
        oo_sql_err(err, OO_SPOOL_FOREIGN, 0, NULL,
                   "%s %s: not a %s file: an SQLite database of another application"
                   " (application_id 0x%08llx); nothing was written to it",
                   c->noun, c->path, c->noun, (unsigned long long)app);
    else if (*state == DB_FOREIGN)
        oo_sql_err(err, OO_SPOOL_FOREIGN, 0, NULL,
                   "%s %s: not a %s file: an SQLite database without the %s's tables"
                   " (user_version %lld); nothing was written to it",
                   c->noun, c->path, c->noun, c->noun, in.version);
    return SQLITE_OK;
}

/* Creates or migrates the schema under the write lock, looking again
 * first: concurrent first opens serialize here and all but one find the
 * work done. */
static int upgrade(oo_sql_conn *c, const oo_sql_schema *sc, oo_spool_err *err) {
    char stamp[96];
    long long version = 0, v;
    int state = DB_FOREIGN, rc, code = OO_SPOOL_OK;
    snprintf(stamp, sizeof stamp, "PRAGMA application_id = %ld; PRAGMA user_version = %lld;",
             (long)sc->app_id, sc->version);
    if ((rc = sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK)
        return oo_sql_fail(c, err, rc);
    rc = classify(c, sc, &state, &version, err);
    if (rc == SQLITE_OK && state == DB_EMPTY) rc = sqlite3_exec(c->db, sc->create_sql, 0, 0, 0);
    for (v = version; rc == SQLITE_OK && state == DB_OLDER && v < sc->version; v++)
        if (sc->migrate[v]) rc = sqlite3_exec(c->db, sc->migrate[v], NULL, NULL, NULL);
    if (rc == SQLITE_OK && (state == DB_EMPTY || state == DB_OLDER))
        rc = sqlite3_exec(c->db, stamp, NULL, NULL, NULL);
    if (rc == SQLITE_OK && (state == DB_NEWER || state == DB_FOREIGN)) code = OO_SPOOL_FOREIGN;
    if (rc == SQLITE_OK && code == OO_SPOOL_OK) rc = sqlite3_exec(c->db, "COMMIT", 0, 0, 0);
    if (rc != SQLITE_OK) code = oo_sql_fail(c, err, rc);
    if (code != OO_SPOOL_OK) oo_sql_rollback(c);
    return code;
}

int oo_sql_connect(oo_sql_conn *c, const oo_sql_schema *sc, oo_spool_err *err) {
    long long version = 0;
    int rc, code, state = DB_FOREIGN;
    if ((code = oo_sql_open(c, sc->app_id, err)) != OO_SPOOL_OK) return code;
    if ((rc = classify(c, sc, &state, &version, err)) != SQLITE_OK) return oo_sql_fail(c, err, rc);
    if (state == DB_NEWER || state == DB_FOREIGN) return OO_SPOOL_FOREIGN;
    /* a file of ours, private; SQLite has opened the -wal and -shm by
     * now: the same rules for them again, before anything is written */
    if ((code = oo_sql_check_private(c, 1, err)) != OO_SPOOL_OK) return code;
    if (state == DB_EMPTY) {
        char sql[48];
        snprintf(sql, sizeof sql, "PRAGMA page_size=%d", sc->page_size);
        if ((rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL)) != SQLITE_OK)
            return oo_sql_fail(c, err, rc);
    }
    if ((code = oo_sql_set_wal(c, err)) != OO_SPOOL_OK) return code;
    if (state != DB_READY) return upgrade(c, sc, err);
    return OO_SPOOL_OK;
}

/* ------------------------------------------------------------------ */
/* Statements                                                          */

sqlite3_stmt *oo_sql_stmt(oo_sql_conn *c, sqlite3_stmt **cache, const char *const *sql, int i,
                          int *rc) {
    if (!cache[i]) {
        *rc = sqlite3_prepare_v3(c->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &cache[i], NULL);
        if (*rc != SQLITE_OK) {
            cache[i] = NULL;
            return NULL;
        }
    }
    return cache[i];
}

static void bind_args(sqlite3_stmt *st, const char *fmt, va_list ap) {
    int i;
    for (i = 1; *fmt; fmt++, i++) {
        switch (*fmt) {
        case 'i': sqlite3_bind_int64(st, i, (sqlite3_int64)va_arg(ap, long long)); break;
        case 'I': {
            long long v = va_arg(ap, long long);
            if (v) sqlite3_bind_int64(st, i, (sqlite3_int64)v);
            else sqlite3_bind_null(st, i);
            break;
        }
        case 'J': {
            int has = va_arg(ap, int);
            long long v = va_arg(ap, long long);
            if (has) sqlite3_bind_int64(st, i, (sqlite3_int64)v);
            else sqlite3_bind_null(st, i);
            break;
        }
        case 'd': sqlite3_bind_double(st, i, va_arg(ap, double)); break;
        case 'o': {
            int v = va_arg(ap, int);
            if (v) sqlite3_bind_int(st, i, v);
            else sqlite3_bind_null(st, i);
            break;
        }
        case 's': {
            const char *p = va_arg(ap, const char *);
            if (p) sqlite3_bind_text(st, i, p, -1, SQLITE_STATIC);
            else sqlite3_bind_null(st, i);
            break;
        }
        case 't': {
            const char *p = va_arg(ap, const char *);
            size_t n = va_arg(ap, size_t);
            if (p) sqlite3_bind_text64(st, i, p, (sqlite3_uint64)n, SQLITE_STATIC, SQLITE_UTF8);
            else sqlite3_bind_null(st, i);
            break;
        }
        case 'b': {
            const void *p = va_arg(ap, const void *);
            size_t n = va_arg(ap, size_t);
            sqlite3_bind_blob64(st, i, p ? p : "", (sqlite3_uint64)n, SQLITE_STATIC);
            break;
        }
        }
    }
}

void oo_sql_finish(sqlite3_stmt *st) {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

static int step_first(oo_sql_conn *c, sqlite3_stmt **cache, const char *const *sql, int i,
                      sqlite3_stmt **out, const char *fmt, va_list ap) {
    int rc;
    *out = oo_sql_stmt(c, cache, sql, i, &rc);
    if (!*out) return rc;
    bind_args(*out, fmt, ap);
    return sqlite3_step(*out);
}

int oo_sql_query(oo_sql_conn *c, sqlite3_stmt **cache, const char *const *sql, int i,
                 sqlite3_stmt **out, const char *fmt, ...) {
    int rc;
    va_list ap;
    va_start(ap, fmt);
    rc = step_first(c, cache, sql, i, out, fmt, ap);
    va_end(ap);
    if (*out && rc != SQLITE_ROW) oo_sql_finish(*out);
    return rc;
}

int oo_sql_exec(oo_sql_conn *c, sqlite3_stmt **cache, const char *const *sql, int i,
                const char *fmt, ...) {
    int rc;
    va_list ap;
    sqlite3_stmt *st;
    va_start(ap, fmt);
    rc = step_first(c, cache, sql, i, &st, fmt, ap);
    va_end(ap);
    if (!st) return rc;
    while (rc == SQLITE_ROW) rc = sqlite3_step(st);
    oo_sql_finish(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

int oo_sql_scalar_of(oo_sql_conn *c, sqlite3_stmt **cache, const char *const *sql, int i,
                     oo_sql_scalar *v, const char *fmt, ...) {
    int rc;
    va_list ap;
    sqlite3_stmt *st;
    memset(v, 0, sizeof *v);
    va_start(ap, fmt);
    rc = step_first(c, cache, sql, i, &st, fmt, ap);
    va_end(ap);
    if (!st) return rc;
    if (rc == SQLITE_ROW) {
        v->found = sqlite3_column_type(st, 0) != SQLITE_NULL;
        v->a = sqlite3_column_int64(st, 0);
        v->x = sqlite3_column_double(st, 0);
        if (sqlite3_column_count(st) > 1) v->b = sqlite3_column_int64(st, 1);
    }
    oo_sql_finish(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

void oo_sql_rollback(oo_sql_conn *c) {
    if (c->db && !sqlite3_get_autocommit(c->db)) sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
}

void oo_sql_finalize_all(sqlite3_stmt **cache, int n) {
    int i;
    for (i = 0; i < n; i++) {
        sqlite3_finalize(cache[i]);
        cache[i] = NULL;
    }
}

void oo_sql_owner_token(char *out, size_t cap) {
    unsigned char r[8];
    size_t at;
    int i;
    /* SQLite's PRNG is seeded from the OS; the pid keeps forked copies apart */
    sqlite3_randomness((int)sizeof r, r);
    at = (size_t)snprintf(out, cap, "%ld:", (long)getpid());
    for (i = 0; i < 8 && at + 3 <= cap; i++, at += 2) snprintf(out + at, cap - at, "%02x", r[i]);
}

const char *oo_sql_column_text(sqlite3_stmt *st, int i, size_t *len) {
    const char *p = (const char *)sqlite3_column_text(st, i);
    *len = p ? (size_t)sqlite3_column_bytes(st, i) : 0;
    return p;
}
