/* libFuzzer target for the pseudonymiser (csrc/identity/hmac.c): e-mail
 * normalisation + HMAC-SHA256 + encoding, through the same Lua binding the
 * library uses (p:id, core.email_normalise). Invariants, not just crashes:
 *   - p:id succeeds exactly when normalisation does; its id has the
 *     configured length and only the encoding's alphabet; a failure gives a
 *     validation error with a short printable message;
 *   - a normalised address has no ASCII capital, no edge whitespace,
 *     exactly one @ with text on both sides, is valid UTF-8, <= 254 bytes,
 *     has no + (strip_plus_tag) or . (strip_dots) in its local part, and
 *     normalises to itself (idempotent), with the same id;
 *   - the id is the prefix of OpenSSL's one-shot HMAC() of the normalised
 *     address (an independent path through libcrypto).
 * Input: byte 0 picks the options (bits 0-1 strip flags, bit 2 base64url,
 * bits 3-4 the length), the rest is the address.
 *   make -C fuzz run-hmac   (bounded: FUZZ_SECONDS, default 60) */
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "../csrc/identity/hmac.h"
#include "../csrc/base/utf8.h"

void oo_hmac_register(lua_State *L);

static const char KEY[] = "fuzz-key-0123456789abcdef";
static lua_State *L;
static int objects[4][2][4]; /* registry refs: [flags][encoding][length index] */
static const int lengths[2][4] = {{64, 16, 32, 40}, {43, 22, 30, 40}};
static const char *const encodings[2] = {"hex", "base64url"};

static void setup(void) {
    int f, e, l;
    L = luaL_newstate();
    luaL_openlibs(L);
    lua_newtable(L);
    oo_hmac_register(L);
    lua_setglobal(L, "core");
    for (f = 0; f < 4; f++)
        for (e = 0; e < 2; e++)
            for (l = 0; l < 4; l++) {
                lua_getglobal(L, "core");
                lua_getfield(L, -1, "pseudonymiser");
                lua_pushstring(L, KEY);
                lua_pushstring(L, encodings[e]);
                lua_pushinteger(L, lengths[e][l]);
                lua_pushinteger(L, f);
                if (lua_pcall(L, 4, 1, 0) != 0) abort();
                objects[f][e][l] = luaL_ref(L, LUA_REGISTRYINDEX);
                lua_pop(L, 1);
            }
}

/* p:id(s) -> leaves id-or-nil and reason-or-nil on the stack */
static void call_id(int ref, const char *s, size_t n) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_getfield(L, -1, "id");
    lua_insert(L, -2);
    lua_pushlstring(L, s, n);
    if (lua_pcall(L, 2, 2, 0) != 0) abort();
}

/* core.email_normalise(s, flags) -> normalised-or-nil, reason-or-nil */
static void call_normalise(const char *s, size_t n, int flags) {
    lua_getglobal(L, "core");
    lua_getfield(L, -1, "email_normalise");
    lua_remove(L, -2);
    lua_pushlstring(L, s, n);
    lua_pushinteger(L, flags);
    if (lua_pcall(L, 2, 2, 0) != 0) abort();
}

static int in_alphabet(char c, int e) {
    if (c >= '0' && c <= '9') return 1;
    if (c >= 'a' && c <= 'f') return 1;
    if (e == 0) return 0;
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '_';
}

static int is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static void check_normalised(const char *s, size_t n, int flags) {
    size_t i, ats = 0, at = 0;
    assert(n >= 3 && n <= OO_EMAIL_MAX);
    assert(oo_utf8_check(s, n) == 0);
    assert(!is_space((unsigned char)s[0]) && !is_space((unsigned char)s[n - 1]));
    for (i = 0; i < n; i++) {
        assert(!(s[i] >= 'A' && s[i] <= 'Z'));
        assert((unsigned char)s[i] > 0x20 && s[i] != 0x7f);
        if (s[i] == '@') { ats++; at = i; }
    }
    assert(ats == 1 && at > 0 && at < n - 1);
    for (i = 0; i < at; i++) {
        if (flags & OO_STRIP_PLUS_TAG) assert(s[i] != '+');
        if (flags & OO_STRIP_DOTS) assert(s[i] != '.');
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int flags, e, l, ok_id, ok_norm;
    const char *s;
    size_t n, idn = 0, normn = 0;
    char id[OO_PSEUDONYM_MAX + 1], norm[OO_EMAIL_MAX + 1];
    if (!L) setup();
    if (size < 1) return 0;
    flags = data[0] & 3;
    e = (data[0] >> 2) & 1;
    l = (data[0] >> 3) & 3;
    s = (const char *)data + 1;
    n = size - 1;

    call_id(objects[flags][e][l], s, n);
    ok_id = lua_type(L, -2) == LUA_TSTRING;
    if (ok_id) {
        const char *v = lua_tolstring(L, -2, &idn);
        size_t i;
        assert(lua_isnil(L, -1));
        assert(idn == (size_t)lengths[e][l]);
        for (i = 0; i < idn; i++) assert(in_alphabet(v[i], e));
        memcpy(id, v, idn);
    } else {
        /* nil, {kind = "validation", message} (core.h: oo_push_error) */
        size_t rn, i;
        const char *r;
        assert(lua_isnil(L, -2) && lua_type(L, -1) == LUA_TTABLE);
        lua_getfield(L, -1, "kind");
        assert(lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "validation") == 0);
        lua_pop(L, 1);
        lua_getfield(L, -1, "message");
        r = lua_tolstring(L, -1, &rn);
        assert(r != NULL && rn > 0 && rn < 96);
        for (i = 0; i < rn; i++) assert(r[i] >= 0x20 && r[i] < 0x7f);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);

    call_normalise(s, n, flags);
    ok_norm = lua_type(L, -2) == LUA_TSTRING;
    assert(ok_norm == ok_id);
    if (ok_norm) {
        const char *v = lua_tolstring(L, -2, &normn);
        memcpy(norm, v, normn);
    }
    lua_pop(L, 2);
    if (!ok_norm) return 0;
    check_normalised(norm, normn, flags);

    /* idempotent, and the same id */
    call_normalise(norm, normn, flags);
    {
        size_t m;
        const char *v = lua_tolstring(L, -2, &m);
        assert(v != NULL && m == normn && memcmp(v, norm, m) == 0);
    }
    lua_pop(L, 2);
    call_id(objects[flags][e][l], norm, normn);
    {
        size_t m;
        const char *v = lua_tolstring(L, -2, &m);
        assert(v != NULL && m == idn && memcmp(v, id, m) == 0);
    }
    lua_pop(L, 2);

    /* an independent path through libcrypto */
    {
        unsigned char mac[32];
        unsigned int maclen = 0;
        char want[OO_PSEUDONYM_MAX];
        assert(HMAC(EVP_sha256(), KEY, (int)strlen(KEY), (const unsigned char *)norm, normn, mac, &maclen));
        assert(maclen == 32);
        oo_pseudonym_encode(mac, e, lengths[e][l], want);
        assert(memcmp(want, id, idn) == 0);
        if (e == 0) { /* hex: check the encoder too */
            static const char hex[] = "0123456789abcdef";
            size_t i;
            for (i = 0; i < idn; i++) assert(id[i] == hex[i % 2 ? mac[i / 2] & 15 : mac[i / 2] >> 4]);
        } else { /* base64url: OpenSSL's base64, with - for + and _ for / */
            unsigned char b64[45];
            size_t i;
            assert(EVP_EncodeBlock(b64, mac, 32) == 44);
            for (i = 0; i < idn; i++) {
                char c = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : (char)b64[i];
                assert(id[i] == c);
            }
        }
    }
    assert(lua_gettop(L) == 0);
    return 0;
}
