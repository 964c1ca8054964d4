/* Local order dates to UTC, for tills that write "16/06/2024 14:25" in
 * local time: a strptime-like reader for a fixed set of directives, and
 * time zones read from the system's TZif files (RFC 8536: versions 1 to 4,
 * with the POSIX TZ footer that gives the rule after the last transition;
 * the "slim" files zic writes by default hold little else).
 *
 * Lua (the CLI's --date-format / --timezone; optimizely.offline.cli.dates):
 *   core.tz_load(name) -> zone | nil, err {kind = "config", message}
 *       name like "Europe/London", read from $TZDIR or /usr/share/zoneinfo;
 *       zone:offset(t) -> seconds east of UTC, is_dst; zone:name()
 *   core.date_check_format(fmt) -> true | nil, err {kind = "config", message}
 *   core.date_convert(s, fmt|nil, zone|nil) -> "YYYY-MM-DDTHH:MM:SS GMT", warning|nil
 *       | nil, err {kind = "validation", message, code ("format", "impossible",
 *         "nonexistent", "range")}
 *
 * A local time the clocks skipped (spring forward) is refused ("nonexistent"):
 * no till can have sold at that time, so the clock or the export is wrong.
 * A local time that happened twice (fall back) is taken as the earlier of
 * the two, with a warning. */
#define _POSIX_C_SOURCE 200809L
#include "core.h"
#include "date.h"
#include "tz.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define ZONE_MT "optimizely.offline.zone"
#define TZ_MAX_FILE (1 << 20)
#define TZ_MAX_TIMES 65536
#define TZ_MAX_TYPES 256
#define TZ_MAX_OFFSET (26 * 3600)

/* ------------------------------------------------------------ the zone */

typedef struct {
    char kind; /* 'J': Julian day 1..365 without Feb 29; 'N': 0..365; 'M': month.week.day */
    int m, w, d, n;
    long secs; /* local time of day of the change (may be negative or > 24h) */
} tz_date;

typedef struct {
    long std_off, dst_off; /* seconds east of UTC */
    int has_dst;
    tz_date start, end;
} tz_rule;

typedef struct tz_zone {
    char name[256];
    int ntimes, ntypes, has_rule;
    tz_rule rule;
    int64_t *times;       /* transition instants, ascending */
    unsigned char *idx;   /* type in effect from times[i] */
    int32_t *utoff;       /* per type: seconds east of UTC */
    unsigned char *isdst; /* per type */
} tz_zone;

static int64_t be64(const unsigned char *p) {
    uint64_t v = 0;
    int i;
    for (i = 0; i < 8; i++) v = (v << 8) | p[i];
    return (int64_t)v;
}

static int32_t be32(const unsigned char *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                     p[3]);
}

static int is_leap(long long y) { return oo_days_in_month(y, 2) == 29; }

/* Days since the epoch of the day a POSIX rule names in year y. */
static long long rule_day(const tz_date *d, long long y) {
    long long jan1 = oo_days_from_civil(y, 1, 1), first;
    int wd, day, dim;
    if (d->kind == 'J') return jan1 + d->n - 1 + (is_leap(y) && d->n >= 60);
    if (d->kind == 'N') return jan1 + d->n;
    first = oo_days_from_civil(y, (unsigned)d->m, 1);
    wd = (int)(((first % 7) + 7 + 4) % 7); /* 1970-01-01 was a Thursday (4) */
    day = 1 + (d->d - wd + 7) % 7 + (d->w - 1) * 7;
    dim = (int)oo_days_in_month(y, (unsigned)d->m);
    while (day > dim) day -= 7;
    return first + day - 1;
}

static long long floor_div(long long a, long long b) {
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* Offset in effect at t under the POSIX rule (after the last transition). */
static long rule_offset(const tz_rule *r, long long t, int *isdst) {
    long long when[8], y0;
    int dst[8], n = 0, i, j;
    long off = r->std_off;
    *isdst = 0;
    if (!r->has_dst) return off;
    y0 = 1970 + floor_div(t, 31556952); /* the mean Gregorian year: off by one at most */
    for (i = -2; i <= 1; i++) {
        long long y = y0 + i;
        when[n] = rule_day(&r->start, y) * 86400 + r->start.secs -
                  r->std_off; /* given in standard time */
        dst[n++] = 1;
        when[n] =
            rule_day(&r->end, y) * 86400 + r->end.secs - r->dst_off; /* given in summer time */
        dst[n++] = 0;
    }
    for (i = 1; i < n; i++) /* insertion sort: 8 entries */
        for (j = i; j > 0 && when[j] < when[j - 1]; j--) {
            long long tw = when[j];
            int td = dst[j];
            when[j] = when[j - 1];
            dst[j] = dst[j - 1];
            when[j - 1] = tw;
            dst[j - 1] = td;
        }
    for (i = 0; i < n && when[i] <= t; i++) *isdst = dst[i];
    return *isdst ? r->dst_off : r->std_off;
}

static long zone_offset(const tz_zone *z, long long t, int *isdst) {
    int lo, hi, type;
    if (z->ntimes == 0 || t >= z->times[z->ntimes - 1]) {
        if (z->has_rule) return rule_offset(&z->rule, t, isdst);
        type = z->ntimes == 0 ? 0 : z->idx[z->ntimes - 1];
    } else if (t < z->times[0]) {
        type = 0; /* RFC 8536: before the first transition, type 0 */
    } else {
        lo = 0;
        hi = z->ntimes - 1; /* times[lo] <= t < times[hi] */
        while (hi - lo > 1) {
            int mid = lo + (hi - lo) / 2;
            if (z->times[mid] <= t) lo = mid;
            else hi = mid;
        }
        type = z->idx[lo];
    }
    *isdst = z->isdst[type];
    return z->utoff[type];
}

/* ------------------------------------------------------ POSIX TZ strings */

static const char *posix_name(const char *s) {
    const char *b;
    if (*s == '<') {
        for (s++; *s && *s != '>'; s++) {}
        return *s == '>' ? s + 1 : NULL;
    }
    for (b = s; (*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z'); s++) {}
    return s - b >= 3 ? s : NULL;
}

static const char *posix_num(const char *s, int lo, int hi, int *v) {
    int n = 0, k = 0;
    while (*s >= '0' && *s <= '9' && k < 4) {
        n = n * 10 + (*s++ - '0');
        k++;
    }
    if (k == 0 || n < lo || n > hi) return NULL;
    *v = n;
    return s;
}

/* [+-]hh[:mm[:ss]], hours up to 167 (RFC 8536 extension). */
static const char *posix_time(const char *s, long *secs) {
    int sign = 1, h, m = 0, sec = 0;
    if (*s == '+' || *s == '-') sign = *s++ == '-' ? -1 : 1;
    if (!(s = posix_num(s, 0, 167, &h))) return NULL;
    if (*s == ':') {
        if (!(s = posix_num(s + 1, 0, 59, &m))) return NULL;
        if (*s == ':' && !(s = posix_num(s + 1, 0, 59, &sec))) return NULL;
    }
    *secs = sign * (h * 3600L + m * 60L + sec);
    return s;
}

static const char *posix_date(const char *s, tz_date *d) {
    d->secs = 7200; /* 02:00 unless /time says otherwise */
    if (*s == 'M') {
        d->kind = 'M';
        if (!(s = posix_num(s + 1, 1, 12, &d->m)) || *s != '.') return NULL;
        if (!(s = posix_num(s + 1, 1, 5, &d->w)) || *s != '.') return NULL;
        if (!(s = posix_num(s + 1, 0, 6, &d->d))) return NULL;
    } else if (*s == 'J') {
        d->kind = 'J';
        if (!(s = posix_num(s + 1, 1, 365, &d->n))) return NULL;
    } else {
        d->kind = 'N';
        if (!(s = posix_num(s, 0, 365, &d->n))) return NULL;
    }
    if (*s == '/' && !(s = posix_time(s + 1, &d->secs))) return NULL;
    return s;
}

/* "GMT0BST,M3.5.0/1,M10.5.0" -> rule; 0 when it is not one we can read. */
static int posix_rule(const char *s, tz_rule *r) {
    long off;
    memset(r, 0, sizeof *r);
    if (!(s = posix_name(s)) || !(s = posix_time(s, &off))) return 0;
    r->std_off = -off; /* POSIX counts west of Greenwich */
    if (*s == '\0') return 1;
    if (!(s = posix_name(s))) return 0;
    r->has_dst = 1;
    r->dst_off = r->std_off + 3600;
    if (*s && *s != ',') {
        if (!(s = posix_time(s, &off))) return 0;
        r->dst_off = -off;
    }
    if (*s == '\0') { /* no rule given: the POSIX default, the US rule */
        s = ",M3.2.0,M11.1.0";
    }
    if (*s != ',' || !(s = posix_date(s + 1, &r->start))) return 0;
    if (*s != ',' || !(s = posix_date(s + 1, &r->end))) return 0;
    return *s == '\0';
}

/* ---------------------------------------------------------- TZif files */

typedef struct {
    int ntimes, ntypes, tsize; /* tsize: 4 (v1 block) or 8 */
    const unsigned char *times, *idx, *types;
    char footer[128];
} tzif;

static const char *tzif_block(const unsigned char *p, size_t n, size_t at, int tsize, tzif *f,
                              size_t *end) {
    uint32_t isut, isstd, leap, times, types, chars;
    size_t need;
    if (n < at + 44 || memcmp(p + at, "TZif", 4) != 0) return "is not a TZif file";
    isut = (uint32_t)be32(p + at + 20);
    isstd = (uint32_t)be32(p + at + 24);
    leap = (uint32_t)be32(p + at + 28);
    times = (uint32_t)be32(p + at + 32);
    types = (uint32_t)be32(p + at + 36);
    chars = (uint32_t)be32(p + at + 40);
    if (leap) return "has leap seconds (a right/ zone): use the zone without them";
    if (types < 1 || types > TZ_MAX_TYPES || times > TZ_MAX_TIMES || chars > 65536)
        return "is corrupt (counts)";
    if ((isut && isut != types) || (isstd && isstd != types))
        return "is corrupt (indicator counts)";
    need = (size_t)times * (size_t)(tsize + 1) + (size_t)types * 6 + chars + isstd + isut;
    if (n - (at + 44) < need) return "is truncated";
    f->ntimes = (int)times;
    f->ntypes = (int)types;
    f->tsize = tsize;
    f->times = p + at + 44;
    f->idx = f->times + (size_t)times * (size_t)tsize;
    f->types = f->idx + times;
    *end = at + 44 + need;
    return NULL;
}

static const char *tzif_parse(const unsigned char *p, size_t n, tzif *f) {
    size_t end, i;
    const char *why;
    int k;
    f->footer[0] = '\0';
    if ((why = tzif_block(p, n, 0, 4, f, &end)) != NULL) return why;
    if (p[4] >= '2') {
        if ((why = tzif_block(p, n, end, 8, f, &end)) != NULL) return why;
        if (end < n) {
            if (p[end] != '\n') return "is corrupt (footer)";
            for (i = end + 1, k = 0; i < n && p[i] != '\n'; i++) {
                if (k + 1 >= (int)sizeof f->footer) return "has a footer too long to read";
                f->footer[k++] = (char)p[i];
            }
            if (i >= n) return "is corrupt (footer)";
            f->footer[k] = '\0';
        }
    }
    for (k = 0; k < f->ntimes; k++) {
        if (f->idx[k] >= f->ntypes) return "is corrupt (type index)";
        if (k > 0) {
            int64_t a = f->tsize == 8 ? be64(f->times + 8 * (k - 1)) : be32(f->times + 4 * (k - 1));
            int64_t b = f->tsize == 8 ? be64(f->times + 8 * k) : be32(f->times + 4 * k);
            if (b <= a) return "is corrupt (transitions out of order)";
        }
    }
    for (k = 0; k < f->ntypes; k++) {
        int32_t off = be32(f->types + 6 * k);
        if (off <= -TZ_MAX_OFFSET || off >= TZ_MAX_OFFSET) return "is corrupt (offset)";
        if (f->types[6 * k + 4] > 1) return "is corrupt (dst flag)";
    }
    return NULL;
}

/* A zone name names a file under the zone directory, nothing else: letters,
 * digits, '_', '+', '-' in '/'-separated parts, none of them "." or "..". */
static int valid_name(const char *s, size_t n) {
    size_t i, part = 0;
    if (n == 0 || n >= 256) return 0;
    for (i = 0; i <= n; i++) {
        char c = i < n ? s[i] : '/';
        if (c == '/') {
            if (part == 0) return 0;
            part = 0;
        } else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '_' || c == '+' || c == '-' || c == '.') {
            if (c == '.' && (part == 0 || s[i - 1] == '.')) return 0; /* no ".", "..", ".x" */
            part++;
        } else {
            return 0;
        }
    }
    return 1;
}

/* nil, {kind = "config", message} (core.h: oo_push_error) */
static int push_fail(lua_State *L, const char *fmt, const char *a, const char *b) {
    return oo_push_errorf(L, "config", fmt, a, b);
}

/*** core.tz_load(name) -> zone | nil, err {kind = "config", message} */
static int l_tz_load(lua_State *L) {
    size_t n, size, need;
    const char *name = luaL_checklstring(L, 1, &n);
    const char *dir = getenv("TZDIR"), *why;
    char path[1024];
    struct stat st;
    unsigned char *data;
    FILE *fh;
    tzif f;
    tz_zone *z;
    char *tail;
    int k;
    if (!valid_name(name, n))
        return push_fail(L, "%s is not a time zone name like Europe/London%s", name, "");
    if (!dir || !*dir) dir = "/usr/share/zoneinfo";
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return push_fail(L, "unknown time zone %s (no file %s)", name, path);
    if (st.st_size > TZ_MAX_FILE) return push_fail(L, "time zone file %s is too large%s", path, "");
    size = (size_t)st.st_size;
    data = (unsigned char *)lua_newuserdata(L, size + 1); /* scratch: collected with the call */
    fh = fopen(path, "rb");
    if (!fh) return push_fail(L, "cannot read time zone file %s%s", path, "");
    size = fread(data, 1, size, fh);
    fclose(fh);
    if ((why = tzif_parse(data, size, &f)) != NULL)
        return push_fail(L, "time zone file %s %s", path, why);
    need = sizeof(tz_zone) + (size_t)f.ntimes * 9 + (size_t)f.ntypes * 5 + 8;
    z = (tz_zone *)lua_newuserdata(L, need);
    memset(z, 0, sizeof *z);
    memcpy(z->name, name, n + 1);
    tail = (char *)(z + 1);
    tail += (8 - ((uintptr_t)tail & 7)) & 7;
    z->times = (int64_t *)(void *)tail;
    z->utoff = (int32_t *)(void *)(tail + (size_t)f.ntimes * 8);
    z->idx = (unsigned char *)(z->utoff + f.ntypes);
    z->isdst = z->idx + f.ntimes;
    z->ntimes = f.ntimes;
    z->ntypes = f.ntypes;
    for (k = 0; k < f.ntimes; k++) {
        z->times[k] = f.tsize == 8 ? be64(f.times + 8 * k) : be32(f.times + 4 * k);
        z->idx[k] = f.idx[k];
    }
    for (k = 0; k < f.ntypes; k++) {
        z->utoff[k] = be32(f.types + 6 * k);
        z->isdst[k] = f.types[6 * k + 4];
    }
    if (f.footer[0]) {
        if (!posix_rule(f.footer, &z->rule))
            return push_fail(L, "time zone file %s has a rule we cannot read: %s", path, f.footer);
        z->has_rule = 1;
    }
    oo_setmetatable(L, ZONE_MT);
    return 1;
}

static tz_zone *check_zone(lua_State *L, int i) {
    return (tz_zone *)luaL_checkudata(L, i, ZONE_MT);
}

const tz_zone *oo_tz_check(lua_State *L, int idx) { return check_zone(L, idx); }

long oo_tz_offset(const tz_zone *z, long long t) {
    int dst;
    return zone_offset(z, t, &dst);
}

/*** zone:offset(t) -> seconds east of UTC, is_dst */
static int l_zone_offset(lua_State *L) {
    tz_zone *z = check_zone(L, 1);
    lua_Number t = luaL_checknumber(L, 2);
    int dst;
    long off = zone_offset(z, (long long)t, &dst);
    lua_pushinteger(L, (lua_Integer)off);
    lua_pushboolean(L, dst);
    return 2;
}

static int l_zone_name(lua_State *L) {
    lua_pushstring(L, check_zone(L, 1)->name);
    return 1;
}

static int l_zone_tostring(lua_State *L) {
    lua_pushfstring(L, "zone %s", check_zone(L, 1)->name);
    return 1;
}

/* ------------------------------------------------------- date formats */

typedef struct {
    int Y, M, D, h, mi, s, I, pm, has_I, has_p, has_off;
    long off;
} fields;

typedef struct {
    const char *s;
    size_t n, i;
    char why[96];
} input;

static const char *const months[] = {"january",   "february", "march",    "april",
                                     "may",       "june",     "july",     "august",
                                     "september", "october",  "november", "december"};
static const char *const days[] = {"sunday",   "monday", "tuesday", "wednesday",
                                   "thursday", "friday", "saturday"};

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

static int expect(input *in, const char *what) {
    snprintf(in->why, sizeof in->why, "expected %s at character %zu", what, in->i + 1);
    return 0;
}

static int read_digits(input *in, int lo, int hi, int *v, const char *what) {
    int k = 0, n = 0;
    while (k < hi && in->i < in->n && in->s[in->i] >= '0' && in->s[in->i] <= '9') {
        n = n * 10 + (in->s[in->i++] - '0');
        k++;
    }
    if (k < lo) {
        in->i -= (size_t)k;
        return expect(in, what);
    }
    *v = n;
    return 1;
}

/* An English name (full or its first three letters), case-insensitive. */
static int read_name(input *in, const char *const *names, int count, int *v, const char *what) {
    int k;
    for (k = 0; k < count; k++) {
        size_t len = strlen(names[k]), j, m = 0;
        for (j = 0;
             j < len && in->i + j < in->n && lower((unsigned char)in->s[in->i + j]) == names[k][j];
             j++)
            m++;
        if (m == len || m == 3) {
            /* "Mar" must not swallow the start of "March": take the full name when it is there */
            in->i += m == len ? len : 3;
            *v = k;
            return 1;
        }
    }
    return expect(in, what);
}

static int read_offset(input *in, fields *f) {
    int sign, h, m = 0;
    if (in->i < in->n && in->s[in->i] == 'Z') {
        in->i++;
        f->has_off = 1;
        f->off = 0;
        return 1;
    }
    if (in->i >= in->n || (in->s[in->i] != '+' && in->s[in->i] != '-'))
        return expect(in, "a UTC offset like +01:00 or Z (%z)");
    sign = in->s[in->i++] == '-' ? -1 : 1;
    if (!read_digits(in, 2, 2, &h, "a UTC offset like +01:00 (%z)")) return 0;
    if (in->i < in->n && in->s[in->i] == ':') in->i++;
    if (in->i < in->n && in->s[in->i] >= '0' && in->s[in->i] <= '9' &&
        !read_digits(in, 2, 2, &m, "the minutes of a UTC offset (%z)"))
        return 0;
    if (h > 23 || m > 59) {
        snprintf(in->why, sizeof in->why, "UTC offset out of range");
        return 0;
    }
    f->has_off = 1;
    f->off = sign * (h * 3600L + m * 60L);
    return 1;
}

static int match(const char *fmt, input *in, fields *f, int depth);

static int directive(char c, input *in, fields *f, int depth) {
    int v;
    switch (c) {
    case 'Y': return read_digits(in, 4, 4, &f->Y, "a 4-digit year (%Y)");
    case 'y':
        if (!read_digits(in, 2, 2, &v, "a 2-digit year (%y)")) return 0;
        f->Y = v < 69 ? 2000 + v : 1900 + v; /* POSIX: 69-99 are 1969-1999 */
        return 1;
    case 'm': return read_digits(in, 1, 2, &f->M, "a month number (%m)");
    case 'e':
        if (in->i < in->n && in->s[in->i] == ' ') in->i++;
        /* fall through */
    case 'd': return read_digits(in, 1, 2, &f->D, "a day of the month (%d)");
    case 'H': return read_digits(in, 1, 2, &f->h, "an hour 00-23 (%H)");
    case 'I': f->has_I = 1; return read_digits(in, 1, 2, &f->I, "an hour 1-12 (%I)");
    case 'M': return read_digits(in, 2, 2, &f->mi, "2-digit minutes (%M)");
    case 'S': return read_digits(in, 2, 2, &f->s, "2-digit seconds (%S)");
    case 'f': return read_digits(in, 1, 9, &v, "fractions of a second (%f)");
    case 'p': {
        char a = in->i < in->n ? (char)lower((unsigned char)in->s[in->i]) : 0;
        char b = in->i + 1 < in->n ? (char)lower((unsigned char)in->s[in->i + 1]) : 0;
        if ((a != 'a' && a != 'p') || b != 'm') return expect(in, "AM or PM (%p)");
        f->has_p = 1;
        f->pm = a == 'p';
        in->i += 2;
        return 1;
    }
    case 'b':
    case 'B':
    case 'h':
        if (!read_name(in, months, 12, &v, "an English month name (%b)")) return 0;
        f->M = v + 1;
        return 1;
    case 'a':
    case 'A': return read_name(in, days, 7, &v, "an English day name (%a)");
    case 'z': return read_offset(in, f);
    case 'T': return match("%H:%M:%S", in, f, depth + 1);
    case 'R': return match("%H:%M", in, f, depth + 1);
    case 'F': return match("%Y-%m-%d", in, f, depth + 1);
    case '%':
        if (in->i < in->n && in->s[in->i] == '%') {
            in->i++;
            return 1;
        }
        return expect(in, "'%'");
    default: return 0; /* refused by check_format first */
    }
}

static int match(const char *fmt, input *in, fields *f, int depth) {
    for (; *fmt; fmt++) {
        if (*fmt == '%') {
            if (!directive(*++fmt, in, f, depth)) return 0;
        } else if (*fmt == ' ') {
            /* a space in the format: one or more spaces or tabs */
            size_t i0 = in->i;
            while (in->i < in->n && (in->s[in->i] == ' ' || in->s[in->i] == '\t')) in->i++;
            if (in->i == i0) return expect(in, "a space");
        } else if (in->i < in->n && in->s[in->i] == *fmt) {
            in->i++;
        } else {
            char what[8];
            snprintf(what, sizeof what, "'%c'", *fmt);
            return expect(in, what);
        }
    }
    return 1;
}

static const char *check_format(const char *fmt) {
    int y = 0, m = 0, d = 0, H = 0, I = 0, p = 0;
    const char *s;
    if (!*fmt) return "is empty";
    for (s = fmt; *s; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return "contains a control character";
        if (*s != '%') continue;
        switch (*++s) {
        case 'Y':
        case 'y': y++; break;
        case 'm':
        case 'b':
        case 'B':
        case 'h': m++; break;
        case 'd':
        case 'e': d++; break;
        case 'F':
            y++;
            m++;
            d++;
            break;
        case 'H':
        case 'T':
        case 'R': H++; break;
        case 'I': I++; break;
        case 'p': p++; break;
        case 'M':
        case 'S':
        case 'f':
        case 'a':
        case 'A':
        case 'z':
        case '%': break;
        case '\0': return "ends with a lone %";
        default:
            return "has an unknown directive (known: %Y %y %m %d %e %b %B %H %I %p %M %S %f %z %a "
                   "%F %T %R %%)";
        }
    }
    if (y != 1 || m != 1 || d != 1)
        return "must name the year (%Y or %y), the month (%m or %b) and the day (%d) once each";
    if (H > 1 || I > 1 || (H && I)) return "must give the hour once (%H, or %I with %p)";
    if ((I > 0) != (p > 0)) return "needs %I and %p together (12-hour clock)";
    return NULL;
}

/*** core.date_check_format(fmt) -> true | nil, err {kind = "config", message} */
static int l_date_check_format(lua_State *L) {
    const char *why = check_format(luaL_checkstring(L, 1));
    if (why) return oo_push_errorf(L, "config", "%s", why);
    lua_pushboolean(L, 1);
    return 1;
}

/* nil, {kind = "validation", message, code = why ("format", "impossible",
 * "nonexistent", "range"), retryable = false} (core.h: oo_push_error) */
static int push_err(lua_State *L, const char *why, const char *msg) {
    oo_error err = {"validation", NULL, 0, NULL, 0, 0};
    err.message = msg;
    err.code = why;
    return oo_push_error(L, &err);
}

static void offset_text(char *out, size_t cap, long off) {
    int a = (int)(off < 0 ? -off : off) % TZ_MAX_OFFSET;
    snprintf(out, cap, "UTC%c%02d:%02d", off < 0 ? '-' : '+', a / 3600, a / 60 % 60);
}

/* Wall-clock seconds L in zone z -> UTC. 0 ok, 1 ambiguous (earlier
 * taken, *other = the later offset), -1 nonexistent. */
static int local_to_utc(const tz_zone *z, long long L, long long *t, long *off_used) {
    static const long long probes[] = {-2 * 86400LL, -86400LL, 0, 86400LL, 2 * 86400LL};
    long offs[5], found[5];
    int noffs = 0, nfound = 0, k, j, dst;
    for (k = 0; k < 5; k++) {
        long o = zone_offset(z, L + probes[k], &dst);
        for (j = 0; j < noffs && offs[j] != o; j++) {}
        if (j == noffs) offs[noffs++] = o;
    }
    for (k = 0; k < noffs; k++)
        if (zone_offset(z, L - offs[k], &dst) == offs[k]) found[nfound++] = offs[k];
    if (nfound == 0) return -1;
    /* the earlier instant has the larger offset */
    for (k = 1; k < nfound; k++)
        if (found[k] > found[0]) {
            long x = found[0];
            found[0] = found[k];
            found[k] = x;
        }
    *off_used = found[0];
    *t = L - found[0];
    return nfound > 1;
}

static int try_format(const char *fmt, const char *s, size_t n, fields *f, char *why,
                      size_t whycap) {
    input in;
    in.s = s;
    in.n = n;
    in.i = 0;
    in.why[0] = '\0';
    memset(f, 0, sizeof *f);
    if (match(fmt, &in, f, 0)) {
        if (in.i == n) return 1;
        snprintf(in.why, sizeof in.why, "unexpected text at character %zu", in.i + 1);
    }
    snprintf(why, whycap, "%s", in.why);
    return 0;
}

/*** core.date_convert(s, fmt|nil, zone|nil) -> documented form, warning|nil
 *   | nil, err {kind = "validation", message, code} */
static int l_date_convert(lua_State *L) {
    static const char *const local_forms[] = {"%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S",
                                              "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", NULL};
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n), *fmt = luaL_optstring(L, 2, NULL), *why;
    tz_zone *z = lua_isnoneornil(L, 3) ? NULL : check_zone(L, 3);
    fields f;
    char msg[400], out[24];
    long long local, t;
    long off = 0;
    int ok = 0, k, amb = 0;
    if (fmt) {
        if ((why = check_format(fmt)) != NULL) return luaL_argerror(L, 2, why);
        ok = try_format(fmt, s, n, &f, msg, sizeof msg);
    } else {
        for (k = 0; local_forms[k] && !ok; k++)
            ok = try_format(local_forms[k], s, n, &f, msg, sizeof msg);
        if (!ok) snprintf(msg, sizeof msg, "not a local date and time like 2024-06-16 14:25:00");
    }
    if (!ok) {
        /* already absolute (the documented form, Z or an offset): keep the instant, so a
         * rejects file written after the conversion can be sent again as it is */
        const char *w2;
        if (n > 10 && s[10] == 'T' && oo_date_parse(s, n, &t, &w2) == OO_DATE_OK) goto done;
        return push_err(L, "format", msg);
    }
    if (f.has_I) {
        if (f.I < 1 || f.I > 12) return push_err(L, "impossible", "hour must be 1-12 with %p");
        f.h = f.I % 12 + (f.pm ? 12 : 0);
    }
    if (f.M < 1 || f.M > 12) return push_err(L, "impossible", "month must be 01-12");
    if (f.Y < 1 || f.D < 1 || (unsigned)f.D > oo_days_in_month(f.Y, (unsigned)f.M))
        return push_err(L, "impossible", "no such day in that month");
    if (f.h > 23) return push_err(L, "impossible", "hour must be 00-23");
    if (f.mi > 59) return push_err(L, "impossible", "minute must be 00-59");
    if (f.s > 59) return push_err(L, "impossible", "second must be 00-59");
    local = oo_days_from_civil(f.Y, (unsigned)f.M, (unsigned)f.D) * 86400 + f.h * 3600L +
            f.mi * 60L + f.s;
    if (f.has_off || !z) {
        t = local - f.off;
    } else {
        amb = local_to_utc(z, local, &t, &off);
        if (amb < 0) {
            snprintf(msg, sizeof msg, "does not exist in %s (the clocks went forward past it)",
                     z->name);
            return push_err(L, "nonexistent", msg);
        }
    }
    if (t < OO_DATE_MIN || t > OO_DATE_MAX)
        return push_err(L, "range", "must be between 1970 and 9999");
done:
    oo_date_format(t, out);
    lua_pushlstring(L, out, 23);
    if (amb > 0) {
        char o[32];
        offset_text(o, sizeof o, off);
        snprintf(msg, sizeof msg,
                 "happened twice in %s (the clocks went back): took the earlier, %s", z->name, o);
        lua_pushstring(L, msg);
        return 2;
    }
    return 1;
}

void oo_tz_register(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"offset", l_zone_offset}, {"name", l_zone_name}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"tz_load", l_tz_load},
                                     {"date_check_format", l_date_check_format},
                                     {"date_convert", l_date_convert},
                                     {NULL, NULL}};
    oo_newclass(L, ZONE_MT, methods, NULL, NULL, l_zone_tostring);
    oo_setfuncs(L, funcs, 0);
}
