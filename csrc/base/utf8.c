#include "utf8.h"

size_t oo_utf8_check(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            /* ASCII fast path: 8 bytes at a time when aligned enough */
            while (i + 8 <= n) {
                unsigned long long w;
                memcpy(&w, s + i, 8);
                if (w & 0x8080808080808080ULL) break;
                i += 8;
            }
            if (i < n && s[i] < 0x80) i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return i + 1;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            unsigned c1;
            if (i + 2 >= n) return i + 1;
            c1 = s[i + 1];
            if ((c1 & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80) return i + 1;
            if (c == 0xE0 && c1 < 0xA0) return i + 1; /* overlong */
            if (c == 0xED && c1 > 0x9F) return i + 1; /* UTF-16 surrogate */
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            unsigned c1;
            if (i + 3 >= n) return i + 1;
            c1 = s[i + 1];
            if ((c1 & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 || (s[i + 3] & 0xC0) != 0x80)
                return i + 1;
            if (c == 0xF0 && c1 < 0x90) return i + 1; /* overlong */
            if (c == 0xF4 && c1 > 0x8F) return i + 1; /* > U+10FFFF */
            i += 4;
        } else {
            return i + 1;
        }
    }
    return 0;
}

/* 0: copy as is; 'u': \u00XX; other: the character after the backslash */
static const char escape_table[256] = {
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'b', 't', 'n', 'u', 'f', 'r', 'u', 'u', 'u',  'u', 'u',
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 0,   0,   '"', 0,    0,   0,
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,    0,   0,
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,    0,   0,
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   '\\', 0,   0,
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,    0,   0,
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   'u',
};

void oo_json_string(oo_buf *b, const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    static const char hex[] = "0123456789abcdef";
    size_t i, start = 0;
    char *out;
    /* worst case: every byte becomes \u00XX */
    if (!oo_buf_reserve(b, n * 6 + 2)) return;
    out = b->data + b->len;
    *out++ = '"';
    for (i = 0; i < n; i++) {
        char e = escape_table[s[i]];
        if (!e) continue;
        memcpy(out, s + start, i - start);
        out += i - start;
        start = i + 1;
        *out++ = '\\';
        if (e == 'u') {
            *out++ = 'u';
            *out++ = '0';
            *out++ = '0';
            *out++ = hex[s[i] >> 4];
            *out++ = hex[s[i] & 15];
        } else {
            *out++ = e;
        }
    }
    memcpy(out, s + start, n - start);
    out += n - start;
    *out++ = '"';
    b->len = (size_t)(out - b->data);
}
