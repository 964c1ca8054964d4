/* JSON read without a Lua state, with the decoder's grammar (json.h):
 * the response envelope (the delivery thread classifies responses) and
 * values picked by path (the ledger, the spool's purge). */
#ifndef OO_JSON_WALK_H
#define OO_JSON_WALK_H

#include <stddef.h>

/* The response envelope, read without a Lua state (the delivery thread
 * classifies responses too): one strict walk of the body with the
 * decoder's grammar, tolerating only the docs' trailing comma
 * (`{"status":"OK",}`), that keeps the TOP-LEVEL `status` and the first
 * items of the top-level `errors` and `warnings` arrays. Strings are
 * unescaped into `arena` (cut short when it is full). */
#define OO_ENV_ITEMS 16
#define OO_ENV_ARENA 4096

typedef struct oo_env_item {
    const char *code;    /* NULL when absent */
    const char *message; /* NULL when absent */
} oo_env_item;

typedef struct oo_envelope {
    int object;         /* the body is one JSON object */
    const char *status; /* the top-level "status" when it is a string, else NULL */
    int status_present; /* a top-level "status" of any type */
    int nerrors;        /* items in "errors" (only the first OO_ENV_ITEMS are kept) */
    int nwarnings;      /* items in "warnings" */
    oo_env_item errors[OO_ENV_ITEMS];
    const char *warnings[OO_ENV_ITEMS];
    size_t used;
    char arena[OO_ENV_ARENA];
} oo_envelope;

/* Reads s[0..len) (s[len] must be '\0'). Returns env->object: 1 when the
 * body is a JSON object, 0 when it is empty, not JSON or another value. */
int oo_json_envelope(const char *s, size_t len, oo_envelope *env);

/* Values picked out of one JSON text by their paths, without a Lua state
 * (the ledger reads an encoded order's refCode, date, currency, total and
 * store; the spool's purge its user). The whole text is checked with the
 * decoder's grammar, strictly (no trailing comma); only a JSON object
 * qualifies. A path is up to OO_JSON_PICK_DEPTH object keys from the top
 * (NUL-terminated, at most OO_JSON_PICK_KEY_MAX bytes each), ended by NULL
 * when shorter. Of duplicate keys the last counts. */
#define OO_JSON_PICK_MAX 16
#define OO_JSON_PICK_DEPTH 4
#define OO_JSON_PICK_KEY_MAX 256

typedef struct oo_json_pick {
    const char *path[OO_JSON_PICK_DEPTH]; /* in: the keys */
    char type;       /* out: 0 absent, 's' string, 'n' number, 't' true, 'f' false,
                        'z' null, 'o' object, 'a' array */
    const char *raw; /* out: a string's content between its quotes (escaped), else the text */
    size_t raw_len;
    int escaped; /* out: a string with escapes (read it with oo_json_pick_text) */
} oo_json_pick;

/* Fills picks[0..n) (n <= OO_JSON_PICK_MAX) from s[0..len), which must be
 * followed by a '\0' (s[len]). Returns 1 when s is one valid JSON object,
 * else 0 (and every pick absent). The raw slices point into s. */
int oo_json_pick_values(const char *s, size_t len, oo_json_pick *picks, int n);

/* A picked string's text, unescaped, into out[cap] (no terminator; cut at
 * cap on a character boundary). Returns its length; 0 for a non-string. */
size_t oo_json_pick_text(const oo_json_pick *k, char *out, size_t cap);

#endif
