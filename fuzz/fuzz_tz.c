/* libFuzzer target for csrc/payload/tz.c's parsers: TZif files, POSIX TZ rule
 * strings, and date formats with the values they read. The first input
 * byte picks the target; the rest is its input. A parsed file or rule is
 * then asked for offsets and local times, so the lookups run on whatever
 * the parsers accepted. tz.c is included to reach its static functions. */
#include "../csrc/payload/tz.c"

#include <stdint.h>

static void probe(const tz_zone *z) {
    static const long long ts[] = {-86400LL, 0, 1718544300LL, 2224656000LL, 253402300799LL};
    size_t k;
    int dst;
    long long t;
    long off;
    for (k = 0; k < sizeof ts / sizeof ts[0]; k++) {
        (void)zone_offset(z, ts[k], &dst);
        (void)local_to_utc(z, ts[k], &t, &off);
    }
}

static void fuzz_tzif(const uint8_t *p, size_t n) {
    tzif f;
    tz_zone z;
    int64_t times[512];
    unsigned char idx[512], isdst[TZ_MAX_TYPES];
    int32_t utoff[TZ_MAX_TYPES];
    int k;
    if (tzif_parse(p, n, &f) != NULL || f.ntimes > 512) return;
    memset(&z, 0, sizeof z);
    z.times = times;
    z.idx = idx;
    z.utoff = utoff;
    z.isdst = isdst;
    z.ntimes = f.ntimes;
    z.ntypes = f.ntypes;
    for (k = 0; k < f.ntimes; k++) {
        times[k] = f.tsize == 8 ? be64(f.times + 8 * k) : be32(f.times + 4 * k);
        idx[k] = f.idx[k];
    }
    for (k = 0; k < f.ntypes; k++) {
        utoff[k] = be32(f.types + 6 * k);
        isdst[k] = f.types[6 * k + 4];
    }
    if (f.footer[0]) z.has_rule = posix_rule(f.footer, &z.rule);
    probe(&z);
}

static void fuzz_rule(const uint8_t *p, size_t n) {
    char s[256];
    tz_zone z;
    int32_t utoff[1] = {0};
    unsigned char isdst[1] = {0};
    if (n >= sizeof s) n = sizeof s - 1;
    memcpy(s, p, n);
    s[n] = '\0';
    memset(&z, 0, sizeof z);
    z.utoff = utoff;
    z.isdst = isdst;
    z.ntypes = 1;
    if (!posix_rule(s, &z.rule)) return;
    z.has_rule = 1;
    probe(&z);
}

/* "format\nvalue" */
static void fuzz_format(const uint8_t *p, size_t n) {
    char fmt[128];
    const uint8_t *nl = memchr(p, '\n', n);
    size_t fl = nl ? (size_t)(nl - p) : n;
    fields f;
    char why[400];
    if (fl >= sizeof fmt) return;
    memcpy(fmt, p, fl);
    fmt[fl] = '\0';
    if (strlen(fmt) != fl || check_format(fmt) != NULL) return;
    if (nl) (void)try_format(fmt, (const char *)nl + 1, n - fl - 1, &f, why, sizeof why);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    switch (data[0] % 3) {
    case 0: fuzz_tzif(data + 1, size - 1); break;
    case 1: fuzz_rule(data + 1, size - 1); break;
    default: fuzz_format(data + 1, size - 1); break;
    }
    return 0;
}
