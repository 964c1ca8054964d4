/* The clocks, once: monotonic seconds for durations and schedules,
 * wall-clock seconds for what is stored or compared across processes
 * (the spool, HTTP dates, an order's age). */
#ifndef OO_CLOCK_H
#define OO_CLOCK_H

#include <sys/types.h>

double oo_mono_now(void);
double oo_wall_now(void);

/* CPU seconds of the calling thread (benchmarks). */
double oo_thread_cputime(void);

/* getpid(), without a system call per ask (refreshed in a forked child). */
pid_t oo_getpid(void);

#endif
