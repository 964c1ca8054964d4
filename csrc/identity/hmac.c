/* Pseudonymised user ids (see hmac.h), the part without Lua or OpenSSL:
 * the one e-mail rule and its normalisation, and the encoding of a mac as
 * lower-case hex or unpadded base64url, possibly truncated. The keyed
 * HMAC-SHA256 (OpenSSL's EVP_MAC) and the Lua objects are l_hmac.c. */
#include "hmac.h"
#include "utf8.h"

#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------ e-mail */

static int is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

int oo_email_check(const char *s, size_t n, char *why, size_t cap) {
    size_t i, at = 0, ats = 0, bad;
    if (n == 0) {
        snprintf(why, cap, "is empty");
        return -1;
    }
    if (n > OO_EMAIL_MAX) {
        snprintf(why, cap, "is %zu bytes long, more than %d", n, OO_EMAIL_MAX);
        return -1;
    }
    if ((bad = oo_utf8_check(s, n)) != 0) {
        snprintf(why, cap, "is not valid UTF-8 (bad byte at offset %zu)", bad - 1);
        return -1;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '@') {
            ats++;
            at = i;
        } else if (c <= 0x20 || c == 0x7f) {
            snprintf(why, cap, "contains a space or control character (at offset %zu)", i);
            return -1;
        }
    }
    if (ats == 0) {
        snprintf(why, cap, "has no @");
        return -1;
    }
    if (ats > 1) {
        snprintf(why, cap, "has more than one @");
        return -1;
    }
    if (at == 0) {
        snprintf(why, cap, "has nothing before the @");
        return -1;
    }
    if (at == n - 1) {
        snprintf(why, cap, "has nothing after the @");
        return -1;
    }
    return 0;
}

int oo_email_normalise(const char *s, size_t n, int flags, char *out, char *why, size_t cap) {
    size_t a = 0, b = n, i, m, at, local;
    while (a < b && is_space((unsigned char)s[a])) a++;
    while (b > a && is_space((unsigned char)s[b - 1])) b--;
    m = b - a;
    if (m == 0) {
        snprintf(why, cap, "is empty after trimming whitespace");
        return -1;
    }
    if (m > OO_EMAIL_MAX) {
        snprintf(why, cap, "is %zu bytes long, more than %d", m, OO_EMAIL_MAX);
        return -1;
    }
    for (i = 0; i < m; i++) {
        unsigned char c = (unsigned char)s[a + i];
        out[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    if (oo_email_check(out, m, why, cap) != 0) return -1;
    if (!(flags & (OO_STRIP_PLUS_TAG | OO_STRIP_DOTS))) return (int)m;
    at = (size_t)((const char *)memchr(out, '@', m) - out);
    local = at;
    if (flags & OO_STRIP_PLUS_TAG) {
        const char *plus = memchr(out, '+', at);
        if (plus) local = (size_t)(plus - out);
    }
    if (flags & OO_STRIP_DOTS) {
        size_t j = 0;
        for (i = 0; i < local; i++)
            if (out[i] != '.') out[j++] = out[i];
        local = j;
    }
    if (local == 0) {
        snprintf(why, cap, "has nothing before the @ once its %s removed",
                 (flags & OO_STRIP_PLUS_TAG) && (flags & OO_STRIP_DOTS) ? "+tag and dots are"
                 : (flags & OO_STRIP_PLUS_TAG)                          ? "+tag is"
                                                                        : "dots are");
        return -1;
    }
    memmove(out + local, out + at, m - at);
    return (int)(local + m - at);
}

void oo_pseudonym_encode(const unsigned char mac[32], int encoding, int length, char *out) {
    static const char hex[] = "0123456789abcdef";
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char full[OO_PSEUDONYM_MAX];
    int i, o = 0;
    if (encoding == OO_ENC_HEX) {
        for (i = 0; i < 32; i++) {
            full[o++] = hex[mac[i] >> 4];
            full[o++] = hex[mac[i] & 15];
        }
    } else {
        for (i = 0; i + 2 < 32; i += 3) {
            unsigned v = (unsigned)mac[i] << 16 | (unsigned)mac[i + 1] << 8 | mac[i + 2];
            full[o++] = b64[v >> 18];
            full[o++] = b64[(v >> 12) & 63];
            full[o++] = b64[(v >> 6) & 63];
            full[o++] = b64[v & 63];
        }
        { /* the last 2 bytes: 3 characters, no padding */
            unsigned v = (unsigned)mac[30] << 8 | mac[31];
            full[o++] = b64[v >> 10];
            full[o++] = b64[(v >> 4) & 63];
            full[o++] = b64[(v << 2) & 63];
        }
    }
    memcpy(out, full, (size_t)length);
}
