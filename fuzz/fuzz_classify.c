/* libFuzzer target for the one response classifier (csrc/delivery/classify.c), the
 * envelope walk (json.c's oo_json_envelope) and the policy (csrc/delivery/policy.c).
 * Input: 2 bytes status, 1 byte Retry-After length, the Retry-After value,
 * then the body. Invariants, not just crashes:
 *  - the record is consistent: ok xor a kind; ok only for 2xx; retryable
 *    never with stop; the message is one printable line;
 *  - the envelope walk agrees with the strict decoder: a body the decoder
 *    reads as an object is an envelope, with the same top-level "status"
 *    (when it is a short string);
 *  - the decision is sane: a delay >= 0 and never above the caps.
 *   make -C fuzz run-classify   (bounded: FUZZ_SECONDS, default 60) */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "../csrc/delivery/classify.h"
#include "../csrc/payload/json.h"
#include "../csrc/delivery/policy.h"

static lua_State *L;

static void check_record(const oo_outcome *o, int status) {
    size_t i, n = strlen(o->message);
    assert(n < sizeof o->message);
    for (i = 0; i < n; i++) assert((unsigned char)o->message[i] >= 0x20 && o->message[i] != 0x7f);
    assert(o->ok != (o->kind != NULL));
    if (o->ok) assert(status >= 200 && status < 300);
    if (o->stop) assert(!o->retryable && !o->ok);
    assert(o->retry_after == -1 || o->retry_after >= 0);
}

/* The strict decoder's view of the body: 1 object (status into *st when a
 * short string), 0 something else or invalid. */
static int decoded_object(const char *body, size_t len, char *st, size_t cap) {
    int r = 0, top = lua_gettop(L);
    const char *p = body;
    while (p < body + len && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    st[0] = '\0';
    if (oo_json_decode(L, body, len, 64) == 1 && p < body + len && *p == '{') {
        r = 1;
        lua_getfield(L, -1, "status");
        if (lua_type(L, -1) == LUA_TSTRING) {
            size_t n;
            const char *s = lua_tolstring(L, -1, &n);
            if (n < cap && strlen(s) == n) memcpy(st, s, n + 1);
            else st[0] = 1; /* long or with NUL: not compared */
        } else {
            st[0] = 2; /* absent or not a string */
        }
    }
    lua_settop(L, top);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int status, ralen, obj;
    char ra[256], *body, st[40];
    size_t blen;
    oo_outcome o;
    oo_envelope *env;
    oo_policy p;
    oo_decision d;
    if (size < 3) return 0;
    if (!L) L = luaL_newstate();
    status = 100 + ((data[0] << 8 | data[1]) % 900);
    ralen = data[2] % 64;
    if ((size_t)ralen > size - 3) ralen = (int)(size - 3);
    memcpy(ra, data + 3, (size_t)ralen);
    ra[ralen] = '\0';
    blen = size - 3 - (size_t)ralen;
    body = (char *)malloc(blen + 1);
    memcpy(body, data + 3 + ralen, blen);
    body[blen] = '\0'; /* the scan sentinel, as every caller provides */
    env = (oo_envelope *)malloc(sizeof *env);
    oo_classify_response(status, ra, body, blen, 1e9, &o, env);
    check_record(&o, status);
    assert(env->used <= OO_ENV_ARENA);
    obj = decoded_object(body, blen, st, 33);
    if (obj) {
        assert(env->object);
        if (st[0] > 2) assert(env->status && strcmp(env->status, st) == 0);
        if (st[0] == 2) assert(!env->status);
    }
    oo_policy_defaults(&p);
    oo_policy_decide(&p, &o, 1 + data[0] % 8, (double)(data[1] % 100), (double)data[2] / 256.0, &d);
    assert(d.delay >= 0 && d.pause >= 0);
    assert(d.delay <= (p.backoff_max > p.retry_after_max ? p.backoff_max : p.retry_after_max) + 1e-9 ||
           d.delay <= p.backoff_floor);
    if (o.ok) assert(d.action == OO_ACK);
    free(env);
    free(body);
    return 0;
}
