/* The clocks (clock.h). Their Lua side (core.now, core.sleep, core.getpid,
 * core.thread_cputime) is l_clock.c. */
#define _POSIX_C_SOURCE 200809L
#include "clock.h"

#include <pthread.h>
#include <time.h>
#include <unistd.h>

static double seconds(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double oo_mono_now(void) { return seconds(CLOCK_MONOTONIC); }
double oo_wall_now(void) { return seconds(CLOCK_REALTIME); }
double oo_thread_cputime(void) { return seconds(CLOCK_THREAD_CPUTIME_ID); }

/* The pid, cached: getpid() is a system call (glibc stopped caching it),
 * ~1.4 us on a VM, and a queue asks on every push. A fork through libc
 * refreshes the cache in the child (pthread_atfork). */
static pid_t cached_pid;
static pthread_once_t pid_once = PTHREAD_ONCE_INIT;

static void pid_refresh(void) { __atomic_store_n(&cached_pid, getpid(), __ATOMIC_RELAXED); }
static void pid_init(void) {
    pid_refresh();
    pthread_atfork(NULL, NULL, pid_refresh);
}

pid_t oo_getpid(void) {
    pthread_once(&pid_once, pid_init);
    return __atomic_load_n(&cached_pid, __ATOMIC_RELAXED);
}
