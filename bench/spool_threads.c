/* Spool store benchmark in C (bench/spool.lua builds and runs it): puts
 * from one thread while a delivery thread claims and acks on a handle from
 * oo_spool_reopen(), as the queue's worker does; and the drain on its own.
 *   spool_threads DIR ORDERS SECONDS BODY_BYTES
 * Prints "name orders wall_seconds cpu_seconds" lines. Bounded in count and time. */
#define _GNU_SOURCE /* RUSAGE_THREAD */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "../csrc/store/spool.h"

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds of the calling thread: steadier than the wall clock on a
 * shared machine. */
static double cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what, const oo_spool_err *e) {
    fprintf(stderr, "spool_threads: %s: %s\n", what, e->message);
    exit(1);
}

typedef struct drainer {
    oo_spool *s;
    int stop;          /* the putter is done: drain what is left, then end (atomic) */
    long long acked;
    double busy;       /* seconds inside claim + ack_many */
    double cpu;        /* CPU seconds of the thread */
} drainer;

/* claim(64) + ack_many until told to stop and nothing is left. */
static void *drain(void *arg) {
    drainer *d = (drainer *)arg;
    oo_spool_rows rows = {0};
    oo_spool_err err;
    long long ids[64];
    double c0 = cpu();
    for (;;) {
        double t0 = mono(), now = oo_spool_now();
        size_t i;
        if (oo_spool_claim(d->s, 64, 60, now, &rows, &err) != OO_SPOOL_OK) die("claim", &err);
        for (i = 0; i < rows.n; i++) ids[i] = rows.v[i].id;
        if (rows.n && oo_spool_ack_many(d->s, ids, rows.n, &err) != OO_SPOOL_OK) die("ack_many", &err);
        d->acked += (long long)rows.n;
        d->busy += mono() - t0;
        if (rows.n == 0) {
            struct timespec pause = {0, 200 * 1000};
            if (__atomic_load_n(&d->stop, __ATOMIC_ACQUIRE)) break;
            nanosleep(&pause, NULL); /* the worker waits for a put's notify */
        }
    }
    oo_spool_rows_free(&rows);
    d->cpu = cpu() - c0;
    return NULL;
}

static oo_spool *open_fresh(const char *dir, const char *name) {
    char path[4096];
    oo_spool *s;
    oo_spool_err err;
    snprintf(path, sizeof path, "%s/%s.db", dir, name);
    if (oo_spool_open(path, NULL, &s, &err) != OO_SPOOL_OK) die("open", &err);
    return s;
}

/* Puts one at a time until n or the deadline; returns how many. */
static long long put_loop(oo_spool *s, const char *body, size_t len, long long n, double secs,
                          double *took, double *cpu_took) {
    long long i;
    double t0 = mono(), c0 = cpu();
    oo_spool_err err;
    char ref[32];
    for (i = 0; i < n; i++) {
        long long id;
        int rl = snprintf(ref, sizeof ref, "R%lld", i);
        if (oo_spool_put(s, body, len, ref, (size_t)rl, oo_spool_now(), &id, &err) != OO_SPOOL_OK)
            die("put", &err);
        if ((i & 255) == 255 && mono() - t0 >= secs) {
            i++;
            break;
        }
    }
    *took = mono() - t0;
    *cpu_took = cpu() - c0;
    return i;
}

int main(int argc, char **argv) {
    const char *dir;
    long long n, done;
    double secs, took, cpu_took;
    size_t len;
    char *body;
    oo_spool *s;
    drainer dr;
    pthread_t th;

    if (argc != 5) {
        fprintf(stderr, "usage: spool_threads DIR ORDERS SECONDS BODY_BYTES\n");
        return 2;
    }
    dir = argv[1];
    n = atoll(argv[2]);
    secs = atof(argv[3]);
    len = (size_t)atol(argv[4]);
    body = (char *)malloc(len);
    memset(body, 'x', len);

    /* 1. puts alone */
    s = open_fresh(dir, "c-put");
    done = put_loop(s, body, len, n, secs, &took, &cpu_took);
    printf("put %lld %.6f %.6f\n", done, took, cpu_took);
    oo_spool_close(s);

    /* 2. puts while the delivery thread claims and acks on the same connection */
    s = open_fresh(dir, "c-put-drain");
    memset(&dr, 0, sizeof dr);
    {
        oo_spool_err err;
        if (oo_spool_reopen(s, &dr.s, &err) != OO_SPOOL_OK) die("reopen", &err);
    }
    pthread_create(&th, NULL, drain, &dr);
    done = put_loop(s, body, len, n, secs, &took, &cpu_took);
    __atomic_store_n(&dr.stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    printf("put_with_drain %lld %.6f %.6f\n", done, took, cpu_took);
    printf("drain_during_put %lld %.6f %.6f\n", dr.acked, dr.busy, dr.cpu);
    oo_spool_close(dr.s);
    oo_spool_close(s);

    /* 3. the drain alone: fill with put_many(64), then claim(64) + ack_many */
    s = open_fresh(dir, "c-drain");
    {
        oo_spool_item items[64];
        oo_spool_err err;
        long long k;
        double t0 = mono(), c0 = cpu();
        memset(items, 0, sizeof items);
        for (k = 0; k < 64; k++) {
            items[k].body = body;
            items[k].body_len = len;
        }
        for (k = 0; k < n; k += 64)
            if (oo_spool_put_many(s, items, 64, oo_spool_now(), NULL, &err) != OO_SPOOL_OK)
                die("put_many", &err);
        printf("put_many64 %lld %.6f %.6f\n", k, mono() - t0, cpu() - c0);
    }
    memset(&dr, 0, sizeof dr);
    dr.s = s;
    dr.stop = 1;
    {
        double t0 = mono();
        drain(&dr);
        printf("drain %lld %.6f %.6f\n", dr.acked, mono() - t0, dr.cpu);
    }
    oo_spool_close(s);
    fflush(stdout);
    free(body);
    return 0;
}
