/* The clocks, once: monotonic seconds for durations and schedules,
 * wall-clock seconds for what is stored or compared across processes
 * (the spool, HTTP dates, an order's age). */
#ifndef OO_CLOCK_H
#define OO_CLOCK_H

double oo_mono_now(void);
double oo_wall_now(void);

#endif
