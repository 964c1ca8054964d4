/* libFuzzer target for metric labels: a hostile response goes through the
 * classifier (csrc/delivery/classify.c) into the metrics (csrc/delivery/metrics.c), and, for
 * one input in 64 (those whose hash says so: the Lua side costs a hundred
 * times the C path, and a flag byte would let the fuzzer run it almost
 * always, since it adds coverage), through the Lua side too
 * (lua/.../metrics.lua: merge, the shared dict's flatten/unflatten, the
 * Prometheus text) in one Lua state reused across runs.
 * Input: 2 bytes status, 1 byte flags, 1 byte channel length (mod 48), the
 * channel, then the body (the Lua path also takes the first 64 bytes of
 * the body as a raw code). Invariants, not just crashes:
 *  - every label value (kind, code, channel) is at most 40 bytes of
 *    [A-Za-z0-9_.-], or "other", "unknown" or "";
 *  - no label echoes the secret the metrics object was given, in any case,
 *    nor does the Prometheus text of that object;
 *  - every Prometheus text, that of hostile tables too, is valid UTF-8
 *    without control bytes (but the newline ending each line).
 *   make -C fuzz run-labels   (bounded: FUZZ_SECONDS, default 60) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <lualib.h>

#include "../csrc/delivery/classify.h"
#include "../csrc/base/core.h"
#include "../csrc/delivery/metrics.h"
#include "../csrc/base/text.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_labels: %s (line %d)\n", #c, __LINE__);                          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* The secret the metrics are given: the seeds hold codes echoing it. */
static const char SECRET[] = "Sandbox-Token-9f8e7d";

static int has_secret(const char *s, size_t n) {
    size_t i, k = sizeof SECRET - 1;
    for (i = 0; i + k <= n; i++)
        if (strncasecmp(s + i, SECRET, k) == 0) return 1;
    return 0;
}

static void check_label(const char *s) {
    size_t i, n = strlen(s);
    CHECK(n <= OO_LABEL_MAX);
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        CHECK((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-');
    }
    CHECK(!has_secret(s, n));
}

/* Valid UTF-8 (no overlong forms, no surrogates), no C0/DEL/C1 but '\n'. */
static void check_text(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        unsigned long cp;
        size_t len, k;
        if (c < 0x80) {
            CHECK(c == '\n' || (c >= 0x20 && c != 0x7f));
            i++;
            continue;
        }
        len = c >= 0xf0 && c <= 0xf4  ? 4
              : c >= 0xe0 && c < 0xf0 ? 3
              : c >= 0xc2 && c < 0xe0 ? 2
                                      : 0;
        CHECK(len > 0 && i + len <= n);
        cp = c & (0x7f >> len);
        for (k = 1; k < len; k++) {
            unsigned char b = (unsigned char)s[i + k];
            CHECK((b & 0xc0) == 0x80);
            cp = (cp << 6) | (b & 0x3f);
        }
        CHECK(!(len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))));
        CHECK(!(len == 4 && (cp < 0x10000 || cp > 0x10ffff)));
        CHECK(!(cp >= 0x80 && cp <= 0x9f));
        i += len;
    }
}

/* The C path: classify, count the failure, check every label kept. */
static void fuzz_c(int status, const char *channel, const char *body, size_t blen, int flags) {
    static oo_metrics m; /* large: off the stack */
    oo_outcome o;
    int i;
    oo_metrics_init(&m);
    oo_metrics_secret(&m, SECRET);
    oo_classify_response(status, "", body, blen, 1e9, &o, NULL);
    oo_metrics_failed(&m, &o, flags & 1, channel[0] ? channel : NULL);
    if (flags & 2) { /* a transport failure too: its kind is ours, not the server's */
        oo_classify_failure((flags & 4) ? "timeout" : "tls", body, &o);
        oo_metrics_failed(&m, &o, 0, channel);
    }
    CHECK(m.nfail >= 1 && m.nfail <= OO_FAIL_LABELS);
    for (i = 0; i < m.nfail; i++) {
        check_label(m.fail[i].kind);
        check_label(m.fail[i].code);
        check_label(m.fail[i].channel);
        CHECK(m.fail[i].kind[0] != '\0');
    }
    for (i = 0; i < m.nchan; i++) check_label(m.chan[i].name);
    /* a code that is a label already is kept as it is */
    if (o.code[0] && !has_secret(o.code, strlen(o.code))) {
        char out[OO_LABEL_MAX + 1];
        const char *l = oo_metrics_label(NULL, o.code, out);
        CHECK(strcmp(l, "other") == 0 || strcmp(l, o.code) == 0);
    }
}

/* The Lua side: a hostile metrics table (raw code, channel and kind), the
 * object's own table, summed, flattened for the shared dict and read back,
 * then the Prometheus text of all of it. */
static const char DRIVER[] =
    "package.path = '../lua/?.lua;' .. package.path\n"
    "local core = require('optimizely.offline.core')\n"
    "local metrics = require('optimizely.offline.metrics')\n"
    "function fuzz(code, channel, kind, status, secret)\n"
    "  local m = core.metrics_new({ secret })\n"
    "  m:failed({ kind = kind, status = status, code = code }, true, channel)\n"
    "  m:sent(channel)\n"
    "  local raw = { failed = 1, failures = { { kind = kind, status = status, code = code, channel "
    "= channel,\n"
    "    n = 1 } }, channels = { [channel] = { sent = 1, failed = 1 } }, dropped = { [code] = 1 } "
    "}\n"
    "  local sum = metrics.sum(m:get(), raw)\n"
    "  local back = metrics.unflatten(metrics.flatten(sum))\n"
    "  return metrics.prometheus(m:get()), metrics.prometheus(sum, { back, labels = { queue = 'q' "
    "} })\n"
    "end\n";

static int open_core(lua_State *L) {
    lua_newtable(L);
    oo_text_register(L);
    oo_classify_register(L);
    oo_metrics_register(L);
    return 1;
}

static lua_State *start(void) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, open_core);
    lua_setfield(L, -2, "optimizely.offline.core");
    lua_settop(L, 0);
    if (luaL_dostring(L, DRIVER) != LUA_OK) {
        fprintf(stderr, "fuzz_labels driver: %s\n", lua_tostring(L, -1));
        abort();
    }
    return L;
}

static void fuzz_lua(const char *channel, const char *body, size_t blen, int status, int flags) {
    static lua_State *L;
    const char *text;
    size_t n;
    static const char *const kinds[] = {"api", "http", "auth", "k\nind", "\xc3\xa9t\xc3\xa9", ""};
    if (!L) L = start();
    lua_settop(L, 0);
    lua_getglobal(L, "fuzz");
    lua_pushlstring(L, body, blen < 64 ? blen : 64);
    lua_pushstring(L, channel);
    lua_pushstring(L, kinds[(flags >> 3) % 6]);
    lua_pushinteger(L, status);
    lua_pushstring(L, SECRET);
    if (lua_pcall(L, 5, 2, 0) != LUA_OK) {
        fprintf(stderr, "fuzz_labels: %s\n", lua_tostring(L, -1));
        abort();
    }
    text = lua_tolstring(L, -2, &n); /* the object's: it was given the secret */
    CHECK(text != NULL);
    check_text(text, n);
    CHECK(!has_secret(text, n));
    text = lua_tolstring(L, -1, &n); /* with the hostile tables */
    CHECK(text != NULL);
    check_text(text, n);
    if (lua_gc(L, LUA_GCCOUNT, 0) > 64 * 1024) lua_gc(L, LUA_GCCOLLECT, 0);
}

static unsigned hash(const uint8_t *p, size_t n) {
    unsigned h = 2166136261u;
    while (n--) h = (h ^ *p++) * 16777619u;
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int status, flags;
    size_t clen, blen;
    char channel[48];
    char *body;
    if (size < 4) return 0;
    status = 100 + ((data[0] << 8 | data[1]) % 900);
    flags = data[2];
    clen = data[3] % 48;
    if (clen > size - 4) clen = size - 4;
    memcpy(channel, data + 4, clen);
    channel[clen] = '\0';
    blen = size - 4 - clen;
    body = (char *)malloc(blen + 1);
    memcpy(body, data + 4 + clen, blen);
    body[blen] = '\0'; /* the classifier's contract: the body is NUL-terminated */
    fuzz_c(status, channel, body, blen, flags);
    if (hash(data, size) >> 26 == 0) fuzz_lua(channel, body, blen, status, flags);
    free(body);
    return 0;
}
