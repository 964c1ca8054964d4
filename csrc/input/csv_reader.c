/* The CSV reader object: rows (from the tokenizer, csv.c) grouped into
 * orders, payload tables built here (see csv.h for the parts).
 *
 * Lua: core.csv_reader(opts) -> reader with
 *   reader:feed(chunk | nil)   append input; nil marks its end
 *   reader:row()               the next raw row (the header):
 *       "row", fields, line, err, raw | "need", want | "end" | "fatal", line, msg, code
 *   reader:plan(columns)       the column plan the Lua side built from the header
 *   reader:next()              the next event:
 *       "order", payload, line, channel, bytes (consumed so far)
 *       "bad_order", ref, line, message, split_line (a number for a split order),
 *                              rows (the order's rows as the file has them, one per
 *                              line, for the rejects file; nil past MAX_RAW_ORDER)
 *       "bad_row", line, message, raw, order_open
 *       "need", want           read about `want` bytes and feed them
 *       "fatal", line, message, code  the stream ends here: code "too_long" or
 *                              "storage" (the temporary database failed)
 *       nil                    the end
 *   reader:tell()              bytes consumed, the line the next row starts on
 *   reader:close()             frees the temporary databases (also on __gc)
 *
 * Why in C: tokenizing and grouping in Lua cost ~30 us an order; here rows
 * are never turned into Lua strings unless they end up in a payload, and
 * order-level cells repeated on every row are compared in place. */
#include "csv.h"
#include "buf.h"
#include "core.h"
#include "text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READER_MT "optimizely.offline.csv_reader"
#define MAX_PROBLEMS 10
#define MAX_RAW 4096              /* a bad row's text is returned up to this size */
#define MAX_RAW_ORDER (64 * 1024) /* a bad order's rows are returned up to this size */
#define MAX_HEADER_COLS 4096

/* Column kinds (the plan's `kind` strings, in this order). */
enum {
    K_IGNORE,
    K_REF,
    K_ORDER,
    K_LANG,
    K_USER,
    K_SEGMENTS,
    K_INFO,
    K_ATTR,
    K_CHANNEL,
    K_ITEM,
    K_ITEMATTR,
    K_UNNAMED
};
static const char *const kind_names[] = {"ignore",   "ref",     "order", "lang",    "user",
                                         "segments", "info",    "attr",  "channel", "item",
                                         "itemattr", "unnamed", NULL};

typedef struct {
    size_t off, len; /* in the order's arena */
    long long line;  /* where the value was first given (order level) */
} span;

typedef struct {
    int col; /* 0-based column */
    int kind;
    char *label; /* for messages: "\"Cur\" (mapped to \"currency\")" */
} column;

typedef struct {
    oo_csv_tok tok;
    int planned, ncols, ref_col;
    column *ocol, *icol; /* order-level and item-level columns */
    int nocol, nicol;
    int *ucol, nucol; /* columns without a header */
    int keys_ref;     /* registry: table, column (1-based) -> key string */
    /* the order being read */
    int open;
    long long oline;
    oo_buf arena;   /* ref, then values */
    size_t ref_len; /* the ref is arena[0..ref_len) */
    span *vals;     /* per order-level column; len == 0: not given */
    span *items;    /* nitems * nicol */
    size_t nitems, capitems;
    oo_buf problems;
    oo_buf rows;  /* the order's rows as the file has them (a bad order goes to the rejects file) */
    int rows_cut; /* past MAX_RAW_ORDER */
    int nproblems;
    /* caps: past one, the order's rows are counted, not kept (a bad order) */
    size_t max_items, max_order;
    size_t all_items; /* rows of the order that passed the row checks */
    int capped;       /* 0, CAP_ITEMS or CAP_BYTES */
    size_t cut;       /* problems.len after MAX_PROBLEMS - 1 of them */
    long long split_line;
    /* a problem that ends the stream: now (storage) or after the last order */
    int fatal_now, fatal_at_end;
    const char *fatal_code; /* "too_long" or "storage" */
    long long fatal_line;
    char fatal_msg[200];
    int done;
    /* order_rows */
    int grouped, spilling;
    oo_csv_seen_config seen_cfg;
    oo_csv_seen *seen;
    oo_csv_spill *spill;
    oo_csv_tok replay;
} reader;

static reader *check_reader(lua_State *L) {
    reader *r = luaL_checkudata(L, 1, READER_MT);
    if (r->done < 0) luaL_error(L, "csv reader: used after close");
    return r;
}

/* --------------------------------------------------------- order state */

enum { CAP_ITEMS = 1, CAP_BYTES };

static void order_reset(reader *r) {
    r->open = 0;
    r->all_items = 0;
    r->capped = 0;
    r->arena.len = 0;
    r->arena.oom = 0;
    r->nitems = 0;
    r->problems.len = 0;
    r->rows.len = 0;
    r->rows.oom = 0;
    r->rows_cut = 0;
    r->nproblems = 0;
    r->split_line = 0;
    if (r->nocol) memset(r->vals, 0, (size_t)r->nocol * sizeof *r->vals);
}

/* Adds "line N: what" (line 0: no prefix) to the order's problems. */
static void problem(reader *r, long long line, const char *what, size_t n) {
    r->nproblems++;
    if (r->nproblems > MAX_PROBLEMS) return;
    if (r->problems.len) oo_buf_addlit(&r->problems, "; ");
    if (line > 0) {
        oo_buf_addlit(&r->problems, "line ");
        oo_buf_addint(&r->problems, line);
        oo_buf_addlit(&r->problems, ": ");
    }
    oo_buf_add(&r->problems, what, n);
    if (r->nproblems == MAX_PROBLEMS - 1) r->cut = r->problems.len;
}

static void problemf(reader *r, long long line, const char *fmt, int a, int b) {
    char msg[160];
    int n = snprintf(msg, sizeof msg, fmt, a, b);
    problem(r, line, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
}

/* Opens an order. Whether its refCode started an order before is asked
 * when it closes (order_seen): the filter block it needs is fetched now, so
 * the cache miss overlaps the order's rows. */
static void order_start(reader *r, const oo_csv_field *ref, long long line) {
    order_reset(r);
    if (r->seen) oo_csv_seen_prefetch(r->seen, ref->p, ref->n);
    r->open = 1;
    r->oline = line;
    r->ref_len = ref->n;
    oo_buf_add(&r->arena, ref->p, ref->n); /* the ref is the arena's first bytes */
}

static void storage_failed(reader *r, const char *err, long long line);

/* Contiguous mode, as the order closes: a refCode that started an order
 * earlier makes this one a split order, said first among its problems.
 * 0 when the seen set failed (the stream ends). */
static int order_seen(reader *r) {
    const char *err = NULL;
    long long first;
    oo_buf b;
    if (!r->seen) return 1;
    oo_csv_seen_read(r->seen, oo_csv_tell(&r->tok));
    first = oo_csv_seen_add(r->seen, r->arena.data, r->ref_len, r->oline, &err);
    if (first < 0) {
        storage_failed(r, err, r->oline);
        return 0;
    }
    if (first == 0) return 1;
    oo_buf_init(&b);
    oo_buf_addlit(&b, "rows for order ");
    oo_buf_quote(&b, r->arena.data, r->ref_len, OO_QUOTE_CAP);
    oo_buf_addlit(&b, " are not contiguous (first seen at line ");
    oo_buf_addint(&b, first);
    oo_buf_addlit(&b, ")");
    if (r->nproblems) {
        oo_buf_addlit(&b, "; ");
        /* one place less for the rows' problems */
        oo_buf_add(&b, r->problems.data, r->nproblems >= MAX_PROBLEMS ? r->cut : r->problems.len);
    }
    r->problems.len = 0;
    oo_buf_add(&r->problems, b.data, b.len);
    oo_buf_free(&b);
    r->nproblems++;
    r->split_line = first;
    return 1;
}

static int same(const oo_buf *a, const span *s, const oo_csv_field *f) {
    return s->len == f->n && memcmp(a->data + s->off, f->p, f->n) == 0;
}

static void conflict(reader *r, const column *c, const span *had, const oo_csv_field *v,
                     long long line) {
    oo_buf b;
    oo_buf_init(&b);
    oo_buf_addlit(&b, "column ");
    oo_buf_add(&b, c->label, strlen(c->label));
    oo_buf_addlit(&b, " is ");
    oo_buf_quote(&b, v->p, v->n, OO_QUOTE_CAP);
    oo_buf_addlit(&b, " but was ");
    oo_buf_quote(&b, r->arena.data + had->off, had->len, OO_QUOTE_CAP);
    oo_buf_addlit(&b, " on line ");
    oo_buf_addint(&b, had->line);
    problem(r, line, b.data, b.len);
    oo_buf_free(&b);
}

static void unnamed_cell(reader *r, int col, const oo_csv_field *v, long long line) {
    oo_buf b;
    oo_buf_init(&b);
    oo_buf_addlit(&b, "column ");
    oo_buf_addint(&b, col + 1);
    oo_buf_addlit(&b, " has no header but holds ");
    oo_buf_quote(&b, v->p, v->n, OO_QUOTE_CAP);
    problem(r, line, b.data, b.len);
    oo_buf_free(&b);
}

/* Counts the row against the order's caps: 1 when the order is past one
 * (the row is not kept; memory stays bounded whatever the file). Too many
 * items is said when the order closes, with their count. */
static int past_caps(reader *r, const oo_csv_tok *t) {
    size_t bytes = 0;
    int i;
    r->all_items++;
    if (r->capped) return 1;
    if (r->all_items > r->max_items) {
        r->capped = CAP_ITEMS;
        return 1;
    }
    for (i = 0; i < r->nicol; i++) bytes += t->f[r->icol[i].col].n + sizeof(span);
    for (i = 0; i < r->nocol; i++) bytes += t->f[r->ocol[i].col].n;
    if (r->arena.len + bytes > r->max_order) {
        char msg[160];
        r->capped = CAP_BYTES;
        snprintf(msg, sizeof msg,
                 "the order is larger than %lu bytes (its rows from this one on are not read)",
                 (unsigned long)r->max_order);
        problem(r, t->row_line, msg, strlen(msg));
        return 1;
    }
    return 0;
}

/* Keeps the row's text beside the order's (for a bad order's rejects line). */
static void keep_row(reader *r, const oo_csv_tok *t) {
    if (r->rows_cut || r->rows.len + t->raw_len + 1 > MAX_RAW_ORDER) {
        r->rows_cut = 1;
        return;
    }
    if (r->rows.len) oo_buf_addc(&r->rows, '\n');
    oo_buf_add(&r->rows, t->buf + t->raw_at, t->raw_len);
}

/* A row of the open order: checks it, then keeps its values. */
static void order_row(reader *r, const oo_csv_tok *t) {
    long long line = t->row_line;
    const oo_csv_field *f = t->f;
    span *item;
    int i;
    keep_row(r, t);
    if (t->err) {
        char msg[200];
        oo_csv_error_text(t, msg, sizeof msg);
        problem(r, line, msg, strlen(msg));
        return;
    }
    if (t->count != r->ncols) {
        problemf(r, line, "has %d fields, the header has %d", t->count, r->ncols);
        return;
    }
    for (i = 0; i < r->nucol; i++) {
        int c = r->ucol[i];
        if (f[c].n) unnamed_cell(r, c, &f[c], line);
    }
    if (past_caps(r, t)) return;
    if (r->nproblems) return;
    for (i = 0; i < r->nocol; i++) {
        const oo_csv_field *v = &f[r->ocol[i].col];
        span *had = &r->vals[i];
        if (!v->n) continue;
        if (!had->len) {
            had->off = r->arena.len;
            had->len = v->n;
            had->line = line;
            oo_buf_add(&r->arena, v->p, v->n);
        } else if (!same(&r->arena, had, v)) {
            conflict(r, &r->ocol[i], had, v, line);
        }
    }
    if (r->nproblems || !r->nicol) {
        if (!r->nproblems) r->nitems++; /* an item of no columns: still an item */
        return;
    }
    if ((r->nitems + 1) * (size_t)r->nicol > r->capitems) {
        size_t cap = r->capitems ? r->capitems * 2 : (size_t)r->nicol * 8;
        span *p = realloc(r->items, cap * sizeof *p);
        if (!p) {
            r->arena.oom = 1;
            return;
        }
        r->items = p;
        r->capitems = cap;
    }
    item = r->items + r->nitems * (size_t)r->nicol;
    for (i = 0; i < r->nicol; i++) {
        const oo_csv_field *v = &f[r->icol[i].col];
        item[i].off = r->arena.len;
        item[i].len = v->n;
        oo_buf_add(&r->arena, v->p, v->n);
    }
    r->nitems++;
}

/* ----------------------------------------------------- building payloads */

static void push_span(lua_State *L, const reader *r, const span *s) {
    lua_pushlstring(L, r->arena.data + s->off, s->len);
}

/* The keys table: keys[col + 1] is the key of column col; after the
 * columns come the payload's own names (strings made once, not per order). */
enum { N_ORDER, N_REFCODE, N_ITEMS, N_ATTRIBUTES, N_USER, N_INFO, N_SEGMENTS, N_LANG, N_COUNT };
static const char *const payload_names[N_COUNT] = {"order", "refCode", "items",    "attributes",
                                                   "user",  "info",    "segments", "lang"};

/* Sets t[keys[at]] = the value on top (popped). */
static void set_at(lua_State *L, int t, int keys, int at) {
    lua_rawgeti(L, keys, at);
    lua_insert(L, -2);
    lua_rawset(L, t);
}

/* t[column col's key] = the value on top */
static void set_keyed(lua_State *L, int t, int keys, int col) { set_at(L, t, keys, col + 1); }

/* t[name] = the value on top */
static void set_name(lua_State *L, const reader *r, int t, int keys, int name) {
    set_at(L, t, keys, r->ncols + 1 + name);
}

/* Gets (creating it) the subtable `name` of the table at `t`; pushes it. */
static int subtable(lua_State *L, const reader *r, int t, int keys, int name) {
    lua_rawgeti(L, keys, r->ncols + 1 + name);
    lua_rawget(L, t);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 2);
        lua_pushvalue(L, -1);
        set_name(L, r, t, keys, name);
    }
    return lua_gettop(L);
}

static void push_segments(lua_State *L, const char *s, size_t n) {
    size_t i = 0, start = 0;
    int k = 0;
    lua_createtable(L, 2, 0);
    for (i = 0; i <= n; i++) {
        if (i == n || s[i] == '|') {
            lua_pushlstring(L, s + start, i - start);
            lua_rawseti(L, -2, ++k);
            start = i + 1;
        }
    }
}

static void push_items(lua_State *L, const reader *r, int keys) {
    size_t k;
    int i;
    lua_createtable(L, (int)r->nitems, 0);
    for (k = 0; k < r->nitems; k++) {
        const span *item = r->items ? r->items + k * (size_t)r->nicol : NULL;
        int t, attrs = 0;
        lua_createtable(L, 0, 3);
        t = lua_gettop(L);
        for (i = 0; i < r->nicol; i++) {
            if (!item[i].len) continue;
            if (r->icol[i].kind == K_ITEM) {
                push_span(L, r, &item[i]);
                set_keyed(L, t, keys, r->icol[i].col);
            } else {
                if (!attrs) attrs = subtable(L, r, t, keys, N_ATTRIBUTES);
                push_span(L, r, &item[i]);
                set_keyed(L, attrs, keys, r->icol[i].col);
            }
        }
        lua_settop(L, t);
        lua_rawseti(L, -2, (int)k + 1);
    }
}

/* Pushes the payload of the open order and its channel (or nil). */
static void push_payload(lua_State *L, reader *r) {
    int keys, payload, order, user = 0, i, channel = 0, sub;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->keys_ref);
    keys = lua_gettop(L);
    lua_createtable(L, 0, 3);
    payload = lua_gettop(L);
    lua_createtable(L, 0, 8);
    order = lua_gettop(L);
    lua_pushvalue(L, order);
    set_name(L, r, payload, keys, N_ORDER);
    lua_pushlstring(L, r->arena.data, r->ref_len);
    set_name(L, r, order, keys, N_REFCODE);
    push_items(L, r, keys);
    set_name(L, r, order, keys, N_ITEMS);
    for (i = 0; i < r->nocol; i++) {
        const span *v = &r->vals[i];
        int col = r->ocol[i].col;
        if (!v->len) continue;
        switch (r->ocol[i].kind) {
        case K_ORDER:
            push_span(L, r, v);
            set_keyed(L, order, keys, col);
            break;
        case K_ATTR:
            sub = subtable(L, r, order, keys, N_ATTRIBUTES);
            push_span(L, r, v);
            set_keyed(L, sub, keys, col);
            lua_pop(L, 1);
            break;
        case K_LANG:
            push_span(L, r, v);
            set_name(L, r, payload, keys, N_LANG);
            break;
        case K_CHANNEL: channel = i + 1; break;
        default: /* user.* */
            if (!user) user = subtable(L, r, payload, keys, N_USER);
            if (r->ocol[i].kind == K_USER) {
                push_span(L, r, v);
                set_keyed(L, user, keys, col);
            } else if (r->ocol[i].kind == K_SEGMENTS) {
                push_segments(L, r->arena.data + v->off, v->len);
                set_name(L, r, user, keys, N_SEGMENTS);
            } else { /* K_INFO */
                sub = subtable(L, r, user, keys, N_INFO);
                push_span(L, r, v);
                set_keyed(L, sub, keys, col);
                lua_pop(L, 1);
            }
        }
    }
    lua_settop(L, payload);
    lua_remove(L, keys);
    if (channel) push_span(L, r, &r->vals[channel - 1]);
    else lua_pushnil(L);
}

/* Pushes the event for the open order and closes it; returns the count
 * (0 when the seen set failed: the fatal event comes next). */
static int order_finish(lua_State *L, reader *r) {
    if (r->arena.oom || r->problems.oom) {
        order_reset(r);
        return luaL_error(L, "csv reader: out of memory");
    }
    if (r->capped == CAP_ITEMS) {
        char msg[120];
        snprintf(msg, sizeof msg,
                 "too many items (%lu, max %lu): the rows past the cap are not read",
                 (unsigned long)r->all_items, (unsigned long)r->max_items);
        problem(r, 0, msg, strlen(msg));
    }
    if (!order_seen(r)) return 0;
    if (r->nproblems) {
        lua_pushliteral(L, "bad_order");
        lua_pushlstring(L, r->arena.data, r->ref_len);
        lua_pushinteger(L, (lua_Integer)r->oline);
        lua_pushlstring(L, r->problems.data, r->problems.len);
        if (r->nproblems > MAX_PROBLEMS) {
            lua_pushfstring(L, "; and %d more", r->nproblems - MAX_PROBLEMS);
            lua_concat(L, 2);
        }
        if (r->split_line) lua_pushinteger(L, (lua_Integer)r->split_line);
        else lua_pushnil(L);
        if (r->rows_cut || r->rows.oom) lua_pushnil(L);
        else lua_pushlstring(L, r->rows.data, r->rows.len);
        order_reset(r);
        return 6;
    }
    lua_pushliteral(L, "order");
    push_payload(L, r); /* payload, channel */
    lua_pushinteger(L, (lua_Integer)r->oline);
    lua_insert(L, -2); /* payload, line, channel */
    lua_pushinteger(L, (lua_Integer)oo_csv_tell(&r->tok));
    order_reset(r);
    return 5;
}

/* ---------------------------------------------------------- row events */

static int blank(const oo_csv_tok *t) { return !t->err && !t->nonempty; }

/* A row that belongs to no order: "bad_row", line, message, raw, open. */
static int bad_row(lua_State *L, reader *r, const oo_csv_tok *t) {
    char msg[200];
    lua_pushliteral(L, "bad_row");
    lua_pushinteger(L, (lua_Integer)t->row_line);
    if (oo_csv_error_text(t, msg, sizeof msg)) {
        lua_pushstring(L, msg);
    } else if (t->count != r->ncols) {
        lua_pushfstring(L, "has %d fields, the header has %d", t->count, r->ncols);
    } else {
        lua_pushliteral(L, "refCode is empty, so the row belongs to no order");
    }
    if (t->raw_len <= MAX_RAW) lua_pushlstring(L, t->buf + t->raw_at, t->raw_len);
    else lua_pushnil(L);
    lua_pushboolean(L, r->open);
    return 5;
}

/* Groups the row just tokenized. Returns the number of values pushed (an
 * event), or 0 when the row only extended the open order. */
static int group_row(lua_State *L, reader *r, const oo_csv_tok *t) {
    const oo_csv_field *ref = r->ref_col < t->nf ? &t->f[r->ref_col] : NULL;
    int pushed = 0;
    if (blank(t)) return 0;
    if (!ref || !ref->n) return bad_row(L, r, t);
    if (r->open && (ref->n != r->ref_len || memcmp(ref->p, r->arena.data, ref->n) != 0)) {
        pushed = order_finish(L, r);
    }
    if (r->fatal_now) return pushed;
    if (!r->open) order_start(r, ref, t->row_line);
    order_row(r, t);
    return pushed;
}

/* "need", the bytes buffered: a row that does not fit grows the reads. */
static int push_need(lua_State *L, const oo_csv_tok *t) {
    lua_pushliteral(L, "need");
    lua_pushinteger(L, (lua_Integer)(t->len - t->pos));
    return 2;
}

/* The row at the tokenizer's position outgrew max_record: the stream ends
 * there, after the last order. */
static void too_long(reader *r, const oo_csv_tok *t) {
    snprintf(r->fatal_msg, sizeof r->fatal_msg,
             "row starting on line %lld is longer than %lu bytes%s", t->line,
             (unsigned long)t->max_record, t->in_quote ? " (unterminated quote?)" : "");
    r->fatal_line = t->line;
    r->fatal_code = "too_long";
    r->fatal_at_end = 1;
}

static void storage_failed(reader *r, const char *err, long long line) {
    snprintf(r->fatal_msg, sizeof r->fatal_msg,
             "temporary storage failed: %s; the rest of the file is not read",
             err ? err : "unknown error");
    r->fatal_line = line;
    r->fatal_code = "storage";
    r->fatal_now = 1;
    order_reset(r);
}

static int push_fatal(lua_State *L, reader *r) {
    r->fatal_now = r->fatal_at_end = 0;
    r->done = 1;
    lua_pushliteral(L, "fatal");
    lua_pushinteger(L, (lua_Integer)r->fatal_line);
    lua_pushstring(L, r->fatal_msg);
    lua_pushstring(L, r->fatal_code);
    return 4;
}

/* Grouped mode, first pass: every row goes to the spill. */
static int spill_rows(lua_State *L, reader *r) {
    oo_csv_tok *t = &r->tok;
    for (;;) {
        const char *err = NULL;
        const oo_csv_field *ref;
        int rc = oo_csv_next_row(t);
        if (t->oom) return luaL_error(L, "csv reader: out of memory");
        if (rc == OO_CSV_NEED) return push_need(L, t);
        if (rc == OO_CSV_TOOLONG) {
            too_long(r, t);
            break;
        }
        if (rc == OO_CSV_END) break;
        if (blank(t)) continue;
        ref = r->ref_col < t->nf ? &t->f[r->ref_col] : NULL;
        oo_csv_spill_read(r->spill, oo_csv_tell(t));
        if (!oo_csv_spill_add(r->spill, ref ? ref->p : NULL, ref ? ref->n : 0, t->row_line,
                              t->buf + t->raw_at, t->row_len, &err)) {
            storage_failed(r, err, t->row_line);
            break;
        }
    }
    r->spilling = 0;
    return -1; /* go on with the second pass */
}

/* Grouped mode, second pass: the next spilled row into r->tok's place. */
static int replay_row(reader *r) {
    long long line;
    const char *raw, *err = NULL;
    size_t n;
    int rc = oo_csv_spill_next(r->spill, &line, &raw, &n, &err);
    if (rc < 0) {
        storage_failed(r, err, line);
        return OO_CSV_END;
    }
    if (rc == 0) return OO_CSV_END;
    if (!oo_csv_replay(&r->replay, raw, n, line)) {
        r->replay.oom = 1;
        return OO_CSV_END;
    }
    return oo_csv_next_row(&r->replay);
}

/* The next row of this pass: OO_CSV_ROW with *t set, OO_CSV_NEED, or
 * OO_CSV_END (after TOOLONG too: it is reported after the last order). */
static int next_row(lua_State *L, reader *r, oo_csv_tok **t) {
    int rc;
    if (r->grouped) {
        *t = &r->replay;
        rc = replay_row(r);
    } else {
        *t = &r->tok;
        rc = oo_csv_next_row(*t);
        if (rc == OO_CSV_TOOLONG) {
            too_long(r, *t);
            rc = OO_CSV_END;
        }
    }
    if ((*t)->oom) return luaL_error(L, "csv reader: out of memory");
    return rc;
}

/* reader:next() -> an event (see the file comment) */
static int l_next(lua_State *L) {
    reader *r = check_reader(L);
    if (!r->planned) return luaL_error(L, "csv reader: next() before plan()");
    lua_settop(L, 1);
    if (r->done) return 0;
    if (r->spilling) {
        int n = spill_rows(L, r);
        if (n >= 0) return n;
    }
    for (;;) {
        oo_csv_tok *t;
        int rc;
        if (r->fatal_now) return push_fatal(L, r);
        rc = next_row(L, r, &t);
        if (r->fatal_now) return push_fatal(L, r);
        if (rc == OO_CSV_NEED) return push_need(L, t);
        if (rc == OO_CSV_ROW) {
            int pushed = group_row(L, r, t);
            if (pushed) return pushed;
            continue;
        }
        /* the end of the rows */
        if (r->open) {
            int pushed = order_finish(L, r);
            if (pushed) return pushed;
            continue; /* the seen set failed */
        }
        if (r->fatal_at_end) return push_fatal(L, r);
        r->done = 1;
        return 0;
    }
}

/* reader:row() -> "row", fields, line, err, raw | "need", want | "end" |
 * "fatal", line, message  (the header, before plan) */
static int l_row(lua_State *L) {
    reader *r = check_reader(L);
    oo_csv_tok *t = &r->tok;
    char msg[200];
    int rc, i;
    t->maxf = MAX_HEADER_COLS + 1;
    rc = oo_csv_next_row(t);
    if (t->oom) return luaL_error(L, "csv reader: out of memory");
    if (rc == OO_CSV_NEED) return push_need(L, t);
    if (rc == OO_CSV_END) {
        lua_pushliteral(L, "end");
        return 1;
    }
    if (rc == OO_CSV_TOOLONG) {
        too_long(r, t);
        return push_fatal(L, r);
    }
    lua_pushliteral(L, "row");
    lua_createtable(L, t->nf, 0);
    for (i = 0; i < t->nf; i++) {
        lua_pushlstring(L, t->f[i].p, t->f[i].n);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushinteger(L, (lua_Integer)t->row_line);
    if (t->count > MAX_HEADER_COLS) lua_pushfstring(L, "more than %d columns", MAX_HEADER_COLS);
    else if (oo_csv_error_text(t, msg, sizeof msg)) lua_pushstring(L, msg);
    else lua_pushnil(L);
    if (t->raw_len <= MAX_RAW) lua_pushlstring(L, t->buf + t->raw_at, t->raw_len);
    else lua_pushnil(L);
    return 5;
}

static void add_column(lua_State *L, reader *r, int col, int kind, const char *label) {
    column *c;
    if (kind == K_IGNORE) return;
    if (kind == K_REF) {
        r->ref_col = col;
        return;
    }
    if (kind == K_UNNAMED) {
        r->ucol[r->nucol++] = col;
        return;
    }
    c = (kind == K_ITEM || kind == K_ITEMATTR) ? &r->icol[r->nicol++] : &r->ocol[r->nocol++];
    c->col = col;
    c->kind = kind;
    c->label = strdup(label ? label : "?");
    if (!c->label) luaL_error(L, "csv reader: out of memory");
}

/* reader:plan(columns): columns[i] = {kind = <kind_names>, key = s, label = s}
 * for every header column, in order. */
static int l_plan(lua_State *L) {
    reader *r = check_reader(L);
    int n, i;
    luaL_checktype(L, 2, LUA_TTABLE);
    if (r->planned) return luaL_error(L, "csv reader: plan() given twice");
    n = (int)oo_rawlen(L, 2);
    if (n < 1 || n > MAX_HEADER_COLS) return luaL_error(L, "csv reader: bad column count %d", n);
    r->ncols = n;
    r->ref_col = -1;
    r->ocol = calloc((size_t)n, sizeof *r->ocol);
    r->icol = calloc((size_t)n, sizeof *r->icol);
    r->ucol = calloc((size_t)n, sizeof *r->ucol);
    r->vals = calloc((size_t)n, sizeof *r->vals);
    if (!r->ocol || !r->icol || !r->ucol || !r->vals)
        return luaL_error(L, "csv reader: out of memory");
    lua_createtable(L, n + N_COUNT, 0); /* keys */
    for (i = 1; i <= n; i++) {
        int kind;
        lua_rawgeti(L, 2, i);
        luaL_checktype(L, -1, LUA_TTABLE);
        lua_getfield(L, -1, "kind");
        kind = luaL_checkoption(L, -1, NULL, kind_names);
        lua_getfield(L, -2, "key");
        lua_rawseti(L, 3, i);
        lua_getfield(L, -2, "label");
        add_column(L, r, i - 1, kind, lua_tostring(L, -1));
        lua_pop(L, 3);
    }
    if (r->ref_col < 0) return luaL_error(L, "csv reader: the plan has no ref column");
    for (i = 0; i < N_COUNT; i++) {
        lua_pushstring(L, payload_names[i]);
        lua_rawseti(L, 3, n + 1 + i);
    }
    r->keys_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    /* a row needs its columns and one more (to tell "too many") */
    r->tok.maxf = n + 1;
    r->replay.maxf = n + 1;
    r->planned = 1;
    if (r->grouped) {
        const char *err = NULL;
        r->spill = oo_csv_spill_new(&r->seen_cfg, &err);
        if (!r->spill)
            return luaL_error(L, "csv reader: cannot create the spill database: %s", err);
        r->spilling = 1;
    } else {
        r->seen = oo_csv_seen_new(&r->seen_cfg);
        if (!r->seen) return luaL_error(L, "csv reader: out of memory");
    }
    return 0;
}

/* reader:feed(chunk | nil) */
static int l_feed(lua_State *L) {
    reader *r = check_reader(L);
    size_t n;
    const char *s = luaL_optlstring(L, 2, NULL, &n);
    if (!s) {
        r->tok.eof = 1;
        return 0;
    }
    if (r->tok.eof) return luaL_error(L, "csv reader: feed() after the end");
    if (!oo_csv_feed(&r->tok, s, n)) return luaL_error(L, "csv reader: out of memory");
    return 0;
}

/* reader:tell() -> bytes consumed, the line the next row starts on */
static int l_tell(lua_State *L) {
    reader *r = check_reader(L);
    lua_pushinteger(L, (lua_Integer)oo_csv_tell(&r->tok));
    lua_pushinteger(L, (lua_Integer)r->tok.line);
    return 2;
}

static void reader_free(lua_State *L, reader *r) {
    int i;
    if (r->done < 0) return;
    oo_csv_tok_free(&r->tok);
    oo_csv_tok_free(&r->replay);
    for (i = 0; i < r->nocol; i++) free(r->ocol[i].label);
    for (i = 0; i < r->nicol; i++) free(r->icol[i].label);
    free(r->ocol);
    free(r->icol);
    free(r->ucol);
    free(r->vals);
    free(r->items);
    oo_buf_free(&r->arena);
    oo_buf_free(&r->problems);
    oo_buf_free(&r->rows);
    if (r->seen) oo_csv_seen_free(r->seen);
    if (r->spill) oo_csv_spill_free(r->spill);
    if (r->keys_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, r->keys_ref);
    memset(r, 0, sizeof *r);
    r->keys_ref = LUA_NOREF;
    r->done = -1;
}

static int l_close(lua_State *L) {
    reader *r = luaL_checkudata(L, 1, READER_MT);
    reader_free(L, r);
    return 0;
}

static lua_Integer opt_int(lua_State *L, int t, const char *name, lua_Integer dflt, lua_Integer lo,
                           lua_Integer hi) {
    lua_Integer v;
    lua_getfield(L, t, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return dflt;
    }
    v = luaL_checkinteger(L, -1);
    if (v < lo || v > hi) luaL_error(L, "csv_reader: %s out of range", name);
    lua_pop(L, 1);
    return v;
}

/* core.csv_reader{delimiter=",", max_record=4 MiB, order_rows="contiguous"|"grouped",
 *                 filter_bytes=16 MiB (the most), size=input bytes (0: unknown),
 *                 exact=262144 (refCodes kept exactly in memory),
 *                 max_items=1000, max_order=2 MiB (past either, an order's rows
 *                 are counted, not kept: a bad order)} */
static int l_new(lua_State *L) {
    static const char *const modes[] = {"contiguous", "grouped", NULL};
    const char *delim = ",";
    size_t dn = 1;
    int grouped;
    size_t max_record, filter, exact, max_items, max_order;
    unsigned long long size;
    reader *r;
    if (lua_isnoneornil(L, 1)) lua_newtable(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "delimiter");
    if (!lua_isnil(L, -1)) delim = luaL_checklstring(L, -1, &dn);
    if (dn != 1 || *delim == '"' || *delim == '\n' || *delim == '\r' || *delim == '\0')
        return luaL_error(L, "csv_reader: delimiter must be one character other than a quote, "
                             "a line break or NUL");
    lua_getfield(L, 1, "order_rows");
    grouped = luaL_checkoption(L, -1, "contiguous", modes);
    max_record = (size_t)opt_int(L, 1, "max_record", 4 << 20, 16, (lua_Integer)1 << 40);
    filter = (size_t)opt_int(L, 1, "filter_bytes", 16 << 20, 64, (lua_Integer)1 << 30);
    size = (unsigned long long)opt_int(L, 1, "size", 0, 0, (lua_Integer)(~0ULL >> 1));
    exact = (size_t)opt_int(L, 1, "exact", OO_CSV_EXACT_DEFAULT, 16, 1 << 24);
    max_items = (size_t)opt_int(L, 1, "max_items", 1000, 1, 1 << 30);
    max_order = (size_t)opt_int(L, 1, "max_order", 2 << 20, 64, (lua_Integer)1 << 40);
    r = lua_newuserdata(L, sizeof *r);
    memset(r, 0, sizeof *r);
    r->max_items = max_items;
    r->max_order = max_order;
    r->keys_ref = LUA_NOREF;
    oo_setmetatable(L, READER_MT);
    oo_csv_tok_init(&r->tok, (unsigned char)*delim, max_record);
    oo_csv_tok_init(&r->replay, (unsigned char)*delim, max_record);
    oo_buf_init(&r->arena);
    oo_buf_init(&r->problems);
    oo_buf_init(&r->rows);
    r->grouped = grouped;
    r->seen_cfg.filter_max = filter;
    r->seen_cfg.total_bytes = size;
    r->seen_cfg.exact_max = exact;
    return 1;
}

static int l_gc(lua_State *L) {
    reader *r = luaL_checkudata(L, 1, READER_MT);
    reader_free(L, r);
    return 0;
}

void oo_csv_register(lua_State *L) {
    static const luaL_Reg methods[] = {{"feed", l_feed}, {"row", l_row},   {"plan", l_plan},
                                       {"next", l_next}, {"tell", l_tell}, {"close", l_close},
                                       {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"csv_reader", l_new}, {NULL, NULL}};
    oo_newclass(L, READER_MT, methods, l_gc, l_close, NULL);
    oo_setfuncs(L, funcs, 0);
}
