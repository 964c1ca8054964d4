#include "money.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ISO 4217 codes with a defined minor unit, sorted for bsearch. Active codes
 * plus codes withdrawn since 2010 that back-filled history still carries
 * (EEK, LTL, LVL, HRK, BYR, MRO, STD, VEF, CUC, SLL, ZWL, ANG). Metals,
 * funds without a minor unit and test codes (XAU, XDR, XTS, XXX...) are out:
 * nobody pays for a till receipt in them. */
static const struct {
    char code[4];
    signed char minor;
} currencies[] = {
    {"AED", 2}, {"AFN", 2}, {"ALL", 2}, {"AMD", 2}, {"ANG", 2}, {"AOA", 2}, {"ARS", 2}, {"AUD", 2},
    {"AWG", 2}, {"AZN", 2}, {"BAM", 2}, {"BBD", 2}, {"BDT", 2}, {"BGN", 2}, {"BHD", 3}, {"BIF", 0},
    {"BMD", 2}, {"BND", 2}, {"BOB", 2}, {"BOV", 2}, {"BRL", 2}, {"BSD", 2}, {"BTN", 2}, {"BWP", 2},
    {"BYN", 2}, {"BYR", 0}, {"BZD", 2}, {"CAD", 2}, {"CDF", 2}, {"CHE", 2}, {"CHF", 2}, {"CHW", 2},
    {"CLF", 4}, {"CLP", 0}, {"CNY", 2}, {"COP", 2}, {"COU", 2}, {"CRC", 2}, {"CUC", 2}, {"CUP", 2},
    {"CVE", 2}, {"CZK", 2}, {"DJF", 0}, {"DKK", 2}, {"DOP", 2}, {"DZD", 2}, {"EEK", 2}, {"EGP", 2},
    {"ERN", 2}, {"ETB", 2}, {"EUR", 2}, {"FJD", 2}, {"FKP", 2}, {"GBP", 2}, {"GEL", 2}, {"GHS", 2},
    {"GIP", 2}, {"GMD", 2}, {"GNF", 0}, {"GTQ", 2}, {"GYD", 2}, {"HKD", 2}, {"HNL", 2}, {"HRK", 2},
    {"HTG", 2}, {"HUF", 2}, {"IDR", 2}, {"ILS", 2}, {"INR", 2}, {"IQD", 3}, {"IRR", 2}, {"ISK", 0},
    {"JMD", 2}, {"JOD", 3}, {"JPY", 0}, {"KES", 2}, {"KGS", 2}, {"KHR", 2}, {"KMF", 0}, {"KPW", 2},
    {"KRW", 0}, {"KWD", 3}, {"KYD", 2}, {"KZT", 2}, {"LAK", 2}, {"LBP", 2}, {"LKR", 2}, {"LRD", 2},
    {"LSL", 2}, {"LTL", 2}, {"LVL", 2}, {"LYD", 3}, {"MAD", 2}, {"MDL", 2}, {"MGA", 2}, {"MKD", 2},
    {"MMK", 2}, {"MNT", 2}, {"MOP", 2}, {"MRO", 2}, {"MRU", 2}, {"MUR", 2}, {"MVR", 2}, {"MWK", 2},
    {"MXN", 2}, {"MXV", 2}, {"MYR", 2}, {"MZN", 2}, {"NAD", 2}, {"NGN", 2}, {"NIO", 2}, {"NOK", 2},
    {"NPR", 2}, {"NZD", 2}, {"OMR", 3}, {"PAB", 2}, {"PEN", 2}, {"PGK", 2}, {"PHP", 2}, {"PKR", 2},
    {"PLN", 2}, {"PYG", 0}, {"QAR", 2}, {"RON", 2}, {"RSD", 2}, {"RUB", 2}, {"RWF", 0}, {"SAR", 2},
    {"SBD", 2}, {"SCR", 2}, {"SDG", 2}, {"SEK", 2}, {"SGD", 2}, {"SHP", 2}, {"SLE", 2}, {"SLL", 2},
    {"SOS", 2}, {"SRD", 2}, {"SSP", 2}, {"STD", 2}, {"STN", 2}, {"SVC", 2}, {"SYP", 2}, {"SZL", 2},
    {"THB", 2}, {"TJS", 2}, {"TMT", 2}, {"TND", 3}, {"TOP", 2}, {"TRY", 2}, {"TTD", 2}, {"TWD", 2},
    {"TZS", 2}, {"UAH", 2}, {"UGX", 0}, {"USD", 2}, {"USN", 2}, {"UYI", 0}, {"UYU", 2}, {"UYW", 4},
    {"UZS", 2}, {"VED", 2}, {"VEF", 2}, {"VES", 2}, {"VND", 0}, {"VUV", 0}, {"WST", 2}, {"XAF", 0},
    {"XCD", 2}, {"XCG", 2}, {"XOF", 0}, {"XPF", 0}, {"YER", 2}, {"ZAR", 2}, {"ZMW", 2}, {"ZWG", 2},
    {"ZWL", 2},
};

int oo_currency_minor(const char code[3]) {
    size_t lo = 0, hi = sizeof(currencies) / sizeof(currencies[0]);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = memcmp(code, currencies[mid].code, 3);
        if (c == 0) return currencies[mid].minor;
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return -1;
}

static const long long pow10_tab[] = {1, 10, 100, 1000, 10000};

static oo_money_status check_max(long long amount, int minor, long long *out) {
    if (amount > OO_MONEY_MAX_MAJOR * pow10_tab[minor]) return OO_MONEY_TOO_LARGE;
    *out = amount;
    return OO_MONEY_OK;
}

/* Rounds the decimal digits[0..nd) with the point after `point` digits
 * (point may be <= 0 or > nd) to `minor` decimals, half away from zero. */
static oo_money_status round_digits(const char *digits, int nd, int point, int minor,
                                    long long *out) {
    long long v = 0;
    int keep = point + minor; /* digits that stay left of the rounding point */
    int i;
    if (keep > 17) return OO_MONEY_TOO_LARGE;
    for (i = 0; i < keep; i++) v = v * 10 + (i < nd && i >= 0 ? digits[i] - '0' : 0);
    if (keep >= 0 && keep < nd && digits[keep] >= '5') v++;
    return check_max(v, minor, out);
}

oo_money_status oo_money_from_integer(long long v, int minor, long long *out) {
    if (v < 0) return OO_MONEY_NEGATIVE;
    if (v > OO_MONEY_MAX_MAJOR) return OO_MONEY_TOO_LARGE;
    return check_max(v * pow10_tab[minor], minor, out);
}

oo_money_status oo_money_from_double(double v, int minor, long long *out) {
    double x, r, f;
    if (v != v || v == HUGE_VAL || v == -HUGE_VAL) return OO_MONEY_NOT_FINITE;
    if (v < 0) return OO_MONEY_NEGATIVE;
    if (v > (double)OO_MONEY_MAX_MAJOR) return OO_MONEY_TOO_LARGE;
    x = v * (double)pow10_tab[minor];
    /* Fast path: below 1e9 minor units the binary error is < 1e-6, so unless
     * the value sits within that of a half, plain rounding is exact. */
    if (x < 1e9) {
        r = floor(x);
        f = x - r;
        if (f < 0.499999 || f > 0.500001) {
            *out = (long long)r + (f > 0.5);
            return OO_MONEY_OK;
        }
    }
    {
        /* Slow path: recover the shortest decimal that reads back as v. */
        char tmp[40], digits[40];
        int prec, nd = 0, point = 0, seen_point = 0, exp10 = 0;
        const char *p;
        for (prec = 15; prec <= 17; prec++) {
            snprintf(tmp, sizeof tmp, "%.*e", prec - 1, v);
            if (strtod(tmp, NULL) == v) break;
        }
        /* tmp is d.ddddde[+-]xx */
        for (p = tmp; *p && *p != 'e'; p++) {
            if (*p == '.') {
                seen_point = 1;
                continue;
            }
            digits[nd++] = *p;
            if (!seen_point) point++;
        }
        if (*p == 'e') exp10 = atoi(p + 1);
        point += exp10;
        return round_digits(digits, nd, point, minor, out);
    }
}

oo_money_status oo_money_from_string(const char *s, size_t n, int minor, long long *out) {
    char digits[48];
    size_t i = 0;
    int nd = 0, point;
    if (n == 0 || n > 40) return n ? OO_MONEY_TOO_LARGE : OO_MONEY_SYNTAX;
    if (s[0] == '-' && n > 1) {
        for (i = 1; i < n && (s[i] >= '0' && s[i] <= '9'); i++)
            ;
        if (i > 1) return OO_MONEY_NEGATIVE;
        return OO_MONEY_SYNTAX;
    }
    while (i < n && s[i] == '0' && i + 1 < n && s[i + 1] != '.') i++; /* leading zeros */
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) digits[nd++] = s[i];
    if (nd == 0) return OO_MONEY_SYNTAX;
    point = nd;
    if (i < n) {
        if (s[i] != '.' || i + 1 == n) return OO_MONEY_SYNTAX;
        for (i++; i < n; i++) {
            if (s[i] < '0' || s[i] > '9') return OO_MONEY_SYNTAX;
            digits[nd++] = s[i];
        }
    }
    return round_digits(digits, nd, point, minor, out);
}

void oo_money_emit(oo_buf *b, long long amount, int minor) {
    long long scale = pow10_tab[minor];
    oo_buf_addint(b, amount / scale);
    if (minor > 0) {
        long long frac = amount % scale;
        char tmp[5];
        int i;
        for (i = minor - 1; i >= 0; i--) {
            tmp[i] = (char)('0' + frac % 10);
            frac /= 10;
        }
        oo_buf_addc(b, '.');
        oo_buf_add(b, tmp, (size_t)minor);
    }
}

/* ------------------------------------------------------------ till forms */

/* Currency symbols and the ISO codes they may stand for. Longer symbols
 * first where one starts another ("US$" before "$", "R$" before "R"). */
static const struct {
    const char *sym;
    const char *codes;
} symbols[] = {
    {"US$", "USD"},
    {"AU$", "AUD"},
    {"CA$", "CAD"},
    {"NZ$", "NZD"},
    {"HK$", "HKD"},
    {"MX$", "MXN"},
    {"kr.", "DKK ISK NOK SEK"},
    {"Rs.", "INR LKR NPR PKR"},
    {"Fr.", "CHF"},
    {"\xd0\xbb\xd0\xb2", "BGN"}, /* лв */
    {"A$", "AUD"},
    {"C$", "CAD"},
    {"S$", "SGD"},
    {"R$", "BRL"},
    {"kr", "DKK ISK NOK SEK"},
    {"K\xc4\x8d", "CZK"},
    {"z\xc5\x82", "PLN"},
    {"Ft", "HUF"},
    {"lei", "RON"},
    {"RM", "MYR"},
    {"Rp", "IDR"},
    {"Rs", "INR LKR NPR PKR"},
    {"\xc2\xa3", "GBP GIP FKP SHP EGP"}, /* £ */
    {"\xe2\x82\xac", "EUR"},             /* € */
    {"\xc2\xa5", "JPY CNY"},             /* ¥ */
    {"\xef\xbf\xa5", "JPY CNY"},         /* ￥ */
    {"\xe2\x82\xb9", "INR"},             /* ₹ */
    {"\xe2\x82\xa9", "KRW"},             /* ₩ */
    {"\xe2\x82\xbd", "RUB"},             /* ₽ */
    {"\xe2\x82\xba", "TRY"},             /* ₺ */
    {"\xe2\x82\xaa", "ILS"},             /* ₪ */
    {"\xe2\x82\xab", "VND"},             /* ₫ */
    {"\xe0\xb8\xbf", "THB"},             /* ฿ */
    {"\xe2\x82\xb1", "PHP"},             /* ₱ */
    {"\xe2\x82\xb4", "UAH"},             /* ₴ */
    {"\xe2\x82\xa6", "NGN"},             /* ₦ */
    {"$", "USD AUD CAD NZD HKD SGD MXN ARS CLP COP TWD BSD BBD BMD BZD FJD JMD KYD LRD NAD SBD "
          "SRD TTD XCD GYD UYU"},
    {"R", "ZAR"},
};

/* A blank at s[0..n): its byte length, or 0 (space, tab, U+00A0 no-break
 * space, U+2009 thin space, U+202F narrow no-break space). */
static size_t blank_len(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    if (n >= 1 && (u[0] == ' ' || u[0] == '\t')) return 1;
    if (n >= 2 && u[0] == 0xc2 && u[1] == 0xa0) return 2;
    if (n >= 3 && u[0] == 0xe2 && u[1] == 0x80 && (u[2] == 0x89 || u[2] == 0xaf)) return 3;
    return 0;
}

/* The blank ending at s[n-1]: its byte length, or 0. */
static size_t blank_len_back(const char *s, size_t n) {
    if (n >= 1 && blank_len(s + n - 1, 1)) return 1;
    if (n >= 2 && blank_len(s + n - 2, 2) == 2) return 2;
    if (n >= 3 && blank_len(s + n - 3, 3) == 3) return 3;
    return 0;
}

static int is_alpha(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
static char upper(char c) { return (char)(c >= 'a' && c <= 'z' ? c - 32 : c); }

/* Does the space-separated list `codes` name `currency`? */
static int names_currency(const char *codes, const char *currency) {
    const char *p;
    if (!currency) return 0;
    for (p = codes; *p; p += p[3] ? 4 : 3)
        if (memcmp(p, currency, 3) == 0) return 1;
    return 0;
}

/* A marker (symbol or ISO code) at the start (at_end = 0) or the end of
 * s[0..n): its length, and whether it names the currency; 0 when none.
 * An ISO code counts only as a whole word of three letters that is a
 * currency of our table. */
static size_t marker(const char *s, size_t n, int at_end, const char *currency, int *match) {
    size_t best = 0, i;
    for (i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
        size_t k = strlen(symbols[i].sym);
        const char *at = at_end ? s + n - k : s;
        if (k <= best || k > n || memcmp(at, symbols[i].sym, k) != 0) continue;
        /* a letter symbol ("kr", "R") is a word of its own */
        if (is_alpha(symbols[i].sym[0]) &&
            (at_end ? (k < n && is_alpha(at[-1])) : (k < n && is_alpha(at[k]))))
            continue;
        best = k;
        *match = names_currency(symbols[i].codes, currency);
    }
    if (n >= 3) {
        const char *at = at_end ? s + n - 3 : s;
        char code[3];
        int word = is_alpha(at[0]) && is_alpha(at[1]) && is_alpha(at[2]) &&
                   (n == 3 || !is_alpha(at_end ? at[-1] : at[3]));
        code[0] = upper(at[0]);
        code[1] = upper(at[1]);
        code[2] = upper(at[2]);
        if (word && best < 3 && oo_currency_minor(code) >= 0) {
            best = 3;
            *match = currency && memcmp(code, currency, 3) == 0;
        }
    }
    return best;
}

/* The digits of a till amount: `dec` is the decimal separator; the other
 * of '.' and ',', blanks and '\'' group thousands (one kind per amount,
 * groups of three after the first of one to three). */
static oo_money_status till_number(const char *s, size_t n, int minor, char dec, long long *out) {
    char digits[48], gsep[4];
    size_t i = 0, glen = 0;
    int nd = 0, point = -1, run = 0, groups = 0;
    char other = dec == ',' ? '.' : ',';
    while (i < n) {
        char c = s[i];
        size_t k;
        if (c >= '0' && c <= '9') {
            if (nd == 0 && c == '0' && point < 0 && i + 1 < n && s[i + 1] >= '0' &&
                s[i + 1] <= '9' && !groups) {
                i++; /* a leading zero */
                continue;
            }
            if (nd >= 40) return OO_MONEY_TOO_LARGE;
            digits[nd++] = c;
            run++;
            i++;
            continue;
        }
        if (point >= 0) return OO_MONEY_SYNTAX; /* only digits after the decimal separator */
        if (c == dec) {
            if (nd == 0) return OO_MONEY_SYNTAX;
            if (groups && run != 3) return OO_MONEY_GROUPING;
            point = nd;
            run = 0;
            i++;
            continue;
        }
        k = (c == other || c == '\'') ? 1 : blank_len(s + i, n - i);
        if (!k) return OO_MONEY_SYNTAX;
        if (run == 0 || (groups == 0 ? run > 3 : run != 3)) return OO_MONEY_GROUPING;
        if (glen && (k != glen || memcmp(gsep, s + i, k) != 0)) return OO_MONEY_GROUPING;
        memcpy(gsep, s + i, k);
        glen = k;
        groups++;
        run = 0;
        i += k;
    }
    if (nd == 0) return OO_MONEY_SYNTAX;
    if (point < 0) {
        if (groups && run != 3) return OO_MONEY_GROUPING;
        point = nd;
    } else if (nd == point) {
        return OO_MONEY_SYNTAX; /* "2," */
    }
    return round_digits(digits, nd, point, minor, out);
}

oo_money_status oo_money_from_till(const char *s, size_t n, int minor, const char currency[3],
                                   unsigned flags, long long *out, char found[16]) {
    size_t a = 0, b = n, k;
    int match = 0;
    if (n > 200) return OO_MONEY_TOO_LARGE;
    while (a < b && (k = blank_len(s + a, b - a)) != 0) a += k;
    while (b > a && (k = blank_len_back(s + a, b - a)) != 0) b -= k;
    if (a < b && s[a] == '-') return b - a > 1 ? OO_MONEY_NEGATIVE : OO_MONEY_SYNTAX;
    if (flags & OO_MONEY_SYMBOLS) {
        int at_end = 0;
        k = marker(s + a, b - a, 0, currency, &match);
        if (!k) {
            at_end = 1;
            k = marker(s + a, b - a, 1, currency, &match);
        }
        if (k) {
            if (!match) {
                if (found) {
                    size_t c = k < 15 ? k : 15;
                    memcpy(found, at_end ? s + b - k : s + a, c);
                    found[c] = '\0';
                }
                return OO_MONEY_OTHER_CURRENCY;
            }
            if (at_end) b -= k;
            else a += k;
            while (a < b && (k = blank_len(s + a, b - a)) != 0) a += k;
            while (b > a && (k = blank_len_back(s + a, b - a)) != 0) b -= k;
            if (a < b && s[a] == '-') return b - a > 1 ? OO_MONEY_NEGATIVE : OO_MONEY_SYNTAX;
        }
    }
    return till_number(s + a, b - a, minor, (flags & OO_MONEY_DECIMAL_COMMA) ? ',' : '.', out);
}
