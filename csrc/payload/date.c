#include "date.h"

#include <string.h>

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil), valid for every year we accept. */
static long long days_from_civil(long long y, unsigned m, unsigned d) {
    long long era;
    unsigned yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = (unsigned)(y - era * 400);
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static void civil_from_days(long long z, long long *y, unsigned *m, unsigned *d) {
    long long era;
    unsigned doe, yoe, doy, mp;
    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = (unsigned)(z - era * 146097);
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (long long)yoe + era * 400 + (*m <= 2);
}

static int is_leap(long long y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

static unsigned days_in_month(long long y, unsigned m) {
    static const unsigned char dim[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : dim[m - 1];
}

long long oo_days_from_civil(long long y, unsigned m, unsigned d) {
    return days_from_civil(y, m, d);
}
unsigned oo_days_in_month(long long y, unsigned m) { return days_in_month(y, m); }

/* Reads exactly k digits at s[*i]; -1 if they are not all digits. */
static int digits(const char *s, size_t n, size_t *i, int k) {
    int v = 0, j;
    if (*i + (size_t)k > n) return -1;
    for (j = 0; j < k; j++) {
        char c = s[*i + j];
        if (c < '0' || c > '9') return -1;
        v = v * 10 + (c - '0');
    }
    *i += (size_t)k;
    return v;
}

static int at(const char *s, size_t n, size_t i, char c) { return i < n && s[i] == c; }

oo_date_status oo_date_parse(const char *s, size_t n, long long *epoch, const char **why) {
    size_t i = 0;
    int Y, M, D, h, mi, sec = 0, has_sec = 0, off = 0;
    char sep;
    long long t;
    *why = NULL;
    if ((Y = digits(s, n, &i, 4)) < 0 || !at(s, n, i++, '-')) return OO_DATE_SYNTAX;
    if ((M = digits(s, n, &i, 2)) < 0 || !at(s, n, i++, '-')) return OO_DATE_SYNTAX;
    if ((D = digits(s, n, &i, 2)) < 0) return OO_DATE_SYNTAX;
    if (i >= n || (s[i] != 'T' && s[i] != ' ')) return OO_DATE_SYNTAX;
    sep = s[i++];
    if ((h = digits(s, n, &i, 2)) < 0 || !at(s, n, i++, ':')) return OO_DATE_SYNTAX;
    if ((mi = digits(s, n, &i, 2)) < 0) return OO_DATE_SYNTAX;
    if (at(s, n, i, ':')) {
        i++;
        if ((sec = digits(s, n, &i, 2)) < 0) return OO_DATE_SYNTAX;
        has_sec = 1;
    }
    if (sep == ' ') {
        /* "YYYY-MM-DD HH:MM:SS", taken as UTC */
        if (!has_sec || i != n) return OO_DATE_SYNTAX;
    } else if (n - i == 4 && s[i] == ' ' &&
               ((s[i + 1] == 'G' && s[i + 2] == 'M' && s[i + 3] == 'T') ||
                (s[i + 1] == 'U' && s[i + 2] == 'T' && s[i + 3] == 'C'))) {
        /* the documented "... GMT" form (seconds optional) */
    } else {
        /* ISO 8601: seconds, optional fraction, then Z or an offset */
        if (!has_sec) return OO_DATE_SYNTAX;
        if (at(s, n, i, '.')) {
            size_t f0 = ++i;
            while (i < n && s[i] >= '0' && s[i] <= '9') i++;
            if (i == f0 || i - f0 > 9) return OO_DATE_SYNTAX;
        }
        if (at(s, n, i, 'Z') && i + 1 == n) {
            /* UTC */
        } else if (at(s, n, i, '+') || at(s, n, i, '-')) {
            int sign = s[i++] == '-' ? -1 : 1, oh, om;
            if ((oh = digits(s, n, &i, 2)) < 0) return OO_DATE_SYNTAX;
            if (at(s, n, i, ':')) i++;
            if ((om = digits(s, n, &i, 2)) < 0 || i != n) return OO_DATE_SYNTAX;
            if (oh > 23 || om > 59) {
                *why = "offset out of range";
                return OO_DATE_IMPOSSIBLE;
            }
            off = sign * (oh * 3600 + om * 60);
        } else {
            return OO_DATE_SYNTAX;
        }
    }
    if (M < 1 || M > 12) {
        *why = "month must be 01-12";
        return OO_DATE_IMPOSSIBLE;
    }
    if (D < 1 || (unsigned)D > days_in_month(Y, (unsigned)M)) {
        *why = "no such day in that month";
        return OO_DATE_IMPOSSIBLE;
    }
    if (h > 23) {
        *why = "hour must be 00-23";
        return OO_DATE_IMPOSSIBLE;
    }
    if (mi > 59) {
        *why = "minute must be 00-59";
        return OO_DATE_IMPOSSIBLE;
    }
    if (sec > 59) {
        *why = "second must be 00-59";
        return OO_DATE_IMPOSSIBLE;
    }
    t = days_from_civil(Y, (unsigned)M, (unsigned)D) * 86400 + h * 3600 + mi * 60 + sec - off;
    if (t < OO_DATE_MIN || t > OO_DATE_MAX) return OO_DATE_RANGE;
    *epoch = t;
    return OO_DATE_OK;
}

void oo_date_format(long long epoch, char out[24]) {
    long long days = epoch / 86400, y;
    int rem = (int)(epoch % 86400);
    unsigned m, d;
    int v[6], k;
    civil_from_days(days, &y, &m, &d);
    v[0] = (int)y;
    v[1] = (int)m;
    v[2] = (int)d;
    v[3] = rem / 3600;
    v[4] = rem / 60 % 60;
    v[5] = rem % 60;
    /* YYYY-MM-DDTHH:MM:SS GMT */
    out[0] = (char)('0' + v[0] / 1000);
    out[1] = (char)('0' + v[0] / 100 % 10);
    out[2] = (char)('0' + v[0] / 10 % 10);
    out[3] = (char)('0' + v[0] % 10);
    for (k = 1; k < 6; k++) {
        static const char seps[] = "--T::";
        out[1 + 3 * k] = seps[k - 1];
        out[2 + 3 * k] = (char)('0' + v[k] / 10);
        out[3 + 3 * k] = (char)('0' + v[k] % 10);
    }
    memcpy(out + 19, " GMT", 5);
}
