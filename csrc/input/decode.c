/* Input files as UTF-8 text (see decode.h): the input readers' decoder.
 *
 * Lua: core.decoder(name) -> decoder | nil, message (an unknown encoding)
 *   decoder:feed(chunk | nil) -> text [, line, byte, reason]
 *       the UTF-8 text of the whole lines the bytes complete (nil: the end,
 *       then the rest); when it stops, also the line at fault, the byte
 *       (nil for a BOM or a cut character) and the reason ("invalid",
 *       "bom", "truncated" or "utf16"); after that, "" and the same three
 *   decoder:lines() -> lines handed on so far
 *
 * Why in C: every byte of every input file goes through it, and iconv is
 * glibc's (no dependency). Why whole lines: when a line turns out not to
 * be text in the encoding, everything before it has been handed on whole
 * and nothing of it, so no reader takes the front half of a row for a row. */
#include "decode.h"
#include "core.h"
#include "utf8.h"

#include <errno.h>
#include <iconv.h>
#include <stdlib.h>
#include <string.h>

#define DECODER_MT "optimizely.offline.decoder"

struct oo_decoder {
    int kind;
    iconv_t cd;
    oo_buf carry; /* input bytes not handed on yet */
    long long lines;
    int started; /* the first bytes were looked at (the BOM) */
    int stop_reason;
    long long stop_line;
    int stop_byte;
};

static const struct {
    const char *name;
    int kind;
} names[] = {
    {"utf-8", OO_DEC_UTF8},          {"utf8", OO_DEC_UTF8},        {"cp1252", OO_DEC_CP1252},
    {"windows-1252", OO_DEC_CP1252}, {"latin1", OO_DEC_LATIN1},    {"latin-1", OO_DEC_LATIN1},
    {"iso-8859-1", OO_DEC_LATIN1},   {"iso8859-1", OO_DEC_LATIN1},
};

int oo_decoder_kind(const char *name) {
    size_t i, k;
    char low[16];
    for (k = 0; name[k] && k < sizeof low - 1; k++)
        low[k] = (char)(name[k] >= 'A' && name[k] <= 'Z' ? name[k] + 32 : name[k]);
    if (name[k]) return -1;
    low[k] = '\0';
    for (i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(low, names[i].name) == 0) return names[i].kind;
    return -1;
}

oo_decoder *oo_decoder_new(int kind) {
    oo_decoder *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->kind = kind;
    d->cd = (iconv_t)-1;
    if (kind != OO_DEC_UTF8) {
        d->cd = iconv_open("UTF-8", kind == OO_DEC_CP1252 ? "WINDOWS-1252" : "ISO-8859-1");
        if (d->cd == (iconv_t)-1) {
            free(d);
            return NULL;
        }
    }
    oo_buf_init(&d->carry);
    return d;
}

void oo_decoder_free(oo_decoder *d) {
    if (!d) return;
    if (d->cd != (iconv_t)-1) iconv_close(d->cd);
    oo_buf_free(&d->carry);
    free(d);
}

int oo_decoder_stop(const oo_decoder *d, long long *line, int *byte) {
    if (line) *line = d->stop_line;
    if (byte) *byte = d->stop_byte;
    return d->stop_reason;
}

long long oo_decoder_lines(const oo_decoder *d) { return d->lines; }

static long long count_lines(const char *p, size_t n) {
    long long k = 0;
    const char *e = p + n;
    while ((p = memchr(p, '\n', (size_t)(e - p))) != NULL) {
        k++;
        p++;
    }
    return k;
}

/* The start of the line holding p[at]. */
static size_t line_start(const char *p, size_t at) {
    while (at > 0 && p[at - 1] != '\n') at--;
    return at;
}

static int stop(oo_decoder *d, int reason, long long line, int byte) {
    d->stop_reason = reason;
    d->stop_line = line;
    d->stop_byte = byte;
    return 1;
}

/* Are p[0..n) the first bytes of a UTF-8 character (a character the end
 * of the input cut)? */
static int cut_character(const unsigned char *p, size_t n) {
    size_t need, i;
    if (n == 0) return 0;
    need = p[0] >= 0xF0 && p[0] <= 0xF4   ? 4
           : p[0] >= 0xE0 && p[0] <= 0xEF ? 3
           : p[0] >= 0xC2 && p[0] <= 0xDF ? 2
                                          : 0;
    if (!need || n >= need) return 0;
    for (i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    return 1;
}

/* UTF-8 in: checked, handed on as it is up to the line at fault. */
static int emit_utf8(oo_decoder *d, const char *p, size_t n, int final, oo_buf *out) {
    size_t bad = oo_utf8_check(p, n), ls;
    int reason;
    if (bad == 0) {
        oo_buf_add(out, p, n);
        d->lines += count_lines(p, n);
        return out->oom ? -1 : 0;
    }
    bad--;
    ls = line_start(p, bad);
    oo_buf_add(out, p, ls);
    d->lines += count_lines(p, ls);
    reason = final && cut_character((const unsigned char *)p + bad, n - bad) ? OO_DEC_TRUNCATED
                                                                             : OO_DEC_INVALID;
    stop(d, reason, d->lines + 1, reason == OO_DEC_INVALID ? (unsigned char)p[bad] : -1);
    return out->oom ? -1 : 1;
}

/* Converts p[0..n) with iconv onto out: 0, or the offset + 1 of the first
 * byte that is not a character of the encoding; -1 when out of memory. */
static long long convert(oo_decoder *d, const char *p, size_t n, oo_buf *out) {
    char *in = (char *)p, *o;
    size_t inleft = n, outleft;
    iconv(d->cd, NULL, NULL, NULL, NULL);
    while (inleft > 0) {
        if (!oo_buf_reserve(out, inleft * 3 + 16)) return -1;
        o = out->data + out->len;
        outleft = out->cap - out->len;
        if (iconv(d->cd, &in, &inleft, &o, &outleft) == (size_t)-1) {
            out->len = (size_t)(o - out->data);
            if (errno == E2BIG) continue;
            return (long long)(in - p) + 1; /* EILSEQ (or EINVAL: no partial input here) */
        }
        out->len = (size_t)(o - out->data);
    }
    return 0;
}

/* A single-byte encoding in: converted to UTF-8 up to the line at fault. */
static int emit_iconv(oo_decoder *d, const char *p, size_t n, oo_buf *out) {
    size_t mark = out->len, ls;
    long long bad = convert(d, p, n, out);
    if (bad < 0) return -1;
    if (bad == 0) {
        d->lines += count_lines(p, n);
        return 0;
    }
    out->len = mark;
    ls = line_start(p, (size_t)(bad - 1));
    if (convert(d, p, ls, out) < 0) return -1;
    d->lines += count_lines(p, ls);
    return stop(d, OO_DEC_INVALID, d->lines + 1, (unsigned char)p[bad - 1]);
}

/* Where to cut the held bytes: after their last line break; with none,
 * all of them at the end, or (past OO_DEC_MAX_CARRY) all but a character
 * not complete yet; else 0 (wait for more). */
static size_t cut_point(const oo_decoder *d, int end) {
    const char *p = d->carry.data;
    size_t n = d->carry.len, i;
    if (end) return n;
    for (i = n; i > 0; i--)
        if (p[i - 1] == '\n') return i;
    if (n < OO_DEC_MAX_CARRY) return 0;
    if (d->kind != OO_DEC_UTF8) return n;
    for (i = n; i > 0 && n - i < 4; i--)
        if (((unsigned char)p[i - 1] & 0xC0) != 0x80)
            return cut_character((const unsigned char *)p + i - 1, n - i + 1) ? i - 1 : n;
    return n;
}

int oo_decoder_feed(oo_decoder *d, const char *s, size_t n, int end, oo_buf *out) {
    size_t cut;
    int rc;
    if (d->stop_reason) return 1;
    if (n) oo_buf_add(&d->carry, s, n);
    if (d->carry.oom) return -1;
    if (!d->started) {
        if (d->carry.len < 3 && !end) return 0;
        d->started = 1;
        if (d->kind != OO_DEC_UTF8 && d->carry.len >= 3 &&
            memcmp(d->carry.data, "\xEF\xBB\xBF", 3) == 0)
            return stop(d, OO_DEC_BOM, 1, -1);
        if (d->carry.len >= 2 && (memcmp(d->carry.data, "\xFF\xFE", 2) == 0 ||
                                  memcmp(d->carry.data, "\xFE\xFF", 2) == 0))
            return stop(d, OO_DEC_UTF16, 1, -1);
    }
    cut = cut_point(d, end);
    if (cut == 0) return 0;
    if (d->kind == OO_DEC_UTF8)
        rc = emit_utf8(d, d->carry.data, cut, end && cut == d->carry.len, out);
    else rc = emit_iconv(d, d->carry.data, cut, out);
    memmove(d->carry.data, d->carry.data + cut, d->carry.len - cut);
    d->carry.len -= cut;
    return rc;
}

/* ------------------------------------------------------------------- Lua */

typedef struct {
    oo_decoder *d;
} l_decoder;

static oo_decoder *check_decoder(lua_State *L) {
    l_decoder *u = luaL_checkudata(L, 1, DECODER_MT);
    if (!u->d) luaL_error(L, "decoder: used after close");
    return u->d;
}

static const char *const reasons[] = {NULL, "invalid", "bom", "truncated", "utf16"};

/* decoder:feed(chunk | nil) -> text [, line, byte, reason] */
static int l_feed(lua_State *L) {
    oo_decoder *d = check_decoder(L);
    size_t n = 0;
    const char *s = luaL_optlstring(L, 2, NULL, &n);
    oo_buf out;
    long long line;
    int byte, rc;
    oo_buf_init(&out);
    rc = oo_decoder_feed(d, s, n, s == NULL, &out);
    if (rc < 0) {
        oo_buf_free(&out);
        return luaL_error(L, "decoder: out of memory");
    }
    lua_pushlstring(L, out.data, out.len);
    oo_buf_free(&out);
    if (rc == 0) return 1;
    rc = oo_decoder_stop(d, &line, &byte);
    lua_pushinteger(L, (lua_Integer)line);
    if (byte >= 0) lua_pushinteger(L, byte);
    else lua_pushnil(L);
    lua_pushstring(L, reasons[rc]);
    return 4;
}

static int l_lines(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)oo_decoder_lines(check_decoder(L)));
    return 1;
}

static int l_gc(lua_State *L) {
    l_decoder *u = luaL_checkudata(L, 1, DECODER_MT);
    oo_decoder_free(u->d);
    u->d = NULL;
    return 0;
}

/* core.decoder(name) -> decoder | nil, err {kind = "config", message} */
static int l_new(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    int kind = oo_decoder_kind(name);
    l_decoder *u;
    if (kind < 0)
        return oo_push_errorf(L, "config", "%s",
                              "unknown input encoding: use utf-8, cp1252 (Windows-1252) or latin1"
                              " (ISO-8859-1)");
    u = lua_newuserdata(L, sizeof *u);
    u->d = NULL;
    oo_setmetatable(L, DECODER_MT);
    u->d = oo_decoder_new(kind);
    if (!u->d) return luaL_error(L, "decoder: cannot convert from %s (iconv)", name);
    return 1;
}

void oo_decode_register(lua_State *L) {
    static const luaL_Reg methods[] = {{"feed", l_feed}, {"lines", l_lines}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"decoder", l_new}, {NULL, NULL}};
    oo_newclass(L, DECODER_MT, methods, l_gc, l_gc, NULL);
    oo_setfuncs(L, funcs, 0);
}
