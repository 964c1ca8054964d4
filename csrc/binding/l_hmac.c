/* Pseudonymised user ids, the Lua side (hmac.h; hmac.c holds the e-mail
 * rule and the encoding): normalise an e-mail address, then
 * HMAC-SHA256 it with a secret key through OpenSSL's EVP_MAC, and encode
 * the mac as lower-case hex or unpadded base64url, possibly truncated.
 *
 * Lua (internal; the public face is optimizely.offline.pseudonym, which
 * holds the policy: key length, allowed output lengths):
 *   core.pseudonymiser(key, encoding, length, flags) -> p
 *   p:id(email)        -> id | nil, err        normalise + HMAC + encode
 *   p:digest(bytes)    -> encoded HMAC of the bytes as they are (test vectors)
 *   p:same(key, encoding, length, flags) -> boolean (constant time on the key)
 *   p:close()          wipes the key (also on __gc and __close)
 *   core.email_normalise(email [, flags]) -> normalised | nil, err
 * (err: {kind = "validation", message}, core.h: oo_push_error)
 *
 * The key lives in the userdata (C-owned) and in OpenSSL's context, both
 * wiped on close; it is never in a message or in tostring. A call
 * allocates nothing of ours: the address is normalised into a stack buffer.
 * (OpenSSL 3's provider layer may still duplicate a digest context inside
 * EVP_MAC_init.) */
#include "hmac.h"
#include "core.h"

#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/params.h>

#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "optimizely-offline needs OpenSSL 3.0 or later (EVP_MAC)"
#endif

#define PSEUDONYMISER "optimizely.offline.pseudonymiser"
#define KEY_MAX 1024 /* bytes; the Lua layer says the same (pseudonym.KEY_MAX) */

/* ------------------------------------------------------ pseudonymiser */

typedef struct {
    EVP_MAC_CTX *ctx; /* keyed once; EVP_MAC_init(ctx, NULL, ...) reuses the key */
    int encoding, length, flags;
    size_t keylen;
    unsigned char key[1]; /* keylen bytes (the userdata is sized for them) */
} pseudonymiser;

static const char *const encodings[] = {"hex", "base64url", NULL};

static void wipe(pseudonymiser *p) {
    if (p->ctx) {
        EVP_MAC_CTX_free(p->ctx); /* OpenSSL cleanses its copy of the key */
        p->ctx = NULL;
    }
    OPENSSL_cleanse(p->key, p->keylen);
}

static pseudonymiser *check_open(lua_State *L) {
    pseudonymiser *p = (pseudonymiser *)luaL_checkudata(L, 1, PSEUDONYMISER);
    if (!p->ctx) luaL_error(L, "optimizely.offline.pseudonymiser: used after close");
    return p;
}

static int full_length(int encoding) { return encoding == OO_ENC_HEX ? OO_HEX_FULL : OO_B64_FULL; }

static void check_shape(lua_State *L, int first, int *encoding, int *length, int *flags) {
    lua_Integer len, fl;
    *encoding = luaL_checkoption(L, first, NULL, encodings);
    len = luaL_checkinteger(L, first + 1);
    fl = luaL_optinteger(L, first + 2, 0);
    luaL_argcheck(L, len >= 1 && len <= full_length(*encoding), first + 1, "length out of range");
    luaL_argcheck(L, fl >= 0 && fl <= (OO_STRIP_PLUS_TAG | OO_STRIP_DOTS), first + 2, "bad flags");
    *length = (int)len;
    *flags = (int)fl;
}

/*** core.pseudonymiser(key, encoding, length [, flags]) -> p */
static int l_new(lua_State *L) {
    size_t keylen;
    const char *key = luaL_checklstring(L, 1, &keylen);
    int encoding, length, flags;
    pseudonymiser *p;
    EVP_MAC *mac;
    OSSL_PARAM params[2];
    luaL_argcheck(L, keylen >= 1 && keylen <= KEY_MAX, 1, "key must be 1..1024 bytes");
    check_shape(L, 2, &encoding, &length, &flags);
    p = (pseudonymiser *)lua_newuserdata(L, sizeof(pseudonymiser) + keylen);
    memset(p, 0, sizeof(pseudonymiser));
    p->encoding = encoding;
    p->length = length;
    p->flags = flags;
    p->keylen = keylen;
    memcpy(p->key, key, keylen);
    oo_setmetatable(L, PSEUDONYMISER);
    mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (mac) {
        p->ctx = EVP_MAC_CTX_new(mac);
        EVP_MAC_free(mac);
    }
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();
    if (!p->ctx || !EVP_MAC_init(p->ctx, p->key, keylen, params)) {
        wipe(p);
        return luaL_error(L, "optimizely.offline.pseudonymiser: libcrypto has no HMAC-SHA256");
    }
    return 1;
}

/* HMAC of data into out (p->length characters). 0 on success. */
static int compute(pseudonymiser *p, const char *data, size_t n, char *out) {
    unsigned char mac[32];
    size_t maclen = 0;
    if (!EVP_MAC_init(p->ctx, NULL, 0, NULL) ||
        !EVP_MAC_update(p->ctx, (const unsigned char *)data, n) ||
        !EVP_MAC_final(p->ctx, mac, &maclen, sizeof mac) || maclen != sizeof mac)
        return -1;
    oo_pseudonym_encode(mac, p->encoding, p->length, out);
    OPENSSL_cleanse(mac, sizeof mac);
    return 0;
}

static int push_id(lua_State *L, pseudonymiser *p, const char *data, size_t n) {
    char out[OO_PSEUDONYM_MAX];
    if (compute(p, data, n, out) != 0)
        return luaL_error(L, "optimizely.offline.pseudonymiser: HMAC failed");
    lua_pushlstring(L, out, (size_t)p->length);
    return 1;
}

/*** p:id(email) -> id | nil, err {kind = "validation", message} */
static int m_id(lua_State *L) {
    pseudonymiser *p = check_open(L);
    char norm[OO_EMAIL_MAX], why[96];
    size_t n;
    const char *s;
    int m;
    if (lua_type(L, 2) != LUA_TSTRING)
        return oo_push_errorf(L, "validation", "must be a string, got %s", luaL_typename(L, 2));
    s = lua_tolstring(L, 2, &n);
    m = oo_email_normalise(s, n, p->flags, norm, why, sizeof why);
    if (m < 0) return oo_push_errorf(L, "validation", "%s", why);
    return push_id(L, p, norm, (size_t)m);
}

/*** p:digest(bytes) -> the encoded HMAC of the bytes, not normalised */
static int m_digest(lua_State *L) {
    pseudonymiser *p = check_open(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    return push_id(L, p, s, n);
}

/*** p:same(key, encoding, length [, flags]) -> boolean */
static int m_same(lua_State *L) {
    pseudonymiser *p = check_open(L);
    size_t keylen;
    const char *key = luaL_checklstring(L, 2, &keylen);
    int encoding, length, flags;
    check_shape(L, 3, &encoding, &length, &flags);
    lua_pushboolean(L, keylen == p->keylen && CRYPTO_memcmp(key, p->key, keylen) == 0 &&
                           encoding == p->encoding && length == p->length && flags == p->flags);
    return 1;
}

/*** p:close(): wipes the key; later calls raise. Closing twice is fine. */
static int m_close(lua_State *L) {
    pseudonymiser *p = (pseudonymiser *)luaL_checkudata(L, 1, PSEUDONYMISER);
    wipe(p);
    return 0;
}

static int m_tostring(lua_State *L) {
    pseudonymiser *p = (pseudonymiser *)luaL_checkudata(L, 1, PSEUDONYMISER);
    if (!p->ctx) lua_pushliteral(L, PSEUDONYMISER " (closed)");
    else
        lua_pushfstring(L, PSEUDONYMISER " (%s, %d characters)", encodings[p->encoding], p->length);
    return 1;
}

/*** core.email_normalise(email [, flags]) -> normalised | nil, err {kind = "validation", message} */
static int l_email_normalise(lua_State *L) {
    char norm[OO_EMAIL_MAX], why[96];
    size_t n;
    const char *s;
    lua_Integer fl = luaL_optinteger(L, 2, 0);
    int m;
    luaL_argcheck(L, fl >= 0 && fl <= (OO_STRIP_PLUS_TAG | OO_STRIP_DOTS), 2, "bad flags");
    if (lua_type(L, 1) != LUA_TSTRING)
        return oo_push_errorf(L, "validation", "must be a string, got %s", luaL_typename(L, 1));
    s = lua_tolstring(L, 1, &n);
    m = oo_email_normalise(s, n, (int)fl, norm, why, sizeof why);
    if (m < 0) return oo_push_errorf(L, "validation", "%s", why);
    lua_pushlstring(L, norm, (size_t)m);
    return 1;
}

void oo_hmac_register(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"id", m_id}, {"digest", m_digest}, {"same", m_same}, {"close", m_close}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {
        {"pseudonymiser", l_new}, {"email_normalise", l_email_normalise}, {NULL, NULL}};
    oo_newclass(L, PSEUDONYMISER, methods, m_close, m_close, m_tostring);
    oo_setfuncs(L, funcs, 0);
    lua_pushinteger(L, OO_STRIP_PLUS_TAG);
    lua_setfield(L, -2, "EMAIL_STRIP_PLUS_TAG");
    lua_pushinteger(L, OO_STRIP_DOTS);
    lua_setfield(L, -2, "EMAIL_STRIP_DOTS");
}
