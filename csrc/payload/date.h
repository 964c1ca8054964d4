/* Order dates: the accepted input forms, converted to UTC and written in
 * the documented form "YYYY-MM-DDTHH:MM:SS GMT". */
#ifndef OO_DATE_H
#define OO_DATE_H

#include <stddef.h>

/* Earliest and latest instants we accept (1970-01-01 .. 9999-12-31 UTC). */
#define OO_DATE_MIN 0LL
#define OO_DATE_MAX 253402300799LL

typedef enum {
    OO_DATE_OK = 0,
    OO_DATE_SYNTAX,     /* not one of the accepted forms */
    OO_DATE_IMPOSSIBLE, /* a form we know, with a date or time that cannot exist */
    OO_DATE_RANGE       /* outside 1970..9999 */
} oo_date_status;

/* Parses s[0..n); on success stores seconds since the epoch (UTC).
 * On OO_DATE_IMPOSSIBLE, *why names the bad component. */
oo_date_status oo_date_parse(const char *s, size_t n, long long *epoch, const char **why);

/* Days since 1970-01-01 of a proleptic Gregorian date, and the length of
 * month m (1..12) of year y: the calendar for the time-zone code (tz.c). */
long long oo_days_from_civil(long long y, unsigned m, unsigned d);
unsigned oo_days_in_month(long long y, unsigned m);

/* Writes the documented form (23 bytes + NUL) into out[24]. */
void oo_date_format(long long epoch, char out[24]);

#endif
