/* libFuzzer target for the input decoder (csrc/input/decode.c): UTF-8 checked,
 * Windows-1252 and Latin-1 converted with iconv, fed in pieces of any size.
 * Invariants: what comes out is valid UTF-8 made of whole lines (but at the
 * end); UTF-8 in comes out as the same bytes, all of them unless it stopped
 * (and then a prefix ending at a line start); Latin-1 in always converts
 * (two bytes out for each byte from 0x80); the line count is the output's.
 *   make -C fuzz run-decode     (bounded: FUZZ_SECONDS, default 60) */
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "../csrc/base/buf.h"
#include "../csrc/input/decode.h"
#include "../csrc/base/utf8.h"

static long long newlines(const char *p, size_t n) {
    long long k = 0;
    size_t i;
    for (i = 0; i < n; i++) k += p[i] == '\n';
    return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const int kinds[] = {OO_DEC_UTF8, OO_DEC_CP1252, OO_DEC_LATIN1};
    const char *s;
    size_t n, piece, at = 0, high = 0, i;
    int kind, rc = 0;
    oo_decoder *d;
    oo_buf out;
    if (size < 2) return 0;
    kind = kinds[data[0] % 3];
    piece = (size_t)data[1] % 17 + 1;
    s = (const char *)data + 2;
    n = size - 2;
    d = oo_decoder_new(kind);
    assert(d);
    oo_buf_init(&out);
    while (rc == 0 && at < n) {
        size_t k = n - at < piece ? n - at : piece;
        size_t before = out.len;
        rc = oo_decoder_feed(d, s + at, k, 0, &out);
        /* between feeds only whole lines come out (lines here are shorter than OO_DEC_MAX_CARRY) */
        if (out.len > before) assert(out.data[out.len - 1] == '\n');
        at += k;
    }
    if (rc == 0) rc = oo_decoder_feed(d, NULL, 0, 1, &out);
    assert(rc == 0 || rc == 1);
    assert(!out.oom);
    assert(oo_utf8_check(out.data, out.len) == 0);
    assert(oo_decoder_lines(d) == newlines(out.data, out.len));
    if (kind == OO_DEC_UTF8) {
        assert(out.len <= n && memcmp(out.data, s, out.len) == 0);
        if (rc == 0) assert(out.len == n);
        else assert(out.len == 0 || out.data[out.len - 1] == '\n');
    }
    if (kind == OO_DEC_LATIN1 && rc == 0) {
        for (i = 0; i < n; i++) high += (unsigned char)s[i] >= 0x80;
        assert(out.len == n + high);
    }
    if (rc == 1) {
        long long line;
        int byte;
        assert(oo_decoder_stop(d, &line, &byte) != 0);
        assert(line == oo_decoder_lines(d) + 1);
        /* once stopped, nothing more */
        at = out.len;
        assert(oo_decoder_feed(d, "x\n", 2, 0, &out) == 1 && out.len == at);
    }
    oo_buf_free(&out);
    oo_decoder_free(d);
    return 0;
}
