/* The spool's checkpointer (spool_db.h): SQLite's autocheckpoint replaced
 * by a thread per connection that copies the WAL back off the writers'
 * path. */
#define _POSIX_C_SOURCE 200809L
#include "spool_db.h"

#include <signal.h>
#include <time.h>

/* Replaces SQLite's autocheckpoint: only notes the WAL's size. */
int oo_spool_on_wal_commit(void *arg, sqlite3 *db, const char *name, int frames) {
    (void)db;
    (void)name;
    ((spool_db *)arg)->wal_frames = frames;
    return SQLITE_OK;
}

/* Checkpoints. SQLite's own would run inside the put that crosses its
 * threshold, with two fsyncs (WAL, then database) under synchronous=NORMAL:
 * tens of milliseconds on a busy disk, in the caller's put. Instead a
 * thread per connection (started when first needed) copies the WAL back
 * on its own connection, without the connection lock, so puts and claims
 * go on meanwhile. Starting the WAL over needs every frame copied before
 * the next write begins, which never happens while writes keep coming: so
 * once the WAL holds WAL_RESTART_BYTES the thread copies the remaining tail
 * holding the lock, and the next write starts the WAL from the top. */

static int ckpt_open(spool_db *d) {
    int rc = oo_sql_open_more(d->path, &d->ckpt_db, 0, NULL);
    if (rc == SQLITE_OK) {
        /* a checkpoint syncs as its connection's synchronous says */
        rc = sqlite3_exec(d->ckpt_db,
                          d->sync_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                          NULL, NULL, NULL);
        sqlite3_busy_timeout(d->ckpt_db, (int)(d->c.busy_timeout * 1000.0 + 0.5));
        sqlite3_wal_autocheckpoint(d->ckpt_db, 0);
    }
    /* a connection finds the WAL at its first read */
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(d->ckpt_db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_close_v2(d->ckpt_db);
        d->ckpt_db = NULL;
    }
    return rc;
}

/* One passive checkpoint on db (a failure surfaces in the next write):
 * SQLITE_BUSY at once when another connection is checkpointing. */
static int ckpt_pass(sqlite3 *db) {
    return sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
}

/* The writer's own checkpoint past WAL_HARD_BYTES. The thread may be
 * copying right now (holding SQLite's checkpoint lock, which no busy
 * handler waits for): then this waits for it, a millisecond at a time,
 * up to two seconds. Backpressure, only when the thread falls behind. */
static void ckpt_catch_up(spool_db *d) {
    const struct timespec ms = {0, 1000000};
    int i;
    for (i = 0; i < 2000 && ckpt_pass(d->c.db) == SQLITE_BUSY; i++) nanosleep(&ms, NULL);
}

static void *checkpointer(void *arg) {
    spool_db *d = (spool_db *)arg;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        int restart;
        while (!d->ckpt_wanted && !d->ckpt_stop) pthread_cond_wait(&d->ckpt_cv, &d->mu);
        if (d->ckpt_stop) break;
        d->ckpt_wanted = 0;
        pthread_mutex_unlock(&d->mu);
        oo_sql_gate_enter(); /* before the lock, as every call */
        ckpt_pass(d->ckpt_db);
        pthread_mutex_lock(&d->mu);
        restart = (long long)d->wal_frames * d->page_size >= WAL_RESTART_BYTES;
        if (restart && !d->ckpt_stop) ckpt_pass(d->ckpt_db);
        pthread_mutex_unlock(&d->mu);
        oo_sql_gate_leave();
        pthread_mutex_lock(&d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* The thread, or CKPT_INLINE when it cannot be had. It blocks every
 * signal: they stay with the host's threads (nginx's, for one). */
static void ckpt_start(spool_db *d) {
    sigset_t all, old;
    d->ckpt_state = CKPT_INLINE;
    if (ckpt_open(d) != SQLITE_OK || pthread_cond_init(&d->ckpt_cv, NULL) != 0) return;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (pthread_create(&d->ckpt_thread, NULL, checkpointer, d) == 0) d->ckpt_state = CKPT_RUNNING;
    else pthread_cond_destroy(&d->ckpt_cv);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* After a write (lock held): wants a checkpoint once CKPT_BYTES more went
 * to the WAL. A failure to checkpoint surfaces in the next write. */
void oo_spool_want_checkpoint(spool_db *d) {
    if (d->wal_frames < d->ckpt_frames) d->ckpt_frames = 0; /* the WAL started over */
    if (d->ckpt_state == CKPT_RUNNING &&
        (long long)d->wal_frames * d->page_size >= WAL_HARD_BYTES &&
        (long long)(d->wal_frames - d->ckpt_frames) * d->page_size >= CKPT_BYTES / 4) {
        /* the thread is behind: copy here, so the next write starts the WAL
         * over (a reader pinning the WAL would make every write try: a
         * quarter of CKPT_BYTES apart at most) */
        ckpt_catch_up(d);
        d->ckpt_frames = d->wal_frames;
        return;
    }
    if ((long long)(d->wal_frames - d->ckpt_frames) * d->page_size < CKPT_BYTES) return;
    if (d->ckpt_state == CKPT_NONE) ckpt_start(d);
    /* what is in the WAL now will be copied: the next want is CKPT_BYTES on */
    d->ckpt_frames = d->wal_frames;
    if (d->ckpt_state == CKPT_RUNNING) {
        d->ckpt_wanted = 1;
        pthread_cond_signal(&d->ckpt_cv);
    } else {
        ckpt_pass(d->c.db); /* no thread: here, between transactions */
    }
}

/* Stops the thread. Outside the gate: the thread may be waiting at it. */
void oo_spool_ckpt_halt(spool_db *d) {
    if (d->ckpt_state == CKPT_RUNNING) {
        pthread_mutex_lock(&d->mu);
        d->ckpt_stop = 1;
        pthread_cond_signal(&d->ckpt_cv);
        pthread_mutex_unlock(&d->mu);
        pthread_join(d->ckpt_thread, NULL);
        pthread_cond_destroy(&d->ckpt_cv);
        d->ckpt_state = CKPT_INLINE;
    }
}
