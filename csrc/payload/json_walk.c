/* The JSON walks without a Lua state (json_walk.h): the response
 * envelope and values picked by path, with the decoder's grammar
 * (json_scan.h). The delivery thread, the spool and the ledger use them. */
#include "json_walk.h"
#include "json_scan.h"

#include <stddef.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* The response envelope, without a Lua state (see json_walk.h)        */

typedef struct {
    const unsigned char *p, *end;
    int depth;
    oo_envelope *env;
    oo_env_item *cur_error;   /* the errors[] item being read, or NULL */
    const char **cur_warning; /* the warnings[] item being read, or NULL */
    int lenient;              /* tolerate one trailing comma (the envelope only) */
    oo_json_pick *picks;      /* oo_json_pick_values: what to pick, */
    unsigned live;            /* which picks the current object's path matches, */
    int level;                /* and the current object's depth (0: the top) */
    unsigned short plen[OO_JSON_PICK_MAX][OO_JSON_PICK_DEPTH]; /* the picks' key lengths */
} E;

#define ENV_MAX_DEPTH 64
#define ENV_TEXT_CAP 500
/* Keys are copied up to this many bytes: more than OO_JSON_PICK_KEY_MAX,
 * so a longer key, cut, can never equal one we look for. */
#define KEY_CAP (OO_JSON_PICK_KEY_MAX + 8)

/* Copies n bytes into the arena (as much as fits); returns where. */
static const char *env_put(oo_envelope *env, const char *s, size_t n) {
    char *at = env->arena + env->used;
    size_t room = OO_ENV_ARENA - env->used;
    if (room == 0) return NULL;
    if (n >= room) n = room - 1;
    memcpy(at, s, n);
    at[n] = '\0';
    env->used += n + 1;
    return at;
}

/* UTF-8 encoding of cp into out (at least 4 bytes); returns the length. */
static int env_utf8(unsigned cp, unsigned char *out) {
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* e->p just after the opening quote. Validates the string with the
 * decoder's rules and copies up to `cap` bytes of its unescaped text into
 * buf (when buf is not NULL; whole characters only); *n gets their count.
 * 0 on bad JSON. */
static int env_string(E *e, char *buf, size_t cap, size_t *n) {
    const unsigned char *p = e->p;
    size_t k = 0;
    int full = 0;
    for (;;) {
        unsigned c = *p;
        unsigned char u[4];
        int ul;
        if (!str_class[c]) {
            ul = 1;
            u[0] = (unsigned char)c;
            p++;
        } else if (c == '"') {
            break;
        } else if (c >= 0x80) {
            ul = utf8_seq(p);
            if (!ul) return 0;
            memcpy(u, p, (size_t)ul);
            p += ul;
        } else if (c == '\\') {
            unsigned cp, lo;
            ul = 1;
            switch (p[1]) {
            case '"':
            case '\\':
            case '/': u[0] = p[1]; break;
            case 'b': u[0] = '\b'; break;
            case 'f': u[0] = '\f'; break;
            case 'n': u[0] = '\n'; break;
            case 'r': u[0] = '\r'; break;
            case 't': u[0] = '\t'; break;
            case 'u':
                if (!hex4(p + 2, &cp) || (cp >= 0xDC00 && cp <= 0xDFFF)) return 0;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (p[6] != '\\' || p[7] != 'u' || !hex4(p + 8, &lo) || lo < 0xDC00 ||
                        lo > 0xDFFF)
                        return 0;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                }
                ul = env_utf8(cp, u);
                p += 4;
                break;
            default: return 0;
            }
            p += 2;
        } else {
            return 0; /* a control byte, or the end ('\0' sentinel) */
        }
        if (buf && !full && k + (size_t)ul <= cap) {
            memcpy(buf + k, u, (size_t)ul);
            k += (size_t)ul;
        } else {
            full = 1; /* whole characters, and no gap: the text stops here */
        }
    }
    if (p >= e->end) return 0;
    e->p = p + 1;
    if (n) *n = k;
    return 1;
}

static int env_value(E *e);

/* A number with the decoder's grammar; the text stays where it is. */
static int env_number(E *e) {
    const unsigned char *p = e->p;
    if (*p == '-') p++;
    if (*p == '0') {
        p++;
    } else if (IS_DIGIT(*p)) {
        while (IS_DIGIT(*p)) p++;
    } else {
        return 0;
    }
    if (*p == '.') {
        p++;
        if (!IS_DIGIT(*p)) return 0;
        while (IS_DIGIT(*p)) p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!IS_DIGIT(*p)) return 0;
        while (IS_DIGIT(*p)) p++;
    }
    e->p = p;
    return 1;
}

/* The members of an object (e->p after '{'), calling `member` with each
 * key (cut at KEY_CAP bytes: longer than any key we look for), or skipping
 * the values when it is NULL. Lenient: tolerates one trailing comma. */
typedef int (*env_member_fn)(E *e, const char *key, size_t klen);

static int env_object(E *e, env_member_fn member) {
    const unsigned char *p;
    if (++e->depth > ENV_MAX_DEPTH) return 0;
    p = skip_ws(e->p);
    if (*p != '}') {
        for (;;) {
            char key[KEY_CAP];
            size_t klen = 0;
            if (*p != '"') return 0;
            e->p = p + 1;
            if (!env_string(e, member ? key : NULL, sizeof key, &klen)) return 0;
            p = skip_ws(e->p);
            if (*p != ':') return 0;
            e->p = skip_ws(p + 1);
            if (member ? !member(e, key, klen) : !env_value(e)) return 0;
            p = skip_ws(e->p);
            if (*p == ',') {
                p = skip_ws(p + 1);
                if (*p == '}' && e->lenient) break; /* the docs' {"status":"OK",} */
                continue;
            }
            if (*p == '}') break;
            return 0;
        }
    }
    e->p = p + 1;
    e->depth--;
    return 1;
}

/* The items of an array (e->p after '['), calling `item(e, index)`, or
 * skipping them when it is NULL. Tolerates one trailing comma. */
typedef int (*env_item_fn)(E *e, int index);

static int env_array(E *e, env_item_fn item) {
    const unsigned char *p;
    int i = 0;
    if (++e->depth > ENV_MAX_DEPTH) return 0;
    p = skip_ws(e->p);
    if (*p != ']') {
        for (;;) {
            e->p = p;
            if (item ? !item(e, i) : !env_value(e)) return 0;
            i++;
            p = skip_ws(e->p);
            if (*p == ',') {
                p = skip_ws(p + 1);
                if (*p == ']' && e->lenient) break;
                continue;
            }
            if (*p == ']') break;
            return 0;
        }
    }
    e->p = p + 1;
    e->depth--;
    return 1;
}

/* Any value at e->p (whitespace skipped), validated and skipped. */
static int env_value(E *e) {
    const unsigned char *p = skip_ws(e->p);
    e->p = p;
    switch (*p) {
    case '"': e->p = p + 1; return env_string(e, NULL, 0, NULL);
    case '{': e->p = p + 1; return env_object(e, NULL);
    case '[': e->p = p + 1; return env_array(e, NULL);
    case 't':
        if (e->end - p >= 4 && memcmp(p, "true", 4) == 0) {
            e->p = p + 4;
            return 1;
        }
        return 0;
    case 'f':
        if (e->end - p >= 5 && memcmp(p, "false", 5) == 0) {
            e->p = p + 5;
            return 1;
        }
        return 0;
    case 'n':
        if (e->end - p >= 4 && memcmp(p, "null", 4) == 0) {
            e->p = p + 4;
            return 1;
        }
        return 0;
    default: return env_number(e);
    }
}

/* A scalar as text into the arena: a string's content, or a number or
 * boolean as written (a `code` may come as 404). null, objects and arrays:
 * skipped, *out stays NULL. */
static int env_text(E *e, const char **out, size_t cap) {
    char buf[ENV_TEXT_CAP];
    size_t n = 0;
    const unsigned char *p = skip_ws(e->p), *start = p;
    if (cap > sizeof buf) cap = sizeof buf;
    *out = NULL;
    e->p = p;
    if (*p == '"') {
        e->p = p + 1;
        if (!env_string(e, buf, cap, &n)) return 0;
        *out = env_put(e->env, buf, n);
        return 1;
    }
    if (*p == '{' || *p == '[' || *p == 'n') return env_value(e);
    if (!env_value(e)) return 0;
    n = (size_t)(e->p - start);
    *out = env_put(e->env, (const char *)start, n < cap ? n : cap);
    return 1;
}

static int key_is(const char *key, size_t klen, const char *name) {
    size_t n = strlen(name);
    return klen == n && memcmp(key, name, n) == 0;
}

static int env_error_member(E *e, const char *key, size_t klen) {
    oo_env_item *it = e->cur_error;
    if (it && key_is(key, klen, "code") && !it->code) return env_text(e, &it->code, 64);
    if (it && key_is(key, klen, "message") && !it->message)
        return env_text(e, &it->message, ENV_TEXT_CAP);
    return env_value(e);
}

static int env_error_item(E *e, int i) {
    const unsigned char *p = skip_ws(e->p);
    oo_env_item *it = i < OO_ENV_ITEMS ? &e->env->errors[i] : NULL;
    e->env->nerrors = i + 1;
    if (it) it->code = it->message = NULL;
    if (*p == '{') {
        int ok;
        e->cur_error = it;
        e->p = p + 1;
        ok = env_object(e, env_error_member);
        e->cur_error = NULL;
        return ok;
    }
    if (!it) return env_value(e);
    e->p = p;
    return env_text(e, &it->message, ENV_TEXT_CAP);
}

static int env_warning_member(E *e, const char *key, size_t klen) {
    const char **w = e->cur_warning;
    if (w && !*w && (key_is(key, klen, "warning") || key_is(key, klen, "message")))
        return env_text(e, w, ENV_TEXT_CAP);
    return env_value(e);
}

static int env_warning_item(E *e, int i) {
    const unsigned char *p = skip_ws(e->p);
    const char **w = i < OO_ENV_ITEMS ? &e->env->warnings[i] : NULL;
    e->env->nwarnings = i + 1;
    if (w) *w = NULL;
    if (*p == '{') {
        int ok;
        e->cur_warning = w;
        e->p = p + 1;
        ok = env_object(e, env_warning_member);
        e->cur_warning = NULL;
        return ok;
    }
    if (!w) return env_value(e);
    e->p = p;
    return env_text(e, w, ENV_TEXT_CAP);
}

/* Nested objects are read by env_object(e, NULL): only these three keys
 * of the top level matter. */
static int env_top_member(E *e, const char *key, size_t klen) {
    const unsigned char *p = skip_ws(e->p);
    e->p = p;
    if (key_is(key, klen, "status")) {
        e->env->status_present = 1;
        e->env->status = NULL;
        if (*p == '"') return env_text(e, &e->env->status, 32);
        return env_value(e);
    }
    if (key_is(key, klen, "errors") && *p == '[') {
        e->env->nerrors = 0;
        e->p = p + 1;
        return env_array(e, env_error_item);
    }
    if (key_is(key, klen, "warnings") && *p == '[') {
        e->env->nwarnings = 0;
        e->p = p + 1;
        return env_array(e, env_warning_item);
    }
    return env_value(e);
}

int oo_json_envelope(const char *s, size_t len, oo_envelope *env) {
    E e;
    const unsigned char *p;
    memset(env, 0, offsetof(oo_envelope, arena));
    env->arena[0] = '\0';
    e.p = (const unsigned char *)s;
    e.end = e.p + len;
    e.depth = 0;
    e.env = env;
    e.cur_error = NULL;
    e.cur_warning = NULL;
    e.lenient = 1;
    e.picks = NULL;
    e.live = 0;
    e.level = 0;
    p = skip_ws(e.p);
    if (*p != '{') return 0;
    e.p = p + 1;
    if (env_object(&e, env_top_member) && skip_ws(e.p) == e.end) {
        env->object = 1;
        return 1;
    }
    memset(env, 0, offsetof(oo_envelope, arena));
    return 0;
}

/* ------------------------------------------------------------------ */
/* Picking values by path, without a Lua state (see json_walk.h)      */

static int pick_member(E *e, const char *key, size_t klen);

static int pick_key_is(const E *e, int i, int level, const char *key, size_t klen) {
    const char *want = e->picks[i].path[level];
    return e->plen[i][level] == klen && want[0] == key[0] && memcmp(want, key, klen) == 0;
}

/* Notes the value at [start, end) as pick k's. */
static void pick_set(oo_json_pick *k, const unsigned char *start, const unsigned char *end) {
    switch (*start) {
    case '"': k->type = 's'; break;
    case '{': k->type = 'o'; break;
    case '[': k->type = 'a'; break;
    case 't': k->type = 't'; break;
    case 'f': k->type = 'f'; break;
    case 'n': k->type = 'z'; break;
    default: k->type = 'n'; break;
    }
    if (k->type == 's') {
        start++;
        end--;
    }
    k->raw = (const char *)start;
    k->raw_len = (size_t)(end - start);
    k->escaped = k->type == 's' && memchr(start, '\\', k->raw_len) != NULL;
}

/* One member of an object whose path the picks in e->live match so far:
 * the picks ending at this key take its value, the ones going deeper
 * descend into it when it is an object. */
static int pick_member(E *e, const char *key, size_t klen) {
    unsigned live = e->live, deeper = 0, leaves = 0;
    int level = e->level, i, ok;
    const unsigned char *start = skip_ws(e->p);
    for (i = 0; i < OO_JSON_PICK_MAX; i++) {
        if (!(live & (1u << i)) || !pick_key_is(e, i, level, key, klen)) continue;
        if (level + 1 < OO_JSON_PICK_DEPTH && e->picks[i].path[level + 1]) deeper |= 1u << i;
        else leaves |= 1u << i;
    }
    /* a later duplicate of a key replaces what an earlier one held */
    for (i = 0; i < OO_JSON_PICK_MAX; i++)
        if (deeper & (1u << i)) e->picks[i].type = 0;
    e->p = start;
    if (deeper && *start == '{') {
        e->live = deeper;
        e->level = level + 1;
        e->p = start + 1;
        ok = env_object(e, pick_member);
        e->live = live;
        e->level = level;
    } else {
        ok = env_value(e);
    }
    if (!ok) return 0;
    for (i = 0; i < OO_JSON_PICK_MAX; i++)
        if (leaves & (1u << i)) pick_set(&e->picks[i], start, e->p);
    return 1;
}

int oo_json_pick_values(const char *s, size_t len, oo_json_pick *picks, int n) {
    E e;
    const unsigned char *p;
    int i;
    unsigned live = 0;
    memset(&e, 0, sizeof e);
    for (i = 0; i < n && i < OO_JSON_PICK_MAX; i++) {
        int d;
        picks[i].type = 0;
        picks[i].raw = NULL;
        picks[i].raw_len = 0;
        picks[i].escaped = 0;
        if (picks[i].path[0]) live |= 1u << i;
        for (d = 0; d < OO_JSON_PICK_DEPTH && picks[i].path[d]; d++) {
            size_t len = strlen(picks[i].path[d]);
            if (len > OO_JSON_PICK_KEY_MAX || len == 0) live &= ~(1u << i); /* never matches */
            e.plen[i][d] = (unsigned short)len;
        }
    }
    e.p = (const unsigned char *)s;
    e.end = e.p + len;
    e.picks = picks;
    e.live = live;
    p = skip_ws(e.p);
    if (*p != '{') return 0;
    e.p = p + 1;
    if (env_object(&e, pick_member) && skip_ws(e.p) == e.end) return 1;
    for (i = 0; i < n && i < OO_JSON_PICK_MAX; i++) picks[i].type = 0;
    return 0;
}

size_t oo_json_pick_text(const oo_json_pick *k, char *out, size_t cap) {
    E e;
    size_t n = 0;
    if (k->type != 's') return 0;
    if (!k->escaped) {
        n = k->raw_len < cap ? k->raw_len : cap;
        /* whole characters only */
        while (n < k->raw_len && n > 0 && ((unsigned char)k->raw[n] & 0xC0u) == 0x80u) n--;
        memcpy(out, k->raw, n);
        return n;
    }
    memset(&e, 0, sizeof e);
    e.p = (const unsigned char *)k->raw;
    e.end = e.p + k->raw_len + 1; /* the closing quote */
    return env_string(&e, out, cap, &n) ? n : 0;
}
